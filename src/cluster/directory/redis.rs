//! The session directory and the users' inboxes in Redis, shared by the nodes of a cluster:
//! which node holds which connections of which user, and every accepted push a user has not
//! acknowledged yet.
//!
//! Keys (all under `cluster.redis.prefix`, default `wsgw:`; `{biz:user}` is a Redis Cluster hash
//! tag, so every script touches one slot per user):
//!
//! | key | type | content |
//! |---|---|---|
//! | `node:{node}` | string, TTL `session_ttl` | `{"grpc":"host:port","ws":"host:port"}`; exists while the node lives |
//! | `nodes` | set | every node id that registered (the sweep's work list) |
//! | `user:{biz:user}` | hash | `{node}\|{conn}` → connected-at (ms) |
//! | `conns:{node}` | hash, TTL `session_ttl` | `{conn}` → `{biz}:{user}:{since_ms}:{remote}` |
//! | `users:{node}` | set | `{biz}:{user}` with a connection on the node (the sweep's index) |
//! | `inbox:{biz:user}` | hash, TTL 2 × `inbox_ttl` | push key → push (JSON): the user's unacknowledged pushes |
//! | `inbox-order:{biz:user}` | sorted set, same TTL | push key by acceptance (Redis time ms × 1000 + sequence) |
//! | `inbox-meta:{biz:user}` | hash, same TTL | `bytes` (sum of the JSON), `seq` |
//! | `up:{biz:user}:{key}` | string, TTL `upstream.dedup_window` | `c` while a node calls the backend for this upstream message; then `a` + the backend's `OnReceiveResponse` (protobuf) |
//!
//! A node refreshes `node:{node}` every `session_ttl / 3`. Readers only trust entries of live
//! nodes, so a node that dies stops receiving pushes after one TTL; its entries are then removed by
//! the surviving nodes (the sweep), which also reports its users OFFLINE when they have no
//! connection left anywhere, so nothing stale stays forever. When the refresh finds its key gone
//! (Redis restarted, or the node was cut off for longer than the TTL), or an update was lost, the
//! node writes its whole part of the directory again from its live connections and delivers the
//! inboxes of its users.
//!
//! **Redis Cluster** (`cluster.redis.url` listing several seed nodes, or `cluster: true`): every
//! script touches only its user's slot (`{biz:user}`); the node's own tables (`conns:`, `users:`)
//! are written beside the scripts as separate commands, and which nodes live is a table this node
//! reads on every refresh (`redis/nodes.rs`) rather than a read inside ROUTE. A batch of updates
//! writes the node's table entries of new connections first, then the scripts, then removes the
//! table entries of departed connections (`replies::build`; on a cluster the three groups go one
//! after the other, `redis/conn.rs`), so a crash in between never leaves a user's field that the
//! sweep of the dead node cannot find.
//!
//! The inbox is the durable record of delivery. ROUTE records a push (atomically with the
//! lookup of the user's nodes) before anyone delivers it or tells the producer "accepted"; a
//! push already there under the same key keeps its place. Every CONNECT returns the inbox, oldest
//! first, and the connecting node delivers it to that user's connections; entries leave only when
//! a DOWNSTREAM_ACK for their key arrives on any node (ACK, written by the writer like connects),
//! when they are older than `inbox_ttl` (counted `inbox_expired`) or pushed out by the bounds
//! `inbox_max` / `inbox_max_bytes` (counted `inbox_overflow`). So a push survives the node that
//! accepted or delivered it: a drain, a SIGKILL, a user who moves to another node.
//!
//! Owns: every read and write of these keys. Updates from the connection path (connects,
//! disconnects, acks) are queued without waiting (bounded by `cluster.redis.queue`) and written
//! in pipelines by one task; a lost update marks the directory for a rebuild (a lost ack only
//! means one more delivery). Routing and recording are single Lua scripts, so a push that finds a
//! user offline and the user's arrival cannot miss each other. Must never be awaited on a
//! connection's frame path.
//!
//! Key names, the writer's pipeline and the meaning of the scripts' replies are pure functions in
//! `redis/replies.rs`, table-tested without Redis; the Lua scripts are in `redis/scripts.rs`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use redis::AsyncCommands;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{
    DirectoryError, DirectoryEvent, DirectoryFuture, Inbox, Route, SessionDirectory, SessionEntry,
    SessionQuery, UpstreamClaim,
};
use crate::{
    auth::Identity,
    links::{Link, LinkRegistry},
    protocol::pb::PushMessage,
    telemetry::{ClusterEvent, Dependency, Metrics},
};

mod conn;
mod health;
mod nodes;
mod replies;
mod scripts;
mod sessions;
mod upkeep;

pub use conn::{Redis, RedisAuth};
use nodes::NodeTable;

use replies::{
    Dropped, Keys, Update, build, conn_value, interpret, millis, parse_claim, parse_inbox,
    parse_route, parse_store, parse_user,
};

/// The Redis session directory of one node.
pub struct RedisDirectory {
    redis: Redis,
    nodes: NodeTable,
    keys: Keys,
    node_id: String,
    node_value: String,
    ttl: Duration,
    inbox_max: u32,
    inbox_max_bytes: u64,
    inbox_ttl: Duration,
    updates: mpsc::Sender<Update>,
    healthy: AtomicBool,
    health: health::Health,
    rebuild: AtomicBool,
    metrics: Arc<Metrics>,
}

/// Where the directory lives and how this node appears in it.
pub struct DirectorySettings {
    /// One Redis: its URL; a Redis Cluster: seed nodes.
    pub urls: Vec<String>,
    pub cluster: bool,
    /// TLS files and ACL user.
    pub auth: RedisAuth,
    pub prefix: String,
    pub node_id: String,
    pub grpc: String,
    pub ws: String,
    pub ttl: Duration,
    pub inbox_max: u32,
    pub inbox_max_bytes: u64,
    pub inbox_ttl: Duration,
    pub queue: usize,
}

/// The writer task of a [`RedisDirectory`] (see [`RedisDirectory::new`]).
pub type DirectoryTask = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

impl RedisDirectory {
    /// The directory (connecting nothing yet) and its writer task, which the caller spawns and
    /// awaits: it writes queued updates, refreshes this node's entry, sweeps dead nodes and
    /// reports [`DirectoryEvent`]s on `events` until `stop`, then removes this node's entries.
    pub fn new(
        s: DirectorySettings,
        links: Arc<LinkRegistry>,
        events: mpsc::Sender<DirectoryEvent>,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) -> Result<(Arc<Self>, DirectoryTask), DirectoryError> {
        let redis = Redis::open_with(&s.urls, s.cluster, &s.auth)?;
        let (updates, rx) = mpsc::channel(s.queue);
        let node_value = serde_json::json!({ "grpc": s.grpc, "ws": s.ws }).to_string();
        let dir = Arc::new(Self {
            redis,
            nodes: NodeTable::default(),
            keys: Keys { prefix: s.prefix, node: s.node_id.clone() },
            node_id: s.node_id,
            node_value,
            ttl: s.ttl,
            inbox_max: s.inbox_max,
            inbox_max_bytes: s.inbox_max_bytes,
            inbox_ttl: s.inbox_ttl,
            updates,
            healthy: AtomicBool::new(false),
            health: health::Health::new(),
            rebuild: AtomicBool::new(true),
            metrics,
        });
        let task = Box::pin(dir.clone().run(rx, links, events, stop));
        Ok((dir, task))
    }

    fn observe<T>(&self, r: redis::RedisResult<T>) -> Result<T, DirectoryError> {
        let ok = r.is_ok();
        self.health.record(ok, std::time::Instant::now());
        if self.healthy.swap(ok, Ordering::Relaxed) != ok {
            self.metrics.dependency(Dependency::Redis, ok);
            match &r {
                Ok(_) => info!("session directory (redis) reachable"),
                Err(e) => warn!(error = %e, "session directory (redis) unreachable"),
            }
        }
        if !ok {
            self.metrics.cluster_event(ClusterEvent::RedisError);
        }
        r.map_err(DirectoryError::from)
    }

    /// Queues `update`; when the queue is full a lost connect or disconnect marks the directory
    /// for a rebuild, while a lost ack only means one more delivery of that push.
    fn enqueue(&self, update: Update) {
        if let Err(e) = self.updates.try_send(update) {
            self.metrics.cluster_event(ClusterEvent::UpdateDropped);
            if !matches!(e.into_inner(), Update::Acked(..)) {
                self.rebuild.store(true, Ordering::Relaxed);
            }
        }
    }

    async fn route(&self, msg: &PushMessage) -> Result<Route, DirectoryError> {
        let mut routes = self.route_many(std::slice::from_ref(msg)).await?;
        routes.pop().ok_or_else(|| DirectoryError(std::io::Error::other("no ROUTE reply").into()))
    }

    /// Routes `msgs` with one ROUTE script each, sent together: one pipeline on one Redis, one
    /// command per slot at once on a cluster (see `conn.rs`).
    async fn route_many(&self, msgs: &[PushMessage]) -> Result<Vec<Route>, DirectoryError> {
        if msgs.is_empty() {
            return Ok(Vec::new());
        }
        let mut batch = conn::Batch::new();
        for msg in msgs {
            let id = Identity { biz_id: msg.biz_id, user_id: msg.receiver_id };
            let mut call = scripts::ROUTE.key(self.keys.user(id));
            call.key(&self.keys.inbox(id));
            self.record_args(&mut call, msg);
            batch.script(&call);
        }
        let mut r: redis::RedisResult<Vec<Vec<String>>> = self.redis.run(&batch).await;
        if r.as_ref().is_err_and(is_noscript) {
            r = match scripts::ROUTE.prepare_invoke().load_async(&mut self.redis.clone()).await {
                Ok(_) => self.redis.run(&batch).await,
                Err(e) => Err(e),
            };
        }
        let replies = self.observe(r)?;
        if replies.len() != msgs.len() {
            let e = std::io::Error::other("ROUTE pipeline: one reply per push expected");
            return Err(DirectoryError(e.into()));
        }
        let mut routes = Vec::with_capacity(msgs.len());
        for (msg, reply) in msgs.iter().zip(replies) {
            let (nodes, dropped) = parse_route(reply);
            self.recorded(msg, dropped);
            routes.push(self.resolve(nodes).await?);
        }
        Ok(routes)
    }

    /// The arguments of an inbox record (see `scripts.rs`): key, JSON, bounds, TTL.
    fn record_args(&self, call: &mut redis::ScriptInvocation<'_>, msg: &PushMessage) {
        call.arg(&msg.key)
            .arg(serde_json::to_string(msg).unwrap_or_default())
            .arg(self.inbox_max)
            .arg(self.inbox_ttl.as_millis() as u64)
            .arg(self.inbox_max_bytes);
    }

    /// Counts `msg` recorded in its receiver's inbox and what the record pushed out or expired.
    fn recorded(&self, msg: &PushMessage, dropped: Dropped) {
        self.metrics.cluster_event(ClusterEvent::InboxStored);
        let (biz, user) = (msg.biz_id, msg.receiver_id);
        if dropped.overflow > 0 {
            self.metrics.cluster_events(ClusterEvent::InboxOverflow, dropped.overflow);
            warn!(biz, user, dropped = dropped.overflow, "inbox full: oldest pushes dropped");
        }
        self.expired(biz, user, dropped.expired);
    }

    /// Counts and logs inbox entries that were older than `inbox_ttl`.
    fn expired(&self, biz: i64, user: i64, n: u64) {
        if n > 0 {
            self.metrics.cluster_events(ClusterEvent::InboxExpired, n);
            warn!(biz, user, expired = n, "unacknowledged pushes older than inbox_ttl dropped");
        }
    }

    async fn store(&self, msg: &PushMessage) -> Result<(), DirectoryError> {
        let id = Identity { biz_id: msg.biz_id, user_id: msg.receiver_id };
        let mut call = scripts::STORE.key(&self.keys.inbox(id));
        self.record_args(&mut call, msg);
        let r: redis::RedisResult<Vec<String>> = call.invoke_async(&mut self.redis.clone()).await;
        let flat = self.observe(r)?;
        self.recorded(msg, parse_store(&flat));
        Ok(())
    }

    /// Writes queued updates, refreshes this node's entry and sweeps dead nodes until `stop`.
    async fn run(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<Update>,
        links: Arc<LinkRegistry>,
        events: mpsc::Sender<DirectoryEvent>,
        stop: CancellationToken,
    ) {
        let mut refresh = tokio::time::interval(self.ttl / 3);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::with_capacity(PIPELINE);
        let mut sweeps = 0u32;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                n = rx.recv_many(&mut batch, PIPELINE) => {
                    if n == 0 { break }
                    self.write(&mut batch, &events).await;
                }
                _ = refresh.tick() => {
                    self.refresh(&links, &events).await;
                    sweeps += 1;
                    if sweeps.is_multiple_of(3) {
                        let _ = self.sweep_dead(&events).await;
                    }
                }
            }
        }
        // Leaving: write what is queued, then remove this node's entries.
        rx.close();
        while rx.recv_many(&mut batch, PIPELINE).await > 0 {
            self.write(&mut batch, &events).await;
        }
        if let Err(e) = self.leave().await {
            warn!(error = %e, "could not remove this node from the session directory");
        }
    }

    async fn write(&self, batch: &mut Vec<Update>, events: &mpsc::Sender<DirectoryEvent>) {
        let pipe = build(&self.keys, batch, self.inbox_ttl.as_millis() as u64);
        let mut r: redis::RedisResult<Vec<Vec<String>>> = self.redis.run(&pipe).await;
        if r.as_ref().is_err_and(is_noscript) {
            // A fresh or restarted Redis: load the scripts and try once more.
            let loaded = load_scripts(&mut self.redis.clone()).await;
            r = match loaded {
                Ok(()) => self.redis.run(&pipe).await,
                Err(e) => Err(e),
            };
        }
        let replies = self.observe(r).ok();
        if replies.is_none() {
            self.rebuild.store(true, Ordering::Relaxed);
        }
        let (found, expired) = interpret(batch.drain(..), replies);
        if expired > 0 {
            self.metrics.cluster_events(ClusterEvent::InboxExpired, expired);
            warn!(expired, "unacknowledged pushes older than inbox_ttl dropped on connect");
        }
        for event in found {
            self.emit(event, events).await;
        }
    }

    /// Hands `event` on: inbox pushes wait for room (they must not be lost), presence changes
    /// never wait.
    async fn emit(&self, event: DirectoryEvent, events: &mpsc::Sender<DirectoryEvent>) {
        match event {
            DirectoryEvent::Inbox(inbox) => {
                let n = inbox.pushes.len() as u64;
                self.metrics.cluster_events(ClusterEvent::InboxDelivered, n);
                let _ = events.send(DirectoryEvent::Inbox(inbox)).await;
            }
            presence => {
                let _ = events.try_send(presence);
            }
        }
    }

    async fn claim_upstream(
        &self,
        who: Identity,
        key: &str,
        window: Duration,
    ) -> Result<UpstreamClaim, DirectoryError> {
        let r: redis::RedisResult<Vec<u8>> = scripts::CLAIM
            .key(self.keys.upstream(who, key))
            .arg(window.as_millis() as u64)
            .invoke_async(&mut self.redis.clone())
            .await;
        Ok(parse_claim(self.observe(r)?))
    }

    async fn settle_upstream(
        &self,
        who: Identity,
        key: &str,
        answer: Option<Bytes>,
        window: Duration,
    ) -> Result<(), DirectoryError> {
        let k = self.keys.upstream(who, key);
        let mut redis = self.redis.clone();
        let r: redis::RedisResult<()> = match answer {
            Some(answer) => {
                let mut value = Vec::with_capacity(answer.len() + 1);
                value.push(b'a');
                value.extend_from_slice(&answer);
                redis.pset_ex(k, value, window.as_millis() as u64).await
            }
            None => redis.del(k).await,
        };
        self.observe(r)
    }
}

impl SessionDirectory for RedisDirectory {
    fn connected(&self, link: &Arc<Link>, first: bool) {
        self.enqueue(Update::Up(link.clone(), first));
    }

    fn disconnected(&self, link: &Arc<Link>, last: bool) {
        self.enqueue(Update::Down(link.clone(), last));
    }

    fn route<'a>(&'a self, msg: &'a PushMessage) -> DirectoryFuture<'a, Route> {
        Box::pin(RedisDirectory::route(self, msg))
    }

    fn route_many<'a>(&'a self, msgs: &'a [PushMessage]) -> DirectoryFuture<'a, Vec<Route>> {
        Box::pin(RedisDirectory::route_many(self, msgs))
    }

    fn store<'a>(&'a self, msg: &'a PushMessage) -> DirectoryFuture<'a, bool> {
        Box::pin(async move { RedisDirectory::store(self, msg).await.map(|()| true) })
    }

    fn sessions(&self, query: SessionQuery) -> DirectoryFuture<'_, Vec<SessionEntry>> {
        Box::pin(RedisDirectory::sessions(self, query))
    }

    fn keeps_inboxes(&self) -> bool {
        true
    }

    fn acked(&self, who: Identity, key: String) {
        self.enqueue(Update::Acked(who, key));
    }

    fn claim_upstream<'a>(
        &'a self,
        who: Identity,
        key: &'a str,
        window: Duration,
    ) -> DirectoryFuture<'a, UpstreamClaim> {
        Box::pin(RedisDirectory::claim_upstream(self, who, key, window))
    }

    fn settle_upstream<'a>(
        &'a self,
        who: Identity,
        key: &'a str,
        answer: Option<Bytes>,
        window: Duration,
    ) -> DirectoryFuture<'a, ()> {
        Box::pin(RedisDirectory::settle_upstream(self, who, key, answer, window))
    }

    fn healthy(&self) -> bool {
        self.health.ready(std::time::Instant::now())
    }
}

fn is_noscript(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
}

async fn load_scripts(redis: &mut Redis) -> redis::RedisResult<()> {
    for script in scripts::pipelined() {
        script.prepare_invoke().load_async(redis).await?;
    }
    Ok(())
}

/// Commands in one pipeline, at most (updates written together, rebuild and sweep chunks).
const PIPELINE: usize = 512;

/// Feeds untrusted Redis replies (`parts`) to every reply parser (the `redis_reply` fuzz target).
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_replies(parts: Vec<String>) {
    use crate::auth::Identity;
    let who = Identity { biz_id: 1, user_id: 2 };
    let _ = replies::parse_claim(parts.concat().into_bytes());
    let _ = replies::parse_store(&parts);
    for part in &parts {
        let _ = replies::parse_user(part);
        let _ = replies::grpc_of(part);
    }
    let _ = replies::parse_inbox(who, parts.clone());
    let _ = replies::parse_route(parts);
}
