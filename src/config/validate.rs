//! Checks that span values (ranges, relations between keys) after the types have parsed.

use std::time::Duration;

use tracing_subscriber::EnvFilter;

use super::{Config, Problem};

const MIN_MESSAGE_SIZE: u64 = 128;

/// Every semantic problem of `c`; empty when the config is usable.
pub(super) fn validate(c: &Config) -> Vec<Problem> {
    let mut p = Vec::new();
    let mut check = |ok: bool, key: &str, message: &str| {
        if !ok {
            p.push(Problem::new(key, message));
        }
    };
    let ws = &c.server.websocket;
    let limits = &c.limits;
    check(
        ws.listen != c.server.governor.listen || ws.listen.port() == 0,
        "server.governor.listen",
        "must differ from server.websocket.listen",
    );
    check(
        ws.handshake_timeout > Duration::ZERO,
        "server.websocket.handshake_timeout",
        "must be positive",
    );
    check(ws.max_connections > 0, "server.websocket.max_connections", "must be at least 1");
    for (i, origin) in ws.allowed_origins.iter().enumerate() {
        check(
            origin.starts_with("http://") || origin.starts_with("https://") || origin == "null",
            &format!("server.websocket.allowed_origins[{i}]"),
            "must be an origin such as https://app.example.com",
        );
    }
    check(
        !c.auth.jwt.algorithms.is_empty(),
        "auth.jwt.algorithms",
        "must list at least one algorithm",
    );
    check(
        c.auth.jwt.issuer.as_deref() != Some(""),
        "auth.jwt.issuer",
        "must not be empty (leave it out to skip the check)",
    );
    check(
        c.auth.jwt.audience.as_deref() != Some(""),
        "auth.jwt.audience",
        "must not be empty (leave it out to skip the check)",
    );
    check(
        limits.max_message_size.as_u64() >= MIN_MESSAGE_SIZE,
        "limits.max_message_size",
        "must be at least 128 B",
    );
    check(
        limits.outbound_queue_bytes >= limits.max_message_size,
        "limits.outbound_queue_bytes",
        "must be at least limits.max_message_size",
    );
    check(limits.ping_interval > Duration::ZERO, "limits.ping_interval", "must be positive");
    check(limits.pong_timeout > Duration::ZERO, "limits.pong_timeout", "must be positive");
    check(
        limits.idle_timeout > Duration::ZERO,
        "limits.idle_timeout",
        "must be positive (use idle_close: off)",
    );
    check(limits.write_timeout > Duration::ZERO, "limits.write_timeout", "must be positive");
    check(EnvFilter::try_new(&c.log.level).is_ok(), "log.level", "is not a valid tracing filter");
    p
}
