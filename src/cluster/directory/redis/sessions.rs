//! The read side for operators: which sessions the directory holds, by user or business,
//! on live nodes only.

use std::collections::{BTreeMap, HashSet};

use redis::AsyncCommands;

use super::{DirectoryError, RedisDirectory, SessionEntry, SessionQuery};

impl RedisDirectory {
    /// The ids of live nodes (those that refreshed their entry within the TTL).
    pub async fn live_nodes(&self) -> Result<Vec<String>, DirectoryError> {
        Ok(self.live_entries().await?.into_keys().collect())
    }

    /// The sessions matching `query`, on live nodes only, ordered by node and connection.
    pub async fn sessions(&self, query: SessionQuery) -> Result<Vec<SessionEntry>, DirectoryError> {
        let live: HashSet<String> = self.live_nodes().await?.into_iter().collect();
        let mut redis = self.redis.clone();
        let mut out = Vec::new();
        if let SessionQuery::User(id) = query {
            let fields: BTreeMap<String, u64> =
                self.observe(redis.hgetall(self.keys.user(id)).await)?;
            for (field, since_ms) in fields {
                let Some((node, conn)) = field.rsplit_once('|') else { continue };
                let Ok(conn) = conn.parse() else { continue };
                if live.contains(node) {
                    let (biz_id, user_id) = (id.biz_id, id.user_id);
                    let remote = String::new();
                    out.push(SessionEntry {
                        node: node.into(),
                        conn,
                        biz_id,
                        user_id,
                        since_ms,
                        remote,
                    });
                }
            }
            return Ok(self.with_remotes(out).await);
        }
        let mut nodes: Vec<&String> = live.iter().collect();
        nodes.sort();
        for node in nodes {
            let conns: BTreeMap<u64, String> =
                self.observe(redis.hgetall(self.keys.conns(node)).await)?;
            for (conn, value) in conns {
                let Some(e) = parse_conn(node, conn, &value) else { continue };
                if !matches!(query, SessionQuery::Biz(b) if b != e.biz_id) {
                    out.push(e);
                }
            }
        }
        Ok(out)
    }

    /// Fills in the remote addresses of user entries from their nodes' connection tables.
    async fn with_remotes(&self, mut entries: Vec<SessionEntry>) -> Vec<SessionEntry> {
        let mut redis = self.redis.clone();
        for e in &mut entries {
            let v: redis::RedisResult<Option<String>> =
                redis.hget(self.keys.conns(&e.node), e.conn).await;
            if let Ok(Some(v)) = v
                && let Some(full) = parse_conn(&e.node, e.conn, &v)
            {
                e.remote = full.remote;
            }
        }
        entries
    }
}

fn parse_conn(node: &str, conn: u64, value: &str) -> Option<SessionEntry> {
    let mut parts = value.splitn(4, ':');
    Some(SessionEntry {
        node: node.to_owned(),
        conn,
        biz_id: parts.next()?.parse().ok()?,
        user_id: parts.next()?.parse().ok()?,
        since_ms: parts.next()?.parse().ok()?,
        remote: parts.next()?.to_owned(),
    })
}
