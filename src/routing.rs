//! Routing a push to the node(s) that hold its receiver, wherever it entered the cluster (gRPC
//! `PushService`, `wsgw push`, Kafka, an offline inbox).
//!
//! Owns: the decision where a push goes and the node-to-node calls. The session directory names
//! the live nodes holding the receiver (a single node's in-memory directory names only itself); this node delivers its own share directly and calls `NodeService.Deliver` on the
//! others (batched per peer, see `peers`), so one push costs one lookup plus at most one call
//! per node that holds the user, never a call per node of the cluster. In cluster mode the
//! lookup first records the push in the receiver's inbox (one script): a receiver nobody holds,
//! or whose node could not be reached, finds it there on their next connection. The rules are
//! pure functions (`settle`, `outcome`), table-tested.
//! Must never retry on its own: callers (Kafka, the gRPC API) decide, because only they know
//! whether to wait. The router is the node's [`PushSink`].

pub mod api;
mod peers;
pub mod presence;

use std::sync::Arc;

use futures_util::future::join_all;

use crate::{
    cluster::{Route, SessionDirectory},
    downstream::Downstream,
    protocol::pb::PushMessage,
    push::{PushError, PushSink, RouteError, Routed},
    telemetry::{ClusterEvent, Metrics},
};

pub use crate::protocol::cluster_pb::{
    DeliverRequest, DeliverResponse, node_service_client::NodeServiceClient,
};
pub use peers::Peers;

/// Routes pushes for one node.
pub struct Router {
    node_id: String,
    downstream: Arc<Downstream>,
    directory: Arc<dyn SessionDirectory>,
    peers: Peers,
    metrics: Arc<Metrics>,
}

/// What the deliveries to the nodes a lookup named add up to.
#[derive(Debug, PartialEq, Eq)]
enum Settled {
    /// Every node took its share.
    Delivered(usize),
    /// Nobody took it and a node was overloaded: the caller should retry later.
    Overloaded(usize),
    /// The entry was stale (`failed` false: the user is not where the directory said), or a
    /// node that holds the user could not take it (`failed`).
    Store { connections: usize, failed: bool },
}

/// Adds up the per-node delivery results of one push. Order-independent.
fn settle(results: impl IntoIterator<Item = Result<usize, RouteError>>) -> Settled {
    let (mut connections, mut failed, mut overloaded) = (0, false, None);
    for r in results {
        match r {
            Ok(n) => connections += n,
            Err(RouteError::Push(PushError::Overloaded(n))) => overloaded = Some(n),
            Err(_) => failed = true,
        }
    }
    match overloaded {
        Some(n) if connections == 0 => Settled::Overloaded(n),
        _ if connections > 0 && !failed && overloaded.is_none() => Settled::Delivered(connections),
        _ => Settled::Store { connections, failed: failed || overloaded.is_some() },
    }
}

/// What the settled deliveries mean to the producer. `durable`: the push was recorded in its
/// receiver's inbox before delivery (cluster mode), so what no node took waits there.
fn outcome(settled: Settled, durable: bool, msg: &PushMessage) -> Result<Routed, RouteError> {
    match settled {
        Settled::Delivered(connections) => Ok(Routed { connections, stored: false }),
        Settled::Overloaded(n) => Err(PushError::Overloaded(n).into()),
        // Recorded, but a connection of the user did not get it and would not before they
        // reconnect: the producer tries again (a repeat is delivered once per key).
        Settled::Store { failed: true, .. } if durable => Err(RouteError::Unavailable(
            "kept in the user's inbox, but a node holding the user could not take it now".into(),
        )),
        Settled::Store { connections, .. } if durable => Ok(Routed { connections, stored: true }),
        Settled::Store { connections: 0, .. } => {
            Err(PushError::NotConnected { biz: msg.biz_id, user: msg.receiver_id }.into())
        }
        Settled::Store { connections, .. } => Ok(Routed { connections, stored: false }),
    }
}

impl Router {
    pub fn new(
        node_id: String,
        downstream: Arc<Downstream>,
        directory: Arc<dyn SessionDirectory>,
        peers: Peers,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self { node_id, downstream, directory, peers, metrics }
    }

    /// Hands `msg` to every connection of its receiver in the cluster. In cluster mode the
    /// directory records it in the receiver's inbox first: without that record (Redis down) the
    /// push is refused as `Unavailable`, never accepted unrecorded.
    pub async fn push(&self, msg: PushMessage) -> Result<Routed, RouteError> {
        self.downstream.admit(&msg)?;
        let msg = self.downstream.keyed(msg);
        match self.directory.route(&msg).await {
            Ok(route) => self.deliver(&msg, route).await,
            Err(e) => Err(RouteError::Unavailable(e.to_string())),
        }
    }

    /// [`Router::push`] for several pushes at once (a Kafka batch): one directory round trip for
    /// all of them, then each push's deliveries. Results in order; one push refused or failed
    /// never fails the others, except that a failed directory call fails every push it routed.
    pub async fn push_many(&self, msgs: Vec<PushMessage>) -> Vec<Result<Routed, RouteError>> {
        let mut results = Vec::with_capacity(msgs.len());
        let (mut admitted, mut at) = (Vec::with_capacity(msgs.len()), Vec::new());
        for msg in msgs {
            match self.downstream.admit(&msg) {
                Ok(()) => {
                    at.push(results.len());
                    admitted.push(self.downstream.keyed(msg));
                    results.push(Ok(Routed { connections: 0, stored: false }));
                }
                Err(e) => results.push(Err(e.into())),
            }
        }
        let routed = match self.directory.route_many(&admitted).await {
            Ok(routes) => {
                let each = admitted.iter().zip(routes).map(|(msg, r)| self.deliver(msg, r));
                join_all(each).await
            }
            Err(e) => {
                admitted.iter().map(|_| Err(RouteError::Unavailable(e.to_string()))).collect()
            }
        };
        for (i, r) in at.into_iter().zip(routed) {
            results[i] = r;
        }
        results
    }

    /// Delivers `msg` where the directory said (`route`).
    async fn deliver(&self, msg: &PushMessage, route: Route) -> Result<Routed, RouteError> {
        let nodes = match route {
            Route::Stored => return Ok(Routed { connections: 0, stored: true }),
            Route::Nodes(nodes) => nodes,
        };
        let calls = nodes.iter().map(|(node, addr)| self.deliver_to(node, addr, msg.clone()));
        outcome(settle(join_all(calls).await), self.directory.keeps_inboxes(), msg)
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
        self.metrics.cluster_event(match result {
            Ok(_) => ClusterEvent::PeerDelivered,
            Err(_) => ClusterEvent::PeerFailed,
        });
        result
    }

    /// Delivers one push (with its key) to its receiver's connections on this node only (an
    /// inbox found on connect).
    pub fn deliver_here(&self, msg: PushMessage) -> Result<usize, PushError> {
        self.downstream.push(msg)
    }

    /// Delivers pushes on this node only (the node-to-node entry point), each on its own: one
    /// push refused never fails the others.
    pub fn deliver_local(&self, msgs: Vec<PushMessage>) -> DeliverResponse {
        let mut answer = DeliverResponse {
            connections: Vec::with_capacity(msgs.len()),
            overloaded: Vec::with_capacity(msgs.len()),
        };
        for msg in msgs {
            let (n, overloaded) = match self.downstream.push(msg) {
                Ok(n) => (i32::try_from(n).unwrap_or(i32::MAX), false),
                Err(PushError::Overloaded(_)) => (0, true),
                Err(_) => (0, false),
            };
            answer.connections.push(n);
            answer.overloaded.push(overloaded);
        }
        answer
    }
}

impl PushSink for Router {
    fn push(&self, msg: PushMessage) -> impl Future<Output = Result<Routed, RouteError>> + Send {
        Router::push(self, msg)
    }

    fn push_many(
        &self,
        msgs: Vec<PushMessage>,
    ) -> impl Future<Output = Vec<Result<Routed, RouteError>>> + Send {
        Router::push_many(self, msgs)
    }

    async fn keep(&self, msg: PushMessage) -> Result<(), RouteError> {
        match self.directory.store(&msg).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(RouteError::Unavailable("this node keeps no inbox".into())),
            Err(e) => Err(RouteError::Unavailable(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use bytesize::ByteSize;
    use tokio_util::{sync::CancellationToken, task::TaskTracker};

    use super::*;
    use crate::{
        auth::Identity, cluster::LocalDirectory, config::DownstreamConfig, grpc::Bearer,
        links::LinkRegistry, protocol::Serializer, wire::Wire,
    };

    /// A single-node router over real in-memory parts, with user (9, 1) connected once.
    fn single_node(config: DownstreamConfig) -> (Router, Arc<LinkRegistry>) {
        let links = Arc::new(LinkRegistry::new(10));
        let metrics = Arc::new(Metrics::new());
        let wire = Arc::new(Wire::new(Serializer::Json, None, metrics.clone()));
        let stop = CancellationToken::new();
        let dir: Arc<dyn SessionDirectory> =
            Arc::new(LocalDirectory::new("n1".into(), links.clone(), metrics.clone(), None));
        let (downstream, _retries) = Downstream::new(
            config,
            links.clone(),
            wire,
            metrics.clone(),
            "n1".into(),
            crate::downstream::Fallback {
                directory: dir.clone(),
                dead_letters: None,
                receipts: None,
            },
            stop.clone(),
        );
        let addr = "127.0.0.1:1".parse().expect("addr");
        links.insert(Identity { biz_id: 9, user_id: 1 }, addr, 1 << 20);
        let tasks = TaskTracker::new();
        let peers = Peers::new(Bearer::default(), Default::default(), tasks, stop, metrics.clone());
        (Router::new("n1".into(), downstream, dir, peers, metrics), links)
    }

    fn push(key: &str, user: i64, body: &[u8]) -> PushMessage {
        PushMessage { key: key.into(), biz_id: 9, receiver_id: user, body: body.to_vec().into() }
    }

    #[test]
    fn node_to_node_deliveries_are_answered_per_push() {
        let (router, _links) =
            single_node(DownstreamConfig { max_pending: 1, ..Default::default() });
        let r = router.deliver_local(vec![
            push("c", 2, b"x"), // nobody here
            push("a", 1, b"x"),
            push("b", 1, b"x"), // over max_pending: refused on its own
            push("a", 1, b"x"), // already pending: delivered again
        ]);
        assert_eq!(r.connections, [0, 1, 0, 1]);
        assert_eq!(r.overloaded, [false, false, true, false]);
    }

    #[tokio::test]
    async fn a_single_node_delivers_here_refuses_the_absent_and_the_oversized() {
        let config = DownstreamConfig { max_push_size: ByteSize::b(16), ..Default::default() };
        let (router, _links) = single_node(config);
        let here = router.push(push("k1", 1, b"hi")).await;
        assert_eq!(here, Ok(Routed { connections: 1, stored: false }));
        let absent = router.push(push("k2", 2, b"hi")).await;
        assert_eq!(absent, Err(PushError::NotConnected { biz: 9, user: 2 }.into()));
        let big = router.push(push("k3", 1, &[0; 15])).await;
        assert_eq!(big, Err(PushError::TooLarge { size: 17, max: 16 }.into()), "key counts too");
        let invalid = router.push(push("k4", 0, b"hi")).await;
        assert_eq!(invalid, Err(PushError::Invalid.into()));
    }

    #[tokio::test]
    async fn a_batch_is_answered_per_push_in_order() {
        let config = DownstreamConfig { max_push_size: ByteSize::b(16), ..Default::default() };
        let (router, _links) = single_node(config);
        let batch = vec![
            push("k1", 0, b"hi"),
            push("k2", 1, b"hi"),
            push("k3", 2, b"hi"),
            push("k4", 1, &[0; 15]),
            push("k5", 1, b"again"),
        ];
        let r = router.push_many(batch).await;
        assert_eq!(
            r,
            [
                Err(PushError::Invalid.into()),
                Ok(Routed { connections: 1, stored: false }),
                Err(PushError::NotConnected { biz: 9, user: 2 }.into()),
                Err(PushError::TooLarge { size: 17, max: 16 }.into()),
                Ok(Routed { connections: 1, stored: false }),
            ],
            "one refused push never fails the others"
        );
        assert!(router.push_many(Vec::new()).await.is_empty());
    }

    fn unavailable() -> Result<usize, RouteError> {
        Err(RouteError::Unavailable("peer down".into()))
    }

    fn overloaded() -> Result<usize, RouteError> {
        Err(PushError::Overloaded(7).into())
    }

    #[test]
    fn per_node_results_settle_into_delivered_store_or_retry() {
        use Settled::*;
        type Results = Vec<Result<usize, RouteError>>;
        let cases: Vec<(&str, Results, Settled)> = vec![
            ("every node delivered", vec![Ok(2), Ok(1)], Delivered(3)),
            (
                "stale entry: the node no longer holds the user",
                vec![Ok(0)],
                Store { connections: 0, failed: false },
            ),
            ("stale entry on one of two nodes", vec![Ok(0), Ok(2)], Delivered(2)),
            ("a peer failed", vec![Ok(1), unavailable()], Store { connections: 1, failed: true }),
            ("only peer failed", vec![unavailable()], Store { connections: 0, failed: true }),
            ("peer overloaded, nobody took it", vec![overloaded()], Overloaded(7)),
            ("overloaded and failed", vec![unavailable(), overloaded()], Overloaded(7)),
            (
                "overloaded after a delivery",
                vec![Ok(1), overloaded()],
                Store { connections: 1, failed: true },
            ),
            (
                "overloaded before a delivery",
                vec![overloaded(), Ok(1)],
                Store { connections: 1, failed: true },
            ),
            ("no node at all", vec![], Store { connections: 0, failed: false }),
        ];
        for (what, results, want) in cases {
            assert_eq!(settle(results), want, "{what}");
        }
    }

    #[test]
    fn what_no_node_took_waits_in_the_inbox_and_a_failed_node_means_retry() {
        let msg = push("k", 2, b"x");
        let store = |connections, failed| Settled::Store { connections, failed };
        let retry = "kept in the user's inbox, but a node holding the user could not take it now";
        let retry = retry.to_owned();
        let cases = [
            (Settled::Delivered(2), true, Ok(Routed { connections: 2, stored: false })),
            (Settled::Overloaded(3), true, Err(PushError::Overloaded(3).into())),
            (store(1, false), true, Ok(Routed { connections: 1, stored: true })),
            (store(0, false), true, Ok(Routed { connections: 0, stored: true })),
            (store(1, true), true, Err(RouteError::Unavailable(retry.clone()))),
            (store(0, true), true, Err(RouteError::Unavailable(retry.clone()))),
            (store(0, false), false, Err(PushError::NotConnected { biz: 9, user: 2 }.into())),
            (store(1, false), false, Ok(Routed { connections: 1, stored: false })),
        ];
        for (settled, durable, want) in cases {
            let what = format!("{settled:?}, durable {durable}");
            assert_eq!(outcome(settled, durable, &msg), want, "{what}");
        }
    }
}
