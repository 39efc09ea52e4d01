//! Checks that span values (ranges, relations between keys) after the types have parsed.

use std::time::Duration;

use tracing_subscriber::EnvFilter;

use super::{Config, EncryptionAlgorithm, Problem};

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
    let ws_listen = c.websocket_listen();
    check(
        ws_listen != c.server.governor.listen || ws_listen.port() == 0,
        "server.governor.listen",
        "must differ from server.websocket.listen",
    );
    check(
        ws.handshake_timeout > Duration::ZERO,
        "server.websocket.handshake_timeout",
        "must be positive",
    );
    check(
        !ws.conformance_echo || ws_listen.ip().is_loopback(),
        "server.websocket.conformance_echo",
        "serves anyone without a token: only on a loopback server.websocket.listen",
    );
    check(ws.max_connections > 0, "server.websocket.max_connections", "must be at least 1");
    check(ws.max_handshakes > 0, "server.websocket.max_handshakes", "must be at least 1");
    check(
        ws.accept_rate >= 0.0 && ws.accept_rate.is_finite(),
        "server.websocket.accept_rate",
        "must be a number of connections per second (0: no limit)",
    );
    let grpc = &c.server.grpc;
    check(
        grpc.max_concurrent_streams > 0,
        "server.grpc.max_concurrent_streams",
        "must be at least 1",
    );
    check(grpc.request_timeout > Duration::ZERO, "server.grpc.request_timeout", "must be positive");
    check(
        grpc.handshake_timeout > Duration::ZERO,
        "server.grpc.handshake_timeout",
        "must be positive",
    );
    check(
        grpc.tls.cert.is_some() == grpc.tls.key.is_some(),
        "server.grpc.tls.key",
        "cert and key are set together (neither: plain HTTP/2)",
    );
    check(
        grpc.tls.client_ca.is_none() || grpc.tls.cert.is_some(),
        "server.grpc.tls.client_ca",
        "mutual TLS needs the port's own cert and key",
    );
    let up = &c.upstream.tls;
    check(
        up.cert.is_some() == up.key.is_some(),
        "upstream.tls.key",
        "a client certificate needs both cert and key",
    );
    check(
        ws.tls.cert.is_empty() == ws.tls.key.is_empty(),
        "server.websocket.tls.key",
        "cert and key are set together (both empty: plain ws://)",
    );
    check(
        ws.tls.reload_check > Duration::ZERO,
        "server.websocket.tls.reload_check",
        "must be positive",
    );
    for (i, proxy) in ws.trusted_proxies.iter().enumerate() {
        check(
            super::parse_network(proxy).is_some(),
            &format!("server.websocket.trusted_proxies[{i}]"),
            "must be an IP address or a network such as 10.0.0.0/8",
        );
    }
    check(
        !ws.proxy_protocol || !ws.trusted_proxies.is_empty(),
        "server.websocket.proxy_protocol",
        "PROXY headers are read only from server.websocket.trusted_proxies: list the load balancers",
    );
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
    check(
        limits.message_rate >= 0.0 && limits.message_rate.is_finite(),
        "limits.message_rate",
        "must be a number of messages per second (0: no limit)",
    );
    check(limits.message_burst >= 1, "limits.message_burst", "must be at least 1");
    check(limits.max_key_length >= 1, "limits.max_key_length", "must be at least 1");
    check(EnvFilter::try_new(&c.log.level).is_ok(), "log.level", "is not a valid tracing filter");
    p.extend(validate_backends(c));
    p.extend(validate_traffic(c));
    p.extend(c.cluster.problems().into_iter().map(|(k, m)| Problem::new(k, m)));
    p.extend(kafka_property_problems(c));
    p.extend(advertised_host_problem(c));
    p.extend(super::credentials::problems(c));
    p
}

/// librdkafka's own verdict on each of `cluster.kafka.properties` (an unknown name, a refused
/// value, a mechanism this build lacks), so that a typo fails the start instead of turning
/// Kafka off later.
fn kafka_property_problems(c: &Config) -> Vec<Problem> {
    let kafka = &c.cluster.kafka;
    if kafka.brokers.is_empty() {
        return Vec::new();
    }
    let mut all = rdkafka::ClientConfig::new();
    for (k, v) in &kafka.properties {
        all.set(k, v);
    }
    match all.create_native_config() {
        Ok(_) => Vec::new(),
        Err(e) => vec![Problem::new("cluster.kafka.properties", e.to_string())],
    }
}

fn validate_traffic(c: &Config) -> Vec<Problem> {
    let mut p = Vec::new();
    let key_len = c.protocol.encryption.key.len();
    match c.protocol.encryption.algorithm {
        EncryptionAlgorithm::None => {}
        EncryptionAlgorithm::AesGcm if ![16, 24, 32].contains(&key_len) => p.push(Problem::new(
            "protocol.encryption.key",
            format!("aes-gcm needs a 16, 24 or 32 byte key, got {key_len} bytes"),
        )),
        EncryptionAlgorithm::ChaCha20Poly1305 if key_len != 32 => p.push(Problem::new(
            "protocol.encryption.key",
            format!("chacha20-poly1305 needs a 32 byte key, got {key_len} bytes"),
        )),
        _ => {}
    }
    let u = &c.upstream;
    if u.timeout.is_zero() {
        p.push(Problem::new("upstream.timeout", "must be positive"));
    }
    if u.max_in_flight == 0 {
        p.push(Problem::new("upstream.max_in_flight", "must be at least 1"));
    }
    if u.max_in_flight_per_user == 0 {
        p.push(Problem::new("upstream.max_in_flight_per_user", "must be at least 1"));
    }
    if u.max_calls_per_endpoint == 0 {
        p.push(Problem::new("upstream.max_calls_per_endpoint", "must be at least 1"));
    }
    if u.max_backoff < u.backoff {
        p.push(Problem::new("upstream.max_backoff", "must be at least upstream.backoff"));
    }
    if u.circuit_failures == 0 {
        p.push(Problem::new("upstream.circuit_failures", "must be at least 1"));
    }
    if c.downstream.retry_interval.is_zero() {
        p.push(Problem::new("downstream.retry_interval", "must be positive"));
    }
    if c.downstream.max_pending == 0 {
        p.push(Problem::new("downstream.max_pending", "must be at least 1"));
    }
    if c.downstream.max_pending_bytes < c.downstream.max_push_size {
        p.push(Problem::new(
            "downstream.max_pending_bytes",
            "must be at least downstream.max_push_size",
        ));
    }
    let push_bound = super::encoded_push_bound(c.downstream.max_push_size.as_u64());
    if push_bound > c.limits.outbound_queue_bytes.as_u64() / 2 {
        p.push(Problem::new(
            "downstream.max_push_size",
            "too large for limits.outbound_queue_bytes: an encoded push must fit in half the queue",
        ));
    }
    p
}

fn validate_backends(c: &Config) -> Vec<Problem> {
    let mut p = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, b) in c.backends.iter().enumerate() {
        let key = |k: &str| format!("backends[{i}].{k}");
        if b.biz_id <= 0 {
            p.push(Problem::new(key("biz_id"), "must be a positive integer"));
        } else if !seen.insert(b.biz_id) {
            p.push(Problem::new(key("biz_id"), format!("biz {} is listed twice", b.biz_id)));
        }
        if b.endpoints.is_empty() {
            p.push(Problem::new(key("endpoints"), "must list at least one endpoint"));
        }
        if b.batch.max_size == 0 {
            p.push(Problem::new(key("batch.max_size"), "must be at least 1"));
        }
        if b.batch.max_in_flight == 0 {
            p.push(Problem::new(key("batch.max_in_flight"), "must be at least 1"));
        }
    }
    p
}

/// Cluster mode with a loopback advertised host while a shared service is on another machine:
/// peers would call themselves and redirected clients would connect to their own machine.
fn advertised_host_problem(c: &Config) -> Option<Problem> {
    if !c.cluster.is_enabled() {
        return None;
    }
    let host = c.cluster.advertised_host(c.websocket_listen());
    if !super::cluster::is_local_host(&host) {
        return None;
    }
    let remote = c.cluster.remote_service()?;
    Some(Problem::new(
        "cluster.advertise_host",
        format!(
            "{host} is reachable only from this machine, but the cluster's {remote} is not: set the address peers and clients reach this node at"
        ),
    ))
}
