//! Loading: YAML file → JSON value tree → `WSGW_*` overrides → typed [`Config`] → validation.
//!
//! Every problem is collected: an invalid value is recorded with its key and removed from the
//! tree (so its default is used) and deserialization runs again, until the rest is clean.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use serde_json::{Map, Value};
use serde_path_to_error::Segment;

use super::{Config, validate};

/// Environment variables starting with this override config keys: `WSGW_A__B_C` sets `a.b_c`.
pub const ENV_PREFIX: &str = "WSGW_";

/// One problem with the configuration, naming the key it is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl Problem {
    pub(crate) fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self { key: key.into(), message: message.into() }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid configuration:\n{}", list(.0))]
    Invalid(Vec<Problem>),
}

fn list(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(|p| format!("  - {p}")).collect();
    lines.join("\n")
}

/// [`load`] with the process environment.
pub fn load_from_env(path: Option<&Path>) -> Result<Config, ConfigError> {
    load(path, std::env::vars())
}

/// Loads the config file at `path` (or the defaults), applies `WSGW_*` overrides from `env`
/// and validates the result.
pub fn load(
    path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let mut problems = Vec::new();
    let mut tree = match path {
        Some(path) => read_yaml(path, &mut problems)?,
        None => Value::Object(Map::new()),
    };
    let defaults = serde_json::to_value(Config::default()).unwrap_or(Value::Null);
    apply_env(&mut tree, &defaults, env, &mut problems);
    let config = deserialize_collecting(tree, &mut problems);
    if let Some(config) = &config {
        problems.extend(validate::validate(config));
    }
    match config {
        Some(config) if problems.is_empty() => Ok(config),
        _ => Err(ConfigError::Invalid(problems)),
    }
}

fn read_yaml(path: &Path, problems: &mut Vec<Problem>) -> Result<Value, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    match serde_yaml_ng::from_str::<Value>(&text) {
        Ok(Value::Null) => Ok(Value::Object(Map::new())),
        Ok(tree) => Ok(tree),
        Err(err) => {
            problems
                .push(Problem::new(path.display().to_string(), format!("not valid YAML: {err}")));
            Ok(Value::Object(Map::new()))
        }
    }
}

/// The map whose keys are librdkafka's own dotted names: `WSGW_CLUSTER__KAFKA__PROPERTIES__SASL_PASSWORD`
/// sets `sasl.password` (`_` stands for `.`; the one librdkafka name with an `_`, `log_level`, is
/// set in the file), so a Kafka secret need not be in a file.
const KAFKA_PROPERTIES: [&str; 3] = ["cluster", "kafka", "properties"];

/// Applies `WSGW_*` variables. The default config's shape says which keys exist and whether a
/// value is text (kept as is), a list (YAML flow list or comma-separated) or a scalar (YAML).
fn apply_env(
    tree: &mut Value,
    defaults: &Value,
    env: impl IntoIterator<Item = (String, String)>,
    problems: &mut Vec<Problem>,
) {
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let mut path: Vec<String> = rest.split("__").map(str::to_lowercase).collect();
        if path.len() == 4 && path[..3] == KAFKA_PROPERTIES {
            path[3] = path[3].replace('_', ".");
            set(tree, &path, Value::String(raw));
            continue;
        }
        let key = path.join(".");
        let pointer = format!("/{}", path.join("/"));
        let value = match defaults.pointer(&pointer) {
            None => {
                problems.push(Problem::new(
                    key,
                    format!("unknown key (from environment variable {name})"),
                ));
                continue;
            }
            Some(Value::Object(_)) => {
                problems
                    .push(Problem::new(key, format!("is a section, not a value (from {name})")));
                continue;
            }
            Some(Value::String(_) | Value::Null) => Value::String(raw),
            Some(Value::Array(_)) if !raw.trim_start().starts_with('[') => Value::Array(
                raw.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| Value::String(s.to_owned()))
                    .collect(),
            ),
            Some(_) => serde_yaml_ng::from_str(&raw).unwrap_or(Value::String(raw)),
        };
        set(tree, &path, value);
    }
}

fn set(tree: &mut Value, path: &[String], value: Value) {
    let mut node = tree;
    for part in path {
        if !node.is_object() {
            *node = Value::Object(Map::new());
        }
        let Value::Object(map) = node else { return };
        node = map.entry(part.clone()).or_insert(Value::Null);
    }
    *node = value;
}

/// Deserializes, recording each invalid or unknown key; an invalid value is dropped from the
/// tree and deserialization repeats so that every problem is found in one run.
fn deserialize_collecting(mut tree: Value, problems: &mut Vec<Problem>) -> Option<Config> {
    const MAX_ROUNDS: usize = 100;
    let mut unknown = Vec::new();
    for _ in 0..MAX_ROUNDS {
        unknown.clear();
        let mut track = serde_path_to_error::Track::new();
        let result: Result<Config, _> = {
            let de = serde_path_to_error::Deserializer::new(tree.clone(), &mut track);
            serde_ignored::deserialize(de, |path| unknown.push(path.to_string()))
        };
        match result {
            Ok(config) => {
                problems.extend(unknown.drain(..).map(|key| Problem::new(key, "unknown key")));
                return Some(config);
            }
            Err(err) => {
                let path = track.path();
                let key = match path.to_string() {
                    p if p == "." => "(top level)".to_owned(),
                    p => p,
                };
                problems.push(Problem::new(key, err.to_string()));
                if !remove(&mut tree, path.iter()) {
                    break;
                }
            }
        }
    }
    problems.extend(unknown.drain(..).map(|key| Problem::new(key, "unknown key")));
    None
}

/// Removes the value at `path`; false when there is nothing to remove.
fn remove<'a>(tree: &mut Value, path: impl Iterator<Item = &'a Segment>) -> bool {
    let segments: Vec<&Segment> = path.collect();
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut node = tree;
    for segment in parents {
        node = match (segment, node) {
            (Segment::Map { key }, Value::Object(map)) => match map.get_mut(key) {
                Some(child) => child,
                None => return false,
            },
            (Segment::Seq { index }, Value::Array(items)) => match items.get_mut(*index) {
                Some(child) => child,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, node) {
        (Segment::Map { key }, Value::Object(map)) => map.remove(key).is_some(),
        (Segment::Seq { index }, Value::Array(items)) if *index < items.len() => {
            items.remove(*index);
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{io::Write, time::Duration};

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn yaml(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(text.as_bytes()).expect("write");
        f
    }

    fn problems(err: ConfigError) -> Vec<Problem> {
        match err {
            ConfigError::Invalid(p) => p,
            other => panic!("expected Invalid, got {other}"),
        }
    }

    #[test]
    fn no_file_and_no_env_gives_defaults() {
        let c = load(None, env(&[])).expect("defaults are valid");
        assert_eq!(c.websocket_listen().to_string(), "127.0.0.1:9002", "no secret: loopback");
        assert_eq!(c.server.governor.listen.port(), 9003);
        assert_eq!(c.limits.max_message_size.as_u64(), 64 * 1024);
    }

    #[test]
    fn env_overrides_file_and_keeps_types() {
        let f =
            yaml("server:\n  websocket:\n    listen: 127.0.0.1:1\nlimits:\n  ping_interval: 5s\n");
        let c = load(
            Some(f.path()),
            env(&[
                ("WSGW_SERVER__WEBSOCKET__LISTEN", "127.0.0.1:9102"),
                ("WSGW_NODE__ID", "123"),
                ("WSGW_AUTH__JWT__ALGORITHMS", "HS256, HS512"),
                ("WSGW_SERVER__WEBSOCKET__MAX_CONNECTIONS", "7"),
                ("WSGW_LIMITS__MAX_MESSAGE_SIZE", "128KiB"),
                ("WSGW_PROTOCOL__SERIALIZER", "proto"),
                ("OTHER", "ignored"),
            ]),
        )
        .expect("valid");
        assert_eq!(c.websocket_listen().to_string(), "127.0.0.1:9102");
        assert_eq!(c.node.id, "123");
        assert_eq!(c.auth.jwt.algorithms.len(), 2);
        assert_eq!(c.server.websocket.max_connections, 7);
        assert_eq!(c.limits.max_message_size.as_u64(), 128 * 1024);
        assert_eq!(c.limits.ping_interval, Duration::from_secs(5));
        assert_eq!(c.protocol.serializer, crate::protocol::Serializer::Proto);
    }

    #[test]
    fn kafka_properties_take_any_scalar_as_text() {
        let f = yaml(
            "cluster:\n  kafka:\n    properties: { debug: cgrp, log_level: 7, \"enable.idempotence\": true }\n",
        );
        let c = load(Some(f.path()), env(&[])).expect("valid");
        let p = &c.cluster.kafka.properties;
        assert_eq!(p.get("debug").map(String::as_str), Some("cgrp"));
        assert_eq!(p.get("log_level").map(String::as_str), Some("7"));
        assert_eq!(p.get("enable.idempotence").map(String::as_str), Some("true"));
    }

    #[test]
    fn kafka_secrets_come_from_the_environment_under_librdkafka_names() {
        let f = yaml("cluster:\n  kafka:\n    properties: { sasl.username: gw }\n");
        let vars = env(&[("WSGW_CLUSTER__KAFKA__PROPERTIES__SASL_PASSWORD", "s3cret")]);
        let c = load(Some(f.path()), vars).expect("valid");
        let p = &c.cluster.kafka.properties;
        assert_eq!(p.get("sasl.password").map(String::as_str), Some("s3cret"));
        assert_eq!(p.get("sasl.username").map(String::as_str), Some("gw"));
    }

    #[test]
    fn every_problem_is_reported_at_once_with_its_key() {
        let f = yaml(
            "server:\n  websocket:\n    listen: nowhere\n    bogus: 1\nlimits:\n  ping_interval: soon\n\
             protocol:\n  serializer: xml\nextra: true\n",
        );
        let p = problems(load(Some(f.path()), env(&[("WSGW_NOPE", "1")])).unwrap_err());
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        for want in [
            "nope",
            "server.websocket.listen",
            "limits.ping_interval",
            "protocol.serializer",
            "server.websocket.bogus",
            "extra",
        ] {
            assert!(keys.contains(&want), "{want} missing from {p:?}");
        }
    }

    #[test]
    fn semantic_problems_are_collected_too() {
        let p = problems(
            load(
                None,
                env(&[
                    ("WSGW_LIMITS__PING_INTERVAL", "0s"),
                    ("WSGW_AUTH__JWT__ALGORITHMS", "[]"),
                    ("WSGW_LOG__LEVEL", "[[["),
                ]),
            )
            .unwrap_err(),
        );
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"limits.ping_interval"), "{p:?}");
        assert!(keys.contains(&"auth.jwt.algorithms"), "{p:?}");
        assert!(keys.contains(&"log.level"), "{p:?}");
    }

    #[test]
    fn grpc_tls_files_come_in_pairs() {
        let keys = |vars: &[(&str, &str)]| match load(None, env(vars)) {
            Ok(_) => Vec::new(),
            Err(e) => problems(e).into_iter().map(|p| p.key).collect(),
        };
        let cert = ("WSGW_SERVER__GRPC__TLS__CERT", "/etc/wsgw/grpc.pem");
        let key = ("WSGW_SERVER__GRPC__TLS__KEY", "/etc/wsgw/grpc.key");
        let ca = ("WSGW_SERVER__GRPC__TLS__CLIENT_CA", "/etc/wsgw/ca.pem");
        assert_eq!(keys(&[cert]), ["server.grpc.tls.key"]);
        assert_eq!(keys(&[ca]), ["server.grpc.tls.client_ca"]);
        assert!(keys(&[cert, key, ca]).is_empty());
        assert_eq!(keys(&[("WSGW_UPSTREAM__TLS__CERT", "/c.pem")]), ["upstream.tls.key"]);
    }

    #[test]
    fn a_loopback_advertised_host_is_refused_when_the_cluster_spans_machines() {
        let key = "cluster.advertise_host";
        let has = |vars: &[(&str, &str)]| match load(None, env(vars)) {
            Ok(_) => false,
            Err(e) => problems(e).iter().any(|p| p.key == key),
        };
        let remote_etcd = ("WSGW_CLUSTER__ETCD__ENDPOINTS", "10.0.0.5:2379");
        assert!(has(&[remote_etcd]), "derived 127.0.0.1 with a remote etcd");
        assert!(has(&[remote_etcd, ("WSGW_CLUSTER__ADVERTISE_HOST", "localhost")]));
        assert!(!has(&[remote_etcd, ("WSGW_CLUSTER__ADVERTISE_HOST", "10.0.0.7")]));
        assert!(!has(&[("WSGW_CLUSTER__REDIS__URL", "redis://127.0.0.1:6379")]), "all local");
        assert!(!has(&[]), "single node");
    }

    #[test]
    fn the_unauthenticated_conformance_echo_is_refused_beyond_loopback() {
        let echo = ("WSGW_SERVER__WEBSOCKET__CONFORMANCE_ECHO", "true");
        assert!(load(None, env(&[echo])).is_ok(), "loopback by default without a secret");
        let open = ("WSGW_SERVER__WEBSOCKET__LISTEN", "0.0.0.0:9002");
        let p = problems(load(None, env(&[echo, open])).unwrap_err());
        assert!(p.iter().any(|p| p.key == "server.websocket.conformance_echo"), "{p:?}");
    }

    #[test]
    fn service_tls_needs_tls_urls_and_whole_client_certificates() {
        let url = |u: &'static str| ("WSGW_CLUSTER__REDIS__URL", u);
        let ca = ("WSGW_CLUSTER__REDIS__TLS__CA", "/etc/ca.pem");
        let key_only = ("WSGW_CLUSTER__REDIS__TLS__KEY", "/etc/client.key");
        let fine = load(None, env(&[url("rediss://127.0.0.1:6380"), ca])).err().map(problems);
        assert!(!fine.unwrap_or_default().iter().any(|p| p.key.starts_with("cluster.redis")));
        let p = problems(load(None, env(&[url("redis://127.0.0.1:6379"), ca])).unwrap_err());
        assert!(p.iter().any(|p| p.key == "cluster.redis.tls"), "{p:?}");
        let p = problems(load(None, env(&[url("rediss://127.0.0.1:6380"), key_only])).unwrap_err());
        assert!(p.iter().any(|p| p.key == "cluster.redis.tls.key"), "{p:?}");
        let p = problems(load(None, env(&[url("http://127.0.0.1:6379")])).unwrap_err());
        assert!(p.iter().any(|p| p.key == "cluster.redis.url"), "{p:?}");
        let plain_etcd = ("WSGW_CLUSTER__ETCD__ENDPOINTS", "[127.0.0.1:2379]");
        let etcd_ca = ("WSGW_CLUSTER__ETCD__TLS__CA", "/etc/ca.pem");
        let p = problems(load(None, env(&[plain_etcd, etcd_ca])).unwrap_err());
        assert!(p.iter().any(|p| p.key == "cluster.etcd.tls"), "{p:?}");
    }

    #[test]
    fn kafka_properties_are_checked_by_librdkafka_and_tls_and_sasl_are_built_in() {
        let kafka = |props: &str| {
            let text = format!(
                "cluster:\n  kafka:\n    brokers: 127.0.0.1:9092\n    properties: {{ {props} }}\n"
            );
            load(Some(yaml(&text).path()), env(&[]))
        };
        let refused = |props: &str| {
            let p = problems(kafka(props).unwrap_err());
            p.iter().any(|p| p.key == "cluster.kafka.properties")
        };
        assert!(refused("secrity.protocol: ssl"), "a typo");
        assert!(refused("security.protocol: carrier-pigeon"), "a refused value");
        let fine = kafka("security.protocol: sasl_ssl, sasl.mechanisms: SCRAM-SHA-512");
        let fine = fine.err().map(problems).unwrap_or_default();
        assert!(!fine.iter().any(|p| p.key == "cluster.kafka.properties"), "{fine:?}");
        let native = rdkafka::ClientConfig::new().create_native_config().expect("config");
        let built_in = native.get("builtin.features").expect("builtin.features");
        for feature in ["ssl", "sasl_plain", "sasl_scram", "sasl_oauthbearer"] {
            assert!(built_in.split(',').any(|f| f == feature), "{feature} missing: {built_in}");
        }
    }

    #[test]
    fn the_proxy_protocol_needs_trusted_proxies() {
        let on = ("WSGW_SERVER__WEBSOCKET__PROXY_PROTOCOL", "true");
        let p = problems(load(None, env(&[on])).unwrap_err());
        assert!(p.iter().any(|p| p.key == "server.websocket.proxy_protocol"), "{p:?}");
        let lb = ("WSGW_SERVER__WEBSOCKET__TRUSTED_PROXIES", "[10.0.0.0/8]");
        assert!(load(None, env(&[on, lb])).is_ok());
    }

    #[test]
    fn backend_addresses_and_the_grpc_token_are_validated_with_their_keys() {
        let f = yaml(
            "backends:\n  - biz_id: 1\n    endpoints: [\"127.0.0.1:50051\", \"no-port\"]\n\
             server:\n  grpc:\n    token: \"schl\u{fc}ssel\"\n",
        );
        let p = problems(load(Some(f.path()), env(&[])).unwrap_err());
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"backends[0].endpoints[1]"), "{p:?}");
        assert!(keys.contains(&"server.grpc.token"), "{p:?}");
        let ok = yaml("backends:\n  - biz_id: 1\n    endpoints: [\"http://b.local:80\"]\n");
        let c = load(Some(ok.path()), env(&[])).expect("valid");
        assert_eq!(c.backends[0].endpoints[0].as_str(), "http://b.local:80");
    }

    #[test]
    fn consuming_kafka_pushes_without_the_session_directory_is_refused() {
        let kafka = ("WSGW_CLUSTER__KAFKA__BROKERS", "127.0.0.1:9092");
        let p = problems(load(None, env(&[kafka])).unwrap_err());
        assert_eq!(
            p.iter().map(|p| p.key.as_str()).collect::<Vec<_>>(),
            ["cluster.kafka.push_topic"]
        );
        let redis = ("WSGW_CLUSTER__REDIS__URL", "redis://127.0.0.1:6379");
        let tokens = [
            ("WSGW_SERVER__GRPC__TOKENS__BACKEND", "b"),
            ("WSGW_SERVER__GRPC__TOKENS__PEER", "p"),
            ("WSGW_SERVER__GRPC__TOKENS__OPERATOR", "o"),
        ];
        let clustered = [&[kafka, redis][..], &tokens].concat();
        assert!(load(None, env(&clustered)).is_ok(), "with Redis it is fine");
        let presence_only = ("WSGW_CLUSTER__KAFKA__PUSH_TOPIC", "");
        assert!(load(None, env(&[kafka, presence_only])).is_ok(), "presence alone needs no Redis");
    }

    #[test]
    fn broken_yaml_and_missing_file_are_clear_errors() {
        let f = yaml("server: [unclosed\n");
        let p = problems(load(Some(f.path()), env(&[])).unwrap_err());
        assert!(p[0].message.contains("not valid YAML"), "{p:?}");
        let err = load(Some(Path::new("/nonexistent/wsgw.yaml")), env(&[])).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
    }

    #[test]
    fn documented_default_config_is_complete_and_valid() {
        let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/wsgw.yaml");
        let c = load(Some(&doc), env(&[])).expect("config/wsgw.yaml is valid");
        let ours = serde_json::to_value(&c).expect("serialize");
        let defaults = serde_json::to_value(Config::default()).expect("serialize");
        assert_eq!(ours, defaults, "config/wsgw.yaml must document exactly the defaults");
        let text = std::fs::read_to_string(&doc).expect("read");
        let tree: Value = serde_yaml_ng::from_str(&text).expect("yaml");
        assert_eq!(leaf_keys(&tree, ""), leaf_keys(&defaults, ""), "every key must be documented");
    }

    #[test]
    fn documented_cluster_config_is_valid_once_its_placeholders_are_replaced() {
        let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/cluster.yaml");
        let Err(ConfigError::Invalid(p)) = load(Some(&doc), env(&[])) else {
            panic!("the placeholders must be refused");
        };
        let mut keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        keys.sort();
        let placeholders = [
            "auth.jwt.secret",
            "server.grpc.tokens.backend",
            "server.grpc.tokens.operator",
            "server.grpc.tokens.peer",
        ];
        assert_eq!(keys, placeholders, "{p:?}");
        let secrets = env(&[
            ("WSGW_AUTH__JWT__SECRET", "0123456789abcdef0123456789abcdef"),
            ("WSGW_SERVER__GRPC__TOKENS__BACKEND", "backend-5f2a"),
            ("WSGW_SERVER__GRPC__TOKENS__PEER", "peer-91c3"),
            ("WSGW_SERVER__GRPC__TOKENS__OPERATOR", "operator-77d0"),
        ]);
        let c = load(Some(&doc), secrets).expect("config/cluster.yaml is valid");
        assert_eq!(c.cluster.etcd.endpoints, ["127.0.0.1:2379"]);
        assert_eq!(c.cluster.redis.url, "redis://127.0.0.1:6379");
        assert_eq!(c.cluster.kafka.brokers, "127.0.0.1:9092");
    }

    fn leaf_keys(v: &Value, prefix: &str) -> Vec<String> {
        match v {
            Value::Object(map) => {
                let mut keys: Vec<String> =
                    map.iter().flat_map(|(k, v)| leaf_keys(v, &format!("{prefix}{k}."))).collect();
                keys.sort();
                keys
            }
            _ => vec![prefix.trim_end_matches('.').to_owned()],
        }
    }
}
