//! The session directory and offline inbox in Redis: which node holds which connections of which
//! user, and the pushes kept for users with no connection anywhere.
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
//!
//! A node refreshes `node:{node}` every `session_ttl / 3`. Readers only trust entries of live
//! nodes, so a node that dies stops receiving pushes after one TTL; its entries are then removed by
//! the surviving nodes (the sweep), so nothing stale stays forever. When the refresh finds its key
//! gone (Redis restarted, or the node was cut off for longer than the TTL), the node writes its
//! whole part of the directory again from its live connections.
//!
//! Owns: every read and write of these keys. Updates from the connection path are queued without
//! waiting (bounded by `cluster.redis.queue`) and written in pipelines by one task; a lost update
//! marks the directory for a rebuild. Routing and storing are single Lua scripts, so a push that
//! finds a user offline and the user's arrival cannot miss each other. Must never be awaited on a
//! connection's frame path.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use redis::{AsyncCommands, aio::ConnectionManager};
use tokio::sync::{Mutex, mpsc};
use tracing::{info, warn};

use crate::{auth::Identity, links::Link, protocol::pb::PushMessage, telemetry::Metrics};

use super::scripts;

mod sessions;

pub use sessions::{SessionEntry, SessionQuery};

/// A Redis failure.
#[derive(Debug, thiserror::Error)]
#[error("session directory (redis): {0}")]
pub struct DirectoryError(#[from] redis::RedisError);

/// Where a push must go.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// Live nodes holding the receiver: (node id, gRPC address).
    Nodes(Vec<(String, String)>),
    /// Nobody holds the receiver; the push was stored in their inbox.
    Stored,
}

/// A change of one link; the flag says whether it was the user's first (up) or last (down)
/// connection on this node.
pub(super) enum Update {
    Up(Arc<Link>, bool),
    Down(Arc<Link>, bool),
}

/// What the writer hands on: pushes found in an inbox, presence changes.
pub(super) enum Outcome {
    Inbox(Vec<PushMessage>),
    Online(Identity),
    Offline(Identity),
}

/// The session directory of one node.
pub struct Directory {
    redis: ConnectionManager,
    prefix: String,
    node_id: String,
    node_value: String,
    ttl: Duration,
    inbox_max: u32,
    inbox_ttl: Duration,
    updates: mpsc::Sender<Update>,
    pending: Mutex<Option<mpsc::Receiver<Update>>>,
    healthy: AtomicBool,
    rebuild: AtomicBool,
    metrics: Arc<Metrics>,
}

pub(super) struct DirectorySettings {
    pub url: String,
    pub prefix: String,
    pub node_id: String,
    pub grpc: String,
    pub ws: String,
    pub ttl: Duration,
    pub inbox_max: u32,
    pub inbox_ttl: Duration,
    pub queue: usize,
}

impl Directory {
    pub(super) fn new(s: DirectorySettings, metrics: Arc<Metrics>) -> Result<Self, String> {
        let client = redis::Client::open(s.url.as_str()).map_err(|e| e.to_string())?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let redis =
            ConnectionManager::new_lazy_with_config(client, config).map_err(|e| e.to_string())?;
        let (updates, rx) = mpsc::channel(s.queue);
        let node_value = serde_json::json!({ "grpc": s.grpc, "ws": s.ws }).to_string();
        Ok(Self {
            redis,
            prefix: s.prefix,
            node_id: s.node_id,
            node_value,
            ttl: s.ttl,
            inbox_max: s.inbox_max,
            inbox_ttl: s.inbox_ttl,
            updates,
            pending: Mutex::new(Some(rx)),
            healthy: AtomicBool::new(false),
            rebuild: AtomicBool::new(true),
            metrics,
        })
    }

    fn key(&self, parts: std::fmt::Arguments<'_>) -> String {
        format!("{}{}", self.prefix, parts)
    }

    fn user_key(&self, id: Identity) -> String {
        self.key(format_args!("user:{}:{}", id.biz_id, id.user_id))
    }

    fn inbox_key(&self, id: Identity) -> String {
        self.key(format_args!("inbox:{}:{}", id.biz_id, id.user_id))
    }

    fn node_key(&self, node: &str) -> String {
        self.key(format_args!("node:{node}"))
    }

    fn conns_key(&self, node: &str) -> String {
        self.key(format_args!("conns:{node}"))
    }

    fn users_key(&self, node: &str) -> String {
        self.key(format_args!("users:{node}"))
    }

    fn field(&self, link: &Link) -> String {
        format!("{}|{}", self.node_id, link.id)
    }

    /// Whether the last Redis round trip succeeded.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    fn observe<T>(&self, r: redis::RedisResult<T>) -> Result<T, DirectoryError> {
        let ok = r.is_ok();
        if self.healthy.swap(ok, Ordering::Relaxed) != ok {
            self.metrics.dependency("redis", ok);
            match &r {
                Ok(_) => info!("session directory (redis) reachable"),
                Err(e) => warn!(error = %e, "session directory (redis) unreachable"),
            }
        }
        if !ok {
            self.metrics.cluster_event("redis", "error");
        }
        r.map_err(DirectoryError::from)
    }

    /// Queues "link is up" (`first`: the user's first on this node) without waiting.
    pub fn connected(&self, link: &Arc<Link>, first: bool) {
        self.enqueue(Update::Up(link.clone(), first));
    }

    /// Queues "link is down" (`last`: it was the user's last on this node) without waiting.
    pub fn disconnected(&self, link: &Arc<Link>, last: bool) {
        self.enqueue(Update::Down(link.clone(), last));
    }

    fn enqueue(&self, update: Update) {
        if self.updates.try_send(update).is_err() {
            self.metrics.cluster_event("redis", "update_dropped");
            self.rebuild.store(true, Ordering::Relaxed);
        }
    }

    /// Finds the live nodes holding the receiver of `msg`; when there are none, stores `msg` in
    /// the receiver's inbox (atomically with the lookup).
    pub async fn route(&self, msg: &PushMessage) -> Result<Route, DirectoryError> {
        let id = Identity { biz_id: msg.biz_id, user_id: msg.receiver_id };
        let json = serde_json::to_string(msg).unwrap_or_default();
        let r: redis::RedisResult<Vec<String>> = redis::cmd("EVAL")
            .arg(scripts::ROUTE)
            .arg(2)
            .arg(self.user_key(id))
            .arg(self.inbox_key(id))
            .arg(&self.prefix)
            .arg(json)
            .arg(self.inbox_max)
            .arg(self.inbox_ttl.as_millis() as u64)
            .query_async(&mut self.redis.clone())
            .await;
        let flat = self.observe(r)?;
        if flat.is_empty() {
            self.metrics.cluster_event("redis", "inbox_stored");
            return Ok(Route::Stored);
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
        Ok(Route::Nodes(nodes))
    }

    /// Stores `msg` in its receiver's inbox (a node that should have held them failed).
    pub async fn store(&self, msg: &PushMessage) -> Result<(), DirectoryError> {
        let id = Identity { biz_id: msg.biz_id, user_id: msg.receiver_id };
        let key = self.inbox_key(id);
        let json = serde_json::to_string(msg).unwrap_or_default();
        let r: redis::RedisResult<()> = redis::pipe()
            .rpush(&key, json)
            .ignore()
            .ltrim(&key, -(self.inbox_max as isize), -1)
            .ignore()
            .pexpire(&key, self.inbox_ttl.as_millis() as i64)
            .ignore()
            .query_async(&mut self.redis.clone())
            .await;
        self.observe(r)?;
        self.metrics.cluster_event("redis", "inbox_stored");
        Ok(())
    }

    /// Writes queued updates, refreshes this node's entry and sweeps dead nodes until `stop`.
    pub(super) async fn run(
        self: Arc<Self>,
        links: Arc<crate::links::LinkRegistry>,
        outcomes: mpsc::Sender<Outcome>,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let Some(mut rx) = self.pending.lock().await.take() else { return };
        let mut refresh = tokio::time::interval(self.ttl / 3);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::with_capacity(BATCH);
        let mut sweeps = 0u32;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                n = rx.recv_many(&mut batch, BATCH) => {
                    if n == 0 { break }
                    self.write(&mut batch, &outcomes).await;
                }
                _ = refresh.tick() => {
                    self.refresh(&links).await;
                    sweeps += 1;
                    if sweeps.is_multiple_of(3) {
                        let _ = self.sweep_dead().await;
                    }
                }
            }
        }
        // Leaving: write what is queued, then remove this node's entries.
        rx.close();
        while rx.recv_many(&mut batch, BATCH).await > 0 {
            self.write(&mut batch, &outcomes).await;
        }
        if let Err(e) = self.leave().await {
            warn!(error = %e, "could not remove this node from the session directory");
        }
    }

    async fn write(&self, batch: &mut Vec<Update>, outcomes: &mpsc::Sender<Outcome>) {
        let mut pipe = redis::pipe();
        for u in batch.iter() {
            match u {
                Update::Up(link, _) => {
                    let id = link.identity;
                    let since = millis(link.connected_at);
                    pipe.cmd("EVAL")
                        .arg(scripts::CONNECT)
                        .arg(4)
                        .arg(self.user_key(id))
                        .arg(self.conns_key(&self.node_id))
                        .arg(self.users_key(&self.node_id))
                        .arg(self.inbox_key(id))
                        .arg(self.field(link))
                        .arg(since)
                        .arg(link.id)
                        .arg(conn_value(link, since))
                        .arg(format!("{}:{}", id.biz_id, id.user_id));
                }
                Update::Down(link, last) => {
                    let id = link.identity;
                    pipe.cmd("EVAL")
                        .arg(scripts::DISCONNECT)
                        .arg(3)
                        .arg(self.user_key(id))
                        .arg(self.conns_key(&self.node_id))
                        .arg(self.users_key(&self.node_id))
                        .arg(self.field(link))
                        .arg(link.id)
                        .arg(if *last {
                            format!("{}:{}", id.biz_id, id.user_id)
                        } else {
                            String::new()
                        });
                }
            }
        }
        let r: redis::RedisResult<Vec<Vec<String>>> =
            pipe.query_async(&mut self.redis.clone()).await;
        let results = match self.observe(r) {
            Ok(results) => results,
            Err(_) => {
                self.rebuild.store(true, Ordering::Relaxed);
                // Presence still follows this node's own view.
                for u in batch.drain(..) {
                    let _ = match u {
                        Update::Up(l, true) => outcomes.try_send(Outcome::Online(l.identity)),
                        Update::Down(l, true) => outcomes.try_send(Outcome::Offline(l.identity)),
                        _ => Ok(()),
                    };
                }
                return;
            }
        };
        for (u, r) in batch.drain(..).zip(results) {
            let count: u64 = r.first().and_then(|c| c.parse().ok()).unwrap_or(0);
            match u {
                Update::Up(link, _) => {
                    if count == 1 {
                        let _ = outcomes.try_send(Outcome::Online(link.identity));
                    }
                    let msgs: Vec<PushMessage> =
                        r.iter().skip(1).filter_map(|j| serde_json::from_str(j).ok()).collect();
                    if !msgs.is_empty() {
                        self.metrics.cluster_events("redis", "inbox_delivered", msgs.len() as u64);
                        let _ = outcomes.send(Outcome::Inbox(msgs)).await;
                    }
                }
                Update::Down(link, _) if count == 0 => {
                    let _ = outcomes.try_send(Outcome::Offline(link.identity));
                }
                Update::Down(..) => {}
            }
        }
    }

    /// Refreshes this node's entry; rebuilds its part of the directory when the entry was gone
    /// or updates were lost.
    async fn refresh(&self, links: &crate::links::LinkRegistry) {
        let ttl = self.ttl.as_millis() as u64;
        let r: redis::RedisResult<(Option<String>,)> = redis::pipe()
            .cmd("SET")
            .arg(self.node_key(&self.node_id))
            .arg(&self.node_value)
            .arg("XX")
            .arg("PX")
            .arg(ttl)
            .pexpire(self.conns_key(&self.node_id), ttl as i64)
            .ignore()
            .query_async(&mut self.redis.clone())
            .await;
        let Ok((set,)) = self.observe(r) else { return };
        if (set.is_none() || self.rebuild.swap(false, Ordering::Relaxed))
            && let Err(e) = self.rebuild(links).await
        {
            self.rebuild.store(true, Ordering::Relaxed);
            warn!(error = %e, "could not rebuild this node's directory entries");
        }
    }

    /// Writes this node's entry and every live connection, then removes entries of connections
    /// that are gone.
    async fn rebuild(&self, links: &crate::links::LinkRegistry) -> Result<(), DirectoryError> {
        let ttl = self.ttl.as_millis() as u64;
        let mut redis = self.redis.clone();
        let r: redis::RedisResult<()> = redis::pipe()
            .cmd("SET")
            .arg(self.node_key(&self.node_id))
            .arg(&self.node_value)
            .arg("PX")
            .arg(ttl)
            .ignore()
            .sadd(self.key(format_args!("nodes")), &self.node_id)
            .ignore()
            .query_async(&mut redis)
            .await;
        self.observe(r)?;
        let all = links.all();
        let mut keep = HashSet::with_capacity(all.len());
        for chunk in all.chunks(BATCH) {
            let mut pipe = redis::pipe();
            for link in chunk {
                let id = link.identity;
                let since = millis(link.connected_at);
                keep.insert(self.field(link));
                pipe.hset(self.user_key(id), self.field(link), since).ignore();
                pipe.hset(self.conns_key(&self.node_id), link.id, conn_value(link, since)).ignore();
                pipe.sadd(self.users_key(&self.node_id), format!("{}:{}", id.biz_id, id.user_id))
                    .ignore();
            }
            pipe.pexpire(self.conns_key(&self.node_id), ttl as i64).ignore();
            let r: redis::RedisResult<()> = pipe.query_async(&mut redis).await;
            self.observe(r)?;
        }
        let removed = self.sweep(&self.node_id, Some(&keep)).await?;
        info!(
            connections = all.len(),
            stale_removed = removed,
            "session directory rebuilt for this node"
        );
        self.metrics.cluster_event("redis", "rebuilt");
        Ok(())
    }

    /// Removes the entries of nodes whose entry expired (one sweeper per dead node at a time).
    async fn sweep_dead(&self) -> Result<(), DirectoryError> {
        let mut redis = self.redis.clone();
        let nodes_key = self.key(format_args!("nodes"));
        let ids: Vec<String> = self.observe(redis.smembers(&nodes_key).await)?;
        for id in ids.into_iter().filter(|id| *id != self.node_id) {
            let alive: bool = self.observe(redis.exists(self.node_key(&id)).await)?;
            if alive {
                continue;
            }
            let lock = self.key(format_args!("sweep:{id}"));
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
            let removed = self.sweep(&id, None).await?;
            let r: redis::RedisResult<()> = redis::pipe()
                .del(self.users_key(&id))
                .ignore()
                .del(self.conns_key(&id))
                .ignore()
                .srem(&nodes_key, &id)
                .ignore()
                .query_async(&mut redis)
                .await;
            self.observe(r)?;
            info!(node = %id, sessions = removed, "removed a dead node from the session directory");
            self.metrics.cluster_event("redis", "node_swept");
        }
        Ok(())
    }

    /// Removes `node`'s fields from its users' hashes, except those in `keep`. Returns how many.
    async fn sweep(
        &self,
        node: &str,
        keep: Option<&HashSet<String>>,
    ) -> Result<usize, DirectoryError> {
        let mut redis = self.redis.clone();
        let users: Vec<String> = self.observe(redis.smembers(self.users_key(node)).await)?;
        let prefix = format!("{node}|");
        let mut removed = 0;
        for chunk in users.chunks(BATCH) {
            let mut pipe = redis::pipe();
            for u in chunk {
                pipe.hkeys(self.key(format_args!("user:{u}")));
            }
            let fields: Vec<Vec<String>> = self.observe(pipe.query_async(&mut redis).await)?;
            let mut del = redis::pipe();
            for (u, fields) in chunk.iter().zip(fields) {
                let (kept, stale): (Vec<String>, Vec<String>) = fields
                    .into_iter()
                    .filter(|f| f.starts_with(&prefix))
                    .partition(|f| keep.is_some_and(|k| k.contains(f)));
                if !stale.is_empty() {
                    removed += stale.len();
                    del.hdel(self.key(format_args!("user:{u}")), stale).ignore();
                }
                if keep.is_some() && kept.is_empty() {
                    del.srem(self.users_key(node), u).ignore();
                }
            }
            let r: redis::RedisResult<()> = del.query_async(&mut redis).await;
            self.observe(r)?;
        }
        Ok(removed)
    }

    /// Removes this node and every one of its entries (graceful shutdown).
    async fn leave(&self) -> Result<(), DirectoryError> {
        self.sweep(&self.node_id, Some(&HashSet::new())).await?;
        let mut redis = self.redis.clone();
        let r: redis::RedisResult<()> = redis::pipe()
            .del(self.node_key(&self.node_id))
            .ignore()
            .del(self.users_key(&self.node_id))
            .ignore()
            .del(self.conns_key(&self.node_id))
            .ignore()
            .srem(self.key(format_args!("nodes")), &self.node_id)
            .ignore()
            .query_async(&mut redis)
            .await;
        self.observe(r).map(|_| ())
    }
}

const BATCH: usize = 512;

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn conn_value(link: &Link, since: u64) -> String {
    format!("{}:{}:{}:{}", link.identity.biz_id, link.identity.user_id, since, link.remote)
}
