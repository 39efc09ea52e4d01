//! Pushes through the gRPC PushService to every connection of a user, retried until acked.

use std::time::Duration;

use tokio::process::Command;

use bytes::Bytes;
use tonic::Code;
use wsgw::{
    config::{EncryptionAlgorithm, EncryptionConfig},
    protocol::{CommandType, Message, Serializer},
};

use crate::support::{Client, TestNode, code};

const BIZ: i64 = 9999;

async fn expect_push(c: &mut Client, key: &str) -> Message {
    let m = c.recv_msg(Serializer::Json).await;
    assert_eq!((m.cmd, m.key.as_str()), (CommandType::DownstreamMessage as i32, key));
    m
}

async fn ack(c: &mut Client, key: &str) {
    let ack =
        Message { cmd: CommandType::DownstreamAck.into(), key: key.into(), body: Bytes::new() };
    c.send(&ack, Serializer::Json).await;
}

fn retrying(interval_ms: u64, max_retries: u32) -> impl FnOnce(&mut wsgw::config::Config) {
    move |c| {
        c.downstream.retry_interval = Duration::from_millis(interval_ms);
        c.downstream.max_retries = max_retries;
    }
}

#[tokio::test]
async fn a_push_reaches_every_connection_of_the_user_and_nobody_else() {
    let node = TestNode::spawn().await;
    let mut devices =
        vec![node.connect(42, BIZ).await, node.connect(42, BIZ).await, node.connect(42, BIZ).await];
    let mut other = node.connect(43, BIZ).await;
    assert_eq!(node.push(42, BIZ, "p1", "你好".as_bytes()).await.expect("delivered"), 3);
    for d in &mut devices {
        assert_eq!(&expect_push(d, "p1").await.body[..], "你好".as_bytes());
    }
    ack(&mut devices[0], "p1").await;
    crate::assert_eventually!(node.handle.pending_pushes() == 0, "acked by one device");
    other.send_text(r#"{"cmd":"COMMAND_TYPE_HEARTBEAT","key":"only-mine"}"#).await;
    assert_eq!(other.recv_msg(Serializer::Json).await.key, "only-mine", "user 43 got no push");
    assert_eq!(node.metric(r#"websocket_gateway_pushes_total{event="delivered"}"#).await, 1.0);
    assert_eq!(node.metric(r#"websocket_gateway_pushes_total{event="acked"}"#).await, 1.0);
}

#[tokio::test]
async fn a_push_is_retransmitted_until_acknowledged() {
    let node = TestNode::builder().config(retrying(150, 10)).spawn().await;
    let mut c = node.connect(42, BIZ).await;
    node.push(42, BIZ, "r1", b"hello").await.expect("delivered");
    expect_push(&mut c, "r1").await;
    let again = expect_push(&mut c, "r1").await;
    assert_eq!(&again.body[..], b"hello", "the original body again");
    ack(&mut c, "r1").await;
    crate::assert_eventually!(node.handle.pending_pushes() == 0, "ack clears the push");
    c.listen_for(Duration::from_millis(500)).await; // no further copies
    assert!(node.metric(r#"websocket_gateway_pushes_total{event="retried"}"#).await >= 1.0);
}

#[tokio::test]
async fn an_unacknowledged_push_is_given_up_and_counted() {
    let node = TestNode::builder().config(retrying(100, 2)).spawn().await;
    let mut c = node.connect(42, BIZ).await;
    node.push(42, BIZ, "g1", b"x").await.expect("delivered");
    for _ in 0..3 {
        expect_push(&mut c, "g1").await;
    }
    crate::assert_eventually!(
        node.metric(r#"websocket_gateway_pushes_total{event="given_up"}"#).await == 1.0,
        "given up after 2 retries"
    );
    assert_eq!(node.handle.pending_pushes(), 0);
    c.listen_for(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn encrypted_pushes_are_encrypted_afresh_on_every_retransmission() {
    let config =
        EncryptionConfig { algorithm: EncryptionAlgorithm::AesGcm, key: "0123456789abcdef".into() };
    let cipher = config.cipher().expect("key").expect("on");
    let node = TestNode::builder()
        .config(retrying(100, 5))
        .config(|c| c.protocol.encryption = config.clone())
        .spawn()
        .await;
    let mut c = node.connect(42, BIZ).await;
    node.push(42, BIZ, "e1", b"plain").await.expect("delivered");
    let first = expect_push(&mut c, "e1").await;
    let second = expect_push(&mut c, "e1").await;
    assert_ne!(first.body, second.body, "a fresh nonce, not the old ciphertext re-encrypted");
    assert_eq!(cipher.open(&first.body).expect("decrypts").as_ref(), b"plain");
    assert_eq!(cipher.open(&second.body).expect("decrypts").as_ref(), b"plain");
}

#[tokio::test]
async fn a_push_for_an_absent_user_or_without_the_token_is_refused_clearly() {
    let node =
        TestNode::builder().config(|c| c.server.grpc.token = "push-token".into()).spawn().await;
    let status = node.push(42, BIZ, "x", b"x").await.expect_err("no token");
    assert_eq!(status.code(), Code::Unauthenticated);
    let open = TestNode::spawn().await;
    let status = open.push(42, BIZ, "x", b"x").await.expect_err("nobody connected");
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains("user 42 of biz 9999"), "{}", status.message());
    assert_eq!(
        open.push(0, BIZ, "x", b"x").await.expect_err("bad id").code(),
        Code::InvalidArgument
    );
}

#[tokio::test]
async fn wsgw_push_delivers_and_exits_non_zero_when_not_delivered() {
    let node =
        TestNode::builder().config(|c| c.server.grpc.token = "push-token".into()).spawn().await;
    let mut c = node.connect(42, BIZ).await;
    let addr = node.grpc_addr.to_string();
    let wsgw = |args: &[&str]| {
        let mut cmd = Command::from(crate::support::wsgw());
        cmd.arg("push").args(["--addr", &addr, "--token", "push-token"]).args(args);
        async move { cmd.output().await.expect("run wsgw push") }
    };
    let out =
        wsgw(&["--user", "42", "--biz", "9999", "--key", "cli-1", "hello from the CLI"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("delivered to 1 connection"));
    assert_eq!(&expect_push(&mut c, "cli-1").await.body[..], b"hello from the CLI");
    let out = wsgw(&["--user", "7", "--biz", "9999", "nobody"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not delivered"));
}

#[tokio::test]
async fn an_oversized_push_or_broadcast_is_refused_and_closes_nobody() {
    let node = TestNode::spawn().await;
    let mut c = node.connect(42, BIZ).await;
    // Larger than the client's whole outbound queue (256 KiB): before the limit existed this
    // closed every connection of the user as a slow consumer.
    let huge = vec![b'x'; 300 * 1024];
    let refused = node.push(42, BIZ, "huge", &huge).await.expect_err("refused");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("max_push_size"), "{}", refused.message());
    let mut client = node.push_client().await;
    let broadcast = wsgw::protocol::pb::BroadcastRequest {
        biz_id: BIZ,
        key: "all".into(),
        body: huge.clone().into(),
    };
    let refused = client.broadcast(broadcast).await.expect_err("refused");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(node.push(42, BIZ, "small", b"fine").await.expect("delivered"), 1);
    expect_push(&mut c, "small").await;
    assert_eq!(node.metric(r#"websocket_gateway_pushes_total{event="too_large"}"#).await, 2.0);
    assert_eq!(node.handle.connections(), 1, "the client is still connected");
}

#[tokio::test]
async fn a_draining_node_waits_for_acks_then_counts_what_is_left_as_dropped() {
    let mut node = TestNode::builder()
        .config(retrying(60_000, 3))
        .config(|c| c.shutdown.ack_wait = Duration::from_secs(2))
        .spawn()
        .await;
    let mut c = node.connect(42, BIZ).await;
    for key in ["acked-while-draining", "lost"] {
        node.push(42, BIZ, key, b"x").await.expect("delivered");
        expect_push(&mut c, key).await;
    }
    let handle = node.handle.clone();
    let drained = node.begin_shutdown();
    // The node waits for the acks before it tells the client to go: this one still counts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.ack("acked-while-draining", Serializer::Json).await;
    crate::assert_eventually!(handle.pending_pushes() == 1, "acknowledged during the drain");
    assert_eq!(code(&c.closed().await).0, 1001, "then told to go");
    drained.await.expect("drained");
    let text = handle.metrics().render();
    for line in [
        "websocket_gateway_pushes_total{event=\"acked\"} 1",
        "websocket_gateway_pushes_total{event=\"dropped\"} 1",
    ] {
        assert!(text.contains(line), "{line} in {text}");
    }
}

#[tokio::test]
async fn unacknowledged_push_bytes_are_bounded_and_acks_make_room() {
    let node = TestNode::builder()
        .config(|c| {
            c.downstream.max_push_size = bytesize::ByteSize::b(512);
            c.downstream.max_pending_bytes = bytesize::ByteSize::kib(1);
        })
        .spawn()
        .await;
    let mut c = node.connect(42, BIZ).await;
    let body = [b'x'; 400];
    for key in ["b1", "b2"] {
        assert_eq!(node.push(42, BIZ, key, &body).await.expect("room"), 1);
        expect_push(&mut c, key).await;
    }
    let full = node.push(42, BIZ, "b3", &body).await.expect_err("over 1 KiB pending");
    assert_eq!(full.code(), Code::ResourceExhausted, "{full:?}");
    ack(&mut c, "b1").await;
    crate::assert_eventually!(
        node.push(42, BIZ, "b4", &body).await.is_ok(),
        "the ack freed 400 bytes"
    );
}

/// Pushes to a client that reads nothing for a while: the first are written straight to its
/// socket, one is cut short when the socket fills (its end waits for the connection's task),
/// the rest queue behind it. Once the client reads, every push arrives whole and in order.
#[tokio::test]
async fn pushes_written_straight_to_a_slow_reader_arrive_whole_and_in_order() {
    let node = TestNode::builder()
        .config(|c| {
            c.downstream.max_push_size = bytesize::ByteSize::mib(1);
            c.limits.outbound_queue_bytes = bytesize::ByteSize::mib(128);
            c.downstream.retry_interval = Duration::from_secs(60);
        })
        .spawn()
        .await;
    let mut client = node.connect(44, BIZ).await;
    const N: u8 = 48;
    for i in 0..N {
        let body = vec![b'a' + i % 26; 512 * 1024];
        let key = format!("big-{i}");
        assert_eq!(node.push(44, BIZ, &key, &body).await.expect("delivered"), 1, "{key}");
    }
    for i in 0..N {
        let m = expect_push(&mut client, &format!("big-{i}")).await;
        assert_eq!(m.body.len(), 512 * 1024);
        assert!(m.body.iter().all(|&b| b == b'a' + i % 26), "push {i} intact");
    }
    ack(&mut client, "big-0").await;
    client.send_text(r#"{"cmd":"COMMAND_TYPE_HEARTBEAT","key":"after"}"#).await;
    assert_eq!(client.recv_msg(Serializer::Json).await.key, "after", "still in step");
}

/// A broadcast after a quiet spell is written straight to the connections (one task per
/// runtime worker: two here), the ones right behind it queue; every connection of the business
/// gets each of them once, in order, and nobody else does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasts_written_directly_or_queued_reach_every_connection_once_in_order() {
    let node = TestNode::spawn().await;
    let mut clients = Vec::new();
    for user in 0..40 {
        clients.push(node.connect(100 + user, BIZ).await);
    }
    let mut outsider = node.connect(7, BIZ + 1).await;
    let mut push = node.push_client().await;
    let keys = ["first", "second", "third"];
    for key in keys {
        let req = wsgw::protocol::pb::BroadcastRequest {
            biz_id: BIZ,
            key: key.into(),
            body: key.as_bytes().to_vec().into(),
        };
        let r = push.broadcast(req).await.expect("broadcast");
        assert_eq!(r.get_ref().connections, 40, "{key}");
    }
    for c in &mut clients {
        for key in keys {
            let m = c.recv_msg(Serializer::Json).await;
            assert_eq!((m.key.as_str(), &m.body[..]), (key, key.as_bytes()));
        }
    }
    outsider.send_text(r#"{"cmd":"COMMAND_TYPE_HEARTBEAT","key":"mine"}"#).await;
    assert_eq!(outsider.recv_msg(Serializer::Json).await.key, "mine", "no broadcast of biz 9999");
}
