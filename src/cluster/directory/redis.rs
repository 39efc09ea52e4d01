//! The session directory and offline inbox in Redis, shared by the nodes of a cluster: which node
//! holds which connections of which user, and the pushes kept for users with no connection
//! anywhere.
//!
//! Keys (all under `cluster.redis.prefix`, default `wsgw:`):
//!
//! | key | type | content |
//! |---|---|---|
//! | `node:{node}` | string, TTL `session_ttl` | `{"grpc":"host:port","ws":"host:port"}`; exists while the node lives |
//! | `nodes` | set | every node id that registered (the sweep's work list) |
//! | `user:{biz}:{user}` | hash | `{node}\|{conn}` → connected-at (ms) |
//! | `conns:{node}` | hash, TTL `session_ttl` | `{conn}` → `{biz}:{user}:{since_ms}:{remote}` |
//! | `users:{node}` | set | `{biz}:{user}` with a connection on the node (the sweep's index) |
//! | `inbox:{biz}:{user}` | list, TTL `inbox_ttl` | pushes (JSON) for an offline user, oldest first |
//! | `up:{biz}:{user}:{key}` | string, TTL `upstream.dedup_window` | `c` while a node calls the backend for this upstream message; then `a` + the backend's `OnReceiveResponse` (protobuf) |
//!
//! A node refreshes `node:{node}` every `session_ttl / 3`. Readers only trust entries of live
//! nodes, so a node that dies stops receiving pushes after one TTL; its entries are then removed by
//! the surviving nodes (the sweep), which also reports its users OFFLINE when they have no
//! connection left anywhere, so nothing stale stays forever. When the refresh finds its key gone
//! (Redis restarted, or the node was cut off for longer than the TTL), or an update was lost, the
//! node writes its whole part of the directory again from its live connections and hands on the
//! inboxes of its users.
//!
//! The inbox is read on connect (and on a rebuild) but left in place: entries are removed by
//! value (LREM) only after the node handed them to the router, so a failed hand-off, a lost reply
//! or a crash in between delivers them again on the next connection (keys make that harmless).
//!
//! Owns: every read and write of these keys. Updates from the connection path are queued without
//! waiting (bounded by `cluster.redis.queue`) and written in pipelines by one task; a lost update
//! marks the directory for a rebuild. Routing and storing are single Lua scripts, so a push that
//! finds a user offline and the user's arrival cannot miss each other. Must never be awaited on a
//! connection's frame path.
//!
//! Building the writer's pipeline ([`build`]) and reading the scripts' replies ([`interpret`],
//! [`parse_route`]) are pure functions, table-tested without Redis.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use redis::{AsyncCommands, aio::ConnectionManager};
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

mod scripts;
mod sessions;

/// A change of one link; the flag says whether it was the user's first (up) or last (down)
/// connection on this node.
enum Update {
    Up(Arc<Link>, bool),
    Down(Arc<Link>, bool),
}

/// The directory's key names (see the table above) as seen from one node.
struct Keys {
    prefix: String,
    node: String,
}

impl Keys {
    fn key(&self, parts: std::fmt::Arguments<'_>) -> String {
        format!("{}{}", self.prefix, parts)
    }

    fn upstream(&self, id: Identity, key: &str) -> String {
        self.key(format_args!("up:{}:{}:{key}", id.biz_id, id.user_id))
    }

    fn user(&self, id: Identity) -> String {
        self.key(format_args!("user:{}:{}", id.biz_id, id.user_id))
    }

    fn inbox(&self, id: Identity) -> String {
        self.key(format_args!("inbox:{}:{}", id.biz_id, id.user_id))
    }

    fn node(&self, node: &str) -> String {
        self.key(format_args!("node:{node}"))
    }

    fn conns(&self, node: &str) -> String {
        self.key(format_args!("conns:{node}"))
    }

    fn users(&self, node: &str) -> String {
        self.key(format_args!("users:{node}"))
    }

    /// A connection's field in its user's hash.
    fn field(&self, link: &Link) -> String {
        format!("{}|{}", self.node, link.id)
    }
}

/// The Redis session directory of one node.
pub struct RedisDirectory {
    redis: ConnectionManager,
    keys: Keys,
    node_id: String,
    node_value: String,
    ttl: Duration,
    inbox_max: u32,
    inbox_max_bytes: u64,
    inbox_ttl: Duration,
    updates: mpsc::Sender<Update>,
    healthy: AtomicBool,
    rebuild: AtomicBool,
    metrics: Arc<Metrics>,
}

/// Where the directory lives and how this node appears in it.
pub struct DirectorySettings {
    pub url: String,
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
        let client = redis::Client::open(s.url.as_str())?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let redis = ConnectionManager::new_lazy_with_config(client, config)?;
        let (updates, rx) = mpsc::channel(s.queue);
        let node_value = serde_json::json!({ "grpc": s.grpc, "ws": s.ws }).to_string();
        let dir = Arc::new(Self {
            redis,
            keys: Keys { prefix: s.prefix, node: s.node_id.clone() },
            node_id: s.node_id,
            node_value,
            ttl: s.ttl,
            inbox_max: s.inbox_max,
            inbox_max_bytes: s.inbox_max_bytes,
            inbox_ttl: s.inbox_ttl,
            updates,
            healthy: AtomicBool::new(false),
            rebuild: AtomicBool::new(true),
            metrics,
        });
        let task = Box::pin(dir.clone().run(rx, links, events, stop));
        Ok((dir, task))
    }

    fn observe<T>(&self, r: redis::RedisResult<T>) -> Result<T, DirectoryError> {
        let ok = r.is_ok();
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

    fn enqueue(&self, update: Update) {
        if self.updates.try_send(update).is_err() {
            self.metrics.cluster_event(ClusterEvent::UpdateDropped);
            self.rebuild.store(true, Ordering::Relaxed);
        }
    }

    async fn route(&self, msg: &PushMessage) -> Result<Route, DirectoryError> {
        let id = Identity { biz_id: msg.biz_id, user_id: msg.receiver_id };
        let json = serde_json::to_string(msg).unwrap_or_default();
        let r: redis::RedisResult<Vec<String>> = scripts::ROUTE
            .key(self.keys.user(id))
            .key(self.keys.inbox(id))
            .arg(&self.keys.prefix)
            .arg(json)
            .arg(self.inbox_max)
            .arg(self.inbox_ttl.as_millis() as u64)
            .arg(self.inbox_max_bytes)
            .invoke_async(&mut self.redis.clone())
            .await;
        let (route, dropped) = parse_route(self.observe(r)?);
        if route == Route::Stored {
            self.stored(id, dropped);
        }
        Ok(route)
    }

    /// Counts a push kept in `who`'s inbox and the older ones it pushed out.
    fn stored(&self, who: Identity, dropped: u64) {
        self.metrics.cluster_event(ClusterEvent::InboxStored);
        if dropped > 0 {
            self.metrics.cluster_events(ClusterEvent::InboxOverflow, dropped);
            warn!(
                biz = who.biz_id,
                user = who.user_id,
                dropped,
                "inbox full: oldest pushes dropped"
            );
        }
    }

    async fn store(&self, msg: &PushMessage) -> Result<(), DirectoryError> {
        let id = Identity { biz_id: msg.biz_id, user_id: msg.receiver_id };
        let json = serde_json::to_string(msg).unwrap_or_default();
        let r: redis::RedisResult<u64> = scripts::STORE
            .key(self.keys.user(id))
            .key(self.keys.inbox(id))
            .arg(&self.keys.prefix)
            .arg(json)
            .arg(self.inbox_max)
            .arg(self.inbox_ttl.as_millis() as u64)
            .arg(self.inbox_max_bytes)
            .invoke_async(&mut self.redis.clone())
            .await;
        let dropped = self.observe(r)?;
        self.stored(id, dropped);
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
        let pipe = build(&self.keys, batch);
        let mut redis = self.redis.clone();
        let mut r: redis::RedisResult<Vec<Vec<String>>> = pipe.query_async(&mut redis).await;
        if r.as_ref().is_err_and(is_noscript) {
            // A fresh or restarted Redis: load the scripts and try once more.
            let loaded = load_scripts(&mut redis).await;
            r = match loaded {
                Ok(()) => pipe.query_async(&mut redis).await,
                Err(e) => Err(e),
            };
        }
        let replies = self.observe(r).ok();
        if replies.is_none() {
            self.rebuild.store(true, Ordering::Relaxed);
        }
        for event in interpret(batch.drain(..), replies) {
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

    /// Removes inbox entries that were handed to their receiver (or cannot be read).
    async fn inbox_done(&self, who: Identity, raw: Vec<String>) -> Result<(), DirectoryError> {
        if raw.is_empty() {
            return Ok(());
        }
        let key = self.keys.inbox(who);
        let mut pipe = redis::pipe();
        for entry in &raw {
            pipe.lrem(&key, 1, entry).ignore();
        }
        let r: redis::RedisResult<()> = pipe.query_async(&mut self.redis.clone()).await;
        self.observe(r)
    }

    /// Refreshes this node's entry; rebuilds its part of the directory when the entry was gone
    /// or updates were lost.
    async fn refresh(&self, links: &LinkRegistry, events: &mpsc::Sender<DirectoryEvent>) {
        let ttl = self.ttl.as_millis() as u64;
        let r: redis::RedisResult<(Option<String>,)> = redis::pipe()
            .cmd("SET")
            .arg(self.keys.node(&self.node_id))
            .arg(&self.node_value)
            .arg("XX")
            .arg("PX")
            .arg(ttl)
            .pexpire(self.keys.conns(&self.node_id), ttl as i64)
            .ignore()
            .query_async(&mut self.redis.clone())
            .await;
        let Ok((set,)) = self.observe(r) else { return };
        if (set.is_none() || self.rebuild.swap(false, Ordering::Relaxed))
            && let Err(e) = self.rebuild(links, events).await
        {
            self.rebuild.store(true, Ordering::Relaxed);
            warn!(error = %e, "could not rebuild this node's directory entries");
        }
    }

    /// Writes this node's entry and every live connection, removes entries of connections that
    /// are gone, and hands on the inboxes of the users here (a push stored while their connect
    /// update was lost would otherwise wait for their next connect).
    async fn rebuild(
        &self,
        links: &LinkRegistry,
        events: &mpsc::Sender<DirectoryEvent>,
    ) -> Result<(), DirectoryError> {
        let ttl = self.ttl.as_millis() as u64;
        let mut redis = self.redis.clone();
        let r: redis::RedisResult<()> = redis::pipe()
            .cmd("SET")
            .arg(self.keys.node(&self.node_id))
            .arg(&self.node_value)
            .arg("PX")
            .arg(ttl)
            .ignore()
            .sadd(self.keys.key(format_args!("nodes")), &self.node_id)
            .ignore()
            .query_async(&mut redis)
            .await;
        self.observe(r)?;
        let all = links.all();
        let mut keep = HashSet::with_capacity(all.len());
        for chunk in all.chunks(PIPELINE) {
            let mut pipe = redis::pipe();
            for link in chunk {
                let id = link.identity;
                let since = millis(link.connected_at);
                keep.insert(self.keys.field(link));
                pipe.hset(self.keys.user(id), self.keys.field(link), since).ignore();
                pipe.hset(self.keys.conns(&self.node_id), link.id, conn_value(link, since))
                    .ignore();
                pipe.sadd(self.keys.users(&self.node_id), format!("{}:{}", id.biz_id, id.user_id))
                    .ignore();
            }
            pipe.pexpire(self.keys.conns(&self.node_id), ttl as i64).ignore();
            let r: redis::RedisResult<()> = pipe.query_async(&mut redis).await;
            self.observe(r)?;
        }
        let (removed, _) = self.sweep(&self.node_id, Some(&keep)).await?;
        let users: HashSet<Identity> = all.iter().map(|l| l.identity).collect();
        for inbox in self.read_inboxes(users.into_iter().collect()).await? {
            self.emit(DirectoryEvent::Inbox(inbox), events).await;
        }
        info!(
            connections = all.len(),
            stale_removed = removed,
            "session directory rebuilt for this node"
        );
        self.metrics.cluster_event(ClusterEvent::Rebuilt);
        Ok(())
    }

    /// The non-empty inboxes of `users`, oldest first.
    async fn read_inboxes(&self, users: Vec<Identity>) -> Result<Vec<Inbox>, DirectoryError> {
        let mut redis = self.redis.clone();
        let mut found = Vec::new();
        for chunk in users.chunks(PIPELINE) {
            let mut pipe = redis::pipe();
            for who in chunk {
                pipe.lrange(self.keys.inbox(*who), 0, -1);
            }
            let lists: Vec<Vec<String>> = self.observe(pipe.query_async(&mut redis).await)?;
            for (who, raw) in chunk.iter().zip(lists) {
                if !raw.is_empty() {
                    found.push(Inbox::read(*who, raw));
                }
            }
        }
        Ok(found)
    }

    /// Removes the entries of nodes whose entry expired (one sweeper per dead node at a time).
    async fn sweep_dead(
        &self,
        events: &mpsc::Sender<DirectoryEvent>,
    ) -> Result<(), DirectoryError> {
        let mut redis = self.redis.clone();
        let nodes_key = self.keys.key(format_args!("nodes"));
        let ids: Vec<String> = self.observe(redis.smembers(&nodes_key).await)?;
        for id in ids.into_iter().filter(|id| *id != self.node_id) {
            let alive: bool = self.observe(redis.exists(self.keys.node(&id)).await)?;
            if alive {
                continue;
            }
            let lock = self.keys.key(format_args!("sweep:{id}"));
            let got: Option<String> = self.observe(
                redis::cmd("SET")
                    .arg(&lock)
                    .arg(&self.node_id)
                    .arg("NX")
                    .arg("PX")
                    .arg(60_000)
                    .query_async(&mut redis)
                    .await,
            )?;
            if got.is_none() {
                continue;
            }
            let (removed, gone) = self.sweep(&id, None).await?;
            // Nobody else will say these users went offline: their node died.
            for who in gone {
                let _ = events.try_send(DirectoryEvent::Offline(who));
            }
            let r: redis::RedisResult<()> = redis::pipe()
                .del(self.keys.users(&id))
                .ignore()
                .del(self.keys.conns(&id))
                .ignore()
                .srem(&nodes_key, &id)
                .ignore()
                .query_async(&mut redis)
                .await;
            self.observe(r)?;
            info!(node = %id, sessions = removed, "removed a dead node from the session directory");
            self.metrics.cluster_event(ClusterEvent::NodeSwept);
        }
        Ok(())
    }

    /// Removes `node`'s fields from its users' hashes, except those in `keep`. Returns how many,
    /// and the users left with no connection anywhere.
    async fn sweep(
        &self,
        node: &str,
        keep: Option<&HashSet<String>>,
    ) -> Result<(usize, Vec<Identity>), DirectoryError> {
        let mut redis = self.redis.clone();
        let users: Vec<String> = self.observe(redis.smembers(self.keys.users(node)).await)?;
        let prefix = format!("{node}|");
        let (mut removed, mut gone) = (0, Vec::new());
        for chunk in users.chunks(PIPELINE) {
            let mut pipe = redis::pipe();
            for u in chunk {
                pipe.hkeys(self.keys.key(format_args!("user:{u}")));
            }
            let fields: Vec<Vec<String>> = self.observe(pipe.query_async(&mut redis).await)?;
            let mut del = redis::pipe();
            let mut counted = Vec::new();
            for (u, fields) in chunk.iter().zip(fields) {
                let (kept, stale): (Vec<String>, Vec<String>) = fields
                    .into_iter()
                    .filter(|f| f.starts_with(&prefix))
                    .partition(|f| keep.is_some_and(|k| k.contains(f)));
                if !stale.is_empty() {
                    removed += stale.len();
                    let key = self.keys.key(format_args!("user:{u}"));
                    del.hdel(&key, stale).ignore().hlen(&key);
                    counted.push(u);
                }
                if keep.is_some() && kept.is_empty() {
                    del.srem(self.keys.users(node), u).ignore();
                }
            }
            if del.cmd_iter().next().is_none() {
                continue; // nothing stale here (Redis refuses an empty pipeline)
            }
            let left: Vec<usize> = self.observe(del.query_async(&mut redis).await)?;
            let emptied = counted.into_iter().zip(left).filter(|(_, n)| *n == 0);
            gone.extend(emptied.filter_map(|(u, _)| parse_user(u)));
        }
        Ok((removed, gone))
    }

    /// Removes this node and every one of its entries (graceful shutdown).
    async fn leave(&self) -> Result<(), DirectoryError> {
        self.sweep(&self.node_id, Some(&HashSet::new())).await?;
        let mut redis = self.redis.clone();
        let r: redis::RedisResult<()> = redis::pipe()
            .del(self.keys.node(&self.node_id))
            .ignore()
            .del(self.keys.users(&self.node_id))
            .ignore()
            .del(self.keys.conns(&self.node_id))
            .ignore()
            .srem(self.keys.key(format_args!("nodes")), &self.node_id)
            .ignore()
            .query_async(&mut redis)
            .await;
        self.observe(r).map(|_| ())
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

    fn store<'a>(&'a self, msg: &'a PushMessage) -> DirectoryFuture<'a, bool> {
        Box::pin(async move { RedisDirectory::store(self, msg).await.map(|()| true) })
    }

    fn sessions(&self, query: SessionQuery) -> DirectoryFuture<'_, Vec<SessionEntry>> {
        Box::pin(RedisDirectory::sessions(self, query))
    }

    fn inbox_done(&self, who: Identity, raw: Vec<String>) -> DirectoryFuture<'_, ()> {
        Box::pin(RedisDirectory::inbox_done(self, who, raw))
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
        self.healthy.load(Ordering::Relaxed)
    }
}

/// The CLAIM script's reply.
fn parse_claim(value: Vec<u8>) -> UpstreamClaim {
    match value.split_first() {
        None => UpstreamClaim::Owned,
        Some((b'a', answer)) => UpstreamClaim::Answered(Bytes::copy_from_slice(answer)),
        Some(_) => UpstreamClaim::InFlight,
    }
}

fn is_noscript(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
}

async fn load_scripts(redis: &mut ConnectionManager) -> redis::RedisResult<()> {
    for script in [&*scripts::CONNECT, &*scripts::DISCONNECT, &*scripts::ROUTE] {
        script.prepare_invoke().load_async(redis).await?;
    }
    Ok(())
}

/// One pipeline of CONNECT / DISCONNECT scripts for `batch`, in order.
fn build(keys: &Keys, batch: &[Update]) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    for u in batch {
        match u {
            Update::Up(link, _) => {
                let id = link.identity;
                let since = millis(link.connected_at);
                pipe.invoke_script(
                    scripts::CONNECT
                        .key(keys.user(id))
                        .key(keys.conns(&keys.node))
                        .key(keys.users(&keys.node))
                        .key(keys.inbox(id))
                        .arg(keys.field(link))
                        .arg(since)
                        .arg(link.id)
                        .arg(conn_value(link, since))
                        .arg(format!("{}:{}", id.biz_id, id.user_id)),
                );
            }
            Update::Down(link, last) => {
                let id = link.identity;
                let user = match last {
                    true => format!("{}:{}", id.biz_id, id.user_id),
                    false => String::new(),
                };
                pipe.invoke_script(
                    scripts::DISCONNECT
                        .key(keys.user(id))
                        .key(keys.conns(&keys.node))
                        .key(keys.users(&keys.node))
                        .arg(keys.field(link))
                        .arg(link.id)
                        .arg(user),
                );
            }
        }
    }
    pipe
}

/// What the scripts' replies to `batch` mean. Each reply starts with the user's connection count
/// across the cluster after the update; a CONNECT reply then lists the user's inbox (JSON pushes,
/// oldest first; removed only after hand-off). `None`: the pipeline failed, and presence follows
/// this node's own view.
fn interpret(
    batch: impl IntoIterator<Item = Update>,
    replies: Option<Vec<Vec<String>>>,
) -> Vec<DirectoryEvent> {
    let Some(replies) = replies else {
        return batch
            .into_iter()
            .filter_map(|u| match u {
                Update::Up(l, true) => Some(DirectoryEvent::Online(l.identity)),
                Update::Down(l, true) => Some(DirectoryEvent::Offline(l.identity)),
                _ => None,
            })
            .collect();
    };
    let mut events = Vec::new();
    for (u, reply) in batch.into_iter().zip(replies) {
        let count: u64 = reply.first().and_then(|c| c.parse().ok()).unwrap_or(0);
        match u {
            Update::Up(link, _) => {
                if count == 1 {
                    events.push(DirectoryEvent::Online(link.identity));
                }
                let raw: Vec<String> = reply.into_iter().skip(1).collect();
                if !raw.is_empty() {
                    events.push(DirectoryEvent::Inbox(Inbox::read(link.identity, raw)));
                }
            }
            Update::Down(link, _) if count == 0 => {
                events.push(DirectoryEvent::Offline(link.identity));
            }
            Update::Down(..) => {}
        }
    }
    events
}

/// The ROUTE script's reply: pairs of (live node id, its `node:` value), or `['', dropped]`
/// when the push was stored in the inbox (and `dropped` older ones pushed out).
fn parse_route(flat: Vec<String>) -> (Route, u64) {
    if flat.first().is_none_or(|f| f.is_empty()) {
        let dropped = flat.get(1).and_then(|d| d.parse().ok()).unwrap_or(0);
        return (Route::Stored, dropped);
    }
    let nodes = flat
        .chunks_exact(2)
        .map(|p| {
            let grpc = serde_json::from_str::<serde_json::Value>(&p[1])
                .ok()
                .and_then(|v| v.get("grpc")?.as_str().map(str::to_owned))
                .unwrap_or_default();
            (p[0].clone(), grpc)
        })
        .collect();
    (Route::Nodes(nodes), 0)
}

/// Commands in one pipeline, at most (updates written together, rebuild and sweep chunks).
const PIPELINE: usize = 512;

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// `biz:user`, as the `users:` sets hold them.
fn parse_user(u: &str) -> Option<Identity> {
    let (biz, user) = u.split_once(':')?;
    Some(Identity { biz_id: biz.parse().ok()?, user_id: user.parse().ok()? })
}

fn conn_value(link: &Link, since: u64) -> String {
    format!("{}:{}:{}:{}", link.identity.biz_id, link.identity.user_id, since, link.remote)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(biz_id: i64, user_id: i64) -> Identity {
        Identity { biz_id, user_id }
    }

    fn links() -> (Arc<LinkRegistry>, impl FnMut(Identity) -> Arc<Link>) {
        let registry = Arc::new(LinkRegistry::new(100));
        let reg = registry.clone();
        let addr = "127.0.0.1:1".parse().expect("addr");
        (registry, move |id| reg.insert(id, addr, 1024).0)
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    fn push_json(key: &str) -> String {
        let msg = PushMessage { key: key.into(), biz_id: 9, receiver_id: 1, body: vec![1].into() };
        serde_json::to_string(&msg).expect("json")
    }

    #[test]
    fn connect_and_disconnect_replies_become_presence_and_inbox_events() {
        let (_keep, mut link) = links();
        let (a, b) = (link(who(9, 1)), link(who(9, 2)));
        let batch = vec![
            Update::Up(a.clone(), true),
            Update::Up(b.clone(), true),
            Update::Down(a.clone(), true),
            Update::Down(b.clone(), true),
        ];
        let replies = vec![
            // a: first connection cluster-wide, with two pushes in the inbox (and one bad one).
            strings(&["1", &push_json("k1"), "not json", &push_json("k2")]),
            // b: already connected elsewhere: no presence change.
            strings(&["2"]),
            // a leaves and nobody holds them any more; b leaves but another connection stays.
            strings(&["0"]),
            strings(&["1"]),
        ];
        let events = interpret(batch, Some(replies));
        let keys = |e: &DirectoryEvent| match e {
            DirectoryEvent::Inbox(i) => {
                i.pushes.iter().map(|p| p.msg.as_ref().map(|m| m.key.clone())).collect()
            }
            _ => Vec::new(),
        };
        assert_eq!(events.len(), 3, "{events:?}");
        assert_eq!(events[0], DirectoryEvent::Online(who(9, 1)));
        let want = [Some("k1".to_owned()), None, Some("k2".to_owned())];
        assert_eq!(
            keys(&events[1]),
            want,
            "oldest first; an unreadable entry is kept to be removed"
        );
        let DirectoryEvent::Inbox(inbox) = &events[1] else { unreachable!() };
        assert_eq!((inbox.who, inbox.pushes[1].raw.as_str()), (who(9, 1), "not json"));
        assert_eq!(events[2], DirectoryEvent::Offline(who(9, 1)));
    }

    #[test]
    fn short_or_garbled_replies_never_panic() {
        let (_keep, mut link) = links();
        let a = link(who(9, 1));
        let batch = vec![Update::Up(a.clone(), false), Update::Down(a.clone(), false)];
        let events = interpret(batch, Some(vec![Vec::new()]));
        assert!(events.is_empty(), "an empty reply counts as 0 for an Up: {events:?}");
        let batch = vec![Update::Down(a.clone(), false)];
        assert_eq!(
            interpret(batch, Some(vec![strings(&["x"])])),
            [DirectoryEvent::Offline(who(9, 1))]
        );
    }

    #[test]
    fn without_replies_presence_follows_this_nodes_view() {
        let (_keep, mut link) = links();
        let (a, b) = (link(who(9, 1)), link(who(9, 2)));
        let batch = vec![
            Update::Up(a.clone(), true),
            Update::Up(b.clone(), false),
            Update::Down(b.clone(), true),
        ];
        let events = interpret(batch, None);
        assert_eq!(events, [DirectoryEvent::Online(who(9, 1)), DirectoryEvent::Offline(who(9, 2))]);
    }

    #[test]
    fn claim_replies_say_who_answers() {
        assert_eq!(parse_claim(Vec::new()), UpstreamClaim::Owned);
        assert_eq!(parse_claim(b"c".to_vec()), UpstreamClaim::InFlight);
        assert_eq!(parse_claim(b"a".to_vec()), UpstreamClaim::Answered(Bytes::new()));
        let answer = parse_claim(b"a\x08\x07".to_vec());
        assert_eq!(answer, UpstreamClaim::Answered(Bytes::from_static(b"\x08\x07")));
        assert_eq!(
            parse_claim(b"?".to_vec()),
            UpstreamClaim::InFlight,
            "unknown: wait, then take over"
        );
    }

    #[test]
    fn users_of_the_sweep_index_parse_or_are_skipped() {
        assert_eq!(parse_user("9:42"), Some(who(9, 42)));
        for bad in ["", "9", "9:", ":42", "x:42", "9:42:1"] {
            assert_eq!(parse_user(bad), None, "{bad}");
        }
    }

    #[test]
    fn route_replies_name_live_nodes_or_mean_stored() {
        assert_eq!(parse_route(Vec::new()), (Route::Stored, 0));
        assert_eq!(parse_route(strings(&["", "3"])), (Route::Stored, 3), "3 older pushes out");
        assert_eq!(parse_route(strings(&["", "x"])), (Route::Stored, 0));
        let flat = strings(&[
            "n1",
            r#"{"grpc":"10.0.0.1:9004","ws":"10.0.0.1:9002"}"#,
            "n2",
            "garbled",
            "odd one out",
        ]);
        let want = vec![("n1".into(), "10.0.0.1:9004".into()), ("n2".into(), String::new())];
        assert_eq!(parse_route(flat), (Route::Nodes(want), 0));
    }

    #[test]
    fn the_pipeline_has_one_script_per_update_in_order() {
        let (_keep, mut link) = links();
        let a = link(who(9, 1));
        let keys = Keys { prefix: "p:".into(), node: "n1".into() };
        let pipe = build(&keys, &[Update::Up(a.clone(), true), Update::Down(a.clone(), true)]);
        let cmds: Vec<Vec<u8>> = pipe.cmd_iter().map(|c| c.get_packed_command()).collect();
        assert_eq!(cmds.len(), 2);
        let text = |c: &[u8]| String::from_utf8_lossy(c).into_owned();
        let connect = text(&cmds[0]);
        assert!(connect.starts_with("*") && connect.contains("EVALSHA"), "by SHA, not by text");
        assert!(connect.contains(scripts::CONNECT.get_hash()) && connect.contains("p:inbox:9:1"));
        assert!(text(&cmds[1]).contains(scripts::DISCONNECT.get_hash()));
        assert!(text(&cmds[1]).contains(&format!("n1|{}", a.id)), "the link's field");
    }
}
