//! Keeping this node's part of the directory true: the periodic refresh of its entry, the
//! rebuild from its live connections (after Redis restarted or an update was lost, handing on
//! its users' inboxes), the sweep of dead nodes (reporting their users OFFLINE) and the removal
//! of its entries when it leaves.

use std::{collections::HashSet, sync::atomic::Ordering};

use redis::{AsyncCommands, Cmd};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{
    DirectoryError, DirectoryEvent, Inbox, PIPELINE, RedisDirectory, conn::Batch, conn_value,
    is_noscript, millis, parse_inbox, parse_user, scripts,
};
use crate::{auth::Identity, links::LinkRegistry, telemetry::ClusterEvent};

impl RedisDirectory {
    /// Refreshes this node's entry; rebuilds its part of the directory when the entry was gone
    /// or updates were lost.
    pub(super) async fn refresh(
        &self,
        links: &LinkRegistry,
        events: &mpsc::Sender<DirectoryEvent>,
    ) {
        let ttl = self.ttl.as_millis() as u64;
        let mut batch = Batch::new();
        batch.add(
            redis::cmd("SET")
                .arg(self.keys.node(&self.node_id))
                .arg(&self.node_value)
                .arg("XX")
                .arg("PX")
                .arg(ttl)
                .to_owned(),
        );
        batch.add(Cmd::pexpire(self.keys.conns(&self.node_id), ttl as i64)).ignore();
        let r: redis::RedisResult<(Option<String>,)> = self.redis.run(&batch).await;
        let Ok((set,)) = self.observe(r) else { return };
        self.reload_nodes().await;
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
        let mut batch = Batch::new();
        batch
            .add(
                redis::cmd("SET")
                    .arg(self.keys.node(&self.node_id))
                    .arg(&self.node_value)
                    .arg("PX")
                    .arg(ttl)
                    .to_owned(),
            )
            .ignore();
        batch.add(Cmd::sadd(self.keys.nodes(), &self.node_id)).ignore();
        let r: redis::RedisResult<()> = self.redis.run(&batch).await;
        self.observe(r)?;
        let all = links.all();
        let mut keep = HashSet::with_capacity(all.len());
        for chunk in all.chunks(PIPELINE) {
            let mut batch = Batch::new();
            let (conns, users) = (self.keys.conns(&self.node_id), self.keys.users(&self.node_id));
            // The node's tables first: the sweep finds every user field through them.
            for link in chunk {
                let id = link.identity;
                let since = millis(link.connected_at);
                batch.add(Cmd::hset(&conns, link.id, conn_value(link, since))).ignore();
                batch.add(Cmd::sadd(&users, format!("{}:{}", id.biz_id, id.user_id))).ignore();
            }
            batch.add(Cmd::pexpire(&conns, ttl as i64)).ignore().barrier();
            for link in chunk {
                let since = millis(link.connected_at);
                keep.insert(self.keys.field(link));
                batch.add(Cmd::hset(self.keys.user(link.identity), self.keys.field(link), since));
                batch.ignore();
            }
            let r: redis::RedisResult<()> = self.redis.run(&batch).await;
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
        let ttl = self.inbox_ttl.as_millis() as u64;
        let mut found = Vec::new();
        for chunk in users.chunks(PIPELINE) {
            let mut batch = Batch::new();
            for who in chunk {
                batch.script(scripts::READ.key(&self.keys.inbox(*who)).arg(ttl));
            }
            let mut replies: redis::RedisResult<Vec<Vec<String>>> = self.redis.run(&batch).await;
            if replies.as_ref().is_err_and(is_noscript) {
                scripts::READ.prepare_invoke().load_async(&mut self.redis.clone()).await.ok();
                replies = self.redis.run(&batch).await;
            }
            for (who, reply) in chunk.iter().zip(self.observe(replies)?) {
                let (inbox, expired) = parse_inbox(*who, reply);
                self.expired(who.biz_id, who.user_id, expired);
                if !inbox.pushes.is_empty() {
                    found.push(inbox);
                }
            }
        }
        Ok(found)
    }

    /// Removes the entries of nodes whose entry expired (one sweeper per dead node at a time).
    pub(super) async fn sweep_dead(
        &self,
        events: &mpsc::Sender<DirectoryEvent>,
    ) -> Result<(), DirectoryError> {
        let mut redis = self.redis.clone();
        let nodes_key = self.keys.nodes();
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
            self.forget_node(&id).await?;
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
            let mut read = Batch::new();
            for u in chunk {
                read.add(Cmd::hkeys(self.keys.user_of(u)));
            }
            let fields: Vec<Vec<String>> = self.observe(self.redis.run(&read).await)?;
            let mut del = Batch::new();
            let mut counted = Vec::new();
            for (u, fields) in chunk.iter().zip(fields) {
                let (kept, stale): (Vec<String>, Vec<String>) = fields
                    .into_iter()
                    .filter(|f| f.starts_with(&prefix))
                    .partition(|f| keep.is_some_and(|k| k.contains(f)));
                if !stale.is_empty() {
                    removed += stale.len();
                    let key = self.keys.user_of(u);
                    del.add(Cmd::hdel(&key, stale)).ignore().add(Cmd::hlen(&key));
                    counted.push(u);
                }
                if keep.is_some() && kept.is_empty() {
                    del.add(Cmd::srem(self.keys.users(node), u)).ignore();
                }
            }
            if del.is_empty() {
                continue; // nothing stale here (Redis refuses an empty pipeline)
            }
            let left: Vec<usize> = self.observe(self.redis.run(&del).await)?;
            let emptied = counted.into_iter().zip(left).filter(|(_, n)| *n == 0);
            gone.extend(emptied.filter_map(|(u, _)| parse_user(u)));
        }
        Ok((removed, gone))
    }

    /// Removes this node and every one of its entries (graceful shutdown).
    pub(super) async fn leave(&self) -> Result<(), DirectoryError> {
        self.sweep(&self.node_id, Some(&HashSet::new())).await?;
        let r: redis::RedisResult<()> = self.redis.clone().del(self.keys.node(&self.node_id)).await;
        self.observe(r)?;
        self.forget_node(&self.node_id).await
    }

    /// Removes `node`'s tables and its id from the set of nodes (each its own command: on a
    /// Redis Cluster they live in different slots).
    async fn forget_node(&self, node: &str) -> Result<(), DirectoryError> {
        let mut batch = Batch::new();
        batch.add(Cmd::del(self.keys.users(node))).ignore();
        batch.add(Cmd::del(self.keys.conns(node))).ignore();
        batch.add(Cmd::srem(self.keys.nodes(), node)).ignore();
        let r: redis::RedisResult<()> = self.redis.run(&batch).await;
        self.observe(r)
    }
}
