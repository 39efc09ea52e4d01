//! Routing a push to the node(s) that hold its receiver, wherever it entered the cluster (gRPC
//! `PushService`, `wsgw push`, Kafka, an offline inbox).
//!
//! Owns: the decision where a push goes and the node-to-node calls. Without a session directory
//! (single node) every push is local. With one, the directory names the live nodes holding the
//! receiver; this node delivers its own share directly and calls `NodeService.Deliver` on the
//! others (batched per peer, see `peers`), so one push costs one lookup plus at most one call
//! per node that holds the user, never a call per node of the cluster. A receiver nobody holds
//! gets the push in their offline inbox (atomically with the lookup); so does one whose node
//! could not be reached. Must never retry on its own: callers (Kafka, the gRPC API) decide,
//! because only they know whether to wait.

pub mod api;
mod peers;

use std::sync::Arc;

use futures_util::future::join_all;

use crate::{
    cluster::{Directory, Route},
    downstream::{Downstream, PushError},
    protocol::pb::PushMessage,
    telemetry::Metrics,
};

pub use crate::protocol::cluster_pb::{
    DeliverRequest, DeliverResponse, node_service_client::NodeServiceClient,
};

/// What became of a routed push.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Routed {
    /// Connections it was handed to, on every node.
    pub connections: usize,
    /// Kept in the receiver's offline inbox (nobody held them, or a node could not be reached).
    pub stored: bool,
}

/// Why a push could not be routed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum RouteError {
    #[error(transparent)]
    Push(#[from] PushError),
    /// The directory is unreachable and the receiver is not on this node, or the push could
    /// neither be delivered nor stored. Retry later.
    #[error("cannot route the push now: {0}")]
    Unavailable(String),
}

/// Routes pushes for one node.
pub struct Router {
    node_id: String,
    downstream: Arc<Downstream>,
    directory: Option<Arc<Directory>>,
    peers: peers::Peers,
    metrics: Arc<Metrics>,
}

impl Router {
    pub fn new(
        node_id: String,
        downstream: Arc<Downstream>,
        directory: Option<Arc<Directory>>,
        token: &str,
        metrics: Arc<Metrics>,
    ) -> Self {
        let token = (!token.is_empty()).then(|| format!("Bearer {token}").parse().ok()).flatten();
        Self { node_id, downstream, directory, peers: peers::Peers::new(token), metrics }
    }

    /// Stops node-to-node delivery (the node's last step before its servers stop).
    pub async fn shutdown(&self) {
        self.peers.shutdown().await;
    }

    /// Hands `msg` to every connection of its receiver in the cluster, or stores it for them.
    pub async fn push(&self, msg: PushMessage) -> Result<Routed, RouteError> {
        if msg.biz_id <= 0 || msg.receiver_id <= 0 {
            return Err(PushError::Invalid.into());
        }
        let Some(directory) = &self.directory else {
            return Ok(Routed { connections: self.downstream.push(msg)?, stored: false });
        };
        let nodes = match directory.route(&msg).await {
            Ok(Route::Stored) => return Ok(Routed { connections: 0, stored: true }),
            Ok(Route::Nodes(nodes)) => nodes,
            Err(e) => return self.local_only(msg, e.to_string()),
        };
        let calls = nodes.iter().map(|(node, addr)| self.deliver_to(node, addr, msg.clone()));
        let results = join_all(calls).await;
        let mut connections = 0;
        let mut failed = false;
        for r in results {
            match r {
                Ok(n) => connections += n,
                Err(RouteError::Push(PushError::Overloaded(n))) if connections == 0 => {
                    return Err(PushError::Overloaded(n).into());
                }
                Err(_) => failed = true,
            }
        }
        if connections > 0 && !failed {
            return Ok(Routed { connections, stored: false });
        }
        // The directory was stale or a node failed: keep the push for the user's next connect.
        directory.store(&msg).await.map_err(|e| RouteError::Unavailable(e.to_string()))?;
        Ok(Routed { connections, stored: true })
    }

    /// The directory is down: deliver locally when the receiver is here, else fail.
    fn local_only(&self, msg: PushMessage, why: String) -> Result<Routed, RouteError> {
        match self.downstream.push(msg) {
            Ok(connections) => Ok(Routed { connections, stored: false }),
            Err(PushError::NotConnected { .. }) => Err(RouteError::Unavailable(why)),
            Err(e) => Err(e.into()),
        }
    }

    async fn deliver_to(
        &self,
        node: &str,
        addr: &str,
        msg: PushMessage,
    ) -> Result<usize, RouteError> {
        if node == self.node_id {
            return match self.downstream.push(msg) {
                Err(PushError::NotConnected { .. }) => Ok(0),
                other => other.map_err(RouteError::from),
            };
        }
        let result = self.peers.deliver(addr, msg).await;
        self.metrics.cluster_event("peer", if result.is_ok() { "delivered" } else { "failed" });
        result
    }

    /// Delivers pushes on this node only (the node-to-node entry point).
    pub fn deliver_local(&self, msgs: Vec<PushMessage>) -> Result<Vec<i32>, PushError> {
        msgs.into_iter()
            .map(|m| match self.downstream.push(m) {
                Ok(n) => Ok(i32::try_from(n).unwrap_or(i32::MAX)),
                Err(PushError::NotConnected { .. } | PushError::Invalid) => Ok(0),
                Err(e) => Err(e),
            })
            .collect()
    }
}
