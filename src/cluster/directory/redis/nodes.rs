//! Which nodes live, as this node last read it: the `node:` entries of every registered node and
//! how long each has left to live (PTTL), read again on every refresh (`session_ttl / 3`).
//! Routing maps the node ids the ROUTE script names to gRPC addresses here instead of reading
//! `node:` keys inside the script (which a Redis Cluster forbids: they are other slots). An entry
//! counts as alive until the moment its key expires unless refreshed, so a dead node stops
//! being routed to when its key expires, as with a read of the key itself; an id not in the
//! table, or past that moment, is read from Redis at once.

use std::{collections::HashMap, sync::RwLock, time::Duration};

use tokio::time::Instant;

use redis::{AsyncCommands, Cmd};

use super::{DirectoryError, RedisDirectory, conn::Batch, replies::grpc_of};
use crate::cluster::directory::Route;

/// A live node's `node:` entry and its remaining time to live.
pub(super) struct NodeEntry {
    pub(super) entry: String,
    pub(super) ttl: Duration,
}

/// Live node id → its gRPC address and the moment its entry expires unless refreshed.
#[derive(Default)]
pub(super) struct NodeTable(RwLock<HashMap<String, (String, Instant)>>);

impl NodeTable {
    /// The gRPC address of `id`, while its entry has not expired.
    fn get(&self, id: &str, now: Instant) -> Option<String> {
        let table = self.0.read().unwrap_or_else(|e| e.into_inner());
        table.get(id).filter(|(_, until)| *until > now).map(|(grpc, _)| grpc.clone())
    }

    fn set(&self, id: &str, node: &NodeEntry, now: Instant) {
        let mut table = self.0.write().unwrap_or_else(|e| e.into_inner());
        table.insert(id.to_owned(), (grpc_of(&node.entry), now + node.ttl));
    }

    fn replace(&self, live: &HashMap<String, NodeEntry>, now: Instant) {
        let table =
            live.iter().map(|(id, n)| (id.clone(), (grpc_of(&n.entry), now + n.ttl))).collect();
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = table;
    }
}

/// A GET and PTTL of a `node:` key as an entry: none when the key is gone (PTTL −2); a key
/// without expiry (−1, only if someone wrote it by hand) counts as alive for one second.
fn entry((value, pttl): (Option<String>, i64)) -> Option<NodeEntry> {
    let ttl = match pttl {
        -1 => Duration::from_secs(1),
        ms => Duration::from_millis(u64::try_from(ms).ok()?),
    };
    Some(NodeEntry { entry: value?, ttl })
}

impl RedisDirectory {
    /// Every live node's id, `node:` entry and its time to live (expired nodes are left out).
    pub(super) async fn live_entries(&self) -> Result<HashMap<String, NodeEntry>, DirectoryError> {
        let mut redis = self.redis.clone();
        let ids: Vec<String> = self.observe(redis.smembers(self.keys.nodes()).await)?;
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let mut batch = Batch::new();
        for id in &ids {
            batch.add(Cmd::get(self.keys.node(id))).add(Cmd::pttl(self.keys.node(id)));
        }
        let replies: Vec<(Option<String>, i64)> = self.observe(self.redis.run(&batch).await)?;
        Ok(ids.into_iter().zip(replies).filter_map(|(id, r)| Some((id, entry(r)?))).collect())
    }

    /// Reads the table of live nodes again (on every refresh).
    pub(super) async fn reload_nodes(&self) {
        let now = Instant::now();
        if let Ok(live) = self.live_entries().await {
            self.nodes.replace(&live, now);
        }
    }

    /// Reads one node's entry (absent: it is not alive).
    async fn read_node(&self, id: &str) -> Result<Option<NodeEntry>, DirectoryError> {
        let mut batch = Batch::new();
        batch.add(Cmd::get(self.keys.node(id))).add(Cmd::pttl(self.keys.node(id)));
        let reply: (Option<String>, i64) = self.observe(self.redis.run(&batch).await)?;
        Ok(entry(reply))
    }

    /// Where the nodes named by ROUTE are; those not alive are left out. None: the push waits
    /// in the inbox.
    pub(super) async fn resolve(&self, ids: Vec<String>) -> Result<Route, DirectoryError> {
        let mut nodes = Vec::with_capacity(ids.len());
        for id in ids {
            let now = Instant::now();
            if let Some(grpc) = self.nodes.get(&id, now) {
                nodes.push((id, grpc));
                continue;
            }
            if let Some(node) = self.read_node(&id).await? {
                self.nodes.set(&id, &node, now);
                nodes.push((id, grpc_of(&node.entry)));
            }
        }
        Ok(match nodes.is_empty() {
            true => Route::Stored,
            false => Route::Nodes(nodes),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_lives_as_long_as_its_key() {
        let json = r#"{"grpc":"10.0.0.1:9004"}"#.to_owned();
        assert!(entry((None, -2)).is_none(), "gone");
        assert!(entry((Some(json.clone()), -2)).is_none(), "expired between GET and PTTL");
        assert_eq!(
            entry((Some(json.clone()), 1500)).map(|e| e.ttl),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(entry((Some(json.clone()), -1)).map(|e| e.ttl), Some(Duration::from_secs(1)));

        let (table, now) = (NodeTable::default(), Instant::now());
        let live = HashMap::from([(
            "n1".to_owned(),
            NodeEntry { entry: json, ttl: Duration::from_secs(2) },
        )]);
        table.replace(&live, now);
        assert_eq!(table.get("n1", now + Duration::from_secs(1)).as_deref(), Some("10.0.0.1:9004"));
        assert_eq!(table.get("n1", now + Duration::from_secs(2)), None, "expired with its key");
        assert_eq!(table.get("n2", now), None, "unknown");
    }
}
