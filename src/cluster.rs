//! Cluster adapters: the session directory and offline inbox (Redis, or the in-memory twin for
//! a single node), the node registry and backend discovery (etcd), push ingestion and presence
//! events (Kafka).
//!
//! Owns: the clients of those services and the background tasks that talk to them. Every one of
//! them is optional (`cluster.*` in the config); with none configured the node is a complete
//! single-node gateway. A dependency that is down never stops the node: existing connections and
//! local pushes keep working, each task reconnects with back-off and recovers on its own, and the
//! state is visible in `websocket_gateway_dependency_up{service}` and `/ready` (not ready while
//! the session directory is unreachable, so load balancers prefer nodes that can be found).
//!
//! These adapters sit below the domain: they speak in pushes ([`crate::push::PushSink`]),
//! backend maps and directory events, and never import the router, the upstream or the
//! downstream. The node wires them together (`node/cluster.rs`). Each constructor returns the
//! service and the task the node spawns and awaits. Must never be awaited on a connection's frame
//! path: the connection layer only calls the non-blocking
//! [`SessionDirectory::connected`] and [`SessionDirectory::disconnected`].

pub mod directory;
pub mod discovery;
pub mod kafka;
pub mod registry;

use std::net::SocketAddr;

use crate::config::ClusterConfig;

pub use directory::{
    DirectoryError, DirectoryEvent, Inbox, InboxPush, LocalDirectory, RedisDirectory, Route,
    SessionDirectory, SessionEntry, SessionQuery, UpstreamClaim,
};
pub use kafka::{KafkaPush, PresenceAction};
pub use registry::{NodeEntry, NodeRegistry};

/// Where clients and peers reach this node.
#[derive(Clone, Debug)]
pub struct Advertised {
    pub host: String,
    pub ws_port: u16,
    pub grpc_port: u16,
    pub governor_port: u16,
    /// The gRPC port serves TLS: peers and tools reach it at `https://host:port`.
    pub grpc_tls: bool,
}

impl Advertised {
    /// The advertised host of `config` for listeners bound at `ws` and `grpc`.
    pub fn new(
        config: &ClusterConfig,
        ws: SocketAddr,
        grpc: SocketAddr,
        governor: SocketAddr,
    ) -> Self {
        let host = config.advertised_host(ws);
        let (ws_port, grpc_port, governor_port) = (ws.port(), grpc.port(), governor.port());
        Self { host, ws_port, grpc_port, governor_port, grpc_tls: false }
    }

    pub fn ws(&self) -> String {
        format!("{}:{}", self.host, self.ws_port)
    }

    /// Where peers call this node: `host:port`, or `https://host:port` over TLS.
    pub fn grpc(&self) -> String {
        match self.grpc_tls {
            true => format!("https://{}:{}", self.host, self.grpc_port),
            false => format!("{}:{}", self.host, self.grpc_port),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    #[test]
    fn the_advertised_host_is_configured_or_derived_from_the_listen_address() {
        let mut c = ClusterConfig::default();
        let at =
            Advertised::new(&c, addr("10.1.2.3:9002"), addr("0.0.0.0:9004"), addr("0.0.0.0:9003"));
        assert_eq!((at.ws(), at.grpc()), ("10.1.2.3:9002".into(), "10.1.2.3:9004".into()));
        let at =
            Advertised::new(&c, addr("0.0.0.0:9002"), addr("0.0.0.0:9004"), addr("0.0.0.0:9003"));
        assert_eq!(at.ws(), "127.0.0.1:9002", "unspecified listen: loopback");
        c.advertise_host = "gw-1.example.com".into();
        let at =
            Advertised::new(&c, addr("0.0.0.0:9002"), addr("0.0.0.0:9004"), addr("0.0.0.0:9003"));
        assert_eq!(at.grpc(), "gw-1.example.com:9004");
    }
}
