//! The connection layer: accepting sockets, the WebSocket handshake with JWT auth, the task that
//! owns each connection, and the registry of live links.
//!
//! Owns: every client socket. Each connection has exactly one task, which is the socket's only
//! reader and only writer; everyone else reaches a connection through its [`Link`]'s bounded,
//! non-blocking outbound queue. Must never await a remote service (Redis, etcd, Kafka, a
//! backend) on a connection's frame path, and never let one slow client block another.
//!
//! Close codes sent to clients:
//!
//! | code | reason | when |
//! |---|---|---|
//! | 1000 | `idle timeout` | no application message for `limits.idle_timeout` (see `idle_close`) |
//! | 1001 | `going away` | the node drains (graceful shutdown; a REDIRECT to live peers goes first in cluster mode) |
//! | 1001 | `redirected` | an operator moved the connection to other nodes (a REDIRECT goes first) |
//! | 1001 | `pong timeout` | nothing heard for `limits.pong_timeout` after a ping |
//! | 1002 | `protocol error` | a WebSocket protocol violation |
//! | 1007 | `invalid message` | a frame that is not a valid `Message` for the serializer, or bad UTF-8 |
//! | 1008 | the operator's reason | kicked through the admin API (`wsgw kick`) |
//! | 1008 | `slow consumer` | the outbound queue exceeded `limits.outbound_queue_bytes`, or a write timed out |
//! | 1009 | `message too big` | a message larger than `limits.max_message_size` |
//! | 1008 | `rate limit` | kept sending at more than twice `limits.message_rate` |
//! | 4001 | `token expired` | the token's `exp` (+ `auth.jwt.leeway`) passed: fetch a new token and reconnect (`auth.jwt.close_on_expiry`) |
//!
//! A decodable message with a command a client may not send (or an unknown one) is answered with
//! `COMMAND_TYPE_ERROR` (`ErrorInfo.code = CODE_UNSUPPORTED_COMMAND`) and the connection stays.

mod address_rate;
mod client_ip;
mod connection;
mod dispatch;
mod handshake;
mod listener;
mod liveness;
mod metered;
mod proxy;
mod rate;
mod tls;

pub use address_rate::AddressRates;
pub use metered::ReadRate;
pub use tls::{Tls, TlsError};

/// A client's byte stream: plain TCP, or TLS over TCP.
pub(crate) trait Stream:
    tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send
{
    /// The socket's gate, when publishers may write to it directly (plain TCP).
    fn gate(&self) -> Option<&Arc<crate::links::Gate>> {
        None
    }
}

impl Stream for metered::Metered<crate::links::GateStream> {
    fn gate(&self) -> Option<&Arc<crate::links::Gate>> {
        Some(&self.get_ref().0)
    }
}

/// TLS records are not whole frames: only the task writes.
impl Stream for tokio_rustls::server::TlsStream<metered::Metered<tokio::net::TcpStream>> {}

use std::sync::Arc;

use tokio_tungstenite::tungstenite::protocol::WebSocketConfig as WsConfig;
use tokio_util::sync::CancellationToken;

use crate::{
    auth::TokenVerifier,
    cluster::SessionDirectory,
    config::{Config, IdleClose},
    downstream::Downstream,
    telemetry::Metrics,
    upstream::{Hooks, Upstream},
    wire::Wire,
};

pub use crate::links::{CloseReason, ConnId, Link, LinkRegistry, SendError};
pub use listener::run as run_listener;

/// The connection layer's view of the node (built by the node): immutable settings and the
/// services a connection task talks to.
pub struct Gateway {
    pub config: Config,
    pub ws_config: WsConfig,
    pub verifier: TokenVerifier,
    pub links: Arc<LinkRegistry>,
    pub wire: Arc<Wire>,
    pub upstream: Arc<Upstream>,
    pub downstream: Arc<Downstream>,
    pub directory: Arc<dyn SessionDirectory>,
    pub metrics: Arc<Metrics>,
    /// The TLS acceptor when clients connect with `wss://`.
    pub tls: Option<Arc<Tls>>,
    /// Connection hooks, when a business asked for them.
    pub hooks: Option<Arc<Hooks>>,
    /// Handshakes per second per client address, when limited.
    pub address_rates: Option<AddressRates>,
    /// Bytes per second each client's socket is read at (`limits.read_rate`).
    pub read_rate: Arc<ReadRate>,
    /// Proxies whose `X-Forwarded-For` names the client (`server.websocket.trusted_proxies`).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Cancelled when the node drains: every connection says goodbye and ends.
    pub drain: CancellationToken,
    /// Cancelled when the drain deadline passes: every connection ends at once.
    pub abort: CancellationToken,
}

impl Gateway {
    /// The WebSocket settings of `config`: small buffers, the message size limit.
    pub fn ws_config(config: &Config) -> WsConfig {
        let max = config.limits.max_message_size.as_u64() as usize;
        WsConfig::default()
            .read_buffer_size(READ_BUFFER_SIZE)
            .write_buffer_size(0)
            .max_write_buffer_size(config.limits.outbound_queue_bytes.as_u64() as usize + max)
            .max_message_size(Some(max))
            .max_frame_size(Some(max))
    }

    fn idle_applies(&self, auto_close_header: bool) -> bool {
        match self.config.limits.idle_close {
            IdleClose::All => true,
            IdleClose::Header => auto_close_header,
            IdleClose::Off => false,
        }
    }
}

/// Per-connection read buffer. Small on purpose: idle connections dominate a gateway's memory
/// and client messages are small (SPEC §7: 128 KiB here costs 134 KB per idle connection). A
/// larger frame still arrives in one read once its header is parsed: tungstenite reserves the
/// frame's full length.
const READ_BUFFER_SIZE: usize = 512;
