//! Client messages through the gateway to a real tonic backend, and their acknowledgements.

use std::time::Duration;

use bytes::Bytes;
use tonic::Code;
use wsgw::{
    config::{EncryptionAlgorithm, EncryptionConfig},
    protocol::{CommandType, ErrorCode, ErrorInfo, Message, Serializer, pb::OnReceiveResponse},
};

use crate::support::{Behaviour, Client, TestBackend, TestNode, dead_addr};

const BIZ: i64 = 9999;

fn upstream(key: &str, body: &[u8]) -> Message {
    Message {
        cmd: CommandType::UpstreamMessage.into(),
        key: key.into(),
        body: Bytes::copy_from_slice(body),
    }
}

fn heartbeat(key: &str) -> Message {
    Message { cmd: CommandType::Heartbeat.into(), key: key.into(), body: Bytes::new() }
}

fn error_of(m: &Message, s: Serializer) -> ErrorCode {
    assert_eq!(m.cmd, CommandType::Error as i32, "expected an error, got {m:?}");
    let info: ErrorInfo = s.decode(&m.body).expect("ErrorInfo");
    ErrorCode::try_from(info.code).expect("known code")
}

#[tokio::test]
async fn upstream_is_acknowledged_with_the_backend_response_in_both_serializers() {
    for s in [Serializer::Json, Serializer::Proto] {
        let backend = TestBackend::spawn(BIZ, Behaviour::default()).await;
        let node = TestNode::with_backend(BIZ, backend.addr)
            .config(|c| c.protocol.serializer = s)
            .spawn()
            .await;
        let mut c = node.connect(42, BIZ).await;
        c.send(&upstream("3f2a-01", br#"{"text":"hello"}"#), s).await;
        let ack = c.recv_msg(s).await;
        assert_eq!((ack.cmd, ack.key.as_str()), (CommandType::UpstreamAck as i32, "3f2a-01"));
        let response: OnReceiveResponse = s.decode(&ack.body).expect("OnReceiveResponse body");
        assert_eq!(response, OnReceiveResponse { msg_id: 1, biz_id: BIZ });
        if s == Serializer::Json {
            assert_eq!(
                &ack.body[..],
                br#"{"msgId":"1","bizId":"9999"}"#,
                "canonical JSON, int64 as strings"
            );
        }
        assert_eq!(
            backend.received(),
            vec![("3f2a-01".into(), Bytes::from_static(br#"{"text":"hello"}"#))]
        );
        // The backend is told who sent it, as metadata (the message stays the original's).
        let calls = backend.senders();
        let sender: std::collections::HashMap<_, _> = calls[0].iter().cloned().collect();
        assert_eq!(sender["x-wsgw-user-id"], "42");
        assert_eq!(sender["x-wsgw-biz-id"], BIZ.to_string());
        assert_eq!(sender["x-wsgw-node-id"], "test-node");
        assert_eq!(sender["x-wsgw-conn-id"], "1", "the node's first connection");
        assert!(sender["x-wsgw-client-addr"].starts_with("127.0.0.1:"), "{sender:?}");
    }
}

#[tokio::test]
async fn a_duplicate_gets_the_same_ack_and_the_backend_is_called_once() {
    let backend = TestBackend::spawn(BIZ, Behaviour::default()).await;
    let node = TestNode::with_backend(BIZ, backend.addr).spawn().await;
    let mut phone = node.connect(42, BIZ).await;
    phone.send(&upstream("k", b"once"), Serializer::Json).await;
    let first = phone.recv_msg(Serializer::Json).await;
    phone.send(&upstream("k", b"once"), Serializer::Json).await;
    assert_eq!(phone.recv_msg(Serializer::Json).await, first);
    // The same user on another device, after reconnecting: still a duplicate.
    let mut laptop = node.connect(42, BIZ).await;
    laptop.send(&upstream("k", b"once"), Serializer::Json).await;
    assert_eq!(laptop.recv_msg(Serializer::Json).await, first);
    assert_eq!(backend.calls(), 1);
    assert_eq!(node.metric("websocket_gateway_upstream_dedup_hits_total").await, 2.0);
    // Another user's same key is a different message.
    let mut other = node.connect(43, BIZ).await;
    other.send(&upstream("k", b"once"), Serializer::Json).await;
    assert_eq!(other.recv_msg(Serializer::Json).await.cmd, CommandType::UpstreamAck as i32);
    assert_eq!(backend.calls(), 2);
}

#[tokio::test]
async fn an_unreachable_backend_gets_a_documented_reply_and_the_node_stays_healthy() {
    let node = TestNode::with_backend(BIZ, dead_addr())
        .config(|c| {
            c.upstream.retries = 2;
            c.upstream.circuit_failures = 100;
        })
        .spawn()
        .await;
    let mut c = node.connect(42, BIZ).await;
    c.send(&upstream("k1", b"x"), Serializer::Json).await;
    let reply = c.recv_msg(Serializer::Json).await;
    assert_eq!(
        (reply.key.as_str(), error_of(&reply, Serializer::Json)),
        ("k1", ErrorCode::BackendUnavailable)
    );
    c.send(&heartbeat("alive"), Serializer::Json).await;
    assert_eq!(c.recv_msg(Serializer::Json).await.key, "alive");
    assert_eq!(node.get("/ready").await.0, 200);
    assert_eq!(
        node.metric(r#"websocket_gateway_backend_errors_total{biz_id="9999",kind="unavailable"}"#)
            .await,
        3.0
    );
    // Failed messages are not remembered: the client may retry the same key.
    c.send(&upstream("k1", b"x"), Serializer::Json).await;
    assert_eq!(
        error_of(&c.recv_msg(Serializer::Json).await, Serializer::Json),
        ErrorCode::BackendUnavailable
    );
}

#[tokio::test]
async fn a_dead_endpoint_opens_its_circuit_and_is_not_called() {
    let node = TestNode::with_backend(BIZ, dead_addr())
        .config(|c| {
            c.upstream.retries = 0;
            c.upstream.circuit_failures = 2;
            c.upstream.circuit_cooldown = Duration::from_secs(60);
        })
        .spawn()
        .await;
    let mut c = node.connect(42, BIZ).await;
    for key in ["a", "b", "c"] {
        c.send(&upstream(key, b"x"), Serializer::Json).await;
        let reply = c.recv_msg(Serializer::Json).await;
        assert_eq!(error_of(&reply, Serializer::Json), ErrorCode::BackendUnavailable);
    }
    assert_eq!(
        node.metric(r#"websocket_gateway_backend_errors_total{biz_id="9999",kind="unavailable"}"#)
            .await,
        2.0
    );
    assert_eq!(
        node.metric(r#"websocket_gateway_backend_errors_total{biz_id="9999",kind="circuit_open"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_business_without_backend_and_a_rejecting_backend_are_told_apart() {
    let backend = TestBackend::spawn(
        BIZ,
        Behaviour { fail: Some(Code::InvalidArgument), ..Behaviour::default() },
    )
    .await;
    let node = TestNode::with_backend(BIZ, backend.addr).spawn().await;
    let mut c = node.connect(42, BIZ).await;
    c.send(&upstream("r", b"x"), Serializer::Json).await;
    assert_eq!(
        error_of(&c.recv_msg(Serializer::Json).await, Serializer::Json),
        ErrorCode::BackendRejected
    );
    assert_eq!(backend.calls(), 1, "a business rejection is not retried");
    let mut stranger = node.connect(42, 1234).await;
    stranger.send(&upstream("n", b"x"), Serializer::Json).await;
    assert_eq!(
        error_of(&stranger.recv_msg(Serializer::Json).await, Serializer::Json),
        ErrorCode::NoBackend
    );
}

#[tokio::test]
async fn a_slow_backend_does_not_delay_heartbeats() {
    let slow = Behaviour { delay: Duration::from_millis(700), ..Behaviour::default() };
    let backend = TestBackend::spawn(BIZ, slow).await;
    let node = TestNode::with_backend(BIZ, backend.addr)
        .config(|c| c.upstream.timeout = Duration::from_secs(5))
        .spawn()
        .await;
    let mut c = node.connect(42, BIZ).await;
    c.send(&upstream("slow", b"x"), Serializer::Json).await;
    c.send(&heartbeat("hb"), Serializer::Json).await;
    let started = tokio::time::Instant::now();
    let first = c.recv_msg(Serializer::Json).await;
    assert_eq!((first.cmd, first.key.as_str()), (CommandType::Heartbeat as i32, "hb"));
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "the heartbeat did not wait for the backend"
    );
    assert_eq!(c.recv_msg(Serializer::Json).await.cmd, CommandType::UpstreamAck as i32);
}

#[tokio::test]
async fn beyond_the_in_flight_limit_the_client_is_rate_limited() {
    let slow = Behaviour { delay: Duration::from_millis(300), ..Behaviour::default() };
    let backend = TestBackend::spawn(BIZ, slow).await;
    let node = TestNode::with_backend(BIZ, backend.addr)
        .config(|c| c.upstream.max_in_flight = 2)
        .spawn()
        .await;
    let mut c = node.connect(42, BIZ).await;
    for key in ["a", "b", "c"] {
        c.send(&upstream(key, b"x"), Serializer::Json).await;
    }
    let first = c.recv_msg(Serializer::Json).await;
    assert_eq!(
        (first.cmd, first.key.as_str(), first.body.len()),
        (CommandType::RateLimitExceeded as i32, "c", 0)
    );
    let mut acked: Vec<String> = Vec::new();
    for _ in 0..2 {
        let m = c.recv_msg(Serializer::Json).await;
        assert_eq!(m.cmd, CommandType::UpstreamAck as i32);
        acked.push(m.key);
    }
    acked.sort();
    assert_eq!(acked, ["a", "b"]);
    c.send(&upstream("c", b"x"), Serializer::Json).await;
    assert_eq!(
        c.recv_msg(Serializer::Json).await.cmd,
        CommandType::UpstreamAck as i32,
        "slots are given back"
    );
}

/// One user's connections together get `max_in_flight_per_user` backend calls, whatever each
/// connection's own limit: the fourth message across two connections is refused, while another
/// user of the same business is still served.
#[tokio::test]
async fn one_user_cannot_take_more_than_its_share_of_the_backend_calls() {
    let slow = Behaviour { delay: Duration::from_millis(400), ..Behaviour::default() };
    let backend = TestBackend::spawn(BIZ, slow).await;
    let node = TestNode::with_backend(BIZ, backend.addr)
        .config(|c| {
            c.upstream.max_in_flight = 8;
            c.upstream.max_in_flight_per_user = 3;
        })
        .spawn()
        .await;
    let (mut a1, mut a2) = (node.connect(42, BIZ).await, node.connect(42, BIZ).await);
    for key in ["a", "b"] {
        a1.send(&upstream(key, b"x"), Serializer::Json).await;
    }
    // the heartbeat's answer says a and b were taken (a connection's messages are in order)
    a1.send(&heartbeat("hb"), Serializer::Json).await;
    assert_eq!(a1.recv_msg(Serializer::Json).await.cmd, CommandType::Heartbeat as i32);
    for key in ["c", "d"] {
        a2.send(&upstream(key, b"x"), Serializer::Json).await;
    }
    let mut other = node.connect(43, BIZ).await;
    other.send(&upstream("e", b"x"), Serializer::Json).await;

    let mut answers = Vec::new();
    for (c, n) in [(&mut a1, 2), (&mut a2, 2), (&mut other, 1)] {
        for _ in 0..n {
            let m = c.recv_msg(Serializer::Json).await;
            answers.push((m.key, CommandType::try_from(m.cmd).expect("known command")));
        }
    }
    answers.sort_by(|x, y| x.0.cmp(&y.0));
    let refused: Vec<&str> = answers
        .iter()
        .filter(|(_, cmd)| *cmd == CommandType::RateLimitExceeded)
        .map(|(k, _)| k.as_str())
        .collect();
    assert_eq!(refused, ["d"], "only the user's fourth message is over its share: {answers:?}");
    let acked = answers.iter().filter(|(_, c)| *c == CommandType::UpstreamAck).count();
    assert_eq!(acked, 4, "{answers:?}");
    let (_, metrics) = node.get("/metrics").await;
    assert!(metrics.contains("outcome=\"user_limited\""), "the refusal is counted");
}

#[tokio::test]
async fn a_saturated_backend_sheds_load_with_rate_limit_instead_of_timing_out() {
    let slow = Behaviour { delay: Duration::from_millis(400), ..Behaviour::default() };
    let backend = TestBackend::spawn(BIZ, slow).await;
    let node = TestNode::with_backend(BIZ, backend.addr)
        .config(|c| {
            c.upstream.max_calls_per_endpoint = 1;
            c.upstream.timeout = Duration::from_secs(5);
        })
        .spawn()
        .await;
    let mut first = node.connect(1, BIZ).await;
    let mut second = node.connect(2, BIZ).await;
    first.send(&upstream("a", b"x"), Serializer::Json).await;
    crate::assert_eventually!(backend.calls() == 1, "the first call is in flight");
    second.send(&upstream("b", b"x"), Serializer::Json).await;
    let shed = second.recv_msg(Serializer::Json).await;
    assert_eq!((shed.cmd, shed.key.as_str()), (CommandType::RateLimitExceeded as i32, "b"));
    assert_eq!(first.recv_msg(Serializer::Json).await.cmd, CommandType::UpstreamAck as i32);
    assert_eq!(backend.calls(), 1, "the shed message never reached the backend");
    assert_eq!(
        node.metric(r#"websocket_gateway_backend_errors_total{biz_id="9999",kind="busy"}"#).await,
        1.0
    );
    second.send(&upstream("b", b"x"), Serializer::Json).await;
    assert_eq!(
        second.recv_msg(Serializer::Json).await.cmd,
        CommandType::UpstreamAck as i32,
        "retry works"
    );
}

async fn batch_node(backend: &TestBackend) -> TestNode {
    TestNode::with_backend(BIZ, backend.addr)
        .config(|c| {
            c.backends[0].batch.enabled = true;
            c.backends[0].batch.max_size = 4;
            c.backends[0].batch.max_wait = Duration::from_millis(100);
        })
        .spawn()
        .await
}

async fn send_four_and_collect(node: &TestNode) -> Vec<(String, i64)> {
    let mut clients = Vec::new();
    for user in 1..=4 {
        clients.push(node.connect(user, BIZ).await);
    }
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(&upstream(&format!("m{i}"), b"x"), Serializer::Json).await;
    }
    let mut acks = Vec::new();
    for c in &mut clients {
        let ack = c.recv_msg(Serializer::Json).await;
        assert_eq!(ack.cmd, CommandType::UpstreamAck as i32, "{ack:?}");
        let r: OnReceiveResponse = Serializer::Json.decode(&ack.body).expect("response");
        acks.push((ack.key, r.msg_id));
    }
    acks
}

#[tokio::test]
async fn batching_sends_one_call_and_answers_each_client() {
    let backend = TestBackend::spawn(BIZ, Behaviour { batch: true, ..Behaviour::default() }).await;
    let node = batch_node(&backend).await;
    let acks = send_four_and_collect(&node).await;
    assert_eq!((backend.batch_calls(), backend.calls()), (1, 0));
    let received: Vec<String> = backend.received().into_iter().map(|(k, _)| k).collect();
    for (key, msg_id) in acks {
        let position = received.iter().position(|k| *k == key).expect("received") as i64;
        assert_eq!(msg_id, position + 1, "{key}: each client gets its own response");
    }
    // One sender per request, in the order of `reqs`: key m{i} came from user i + 1.
    let calls = backend.senders();
    let users = calls[0].iter().find(|(k, _)| k == "x-wsgw-user-id").expect("user ids");
    let want: Vec<String> =
        received.iter().map(|k| (k[1..].parse::<i64>().expect("m{i}") + 1).to_string()).collect();
    assert_eq!(users.1, want.join(","));
}

/// The default batching adds no wait: a lone message leaves at once, and messages that arrive
/// while every call slot is taken (here one) all leave together in the next call.
#[tokio::test]
async fn batching_sends_at_once_and_gathers_what_queues_behind_a_call_in_flight() {
    let slow = Behaviour { batch: true, delay: Duration::from_millis(300), ..Behaviour::default() };
    let backend = TestBackend::spawn(BIZ, slow).await;
    let node = TestNode::with_backend(BIZ, backend.addr)
        .config(|c| {
            c.upstream.timeout = Duration::from_secs(5);
            c.backends[0].batch.max_in_flight = 1;
        })
        .spawn()
        .await;
    let mut clients = Vec::new();
    for user in 1..=4 {
        clients.push(node.connect(user, BIZ).await);
    }
    clients[0].send(&upstream("first", b"x"), Serializer::Json).await;
    crate::assert_within!(5, backend.batch_calls() == 1, "the lone message left at once");
    for (i, c) in clients.iter_mut().enumerate().skip(1) {
        c.send(&upstream(&format!("m{i}"), b"x"), Serializer::Json).await;
    }
    for c in &mut clients {
        let ack = c.recv_msg(Serializer::Json).await;
        assert_eq!(ack.cmd, CommandType::UpstreamAck as i32, "{ack:?}");
    }
    assert_eq!((backend.batch_calls(), backend.calls()), (2, 0));
    let users: Vec<String> = backend
        .senders()
        .iter()
        .map(|call| call.iter().find(|(k, _)| k == "x-wsgw-user-id").expect("ids").1.clone())
        .collect();
    assert_eq!(users[0], "1");
    assert_eq!(users[1].split(',').count(), 3, "the three queued messages in one call: {users:?}");
}

#[tokio::test]
async fn batching_falls_back_to_single_calls_when_the_backend_lacks_the_batch_service() {
    let backend = TestBackend::spawn(BIZ, Behaviour::default()).await;
    let node = batch_node(&backend).await;
    let acks = send_four_and_collect(&node).await;
    assert_eq!(acks.len(), 4);
    assert_eq!(backend.calls(), 4);
    let mut c = node.connect(9, BIZ).await;
    c.send(&upstream("later", b"x"), Serializer::Json).await;
    assert_eq!(c.recv_msg(Serializer::Json).await.cmd, CommandType::UpstreamAck as i32);
    assert_eq!(backend.calls(), 5, "later messages go single at once");
}

#[tokio::test]
async fn encrypted_bodies_round_trip_and_bad_bodies_get_an_error() {
    let config =
        EncryptionConfig { algorithm: EncryptionAlgorithm::ChaCha20Poly1305, key: "k".repeat(32) };
    let cipher = config.cipher().expect("key").expect("on");
    let backend = TestBackend::spawn(BIZ, Behaviour::default()).await;
    let node = TestNode::with_backend(BIZ, backend.addr)
        .config(|c| c.protocol.encryption = config.clone())
        .spawn()
        .await;
    let mut c: Client = node.connect(42, BIZ).await;
    c.send(&upstream("e1", &cipher.seal(b"secret text")), Serializer::Json).await;
    let ack = c.recv_msg(Serializer::Json).await;
    assert_eq!(
        backend.received()[0].1,
        Bytes::from_static(b"secret text"),
        "the backend gets plaintext"
    );
    let plain = cipher.open(&ack.body).expect("the ACK body is encrypted");
    let r: OnReceiveResponse = Serializer::Json.decode(&plain).expect("response");
    assert_eq!(r.biz_id, BIZ);
    c.send(&upstream("e2", b"this is not an encrypted body!"), Serializer::Json).await;
    let reply = c.recv_msg(Serializer::Json).await;
    assert_eq!(
        (reply.key.as_str(), error_of(&reply, Serializer::Json)),
        ("e2", ErrorCode::BadBody)
    );
    let hb = Message { body: cipher.seal(b"ping"), ..heartbeat("h") };
    c.send(&hb, Serializer::Json).await;
    let echo = c.recv_msg(Serializer::Json).await;
    assert_ne!(echo.body, hb.body, "re-encrypted with a fresh nonce");
    assert_eq!(cipher.open(&echo.body).expect("decrypts").as_ref(), b"ping");
}

/// `backends[].hooks`: the business's backend hears of every connection that opens and closes
/// (with the close code), in order; a business without hooks sends none.
#[tokio::test]
async fn connection_hooks_tell_the_backend_of_connects_and_disconnects() {
    let backend = TestBackend::spawn(BIZ, Behaviour { hooks: true, ..Behaviour::default() }).await;
    let node = TestNode::with_backend(BIZ, backend.addr)
        .config(|c| c.backends[0].hooks = true)
        .spawn()
        .await;
    let c = node.connect(5, BIZ).await;
    let _other_biz = node.connect(6, BIZ + 1).await;
    crate::assert_within!(5, backend.hook_events().len() == 1, "the connect was told");
    drop(c);
    crate::assert_within!(5, backend.hook_events().len() == 2, "the disconnect was told");
    let events = backend.hook_events();
    use wsgw::protocol::pb::connection_event::Kind;
    let seen: Vec<_> = events.iter().map(|e| (e.kind(), e.user_id, e.close_code)).collect();
    assert_eq!(seen, [(Kind::Connected, 5, 0), (Kind::Disconnected, 5, 1006)]);
    let reason = events[1].close_reason.as_str();
    assert!(["client closed", "connection lost"].contains(&reason), "{reason}");
    let e = &events[0];
    assert_eq!((e.biz_id, e.node_id.as_str()), (BIZ, "test-node"));
    assert!(e.client_addr.starts_with("127.0.0.1:") && e.at_ms > 0 && e.conn_id > 0, "{e:?}");
    assert_eq!(events[1].conn_id, e.conn_id, "the same connection");
    let sent = "websocket_gateway_hook_events_total{outcome=\"sent\"}";
    assert_eq!(node.metric(sent).await, 2.0);
}

/// Hooks on for a backend that does not serve them: the events are counted `failed`, nothing
/// is retried, and the business's upstream path is untouched.
#[tokio::test]
async fn connection_hooks_to_a_backend_without_them_fail_quietly() {
    let backend = TestBackend::spawn(BIZ, Behaviour::default()).await;
    let node = TestNode::with_backend(BIZ, backend.addr)
        .config(|c| c.backends[0].hooks = true)
        .spawn()
        .await;
    let mut c = node.connect(5, BIZ).await;
    let failed = "websocket_gateway_hook_events_total{outcome=\"failed\"}";
    crate::assert_within!(5, node.metric(failed).await == 1.0, "the connect event failed");
    c.send(&upstream("after", b"x"), Serializer::Json).await;
    assert_eq!(c.recv_msg(Serializer::Json).await.cmd, CommandType::UpstreamAck as i32);
}

/// The Rust example backend (`examples/backend.rs`, built with the tests) against a real node:
/// it answers the upstream message and, with `--push-back`, pushes it back to its sender (read
/// from the `x-wsgw-user-id` metadata) through the node's PushService.
#[tokio::test]
async fn the_example_backend_answers_and_pushes_back_to_the_sender() {
    let example = std::path::Path::new(env!("CARGO_BIN_EXE_wsgw"))
        .parent()
        .expect("target dir")
        .join("examples/backend");
    example_round_trip(tokio::process::Command::new(example)).await;
}

/// The Python example backend (`examples/python/backend.py`, grpcio; `run.sh` installs grpcio
/// from PyPI into target/tools once and generates the stubs from proto/), same round trip.
#[tokio::test]
async fn the_python_example_backend_answers_and_pushes_back_to_the_sender() {
    let run = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/python/run.sh");
    example_round_trip(tokio::process::Command::new(run)).await;
}

/// Starts `backend` (an example taking `--listen`, `--biz`, `--push-back`) for a real node,
/// sends one upstream message and expects its ACK and the push back.
async fn example_round_trip(mut backend: tokio::process::Command) {
    let port = crate::support::free_port();
    let node = TestNode::builder()
        .config(|c| {
            c.backends.push(wsgw::config::BackendConfig {
                biz_id: BIZ,
                endpoints: vec![
                    wsgw::grpc::GrpcAddr::parse(&format!("127.0.0.1:{port}")).expect("addr"),
                ],
                ..Default::default()
            })
        })
        .spawn()
        .await;
    let _backend = backend
        .args(["--listen", &format!("127.0.0.1:{port}"), "--biz", &BIZ.to_string()])
        .args(["--push-back", &node.grpc_addr.to_string()])
        .env("WSGW_PUSH_TOKEN", crate::support::BACKEND_TOKEN)
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("run the example backend");
    // A separate process: wait until it listens (slow to start on a busy CI, or while
    // installing its packages the first time).
    let listening = || tokio::net::TcpStream::connect(("127.0.0.1", port));
    crate::assert_within!(120, listening().await.is_ok(), "the example backend listens");
    let mut c = node.connect(21, BIZ).await;
    c.send(&upstream("hello", b"ping"), Serializer::Json).await;
    // The ACK and the push come in either order.
    let (mut acked, mut pushed) = (false, None);
    while !acked || pushed.is_none() {
        let m = c.recv_msg(Serializer::Json).await;
        match CommandType::try_from(m.cmd) {
            Ok(CommandType::UpstreamAck) => acked = true,
            Ok(CommandType::DownstreamMessage) => pushed = Some(m),
            _ => panic!("unexpected {m:?}"),
        }
    }
    let push = pushed.expect("pushed");
    assert_eq!((push.key.as_str(), &push.body[..]), ("echo-hello", &b"ping"[..]));
}

/// `backends[].receipts`: the business's backend learns when a push was acknowledged, and when
/// it was given up after `downstream.max_retries`.
#[tokio::test]
async fn delivery_receipts_tell_the_backend_of_acks_and_given_up_pushes() {
    let backend = TestBackend::spawn(BIZ, Behaviour { hooks: true, ..Behaviour::default() }).await;
    let node = TestNode::with_backend(BIZ, backend.addr)
        .config(|c| {
            c.backends[0].receipts = true;
            c.downstream.retry_interval = Duration::from_millis(100);
            c.downstream.max_retries = 1;
        })
        .spawn()
        .await;
    let mut c = node.connect(8, BIZ).await;
    assert_eq!(node.push(8, BIZ, "acked", b"a").await.expect("push"), 1);
    let m = c.recv_msg(Serializer::Json).await;
    assert_eq!(m.key, "acked");
    c.ack("acked", Serializer::Json).await;
    assert_eq!(node.push(8, BIZ, "ignored", b"b").await.expect("push"), 1);
    crate::assert_within!(10, backend.receipts().len() == 2, "both receipts arrived");
    use wsgw::protocol::pb::delivery_receipt::Outcome;
    let got: Vec<_> = backend
        .receipts()
        .iter()
        .map(|r| (r.outcome(), r.key.clone(), r.receiver_id, r.node_id.clone()))
        .collect();
    let node_id = "test-node".to_owned();
    assert_eq!(
        got,
        [
            (Outcome::Acked, "acked".into(), 8, node_id.clone()),
            (Outcome::GivenUp, "ignored".into(), 8, node_id)
        ]
    );
    assert!(backend.hook_events().is_empty(), "connection hooks were not asked for");
}
