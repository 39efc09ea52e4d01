//! The `cluster` section: Redis (session directory, offline inbox), etcd (node registry,
//! backend discovery) and Kafka (push ingestion, presence events). Each is off while its address
//! is empty; a node with none of them is a complete single-node gateway.

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};

use crate::grpc::ClientTlsFiles;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct ClusterConfig {
    /// Host name or IP that clients and peer nodes use to reach this node (registered in etcd,
    /// sent in REDIRECT, used for node-to-node delivery). Empty: the listen address when it is
    /// a specific IP, otherwise 127.0.0.1.
    pub advertise_host: String,
    /// This node's weight, location and labels in its registry entry. The weight defaults to
    /// 1, as the original wrote it (tools built on the original read 0 as draining; a draining
    /// wsgw node leaves the registry instead).
    pub weight: i32,
    pub location: String,
    pub labels: Vec<String>,
    pub redis: RedisConfig,
    pub etcd: EtcdConfig,
    pub kafka: KafkaConfig,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            advertise_host: String::new(),
            weight: 1,
            location: String::new(),
            labels: Vec::new(),
            redis: RedisConfig::default(),
            etcd: EtcdConfig::default(),
            kafka: KafkaConfig::default(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct RedisConfig {
    /// `redis://host:port/db`; empty: in-memory directory (single node). A Redis Cluster: its
    /// seed nodes, comma-separated (`redis://a:6379,redis://b:6379`), or one seed with `cluster`.
    pub url: String,
    /// The Redis at `url` is a Redis Cluster (implied when `url` lists several nodes).
    pub cluster: bool,
    /// ACL user and password (Redis 6+; a password alone is `requirepass`'s); they override
    /// the URL's own.
    pub username: String,
    pub password: String,
    /// `rediss://` URLs: the CA of Redis's certificate (none: the system's roots) and the
    /// certificate the node presents when Redis asks for one (`tls-auth-clients`).
    pub tls: ClientTlsFiles,
    /// Prefix of every key wsgw writes.
    pub prefix: String,
    /// A node that stops refreshing its entry for this long is dead: its sessions stop being
    /// routed to and are removed by the surviving nodes.
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
    /// Unacknowledged pushes recorded per user (the inbox), at most (the oldest are dropped
    /// first, counted as `inbox_overflow`)...
    pub inbox_max: u32,
    /// ...and bytes (recorded JSON; the newest push is always kept)...
    pub inbox_max_bytes: bytesize::ByteSize,
    /// ...each for this long after it was accepted (then dropped, counted as `inbox_expired`).
    #[serde(with = "humantime_serde")]
    pub inbox_ttl: Duration,
    /// Directory updates waiting to be written; beyond, the directory is rebuilt later.
    pub queue: usize,
}

impl RedisConfig {
    /// The Redis URLs of `url` (none when it is empty).
    pub fn urls(&self) -> Vec<String> {
        self.url.split(',').map(str::trim).filter(|u| !u.is_empty()).map(String::from).collect()
    }

    /// Whether `url` names a Redis Cluster: `cluster` is set or several nodes are listed.
    pub fn is_cluster(&self) -> bool {
        self.cluster || self.urls().len() > 1
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            cluster: false,
            username: String::new(),
            password: String::new(),
            tls: ClientTlsFiles::default(),
            prefix: "wsgw:".into(),
            session_ttl: Duration::from_secs(15),
            inbox_max: 100,
            inbox_max_bytes: bytesize::ByteSize::mib(1),
            inbox_ttl: Duration::from_secs(24 * 3600),
            queue: 65_536,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct EtcdConfig {
    /// `host:port` of etcd members (`https://host:port` for TLS); empty: no registry and no
    /// discovery.
    pub endpoints: Vec<String>,
    /// An etcd user, when etcd's authentication is on.
    pub username: String,
    pub password: String,
    /// `https://` members: the CA of their certificates (none: the system's roots) and the
    /// client certificate when etcd requires one (`--client-cert-auth`).
    pub tls: ClientTlsFiles,
    /// Prepended to every key (`/services/gateway/node/…`, `gateway.backend.services`,
    /// `/ego/…`); empty keeps the original gateway's keys.
    pub prefix: String,
    /// TTL of the node's lease; a node that dies disappears from the registry after it.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// How often the node's load (connections) is written to its entry.
    #[serde(with = "humantime_serde")]
    pub report_interval: Duration,
    /// Watch `gateway.backend.services` and `/ego/{name}/providers/` for backends.
    pub discovery: bool,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            endpoints: Vec::new(),
            username: String::new(),
            password: String::new(),
            tls: ClientTlsFiles::default(),
            prefix: String::new(),
            lease_ttl: Duration::from_secs(10),
            report_interval: Duration::from_secs(5),
            discovery: true,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port,…`; empty: no Kafka.
    pub brokers: String,
    /// Consumer group of all nodes (each push is consumed by one node).
    pub group_id: String,
    /// Push topic (JSON `{"key","biz_id","receiver_id","body"}`); empty: not consumed.
    pub push_topic: String,
    /// Where a new group starts: `latest` (default: a brand-new group does not replay the
    /// retained topic to users) or `earliest`. An existing group resumes at its committed offset
    /// either way.
    pub start_from: String,
    /// Pushes routed concurrently; offsets are committed in order after hand-off.
    pub concurrency: usize,
    /// A push that could not be routed for this long (its node overloaded or unreachable) is
    /// kept in its user's offline inbox instead, so that it stops holding back later records.
    #[serde(with = "humantime_serde")]
    pub route_timeout: Duration,
    /// Dead-letter topic: pushes given up after `downstream.max_retries`, as push-topic JSON
    /// plus `"reason"`; empty: none are produced (they are kept in the inbox either way).
    /// Buffered like presence events (`presence_buffer`).
    pub dead_letter_topic: String,
    /// Presence topic (`{"bizId","userId","action"}`); empty: no presence events.
    pub presence_topic: String,
    /// Presence events buffered while Kafka is slow or down; beyond, events are dropped and
    /// counted.
    pub presence_buffer: usize,
    /// Further librdkafka properties for every Kafka client of the node (e.g.
    /// `security.protocol`, `sasl.*`, `ssl.*`, `debug`), applied after wsgw's own settings.
    /// Values may be written as strings, numbers or booleans.
    #[serde(deserialize_with = "scalar_map")]
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: String::new(),
            group_id: "wsgw".into(),
            push_topic: "push_message_event".into(),
            start_from: "latest".into(),
            concurrency: 256,
            route_timeout: Duration::from_secs(10),
            dead_letter_topic: String::new(),
            presence_topic: "gateway_users_action".into(),
            presence_buffer: 100_000,
            properties: BTreeMap::new(),
        }
    }
}

impl ClusterConfig {
    /// Whether this node is part of a cluster (a session directory or a registry is configured).
    pub fn is_enabled(&self) -> bool {
        !self.redis.url.is_empty() || !self.etcd.endpoints.is_empty()
    }

    /// The host peers and redirected clients reach this node at: `advertise_host`, else the
    /// WebSocket listener's address, else (listening on every address) 127.0.0.1.
    pub fn advertised_host(&self, ws: std::net::SocketAddr) -> String {
        match self.advertise_host.as_str() {
            "" if !ws.ip().is_unspecified() => ws.ip().to_string(),
            "" => "127.0.0.1".to_owned(),
            h => h.to_owned(),
        }
    }

    /// The first shared service (Redis, etcd, Kafka) not on this machine, if any: then the
    /// cluster spans machines and a loopback advertised host would send peers and clients to
    /// themselves.
    pub(super) fn remote_service(&self) -> Option<String> {
        let redis = self.redis.urls().into_iter().filter(|u| !u.starts_with("unix://"));
        let kafka = self.kafka.brokers.split(',').map(|b| b.trim().to_owned());
        redis
            .chain(self.etcd.endpoints.iter().cloned())
            .chain(kafka.filter(|b| !b.is_empty()))
            .find(|endpoint| !is_local_host(host_of(endpoint)))
    }

    /// Problems with this section, as (key, message).
    pub(super) fn problems(&self) -> Vec<(&'static str, &'static str)> {
        let mut p = Vec::new();
        let r = &self.redis;
        let urls = r.urls();
        let schemes = ["redis://", "rediss://", "unix://"];
        if !urls.iter().all(|u| schemes.iter().any(|s| u.starts_with(s))) {
            p.push((
                "cluster.redis.url",
                "must be redis://host:port[/db] or rediss:// (TLS), comma-separated for a Redis Cluster, or empty",
            ));
        }
        let tls = &r.tls;
        if tls.cert.is_some() != tls.key.is_some() {
            p.push(("cluster.redis.tls.key", "a client certificate needs both cert and key"));
        }
        let any_file = tls.ca.is_some() || tls.cert.is_some();
        if any_file && !urls.iter().all(|u| u.starts_with("rediss://")) {
            p.push(("cluster.redis.tls", "TLS files are used with rediss:// URLs only"));
        }
        if r.is_cluster() && urls.iter().any(|u| u.starts_with("unix://")) {
            p.push(("cluster.redis.url", "a Redis Cluster is reached over redis://, not unix://"));
        }
        let e = &self.etcd;
        if e.tls.cert.is_some() != e.tls.key.is_some() {
            p.push(("cluster.etcd.tls.key", "a client certificate needs both cert and key"));
        }
        let etcd_files = e.tls.ca.is_some() || e.tls.cert.is_some();
        if etcd_files && !e.endpoints.iter().all(|u| u.starts_with("https://")) {
            p.push(("cluster.etcd.tls", "TLS files are used with https:// endpoints only"));
        }
        if r.session_ttl < Duration::from_secs(1) {
            p.push(("cluster.redis.session_ttl", "must be at least 1s"));
        }
        if r.inbox_max == 0 {
            p.push(("cluster.redis.inbox_max", "must be at least 1"));
        }
        if r.inbox_max_bytes.as_u64() == 0 {
            p.push(("cluster.redis.inbox_max_bytes", "must be positive"));
        }
        if r.queue == 0 {
            p.push(("cluster.redis.queue", "must be at least 1"));
        }
        if self.etcd.lease_ttl < Duration::from_secs(2) {
            p.push(("cluster.etcd.lease_ttl", "must be at least 2s"));
        }
        if self.etcd.report_interval.is_zero() {
            p.push(("cluster.etcd.report_interval", "must be positive"));
        }
        let k = &self.kafka;
        if !matches!(k.start_from.as_str(), "earliest" | "latest") {
            p.push(("cluster.kafka.start_from", "must be earliest or latest"));
        }
        if k.concurrency == 0 {
            p.push(("cluster.kafka.concurrency", "must be at least 1"));
        }
        if k.route_timeout.is_zero() {
            p.push(("cluster.kafka.route_timeout", "must be positive"));
        }
        if k.presence_buffer == 0 {
            p.push(("cluster.kafka.presence_buffer", "must be at least 1"));
        }
        if !k.brokers.is_empty() && k.group_id.is_empty() {
            p.push(("cluster.kafka.group_id", "must not be empty"));
        }
        if !k.brokers.is_empty() && !k.push_topic.is_empty() && r.url.is_empty() {
            // Without the session directory a consumer cannot find users on other nodes, and
            // would commit their pushes as undeliverable.
            p.push((
                "cluster.kafka.push_topic",
                "consuming pushes needs the session directory: set cluster.redis.url \
                 (or clear the push topic)",
            ));
        }
        p
    }
}

/// A map whose values are YAML scalars (string, number, boolean), kept as their text.
fn scalar_map<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Text(String),
        Int(i64),
        Float(f64),
        Bool(bool),
    }
    let map = BTreeMap::<String, Scalar>::deserialize(d)?;
    Ok(map
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                Scalar::Text(s) => s,
                Scalar::Int(n) => n.to_string(),
                Scalar::Float(f) => f.to_string(),
                Scalar::Bool(b) => b.to_string(),
            };
            (k, v)
        })
        .collect())
}

/// The host part of `scheme://user@host:port/path`, `host:port` or `[v6]:port`.
fn host_of(endpoint: &str) -> &str {
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    match rest.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => rest.split([':', '/']).next().unwrap_or_default(),
    }
}

/// `localhost`, a loopback or an unspecified address.
pub(super) fn is_local_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_of_endpoints_and_whether_they_are_this_machine() {
        let cases = [
            ("redis://127.0.0.1:6379/0", "127.0.0.1", true),
            ("redis://user:pw@10.0.0.5:6379", "10.0.0.5", false),
            ("http://[::1]:2379", "::1", true),
            ("localhost:9092", "localhost", true),
            ("etcd-0.internal:2379", "etcd-0.internal", false),
        ];
        for (endpoint, host, local) in cases {
            assert_eq!(host_of(endpoint), host, "{endpoint}");
            assert_eq!(is_local_host(host_of(endpoint)), local, "{endpoint}");
        }
    }
}
