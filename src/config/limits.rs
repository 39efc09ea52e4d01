//! Abuse and resource limits per connection, user and client address (`limits.*`): what one
//! client may send, hold and cost the node. Documented in `config/wsgw.yaml`.

use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct LimitsConfig {
    /// Largest message a client may send; larger ones close the connection with 1009.
    pub max_message_size: ByteSize,
    /// Bytes that may wait in one connection's outbound queue; a client that lets more pile up
    /// is closed with 1008 (slow consumer).
    pub outbound_queue_bytes: ByteSize,
    /// Send a ping after this long without hearing from the client.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// Close the connection when nothing arrives this long after a ping (or after our close).
    #[serde(with = "humantime_serde")]
    pub pong_timeout: Duration,
    /// Close a connection after this long without an application message from the client.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Which connections the idle timeout applies to.
    pub idle_close: IdleClose,
    /// A write to a client that does not finish within this time closes the connection.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Data messages per second one connection may send (heartbeats, acks, anything); beyond,
    /// RATE_LIMIT_EXCEEDED, and a close (1008 `rate limit`) at more than twice the rate. 0: off.
    pub message_rate: f32,
    /// Messages a connection may send at once above `message_rate`.
    pub message_burst: u32,
    /// Bytes per second the node reads from one client's socket (frames of any kind, TLS, the
    /// upgrade); beyond, it stops reading until the bucket refills (TCP slows the client). 0: off.
    pub read_rate: ByteSize,
    /// Bytes a client may send at once above `read_rate` (at least one second's worth).
    pub read_burst: ByteSize,
    /// Connections one user may hold on one node; a further handshake is refused (429). 0: no
    /// limit.
    pub max_connections_per_user: usize,
    /// Connections one client address may hold on one node (429 beyond). 0: no limit.
    pub max_connections_per_ip: usize,
    /// Handshakes per second one client address may start on one node (429 with Retry-After
    /// beyond), checked before the token. 0: no limit.
    pub handshake_rate_per_ip: f32,
    /// Handshakes one address may start at once above `handshake_rate_per_ip`.
    pub handshake_burst_per_ip: u32,
    /// Longest key of an upstream message, in bytes; longer ones get an ERROR.
    pub max_key_length: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_message_size: ByteSize::kib(64),
            outbound_queue_bytes: ByteSize::kib(256),
            ping_interval: Duration::from_secs(30),
            pong_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(600),
            idle_close: IdleClose::Header,
            write_timeout: Duration::from_secs(10),
            message_rate: 100.0,
            message_burst: 200,
            read_rate: ByteSize::mib(1),
            read_burst: ByteSize::mib(4),
            max_connections_per_user: 32,
            max_connections_per_ip: 0,
            handshake_rate_per_ip: 0.0,
            handshake_burst_per_ip: 20,
            max_key_length: 256,
        }
    }
}

/// Which connections `limits.idle_timeout` closes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IdleClose {
    /// Only connections that sent `X-AutoClose: true` (the original gateway's behaviour).
    #[default]
    Header,
    /// Every connection.
    All,
    /// None.
    Off,
}
