//! Cluster mode against the real services (scripts/services.sh): Redis session directory and
//! inbox, etcd registry and discovery, Kafka pushes and presence, node-to-node routing, faults.

mod directory;
mod etcd;
mod kafka;

use std::{collections::HashSet, time::Duration};

use etcd_client::{Client as Etcd, GetOptions};
use wsgw::{
    auth::Identity,
    cluster::{NodeEntry, SessionQuery},
    protocol::{CommandType, Serializer, pb::NodeList},
};

use crate::support::{
    Behaviour, Client, TestBackend, TestNode,
    cluster::{self, Private, Scope},
    code, free_port,
};

const JSON: Serializer = Serializer::Json;
const KAFKA_WAIT: Duration = Duration::from_secs(30);

async fn etcd() -> Etcd {
    Etcd::connect([cluster::ETCD], None).await.expect("etcd")
}

async fn registered(scope: &Scope) -> Vec<NodeEntry> {
    let prefix = format!("/{}/services/gateway/node/", scope.name);
    let resp = etcd().await.get(prefix, Some(GetOptions::new().with_prefix())).await.expect("get");
    resp.kvs().iter().map(|kv| serde_json::from_slice(kv.value()).expect("Node JSON")).collect()
}

/// Waits until `node`'s directory lists `n` live connections of (user, biz).
async fn await_sessions(node: &TestNode, user: i64, biz: i64, n: usize) {
    let dir = node.handle.directory().clone();
    let who = Identity { biz_id: biz, user_id: user };
    crate::assert_within!(
        10,
        dir.sessions(SessionQuery::User(who)).await.map(|s| s.len()).unwrap_or(usize::MAX) == n,
        "directory never listed {n} sessions of {user}"
    );
}

fn is_push(m: &wsgw::protocol::Message, key: &str, body: &[u8]) -> bool {
    m.cmd == i32::from(CommandType::DownstreamMessage) && m.key == key && m.body.as_ref() == body
}
