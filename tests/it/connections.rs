//! Connection behaviour: many devices per user, liveness, idleness and slow clients.

use std::time::Duration;

use futures_util::SinkExt as _;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use wsgw::protocol::{CommandType, Serializer};

use crate::support::{Client, TestNode, code};

async fn heartbeat(c: &mut Client, key: &str) {
    c.send_text(&format!(r#"{{"cmd":"COMMAND_TYPE_HEARTBEAT","key":"{key}"}}"#)).await;
    assert_eq!(c.recv_msg(Serializer::Json).await.key, key);
}

#[tokio::test]
async fn a_user_may_hold_many_connections_and_is_counted_once() {
    let node = TestNode::spawn().await;
    let mut phone = node.connect(42, 9999).await;
    let mut laptop = node.connect(42, 9999).await;
    let mut other = node.connect(43, 9999).await;
    heartbeat(&mut phone, "p").await;
    heartbeat(&mut laptop, "l").await;
    heartbeat(&mut other, "o").await;
    assert_eq!((node.handle.connections(), node.handle.users()), (3, 2));
    let online = r#"websocket_gateway_online_users{biz_id="9999"}"#;
    let conns = r#"websocket_gateway_online_connections{biz_id="9999"}"#;
    assert_eq!(node.metric(online).await, 2.0);
    assert_eq!(node.metric(conns).await, 3.0, "the original's online_users semantics");
    phone.ws.close(None).await.expect("close");
    crate::assert_eventually!(node.handle.connections() == 2, "phone gone");
    heartbeat(&mut laptop, "still").await;
    assert_eq!(node.metric(online).await, 2.0, "the user is still online on the laptop");
    assert_eq!(node.metric(conns).await, 2.0);
    laptop.ws.close(None).await.expect("close");
    crate::assert_eventually!(node.metric(online).await == 1.0, "user 42 went offline");
    assert_eq!(node.metric(conns).await, 1.0);
}

#[tokio::test]
async fn a_client_that_does_not_answer_pings_is_closed() {
    let node = TestNode::builder()
        .config(|c| {
            c.limits.ping_interval = Duration::from_millis(100);
            c.limits.pong_timeout = Duration::from_millis(200);
        })
        .spawn()
        .await;
    let mut silent = node.connect(1, 7).await;
    let mut alive = node.connect(2, 7).await;
    // `alive` keeps reading (tungstenite answers pings while reading); `silent` does not read.
    let reader = tokio::spawn(async move {
        alive.listen_for(Duration::from_millis(800)).await;
        heartbeat(&mut alive, "after pings").await;
        alive
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(code(&silent.closed().await), (1001, "pong timeout".into()));
    reader.await.expect("alive answered pings and stays connected");
    assert_eq!(
        node.metric(r#"websocket_gateway_closes_total{code="1001",reason="pong timeout"}"#).await,
        1.0
    );
}

#[tokio::test]
async fn idle_close_applies_to_auto_close_clients_by_default() {
    let node = TestNode::builder()
        .config(|c| c.limits.idle_timeout = Duration::from_millis(300))
        .spawn()
        .await;
    let url = node.url(&format!("?token={}", TestNode::token(1, 7)));
    let mut auto = Client::connect_with(&url, &[("x-autoclose", "true")]).await.expect("connect");
    let mut plain = node.connect(2, 7).await;
    heartbeat(&mut auto, "a").await;
    assert_eq!(code(&auto.closed().await), (1000, "idle timeout".into()));
    heartbeat(&mut plain, "still here").await;
}

#[tokio::test]
async fn idle_close_all_closes_every_quiet_client() {
    let node = TestNode::builder()
        .config(|c| {
            c.limits.idle_timeout = Duration::from_millis(300);
            c.limits.idle_close = wsgw::config::IdleClose::All;
        })
        .spawn()
        .await;
    let mut c = node.connect(1, 7).await;
    assert_eq!(code(&c.closed().await), (1000, "idle timeout".into()));
}

#[tokio::test]
async fn a_client_that_never_completes_the_handshake_is_dropped() {
    let node = TestNode::builder()
        .config(|c| c.server.websocket.handshake_timeout = Duration::from_millis(200))
        .spawn()
        .await;
    let mut raw = TcpStream::connect(node.ws_addr).await.expect("tcp");
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.expect("partial request");
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), raw.read(&mut buf))
        .await
        .expect("closed in time");
    assert_eq!(n.expect("read"), 0, "the server hangs up");
    crate::assert_eventually!(
        node.metric(r#"websocket_gateway_handshakes_total{outcome="timeout"}"#).await == 1.0,
        "timeout counted"
    );
}

#[tokio::test]
async fn a_slow_consumer_is_closed_without_blocking_anyone_else() {
    let node = TestNode::builder()
        .config(|c| {
            c.limits.max_message_size = bytesize::ByteSize::kib(4);
            c.limits.outbound_queue_bytes = bytesize::ByteSize::kib(16);
            c.limits.write_timeout = Duration::from_millis(300);
            c.limits.message_rate = 0.0; // the flood below is about the outbound queue
        })
        .spawn()
        .await;
    let mut slow = node.connect(1, 7).await;
    let mut fast = node.connect(2, 7).await;
    // `slow` sends heartbeats with 3 KiB bodies and never reads its echoes: once the kernel's
    // buffers are full the node's writes stall and the connection must be cut.
    let body = "A".repeat(3 * 1024 / 4 * 4);
    let flood = tokio::spawn(async move {
        use futures_util::SinkExt;
        for i in 0..20_000 {
            let msg = format!(r#"{{"cmd":1,"key":"{i}","body":"{body}"}}"#);
            let send = slow.ws.send(msg.into());
            match tokio::time::timeout(Duration::from_secs(2), send).await {
                Ok(Ok(())) => {}
                _ => return i,
            }
        }
        20_000
    });
    for i in 0..20 {
        heartbeat(&mut fast, &format!("fast-{i}")).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    crate::assert_eventually!(
        node.metric(r#"websocket_gateway_closes_total{code="1008",reason="slow consumer"}"#).await
            == 1.0,
        "the slow consumer is closed and counted"
    );
    let sent = flood.await.expect("flood task");
    assert!(sent < 20_000, "the node stopped taking messages from the slow client");
    assert!(node.metric("websocket_gateway_outbound_dropped_total").await >= 1.0);
    heartbeat(&mut fast, "after").await;
    assert_eq!(node.handle.connections(), 1);
}

#[tokio::test]
async fn a_client_over_its_message_rate_is_refused_then_closed_and_nobody_else_notices() {
    let node = TestNode::builder()
        .config(|c| {
            c.limits.message_rate = 5.0;
            c.limits.message_burst = 4;
        })
        .spawn()
        .await;
    let mut calm = node.connect(1, 9).await;
    let mut flood = node.connect(2, 9).await;
    // Heartbeats count: the burst passes, the next ones are refused with their keys.
    for i in 0..4 {
        flood.send_text(&format!(r#"{{"cmd":"COMMAND_TYPE_HEARTBEAT","key":"ok{i}"}}"#)).await;
    }
    for i in 4..8 {
        flood.send_text(&format!(r#"{{"cmd":"COMMAND_TYPE_HEARTBEAT","key":"over{i}"}}"#)).await;
    }
    let mut answers = Vec::new();
    for _ in 0..8 {
        let m = flood.recv_msg(Serializer::Json).await;
        answers.push((CommandType::try_from(m.cmd).expect("known"), m.key));
    }
    for (i, (cmd, key)) in answers.iter().enumerate() {
        let want = if i < 4 { CommandType::Heartbeat } else { CommandType::RateLimitExceeded };
        assert_eq!(*cmd, want, "{answers:?}");
        assert_eq!(key, &if i < 4 { format!("ok{i}") } else { format!("over{i}") });
    }
    // Still flooding (beyond twice the rate): closed.
    for i in 0..20 {
        let beat = format!(r#"{{"cmd":"COMMAND_TYPE_HEARTBEAT","key":"f{i}"}}"#);
        let _ = flood.ws.send(WsMessage::text(beat)).await; // may fail once closed
    }
    assert_eq!(code(&flood.closed().await), (1008, "rate limit".to_owned()));
    assert_eq!(node.metric("websocket_gateway_rate_limited_total").await, 4.0);
    heartbeat(&mut calm, "still-here").await;
}

#[tokio::test]
async fn a_user_beyond_the_per_user_limit_gets_429_and_the_open_ones_stay() {
    let node = TestNode::builder().config(|c| c.limits.max_connections_per_user = 2).spawn().await;
    let mut first = node.connect(7, 9).await;
    let second = node.connect(7, 9).await;
    let url = node.url(&format!("?token={}", TestNode::token(7, 9)));
    match Client::connect(&url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 429);
            let body = String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default());
            assert_eq!(body.trim(), "too many connections for this user");
        }
        other => panic!("expected 429, got {:?}", other.map(|_| "a connection")),
    }
    let refused = r#"websocket_gateway_handshakes_total{outcome="user_limit"}"#;
    assert_eq!(node.metric(refused).await, 1.0);
    node.connect(8, 9).await; // another user is not limited by user 7
    heartbeat(&mut first, "still-open").await;
    drop(second);
    crate::assert_eventually!(node.handle.connections() == 2, "the second one closed");
    node.connect(7, 9).await;
}

#[tokio::test]
async fn handshakes_in_progress_are_capped_and_accepts_are_paced() {
    let node = TestNode::builder()
        .config(|c| {
            c.server.websocket.max_handshakes = 1;
            c.server.websocket.handshake_timeout = Duration::from_millis(300);
        })
        .spawn()
        .await;
    // A client that connects and never sends its upgrade holds the only place...
    let _mute = TcpStream::connect(node.ws_addr).await.expect("tcp");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let url = node.url(&format!("?token={}", TestNode::token(1, 9)));
    assert!(Client::connect(&url).await.is_err(), "no place for a second handshake");
    let busy = r#"websocket_gateway_handshakes_total{outcome="busy"}"#;
    assert_eq!(node.metric(busy).await, 1.0);
    // ...until its handshake times out.
    crate::assert_eventually!(Client::connect(&url).await.is_ok(), "accepted again");

    let paced = TestNode::builder().config(|c| c.server.websocket.accept_rate = 20.0).spawn().await;
    let started = tokio::time::Instant::now();
    let mut clients = Vec::new();
    for user in 1..=10 {
        clients.push(paced.connect(user, 9).await);
    }
    assert!(started.elapsed() >= Duration::from_millis(400), "10 accepts at 20/s: ≥ 450 ms");
}

#[tokio::test]
async fn per_address_limits_use_the_client_a_trusted_proxy_names() {
    let node = TestNode::builder()
        .config(|c| {
            c.limits.max_connections_per_ip = 2;
            c.server.websocket.trusted_proxies = vec!["127.0.0.0/8".into()];
        })
        .spawn()
        .await;
    let via = |user: i64, client: &'static str| {
        let url = node.url(&format!("?token={}", TestNode::token(user, 9)));
        async move { Client::connect_with(&url, &[("x-forwarded-for", client)]).await }
    };
    let _a1 = via(1, "203.0.113.5").await.expect("first from .5");
    let _a2 = via(2, "198.51.100.1, 203.0.113.5").await.expect("second from .5");
    match via(3, "203.0.113.5").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 429);
        }
        other => panic!("expected 429, got {:?}", other.map(|_| "a connection")),
    }
    let _b = via(4, "203.0.113.6").await.expect("another client behind the same proxy");
    let sessions = node.handle.directory().clone();
    let all = sessions.sessions(wsgw::cluster::SessionQuery::All).await.expect("sessions");
    let remotes: Vec<&str> = all.iter().map(|s| s.remote.as_str()).collect();
    assert!(remotes.contains(&"203.0.113.6:0"), "the forwarded client, not the proxy: {remotes:?}");

    // Without trusted proxies the header is ignored: every client here is 127.0.0.1.
    let plain = TestNode::builder().config(|c| c.limits.max_connections_per_ip = 1).spawn().await;
    let url = plain.url(&format!("?token={}", TestNode::token(1, 9)));
    let _one = Client::connect_with(&url, &[("x-forwarded-for", "203.0.113.5")]).await.expect("1");
    let second = Client::connect_with(&url, &[("x-forwarded-for", "203.0.113.6")]).await;
    assert!(second.is_err(), "a forged header does not buy a second place");
}

#[tokio::test]
async fn handshakes_per_second_per_address_are_limited_before_the_token_is_checked() {
    let node = TestNode::builder()
        .config(|c| {
            c.limits.handshake_rate_per_ip = 0.5;
            c.limits.handshake_burst_per_ip = 2;
            c.server.websocket.trusted_proxies = vec!["127.0.0.0/8".into()];
        })
        .spawn()
        .await;
    let via = |query: String, client: &'static str| {
        let url = node.url(&query);
        async move { Client::connect_with(&url, &[("x-forwarded-for", client)]).await }
    };
    let good = || format!("?token={}", TestNode::token(1, 9));
    let _a = via(good(), "203.0.113.5").await.expect("first");
    // A bad token spends a handshake too: a flood of garbage is what this limit is for.
    assert!(via("?token=garbage".into(), "203.0.113.5").await.is_err());
    match via(good(), "203.0.113.5").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 429);
            assert!(resp.headers().contains_key("retry-after"), "{:?}", resp.headers());
        }
        other => panic!("expected 429, got {:?}", other.map(|_| "a connection")),
    }
    let _b = via(good(), "203.0.113.6").await.expect("another address has its own budget");
    let refused = "websocket_gateway_handshakes_total{outcome=\"address_rate\"}";
    assert_eq!(node.metric(refused).await, 1.0, "counted");
}

/// Sends `header` and an upgrade request; the HTTP status answered (0: closed unanswered) and
/// the open socket when upgraded.
async fn via_proxy(node: &TestNode, header: &[u8], user: i64) -> (u16, Option<TcpStream>) {
    let mut tcp = TcpStream::connect(node.ws_addr).await.expect("tcp");
    tcp.write_all(header).await.expect("header");
    let request = crate::support::upgrade_request(&TestNode::token(user, 9), "");
    let _ = tcp.write_all(request.as_bytes()).await;
    let mut head = [0u8; 12];
    match tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut head)).await {
        Ok(Ok(_)) => {
            let status = String::from_utf8_lossy(&head[9..12]).parse().expect("status");
            (status, (status == 101).then_some(tcp))
        }
        _ => (0, None),
    }
}

#[tokio::test]
async fn a_proxy_protocol_header_from_a_trusted_proxy_names_the_client() {
    let node = TestNode::builder()
        .config(|c| {
            c.server.websocket.proxy_protocol = true;
            c.server.websocket.trusted_proxies = vec!["127.0.0.1".into()];
            c.limits.max_connections_per_ip = 1;
        })
        .spawn()
        .await;
    let v1 = |client: &str| format!("PROXY TCP4 {client} 10.0.0.1 51000 9002\r\n").into_bytes();
    let (status, _kept) = via_proxy(&node, &v1("203.0.113.7"), 1).await;
    assert_eq!(status, 101);
    let sessions = node.handle.directory().clone();
    let all = sessions.sessions(wsgw::cluster::SessionQuery::All).await.expect("sessions");
    assert_eq!(all[0].remote, "203.0.113.7:51000", "the client, not the proxy");
    assert_eq!(via_proxy(&node, &v1("203.0.113.7"), 2).await.0, 429, "its address's limit");
    assert_eq!(via_proxy(&node, &v1("203.0.113.8"), 3).await.0, 101, "another client");
    // From the trusted proxy without a header: closed unanswered, and counted.
    assert_eq!(via_proxy(&node, b"", 4).await.0, 0);
    crate::assert_eventually!(
        node.metric(r#"websocket_gateway_handshakes_total{outcome="bad_proxy_header"}"#).await
            == 1.0,
        "counted"
    );

    // From an address that is not a trusted proxy a header is never believed.
    let strict = TestNode::builder()
        .config(|c| {
            c.server.websocket.proxy_protocol = true;
            c.server.websocket.trusted_proxies = vec!["10.9.9.9".into()];
        })
        .spawn()
        .await;
    let (status, _) = via_proxy(&strict, &v1("203.0.113.7"), 5).await;
    assert_ne!(status, 101, "a PROXY header from an untrusted peer is not stripped");
    assert_eq!(via_proxy(&strict, b"", 6).await.0, 101, "its clients connect directly");
}
