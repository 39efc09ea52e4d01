//! Node lifecycle: health, readiness, metrics exposition and graceful drain.

use std::time::Duration;

use tokio::net::TcpStream;
use wsgw::{protocol::Serializer, shutdown::Phase};

use crate::support::{TestNode, code};

#[tokio::test]
async fn governor_serves_health_ready_and_metrics() {
    let node = TestNode::spawn().await;
    assert_eq!(node.get("/health").await, (200, "ok\n".into()));
    assert_eq!(node.get("/ready").await, (200, "ready\n".into()));
    let mut c = node.connect(42, 9999).await;
    c.send_text(r#"{"cmd":"COMMAND_TYPE_HEARTBEAT","key":"k"}"#).await;
    c.recv_msg(Serializer::Json).await;
    let (status, text) = node.get("/metrics").await;
    assert_eq!(status, 200);
    for line in [
        r#"websocket_gateway_online_users{biz_id="9999"} 1"#,
        r#"websocket_gateway_messages_total{biz_id="9999",direction="upstream"} 1"#,
        r#"websocket_gateway_messages_total{biz_id="9999",direction="downstream"} 1"#,
        r#"websocket_gateway_message_size_bytes_total{biz_id="9999",direction="upstream"} 42"#,
        r#"websocket_gateway_commands_total{cmd="COMMAND_TYPE_HEARTBEAT",direction="upstream"} 1"#,
        "websocket_gateway_connections_open 1",
        r#"websocket_gateway_handshakes_total{outcome="ok"} 1"#,
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
    }
    assert!(!text.contains(crate::support::SECRET), "no secrets in metrics");
}

#[tokio::test]
async fn drain_says_going_away_and_finishes_when_the_last_client_leaves() {
    let mut node = TestNode::builder()
        .config(|c| {
            c.shutdown.drain_timeout = Duration::from_secs(30);
            c.limits.pong_timeout = Duration::from_secs(1);
        })
        .spawn()
        .await;
    let mut polite = node.connect(1, 7).await;
    let mut deaf = node.connect(2, 7).await;
    let (ws_addr, handle) = (node.ws_addr, node.handle.clone());
    let started = tokio::time::Instant::now();
    let drained = node.begin_shutdown();
    assert_eq!(code(&polite.closed().await), (1001, "going away".into()));
    crate::assert_eventually!(handle.phase() == Phase::Draining, "draining");
    // `deaf` has not answered the close yet: the node is still draining and not ready.
    assert_eq!(node.get("/ready").await, (503, "draining\n".into()));
    assert!(TcpStream::connect(ws_addr).await.is_err(), "no longer accepting");
    assert_eq!(code(&deaf.closed().await), (1001, "going away".into()));
    tokio::time::timeout(Duration::from_secs(10), drained)
        .await
        .expect("drained in time")
        .expect("node task");
    assert!(started.elapsed() < Duration::from_secs(10), "did not wait for the 30 s drain timeout");
    assert_eq!(handle.phase(), Phase::Stopped);
    assert_eq!(handle.connections(), 0);
}

#[tokio::test]
async fn drain_timeout_bounds_the_wait_for_stuck_clients() {
    let mut node = TestNode::builder()
        .config(|c| {
            c.shutdown.drain_timeout = Duration::from_millis(300);
            c.limits.pong_timeout = Duration::from_secs(60);
        })
        .spawn()
        .await;
    let _stuck = node.connect(1, 7).await; // never reads, never answers the close
    let handle = node.handle.clone();
    let drained = node.begin_shutdown();
    tokio::time::timeout(Duration::from_secs(5), drained)
        .await
        .expect("bounded by drain_timeout")
        .expect("task");
    assert_eq!(handle.phase(), Phase::Stopped);
    assert_eq!(handle.connections(), 0);
}
