//! The node's configuration: typed sections with defaults, loaded from an optional YAML file and
//! `WSGW_*` environment overrides, then validated as a whole.
//!
//! Owns: the config schema (mirrored, key by key, in `config/wsgw.yaml`), loading and validation.
//! Every problem is collected and reported at once, each naming its key. This module must never
//! start anything or read the environment beyond what [`load`] is given.

mod cluster;
mod credentials;
mod jwt;
mod limits;
mod load;
mod validate;

use std::{net::SocketAddr, time::Duration};

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

use crate::grpc::{ClientTlsFiles, GrpcAddr};
pub use crate::protocol::EncryptionAlgorithm;

/// Business → backend addresses, as discovery finds them.
pub type BackendMap = std::collections::HashMap<i64, Vec<GrpcAddr>>;
use crate::protocol::{BodyCipher, CipherError, Serializer};

pub use cluster::{ClusterConfig, EtcdConfig, KafkaConfig, RedisConfig};
pub use jwt::{JwksConfig, JwtAlgorithm, JwtConfig};
pub use limits::{IdleClose, LimitsConfig};
pub use load::{ConfigError, Problem, load, load_from_env};

/// The whole configuration of one node.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct Config {
    pub node: NodeConfig,
    pub server: ServerConfig,
    pub auth: AuthConfig,
    pub protocol: ProtocolConfig,
    pub limits: LimitsConfig,
    pub upstream: UpstreamConfig,
    /// Static backends: which gRPC endpoints serve which business.
    pub backends: Vec<BackendConfig>,
    pub downstream: DownstreamConfig,
    /// Redis, etcd and Kafka; all off by default (single node).
    pub cluster: ClusterConfig,
    pub shutdown: ShutdownConfig,
    pub log: LogConfig,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct NodeConfig {
    /// Unique id of this node in a cluster; empty means the host name.
    pub id: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct ServerConfig {
    pub websocket: WebSocketConfig,
    pub governor: GovernorConfig,
    pub grpc: GrpcConfig,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct GrpcConfig {
    /// Where the node serves `PushService`, `NodeService` and `AdminService`.
    pub listen: SocketAddr,
    /// One token for every role without its own (the original's single token). When set, every
    /// call must carry `authorization: Bearer <token>`.
    pub token: String,
    /// A separate token per role (required in cluster mode and beyond loopback).
    pub tokens: RoleTokens,
    /// Concurrent calls (HTTP/2 streams) one client connection may have open; further calls
    /// wait for a free one.
    pub max_concurrent_streams: u32,
    /// A call not answered within this time fails with `CANCELLED` (streams: until their
    /// first answer).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// A caller must have sent the HTTP/2 preface (and finished the TLS handshake) within this
    /// time after connecting, or it is disconnected.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    pub tls: GrpcTlsConfig,
}

/// `server.grpc.tls`: the gRPC port over TLS, optionally mutual, and how the node reaches its
/// peers (their ports serve the same way).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct GrpcTlsConfig {
    /// Certificate chain (PEM); with `key`, the port serves TLS only and the node advertises
    /// `https://host:port` to its peers.
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
    /// CA (PEM) whose certificates callers must present: mutual TLS. The node presents its own
    /// `cert` to its peers.
    pub client_ca: Option<std::path::PathBuf>,
    /// CA (PEM) of the other nodes' certificates (default: `client_ca`, else the system roots).
    pub ca: Option<std::path::PathBuf>,
}

impl GrpcTlsConfig {
    pub fn is_enabled(&self) -> bool {
        self.cert.is_some() || self.key.is_some()
    }

    /// How this node calls its peers: their CA, and its own certificate.
    pub fn peer_files(&self) -> ClientTlsFiles {
        let ca = self.ca.clone().or_else(|| self.client_ca.clone());
        ClientTlsFiles { ca, cert: self.cert.clone(), key: self.key.clone() }
    }
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9004)),
            token: String::new(),
            tokens: RoleTokens::default(),
            max_concurrent_streams: 256,
            request_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            tls: GrpcTlsConfig::default(),
        }
    }
}

/// Who calls the gRPC API, each with its own credential: a push token cannot kick or drain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrpcRole {
    /// Business backends: `PushService` (Push, Broadcast).
    Backend,
    /// Other nodes: `NodeService` (Deliver).
    Peer,
    /// Operators: `AdminService` (sessions, kick, redirect, drain).
    Operator,
}

impl GrpcRole {
    pub const ALL: [GrpcRole; 3] = [GrpcRole::Backend, GrpcRole::Peer, GrpcRole::Operator];

    /// The config key of this role's token.
    pub fn key(self) -> &'static str {
        match self {
            GrpcRole::Backend => "server.grpc.tokens.backend",
            GrpcRole::Peer => "server.grpc.tokens.peer",
            GrpcRole::Operator => "server.grpc.tokens.operator",
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct RoleTokens {
    pub backend: String,
    pub peer: String,
    pub operator: String,
}

impl GrpcConfig {
    /// The token `role`'s calls must carry: its own, else the shared `token` (empty: none).
    pub fn token_for(&self, role: GrpcRole) -> &str {
        let own = self.token_for_own(role);
        if own.is_empty() { &self.token } else { own }
    }

    /// The config key and value of the token `role`'s calls must carry (see [`Self::token_for`]).
    pub fn token_source(&self, role: GrpcRole) -> (&'static str, &str) {
        match self.token_for_own(role) {
            "" => ("server.grpc.token", &self.token),
            own => (role.key(), own),
        }
    }

    /// `role`'s own token (`tokens.*`), empty when it has none.
    pub fn token_for_own(&self, role: GrpcRole) -> &str {
        match role {
            GrpcRole::Backend => &self.tokens.backend,
            GrpcRole::Peer => &self.tokens.peer,
            GrpcRole::Operator => &self.tokens.operator,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct WebSocketConfig {
    /// Where clients connect. None (the default): 0.0.0.0:9002 when a JWT secret is configured,
    /// 127.0.0.1:9002 otherwise (the ephemeral development secret stays on this host).
    pub listen: Option<SocketAddr>,
    /// Time a client has from TCP accept to a completed WebSocket upgrade.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// `Origin` values allowed to connect; empty allows any (and requests without `Origin`).
    pub allowed_origins: Vec<String>,
    /// Load balancers and proxies (addresses or networks) whose `X-Forwarded-For` names the
    /// client; empty: the TCP peer is the client.
    pub trusted_proxies: Vec<String>,
    /// Connections this node holds at most; beyond it handshakes get 503 + Retry-After.
    pub max_connections: usize,
    /// The Retry-After sent with a 503.
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
    /// Handshakes (TLS and upgrade) in progress at most; a connection beyond it is closed at
    /// accept (`handshakes_total{outcome="busy"}`).
    pub max_handshakes: usize,
    /// New connections accepted per second, node-wide (the original's ramp-up limiter); beyond
    /// it they wait in the kernel's accept queue. 0: no limit.
    pub accept_rate: f32,
    /// Test switch: serve a plain echo endpoint (no auth, no protocol) on the same WebSocket
    /// stack and limits, for the Autobahn conformance suite. Refused unless the WebSocket
    /// listener is on loopback; never enable in production.
    pub conformance_echo: bool,
    /// Connections from `trusted_proxies` start with a PROXY protocol header (v1 or v2) naming
    /// the client.
    pub proxy_protocol: bool,
    /// TLS for clients (`wss://`); off while `cert` is empty.
    pub tls: TlsConfig,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct TlsConfig {
    /// PEM file with the certificate chain (leaf first); empty: plain `ws://`.
    pub cert: String,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
    /// How often the two files are checked for changes (SIGHUP reloads at once).
    #[serde(with = "humantime_serde")]
    pub reload_check: Duration,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self { cert: String::new(), key: String::new(), reload_check: Duration::from_secs(10) }
    }
}

impl TlsConfig {
    pub fn is_enabled(&self) -> bool {
        !self.cert.is_empty()
    }
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        Self {
            listen: None,
            handshake_timeout: Duration::from_secs(10),
            allowed_origins: Vec::new(),
            trusted_proxies: Vec::new(),
            max_connections: 100_000,
            retry_after: Duration::from_secs(5),
            max_handshakes: 1024,
            accept_rate: 0.0,
            conformance_echo: false,
            proxy_protocol: false,
            tls: TlsConfig::default(),
        }
    }
}

/// A network (`10.0.0.0/8`) or one address (`192.0.2.1`), as in `trusted_proxies`.
pub fn parse_network(entry: &str) -> Option<ipnet::IpNet> {
    let entry = entry.trim();
    entry.parse().ok().or_else(|| entry.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
}

impl WebSocketConfig {
    /// `trusted_proxies` as networks (validation refuses entries that do not parse).
    pub fn trusted_networks(&self) -> Vec<ipnet::IpNet> {
        self.trusted_proxies.iter().filter_map(|e| parse_network(e)).collect()
    }

    /// The port clients connect to unless `listen` says otherwise.
    pub const PORT: u16 = 9002;

    /// The address to listen on, given whether a JWT secret is configured.
    pub fn listen_addr(&self, has_secret: bool) -> SocketAddr {
        let any = if has_secret { [0, 0, 0, 0] } else { [127, 0, 0, 1] };
        self.listen.unwrap_or_else(|| SocketAddr::from((any, Self::PORT)))
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct GovernorConfig {
    pub listen: SocketAddr,
}

impl Default for GovernorConfig {
    fn default() -> Self {
        Self { listen: SocketAddr::from(([0, 0, 0, 0], 9003)) }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct AuthConfig {
    pub jwt: JwtConfig,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct ProtocolConfig {
    pub serializer: Serializer,
    pub encryption: EncryptionConfig,
    /// Answer bad messages and failed upstream calls with COMMAND_TYPE_ERROR (an `ErrorInfo`
    /// body). `false`: stay silent as the original gateway did (for legacy JSON clients that
    /// fail to parse an unknown enum name); the client's own timeout and resend then apply.
    pub error_replies: bool,
}

impl Default for ProtocolConfig {
    fn default() -> Self {
        Self {
            serializer: Serializer::default(),
            encryption: EncryptionConfig::default(),
            error_replies: true,
        }
    }
}

/// Body encryption of SPEC §3 (off by default).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct EncryptionConfig {
    pub algorithm: EncryptionAlgorithm,
    /// The raw key (its UTF-8 bytes): 16, 24 or 32 bytes for aes-gcm, 32 for chacha20-poly1305.
    pub key: String,
}

impl EncryptionConfig {
    /// The configured cipher, or `None` when encryption is off.
    pub fn cipher(&self) -> Result<Option<BodyCipher>, CipherError> {
        BodyCipher::new(self.algorithm, self.key.as_bytes())
    }
}

/// How client messages are forwarded to backends.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct UpstreamConfig {
    /// Deadline of one backend call.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Further attempts after a failed call (timeouts, unavailable endpoints).
    pub retries: u32,
    /// First back-off between attempts; doubles each time, with jitter, up to `max_backoff`.
    #[serde(with = "humantime_serde")]
    pub backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Upstream messages one connection may have in flight; beyond, RATE_LIMIT_EXCEEDED.
    pub max_in_flight: u32,
    /// Upstream messages one user may have in flight across its connections on the node (its
    /// share of the backend calls); beyond, RATE_LIMIT_EXCEEDED.
    pub max_in_flight_per_user: u32,
    /// Calls in flight to one backend endpoint; when every endpoint of a business is at its
    /// limit, messages are refused with RATE_LIMIT_EXCEEDED instead of queueing into timeouts.
    pub max_calls_per_endpoint: u32,
    /// A key a user sent again within this window is not forwarded again (cluster-wide in
    /// cluster mode).
    #[serde(with = "humantime_serde")]
    pub dedup_window: Duration,
    /// Most remembered acknowledgements (oldest are forgotten first).
    pub dedup_capacity: u64,
    /// Most bytes of remembered acknowledgements (each twice its key, its ACK body and 96 bytes
    /// of overhead): a backend's large ACK bodies take the room of several small ones. The
    /// oldest are forgotten first.
    pub dedup_max_bytes: ByteSize,
    /// Consecutive failures that open an endpoint's circuit...
    pub circuit_failures: u32,
    /// ...for this long, during which no call is sent to it.
    #[serde(with = "humantime_serde")]
    pub circuit_cooldown: Duration,
    /// TLS of `https://` backend endpoints: their CA (none: the system's roots) and the
    /// certificate the node presents (mutual TLS).
    pub tls: ClientTlsFiles,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(3),
            retries: 2,
            backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            max_in_flight: 16,
            max_in_flight_per_user: 32,
            max_calls_per_endpoint: 1024,
            dedup_window: Duration::from_secs(600),
            dedup_capacity: 100_000,
            dedup_max_bytes: ByteSize::mib(64),
            circuit_failures: 5,
            circuit_cooldown: Duration::from_secs(10),
            tls: ClientTlsFiles::default(),
        }
    }
}

/// The endpoints that serve one business.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct BackendConfig {
    pub biz_id: i64,
    /// gRPC endpoints (`host:port` or `http://host:port`), used round-robin.
    pub endpoints: Vec<GrpcAddr>,
    pub batch: BatchConfig,
    /// Tell the backend of every connection of the business that opens or closes
    /// (`ConnectionHookService.OnConnectionEvents`; at most once, batched).
    pub hooks: bool,
    /// Tell the backend when a push to the business was acknowledged or given up
    /// (`DeliveryReceiptService.OnDeliveryReceipts`; at most once per node, batched).
    pub receipts: bool,
}

/// Optional batching through `BatchBackendService.BatchOnReceive`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct BatchConfig {
    pub enabled: bool,
    /// Messages in one call, at most.
    pub max_size: usize,
    /// Batch calls of the business outstanding at once; while all are, messages queue and the
    /// next call carries them (no wait at low load, larger batches under load).
    pub max_in_flight: usize,
    /// 0 (default): a batch leaves as soon as a call slot is free. Otherwise each batch is
    /// also held open this long for more messages (larger batches, this much added latency).
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self { enabled: true, max_size: 64, max_in_flight: 2, max_wait: Duration::ZERO }
    }
}

/// How pushes are delivered and retransmitted.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct DownstreamConfig {
    /// A push not acknowledged (DOWNSTREAM_ACK) within this time is sent again...
    #[serde(with = "humantime_serde")]
    pub retry_interval: Duration,
    /// ...at most this many times; then it is given up (logged and counted).
    pub max_retries: u32,
    /// Pushes awaiting acknowledgement, at most; beyond, pushes are refused (RESOURCE_EXHAUSTED).
    pub max_pending: usize,
    /// Bytes of push bodies awaiting acknowledgement, at most (the same refusal beyond).
    pub max_pending_bytes: ByteSize,
    /// Largest push (body plus key) accepted from any source: larger ones are refused
    /// (INVALID_ARGUMENT; counted and skipped from Kafka). Must leave room in a connection's
    /// outbound queue (at most half of `limits.outbound_queue_bytes` once encoded).
    pub max_push_size: ByteSize,
}

impl Default for DownstreamConfig {
    fn default() -> Self {
        Self {
            retry_interval: Duration::from_secs(5),
            max_retries: 3,
            max_pending: 100_000,
            max_pending_bytes: ByteSize::mib(256),
            max_push_size: ByteSize::kib(64),
        }
    }
}

/// The most bytes a push of `size` (body plus key) can take once encoded: base64 in JSON, the
/// cipher's nonce and tag, and the message envelope.
pub fn encoded_push_bound(size: u64) -> u64 {
    (size + 28).div_ceil(3) * 4 + 256
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct ShutdownConfig {
    /// Longest a graceful shutdown waits for clients to leave.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Before telling clients to go, how long a draining node waits for the acknowledgement of
    /// the pushes they have not acknowledged yet (within `drain_timeout`).
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self { drain_timeout: Duration::from_secs(30), ack_wait: Duration::from_secs(5) }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct LogConfig {
    /// A tracing filter: `info`, `wsgw=debug,info`, ...
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { level: "info".into(), format: LogFormat::Human }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

impl Config {
    /// Where the WebSocket listener binds (`server.websocket.listen`, or its default).
    pub fn websocket_listen(&self) -> SocketAddr {
        self.server.websocket.listen_addr(self.auth.jwt.has_keys())
    }

    /// The node id, or the host name when none is configured.
    pub fn node_id(&self) -> String {
        if !self.node.id.is_empty() {
            return self.node.id.clone();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "wsgw".to_owned())
    }
}
