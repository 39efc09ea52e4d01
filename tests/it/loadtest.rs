//! `wsgw loadtest` against an in-process node and backend: the report's counts are exact.

use std::{sync::Arc, time::Duration};

use wsgw::{
    loadtest::{self, BroadcastPlan, Plan, PushPlan, Stats, Tokens},
    protocol::Serializer,
};

use crate::support::{Behaviour, SECRET, TestBackend, TestNode};

const BIZ: i64 = 9999;

fn plan(node: &TestNode, connections: usize) -> Plan {
    Plan {
        urls: vec![node.url("")],
        connections,
        ramp: 1000.0,
        tokens: Tokens::Secret(SECRET.into()),
        biz_id: BIZ,
        first_user: 1,
        sources: vec!["127.0.0.1".parse().expect("ip")],
        serializer: Serializer::Json,
        duration: Duration::from_secs(20),
        upstream_rate: 0.0,
        upstream_count: None,
        body_size: 32,
        push: None,
        broadcast: None,
        churn_rate: 0.0,
        server_pid: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_counts_are_exact() {
    let backend = TestBackend::spawn(BIZ, Behaviour::default()).await;
    let node = TestNode::with_backend(BIZ, backend.addr).spawn().await;
    let plan = Plan { upstream_rate: 200.0, upstream_count: Some(5), ..plan(&node, 20) };
    let report = loadtest::run(plan, Arc::new(Stats::new())).await.expect("run");
    assert_eq!((report.connections.opened, report.connections.target), (20, 20));
    assert_eq!(report.upstream.sent, 100);
    assert_eq!(report.upstream.answered, 100, "every message acknowledged: {report}");
    assert!(report.upstream.errors.is_empty() && report.upstream.rate_limited == 0);
    assert_eq!(report.upstream.latency_ms.count, 100);
    assert_eq!(backend.calls(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_and_broadcast_counts_are_exact() {
    let node = TestNode::spawn().await;
    let push =
        PushPlan { addr: node.grpc_addr.to_string(), token: None, rate: 500.0, count: Some(60) };
    let broadcast = BroadcastPlan {
        addr: node.grpc_addr.to_string(),
        token: None,
        count: 3,
        interval: Duration::from_millis(10),
    };
    let plan = Plan { push: Some(push), broadcast: Some(broadcast), ..plan(&node, 15) };
    let report = loadtest::run(plan, Arc::new(Stats::new())).await.expect("run");
    assert_eq!((report.push.sent, report.push.answered), (60, 60), "{report}");
    assert!(report.push.errors.is_empty(), "{report}");
    assert_eq!((report.broadcast.sent, report.broadcast.deliveries), (3, 45), "{report}");
    assert_eq!(report.broadcast.fanout_ms.count, 3);
    crate::assert_eventually!(node.handle.pending_pushes() == 0, "every push was acknowledged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_failures_are_reported_by_reason() {
    let node = TestNode::builder().config(|c| c.server.websocket.max_connections = 5).spawn().await;
    let plan = Plan {
        tokens: Tokens::Secret(SECRET.into()),
        duration: Duration::from_millis(200),
        ..plan(&node, 8)
    };
    let report = loadtest::run(plan, Arc::new(Stats::new())).await.expect("run");
    assert_eq!(report.connections.opened, 5);
    assert_eq!(report.connections.failed.get("HTTP 503"), Some(&3), "{report}");
    let json = serde_json::to_value(&report).expect("json");
    assert_eq!(json["connections"]["failed"]["HTTP 503"], 3);
}
