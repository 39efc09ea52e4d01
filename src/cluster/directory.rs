//! The session directory: which node holds which connections of which user, and (in cluster
//! mode) each user's inbox: every accepted push they have not acknowledged yet.
//!
//! [`SessionDirectory`] is what the rest of the node sees. Two implementations:
//! [`RedisDirectory`] shares one directory between the nodes of a cluster (keys, scripts and
//! failure handling are documented in `directory/redis.rs`); [`LocalDirectory`], the in-memory
//! twin, serves a single node from its own links and keeps no inbox. Both report what the
//! connection path cannot wait for — presence changes and pushes found in an inbox — as
//! [`DirectoryEvent`]s on a bounded channel that the node drains.
//!
//! Owns: answering "where is this user" and recording arrivals and departures. Must never be
//! awaited on a connection's frame path: `connected` and `disconnected` only enqueue.

mod redis;

use std::{future::Future, pin::Pin, sync::Arc, time::UNIX_EPOCH};

use tokio::sync::mpsc;

use crate::{
    auth::Identity,
    links::{Link, LinkRegistry},
    protocol::pb::PushMessage,
    telemetry::{ClusterEvent, Metrics},
};

#[cfg(feature = "fuzzing")]
pub(crate) use redis::fuzz_replies;
pub use redis::{DirectorySettings, Redis, RedisAuth, RedisDirectory};

/// A boxed future of a directory call (the trait is used as `dyn`).
pub type DirectoryFuture<'a, T> =
    Pin<Box<dyn Future<Output = Result<T, DirectoryError>> + Send + 'a>>;

/// A failure of the directory's store.
#[derive(Debug, thiserror::Error)]
#[error("session directory (redis): {0}")]
pub struct DirectoryError(#[from] ::redis::RedisError);

/// Where a push must go. A directory that keeps inboxes has recorded the push in its receiver's
/// inbox either way (until acknowledged, see [`SessionDirectory::acked`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// Live nodes holding the receiver: (node id, gRPC address).
    Nodes(Vec<(String, String)>),
    /// Nobody holds the receiver; the push waits in their inbox.
    Stored,
}

/// One connection as the directory knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionEntry {
    pub node: String,
    pub conn: u64,
    pub biz_id: i64,
    pub user_id: i64,
    pub since_ms: u64,
    pub remote: String,
}

/// Which sessions to list.
#[derive(Clone, Copy, Debug)]
pub enum SessionQuery {
    User(Identity),
    Biz(i64),
    All,
}

impl SessionQuery {
    fn matches(self, who: Identity) -> bool {
        match self {
            Self::User(id) => id == who,
            Self::Biz(b) => b == who.biz_id,
            Self::All => true,
        }
    }
}

/// What the directory learned that others act on.
#[derive(Debug, PartialEq)]
pub enum DirectoryEvent {
    /// The user's first connection (cluster-wide when the directory is shared).
    Online(Identity),
    /// The user's last connection went away.
    Offline(Identity),
    /// The pushes in the user's inbox (unacknowledged), found when they connected (or when this
    /// node rebuilt its directory entries): deliver them to the user's connections here. They
    /// stay in the inbox until acknowledged ([`SessionDirectory::acked`]).
    Inbox(Inbox),
}

/// Who handles an upstream message (user, key) across the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpstreamClaim {
    /// Nobody did within the window: this node calls the backend, then records the answer.
    Owned,
    /// Another node's backend call is in flight: wait for its answer.
    InFlight,
    /// Answered within the window: the backend's `OnReceiveResponse`, protobuf-encoded.
    Answered(bytes::Bytes),
    /// This directory keeps no cluster-wide record (single node): call, and record nothing.
    Unshared,
}

/// A user's inbox as read from the directory, oldest first.
#[derive(Debug, PartialEq)]
pub struct Inbox {
    pub who: Identity,
    pub pushes: Vec<InboxPush>,
}

/// One inbox entry: its push key and the push (`None`: unreadable, to be removed without
/// delivery).
#[derive(Debug, PartialEq)]
pub struct InboxPush {
    pub key: String,
    pub msg: Option<PushMessage>,
}

impl Inbox {
    /// Reads `who`'s inbox from `[key, JSON, key, JSON, …]` (a dangling key is skipped).
    pub fn read(who: Identity, flat: Vec<String>) -> Self {
        let mut pushes = Vec::with_capacity(flat.len() / 2);
        let mut it = flat.into_iter();
        while let (Some(key), Some(json)) = (it.next(), it.next()) {
            pushes.push(InboxPush { msg: serde_json::from_str(&json).ok(), key });
        }
        Self { who, pushes }
    }
}

/// The session directory of one node.
pub trait SessionDirectory: Send + Sync {
    /// Queues "link is up" (`first`: the user's first on this node). Never waits.
    fn connected(&self, link: &Arc<Link>, first: bool);

    /// Queues "link is down" (`last`: it was the user's last on this node). Never waits.
    fn disconnected(&self, link: &Arc<Link>, last: bool);

    /// The live nodes holding the receiver of `msg`. A directory that keeps inboxes records
    /// `msg` in its receiver's inbox first (atomically with the lookup): from then on it is
    /// delivered on each of the user's connects, anywhere, until acknowledged or dropped. `msg`
    /// must have its key.
    fn route<'a>(&'a self, msg: &'a PushMessage) -> DirectoryFuture<'a, Route>;

    /// [`SessionDirectory::route`] for several pushes in one round trip (a Kafka batch): their
    /// routes in order. An error fails them all (some may have been recorded: a retry records
    /// nothing twice, the inbox is keyed by push key).
    fn route_many<'a>(&'a self, msgs: &'a [PushMessage]) -> DirectoryFuture<'a, Vec<Route>>;

    /// Records `msg` in its receiver's inbox without a lookup. `false`: this directory keeps no
    /// inbox.
    fn store<'a>(&'a self, msg: &'a PushMessage) -> DirectoryFuture<'a, bool>;

    /// Whether pushes are recorded in inboxes that outlive this node (cluster mode): then a push
    /// is done only when acknowledged, on any node.
    fn keeps_inboxes(&self) -> bool;

    /// Queues "`who` acknowledged `key`" (or it cannot be read): it leaves their inbox. Never
    /// waits.
    fn acked(&self, who: Identity, key: String);

    /// The sessions matching `query`, ordered by node and connection.
    fn sessions(&self, query: SessionQuery) -> DirectoryFuture<'_, Vec<SessionEntry>>;

    /// Claims (user, key) of an upstream message for this node for `window`, or says who has
    /// it (cluster-wide dedup; a single node's own cache is all there is: `Unshared`).
    fn claim_upstream<'a>(
        &'a self,
        who: Identity,
        key: &'a str,
        window: std::time::Duration,
    ) -> DirectoryFuture<'a, UpstreamClaim>;

    /// Records the backend's answer to a claimed message (protobuf-encoded), or releases the
    /// claim when the call failed (`None`) so that a retry may call again.
    fn settle_upstream<'a>(
        &'a self,
        who: Identity,
        key: &'a str,
        answer: Option<bytes::Bytes>,
        window: std::time::Duration,
    ) -> DirectoryFuture<'a, ()>;

    /// Whether the directory counts as usable for readiness (Redis: debounced, see
    /// `redis/health.rs`; one failed round trip does not make a node unready).
    fn healthy(&self) -> bool;
}

/// The single-node directory: this node's links are the whole truth. No inbox: a push for a user
/// who is not here is reported as not connected.
pub struct LocalDirectory {
    node_id: String,
    links: Arc<LinkRegistry>,
    /// Presence events go here; `None` when nobody consumes them (no Kafka presence topic), so
    /// a connect costs nothing extra.
    events: Option<mpsc::Sender<DirectoryEvent>>,
    metrics: Arc<Metrics>,
}

impl LocalDirectory {
    pub fn new(
        node_id: String,
        links: Arc<LinkRegistry>,
        metrics: Arc<Metrics>,
        events: Option<mpsc::Sender<DirectoryEvent>>,
    ) -> Self {
        Self { node_id, links, events, metrics }
    }

    fn event(&self, event: DirectoryEvent) {
        let Some(events) = &self.events else { return };
        if events.try_send(event).is_err() {
            self.metrics.cluster_event(ClusterEvent::PresenceDropped);
        }
    }
}

impl SessionDirectory for LocalDirectory {
    fn connected(&self, link: &Arc<Link>, first: bool) {
        if first {
            self.event(DirectoryEvent::Online(link.identity));
        }
    }

    fn disconnected(&self, link: &Arc<Link>, last: bool) {
        if last {
            self.event(DirectoryEvent::Offline(link.identity));
        }
    }

    fn route<'a>(&'a self, _: &'a PushMessage) -> DirectoryFuture<'a, Route> {
        let here = Route::Nodes(vec![(self.node_id.clone(), String::new())]);
        Box::pin(std::future::ready(Ok(here)))
    }

    fn route_many<'a>(&'a self, msgs: &'a [PushMessage]) -> DirectoryFuture<'a, Vec<Route>> {
        let here = || Route::Nodes(vec![(self.node_id.clone(), String::new())]);
        Box::pin(std::future::ready(Ok(msgs.iter().map(|_| here()).collect())))
    }

    fn store<'a>(&'a self, _: &'a PushMessage) -> DirectoryFuture<'a, bool> {
        Box::pin(std::future::ready(Ok(false)))
    }

    fn sessions(&self, query: SessionQuery) -> DirectoryFuture<'_, Vec<SessionEntry>> {
        let mut links: Vec<Arc<Link>> =
            self.links.all().into_iter().filter(|l| query.matches(l.identity)).collect();
        links.sort_by_key(|l| l.id);
        let entries = links.iter().map(|l| entry(&self.node_id, l)).collect();
        Box::pin(std::future::ready(Ok(entries)))
    }

    fn keeps_inboxes(&self) -> bool {
        false
    }

    fn acked(&self, _: Identity, _: String) {}

    fn claim_upstream<'a>(
        &'a self,
        _: Identity,
        _: &'a str,
        _: std::time::Duration,
    ) -> DirectoryFuture<'a, UpstreamClaim> {
        Box::pin(std::future::ready(Ok(UpstreamClaim::Unshared)))
    }

    fn settle_upstream<'a>(
        &'a self,
        _: Identity,
        _: &'a str,
        _: Option<bytes::Bytes>,
        _: std::time::Duration,
    ) -> DirectoryFuture<'a, ()> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn healthy(&self) -> bool {
        true
    }
}

fn entry(node: &str, l: &Link) -> SessionEntry {
    SessionEntry {
        node: node.to_owned(),
        conn: l.id,
        biz_id: l.identity.biz_id,
        user_id: l.identity.user_id,
        since_ms: l.connected_at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
        remote: l.remote.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> (LocalDirectory, Arc<LinkRegistry>, mpsc::Receiver<DirectoryEvent>) {
        let links = Arc::new(LinkRegistry::new(100));
        let (tx, rx) = mpsc::channel(8);
        let dir =
            LocalDirectory::new("n1".into(), links.clone(), Arc::new(Metrics::new()), Some(tx));
        (dir, links, rx)
    }

    fn who(biz_id: i64, user_id: i64) -> Identity {
        Identity { biz_id, user_id }
    }

    #[tokio::test]
    async fn the_local_directory_routes_here_keeps_no_inbox_and_lists_its_links() {
        let (dir, links, mut events) = local();
        let addr = "127.0.0.1:1".parse().expect("addr");
        let (a, first) = links.insert(who(9, 1), addr, 1024);
        dir.connected(&a, first);
        let (b, first) = links.insert(who(9, 1), addr, 1024);
        dir.connected(&b, first);
        let (_c, _) = links.insert(who(8, 2), addr, 1024);
        assert_eq!(events.try_recv().ok(), Some(DirectoryEvent::Online(who(9, 1))));
        assert!(events.try_recv().is_err(), "the second connection is not a presence change");

        let msg = PushMessage { biz_id: 9, receiver_id: 1, ..Default::default() };
        let here = Route::Nodes(vec![("n1".into(), "".into())]);
        assert_eq!(dir.route(&msg).await.ok(), Some(here));
        let two = dir.route_many(&[msg.clone(), msg.clone()]).await.expect("no error");
        assert_eq!(two.len(), 2, "one route per push");
        assert!(!dir.store(&msg).await.expect("no error"), "no inbox");

        let user = dir.sessions(SessionQuery::User(who(9, 1))).await.expect("sessions");
        assert_eq!(user.iter().map(|e| e.conn).collect::<Vec<_>>(), [a.id, b.id]);
        assert_eq!(dir.sessions(SessionQuery::Biz(8)).await.expect("biz").len(), 1);
        assert_eq!(dir.sessions(SessionQuery::All).await.expect("all").len(), 3);

        let last = links.remove(&a);
        dir.disconnected(&a, last);
        assert!(events.try_recv().is_err());
        let last = links.remove(&b);
        dir.disconnected(&b, last);
        assert_eq!(events.try_recv().ok(), Some(DirectoryEvent::Offline(who(9, 1))));
    }
}
