//! Credential checks: what a node refuses to start with.
//!
//! - A gRPC port reachable beyond loopback, or any cluster mode, needs a separate token per role
//!   (`server.grpc.tokens.backend`, `.peer`, `.operator`), all different: one leaked push token
//!   must not drain or kick nodes.
//! - No known placeholder (the values in `config/cluster.yaml`) as a token or secret.
//! - HMAC secrets of at least 32 bytes (RFC 7518 §3.2: a key as long as the hash output).
//! - The ephemeral development secret only behind a loopback WebSocket listener.
//! - Public keys and a JWKS need a public-key algorithm in `auth.jwt.algorithms`; the JWKS URL
//!   is `https://` (`http://` only to a loopback host: keys fetched in clear text could be
//!   swapped by anyone on the path).

use super::{Config, GrpcRole, Problem};
use crate::grpc::Bearer;

/// Shortest HMAC secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;

/// Values shipped as examples: never accepted as a credential.
const PLACEHOLDERS: [&str; 3] = ["change-me", "changeme", "replace-me"];

pub(super) fn problems(c: &Config) -> Vec<Problem> {
    let mut p = Vec::new();
    let grpc = &c.server.grpc;
    let mut tokens = vec![("server.grpc.token", grpc.token.as_str())];
    tokens.extend(GrpcRole::ALL.map(|r| (r.key(), grpc.token_for_own(r))));
    for &(key, token) in &tokens {
        if Bearer::new(token).is_err() {
            p.push(Problem::new(key, "must be printable ASCII without spaces (a gRPC header)"));
        }
        if is_placeholder(token) {
            p.push(Problem::new(key, "is a placeholder; set a random token"));
        }
    }
    if exposed(c) {
        p.extend(role_tokens(c));
    }
    let jwt = &c.auth.jwt;
    let named = jwt.secrets.iter().map(|(kid, s)| (format!("auth.jwt.secrets.{kid}"), s));
    for (key, secret) in std::iter::once(("auth.jwt.secret".to_owned(), &jwt.secret)).chain(named) {
        p.extend(secret_problem(&key, secret));
    }
    p.extend(public_keys(jwt));
    if !jwt.has_keys() && !c.websocket_listen().ip().is_loopback() {
        p.push(Problem::new(
            "auth.jwt.secret",
            "is required when server.websocket.listen is not a loopback address (the ephemeral \
             development secret is for loopback only)",
        ));
    }
    p
}

/// Whether the gRPC API can be reached from other hosts: a non-loopback listener, or a cluster
/// (whose peers call it).
fn exposed(c: &Config) -> bool {
    !c.server.grpc.listen.ip().is_loopback() || c.cluster.is_enabled()
}

/// Every role has its own token, and no two are the same.
fn role_tokens(c: &Config) -> Vec<Problem> {
    let mut p = Vec::new();
    let grpc = &c.server.grpc;
    for (i, role) in GrpcRole::ALL.into_iter().enumerate() {
        let own = grpc.token_for_own(role);
        if own.is_empty() {
            p.push(Problem::new(
                role.key(),
                "is required in cluster mode or when server.grpc.listen is not loopback: each \
                 role (backend, peer, operator) needs its own token",
            ));
            continue;
        }
        if let Some(same) = GrpcRole::ALL[..i].iter().find(|&&r| grpc.token_for_own(r) == own) {
            p.push(Problem::new(role.key(), format!("must differ from {}", same.key())));
        }
    }
    p
}

/// What is wrong with the public-key settings of `auth.jwt`.
fn public_keys(jwt: &super::JwtConfig) -> Vec<Problem> {
    let mut p = Vec::new();
    let asymmetric =
        jwt.public_key.is_some() || !jwt.public_keys.is_empty() || jwt.jwks.is_enabled();
    if asymmetric && jwt.algorithms.iter().all(|a| a.is_hmac()) {
        p.push(Problem::new(
            "auth.jwt.algorithms",
            "has only HMAC algorithms, but public keys are configured (add e.g. RS256, ES256, EdDSA)",
        ));
    }
    if jwt.jwks.is_enabled() {
        let url = reqwest::Url::parse(&jwt.jwks.url);
        let loopback = |u: &reqwest::Url| {
            let host = u.host_str().unwrap_or_default().trim_matches(['[', ']']);
            host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
        };
        match url {
            Ok(u) if u.scheme() == "https" || (u.scheme() == "http" && loopback(&u)) => {}
            Ok(_) => p.push(Problem::new(
                "auth.jwt.jwks.url",
                "must be https:// (http:// only to a loopback host)",
            )),
            Err(e) => p.push(Problem::new("auth.jwt.jwks.url", format!("is not a URL: {e}"))),
        }
        if jwt.jwks.min_refresh.is_zero() || jwt.jwks.refresh < jwt.jwks.min_refresh {
            let why = "must be > 0 and at most auth.jwt.jwks.refresh";
            p.push(Problem::new("auth.jwt.jwks.min_refresh", why));
        }
    }
    p
}

/// What is wrong with the HMAC secret at `key`, if anything (empty is fine here).
fn secret_problem(key: &str, secret: &str) -> Option<Problem> {
    if is_placeholder(secret) {
        return Some(Problem::new(key, "is a placeholder; set a random secret"));
    }
    (!secret.is_empty() && secret.len() < MIN_SECRET_BYTES).then(|| {
        let message = format!(
            "is {} bytes; HMAC secrets need at least {MIN_SECRET_BYTES} (e.g. `openssl rand -hex 32`)",
            secret.len()
        );
        Problem::new(key, message)
    })
}

fn is_placeholder(value: &str) -> bool {
    let v = value.to_ascii_lowercase();
    PLACEHOLDERS.iter().any(|p| v.starts_with(p))
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn keys(c: &Config) -> Vec<String> {
        problems(c).into_iter().map(|p| p.key).collect()
    }

    fn clustered() -> Config {
        let mut c = Config::default();
        c.auth.jwt.secret = "k".repeat(MIN_SECRET_BYTES);
        c.cluster.redis.url = "redis://127.0.0.1:6379".into();
        c
    }

    #[test]
    fn public_keys_need_a_public_key_algorithm_and_a_safe_jwks_url() {
        let mut c = Config::default();
        c.auth.jwt.jwks.url = "http://idp.example.com/jwks.json".into();
        assert_eq!(keys(&c), ["auth.jwt.algorithms", "auth.jwt.jwks.url"]);
        c.auth.jwt.algorithms.push(crate::config::JwtAlgorithm::ES256);
        assert_eq!(keys(&c), ["auth.jwt.jwks.url"], "clear text beyond loopback");
        for ok in [
            "https://idp.example.com/jwks.json",
            "http://127.0.0.1:8080/jwks",
            "http://localhost/k",
        ] {
            c.auth.jwt.jwks.url = ok.into();
            assert!(keys(&c).is_empty(), "{ok}: {:?}", problems(&c));
        }
        c.auth.jwt.jwks.url = "not a url".into();
        assert_eq!(keys(&c), ["auth.jwt.jwks.url"]);
        c.auth.jwt.jwks.url = "https://idp/".into();
        c.auth.jwt.jwks.min_refresh = std::time::Duration::ZERO;
        assert_eq!(keys(&c), ["auth.jwt.jwks.min_refresh"]);
    }

    #[test]
    fn a_loopback_single_node_needs_no_token() {
        assert!(keys(&Config::default()).is_empty(), "{:?}", problems(&Config::default()));
    }

    #[test]
    fn a_cluster_node_needs_a_different_token_per_role() {
        let mut c = clustered();
        c.server.grpc.token = "one-token-for-everything".into();
        let k = keys(&c);
        for role in GrpcRole::ALL {
            assert!(k.contains(&role.key().to_owned()), "{k:?}");
        }
        c.server.grpc.tokens.backend = "push-0123456789".into();
        c.server.grpc.tokens.peer = "peer-0123456789".into();
        c.server.grpc.tokens.operator = "push-0123456789".into();
        assert_eq!(keys(&c), ["server.grpc.tokens.operator"], "same as the backend token");
        c.server.grpc.tokens.operator = "admin-0123456789".into();
        assert!(keys(&c).is_empty(), "{:?}", problems(&c));
    }

    #[test]
    fn a_grpc_port_beyond_loopback_needs_role_tokens_too() {
        let mut c = Config::default();
        c.server.grpc.listen = SocketAddr::from(([0, 0, 0, 0], 9004));
        assert_eq!(keys(&c).len(), 3, "{:?}", problems(&c));
    }

    #[test]
    fn placeholders_and_short_secrets_are_refused() {
        let mut c = Config::default();
        c.auth.jwt.secret = "change-me-to-a-long-random-secret".into();
        c.server.grpc.token = "change-me-cluster-token".into();
        assert_eq!(keys(&c), ["server.grpc.token", "auth.jwt.secret"]);
        c.server.grpc.token.clear();
        c.auth.jwt.secret = "k".repeat(MIN_SECRET_BYTES - 1);
        let p = problems(&c);
        assert!(p[0].message.contains("31 bytes"), "{p:?}");
        c.auth.jwt.secret.push('k');
        assert!(keys(&c).is_empty());
    }

    #[test]
    fn the_ephemeral_secret_is_for_loopback_only() {
        let mut c = Config::default();
        assert!(c.server.websocket.listen_addr(false).ip().is_loopback(), "the default");
        c.server.websocket.listen = Some(SocketAddr::from(([0, 0, 0, 0], 9002)));
        assert_eq!(keys(&c), ["auth.jwt.secret"]);
        c.auth.jwt.secret = "k".repeat(MIN_SECRET_BYTES);
        assert!(keys(&c).is_empty());
    }
}
