//! Hostile clients, one per test, each with its defined answer — and a well-behaved client on
//! the same node that is still served afterwards: header floods, a ping flood, invalid UTF-8
//! split across fragments, an oversized message in small fragments, a slowloris on the gRPC
//! port, and thousands of connections from one address. (Also hostile, tested elsewhere:
//! slowloris on the WebSocket port `connections::a_client_that_never_completes_…` and on the
//! governor and webhook `http::slow_or_surplus_…`, a deflate offer and compressed frames
//! `protocol::a_deflate_offer_…`, unmasked frames `protocol::websocket_protocol_violations_…`,
//! a message-rate flood `connections::a_client_over_its_message_rate_…`.)

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

use crate::support::{TestNode, upgrade_request};

/// A masked client frame.
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x11, 0x22, 0x33, 0x44];
    let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n < 65536 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// An upgraded raw connection for user `user` (the response head read).
async fn raw_upgraded(node: &TestNode, user: i64) -> TcpStream {
    let mut tcp = TcpStream::connect(node.ws_addr).await.expect("tcp");
    let request = upgrade_request(&TestNode::token(user, 9), "");
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tcp.read_exact(&mut byte).await.expect("response head");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    tcp
}

/// The close frame the server sends on `tcp` (code, reason), reading past anything else.
async fn close_of(tcp: &mut TcpStream) -> (u16, String) {
    let mut data = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => data.extend_from_slice(&buf[..n]),
            }
        }
    });
    let _ = read.await;
    // Server frames are unmasked: walk them to the close frame (opcode 8).
    let mut at = 0;
    while at + 2 <= data.len() {
        let (opcode, len) = (data[at] & 0x0f, usize::from(data[at + 1] & 0x7f));
        let (len, start) = match len {
            126 => (usize::from(u16::from_be_bytes([data[at + 2], data[at + 3]])), at + 4),
            127 => break,
            n => (n, at + 2),
        };
        if opcode == 8 && len >= 2 && start + len <= data.len() {
            let code = u16::from_be_bytes([data[start], data[start + 1]]);
            return (code, String::from_utf8_lossy(&data[start + 2..start + len]).into_owned());
        }
        at = start + len;
    }
    (1006, String::new())
}

/// A heartbeat from a fresh, well-behaved client is echoed: the node still serves.
async fn still_serves(node: &TestNode) {
    let mut c = node.connect(999, 9).await;
    c.send_text(r#"{"cmd":"COMMAND_TYPE_HEARTBEAT","key":"alive"}"#).await;
    let m = c.recv_msg(wsgw::protocol::Serializer::Json).await;
    assert_eq!(m.key, "alive", "the node still serves others");
}

#[tokio::test]
async fn header_floods_are_refused_within_the_handshake_limits() {
    let node = TestNode::builder()
        .config(|c| c.server.websocket.handshake_timeout = Duration::from_millis(500))
        .spawn()
        .await;
    // Too many headers: refused, not parsed forever.
    let mut tcp = TcpStream::connect(node.ws_addr).await.expect("tcp");
    let mut request = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for i in 0..500 {
        request.push_str(&format!("X-Flood-{i}: {}\r\n", "v".repeat(64)));
    }
    request.push_str("\r\n");
    let _ = tcp.write_all(request.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(!answer.starts_with("HTTP/1.1 101"), "{answer}");

    // A header that never ends: the node stops reading at the handshake timeout, having held
    // only a bounded buffer (the writes beyond it fail once the node has hung up).
    let mut tcp = TcpStream::connect(node.ws_addr).await.expect("tcp");
    let started = tokio::time::Instant::now();
    let _ = tcp.write_all(b"GET / HTTP/1.1\r\nX-Endless: ").await;
    let chunk = vec![b'a'; 64 * 1024];
    let mut sent = 0usize;
    while started.elapsed() < Duration::from_secs(5) {
        match tokio::time::timeout(Duration::from_millis(500), tcp.write_all(&chunk)).await {
            Ok(Ok(())) => sent += chunk.len(),
            Ok(Err(_)) => break,
            Err(_) => {} // the node stopped reading: the socket buffers filled
        }
    }
    assert!(started.elapsed() < Duration::from_secs(5), "still accepted {sent} bytes after 5 s");
    still_serves(&node).await;
}

#[tokio::test]
async fn a_ping_flood_is_rate_limited_and_closed() {
    let node = TestNode::builder()
        .config(|c| {
            c.limits.message_rate = 50.0;
            c.limits.message_burst = 50;
        })
        .spawn()
        .await;
    let mut tcp = raw_upgraded(&node, 1).await;
    let mut flood = Vec::new();
    for _ in 0..5_000 {
        flood.extend(frame(true, 0x9, b"p"));
    }
    let _ = tcp.write_all(&flood).await;
    assert_eq!(close_of(&mut tcp).await, (1008, "rate limit".into()));
    still_serves(&node).await;
}

#[tokio::test]
async fn invalid_utf8_split_across_fragments_closes_with_1007() {
    let node = TestNode::spawn().await;
    let mut tcp = raw_upgraded(&node, 2).await;
    // "é" is C3 A9: the first fragment ends inside it, the second brings an invalid byte.
    let mut bytes = frame(false, 0x1, b"{\"cmd\":\"\xc3");
    bytes.extend(frame(true, 0x0, b"\xff\"}"));
    tcp.write_all(&bytes).await.expect("write");
    assert_eq!(close_of(&mut tcp).await.0, 1007);
    still_serves(&node).await;
}

#[tokio::test]
async fn an_oversized_message_in_small_fragments_closes_with_1009() {
    let node = TestNode::builder()
        .config(|c| c.limits.max_message_size = bytesize::ByteSize::b(4096))
        .spawn()
        .await;
    let mut tcp = raw_upgraded(&node, 3).await;
    let mut bytes = frame(false, 0x2, &[b'x'; 100]);
    for _ in 0..200 {
        bytes.extend(frame(false, 0x0, &[b'x'; 100]));
    }
    let _ = tcp.write_all(&bytes).await;
    assert_eq!(close_of(&mut tcp).await.0, 1009);
    still_serves(&node).await;
}

#[tokio::test]
async fn a_slowloris_on_the_grpc_port_is_cut_off() {
    let node = TestNode::builder()
        .config(|c| c.server.grpc.handshake_timeout = Duration::from_millis(300))
        .spawn()
        .await;
    let mut idle = TcpStream::connect(node.grpc_addr).await.expect("tcp");
    // Half an HTTP/2 preface, then nothing.
    idle.write_all(b"PRI * HTTP/2.0\r\n").await.expect("write");
    let mut seen = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut seen)).await;
    assert!(read.is_ok(), "the node hangs up on a silent caller (it sent {seen:?})");
    assert!(node.push(1, 9, "after", b"x").await.is_err(), "NOT_FOUND: the port still answers");
}

/// Connects from `source` (a loopback address) and returns the upgrade's HTTP status.
async fn status_from(node: &TestNode, source: [u8; 4]) -> (u16, Option<TcpStream>) {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::from((source, 0))).expect("bind source");
    let mut tcp = socket.connect(node.ws_addr).await.expect("tcp");
    let request = upgrade_request(&TestNode::token(7, 9), "");
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut head = [0u8; 12];
    tcp.read_exact(&mut head).await.expect("status line");
    let status = String::from_utf8_lossy(&head[9..12]).parse().expect("status");
    (status, (status == 101).then_some(tcp))
}

#[tokio::test]
async fn thousands_of_connections_from_one_address_stop_at_its_limit() {
    let node = TestNode::builder()
        .config(|c| {
            c.limits.max_connections_per_ip = 100;
            c.limits.max_connections_per_user = 0;
        })
        .spawn()
        .await;
    let mut open = Vec::new();
    let mut refused = 0;
    for _ in 0..2_000 {
        match status_from(&node, [127, 0, 0, 5]).await {
            (101, Some(tcp)) => open.push(tcp),
            (429, _) => refused += 1,
            (other, _) => panic!("unexpected status {other}"),
        }
    }
    assert_eq!((open.len(), refused), (100, 1_900));
    assert_eq!(status_from(&node, [127, 0, 0, 6]).await.0, 101, "another address gets in");
    still_serves(&node).await;
}

#[tokio::test]
async fn a_message_of_endless_empty_fragments_is_read_at_the_byte_rate() {
    // No message limit sees this: the message never grows and never ends. The byte rate does.
    let node = TestNode::builder()
        .config(|c| {
            c.limits.read_rate = bytesize::ByteSize::kib(64);
            c.limits.read_burst = bytesize::ByteSize::kib(64);
        })
        .spawn()
        .await;
    let mut tcp = raw_upgraded(&node, 4).await;
    tcp.write_all(&frame(false, 0x1, b"{")).await.expect("first fragment");
    let empties: Vec<u8> = (0..10_000).flat_map(|_| frame(false, 0x0, b"")).collect();
    let (started, mut sent) = (tokio::time::Instant::now(), 0usize);
    while started.elapsed() < Duration::from_secs(3) {
        // Partial writes keep the frame boundaries: the next write starts where this one ended.
        let at = sent % empties.len();
        match tokio::time::timeout(Duration::from_millis(200), tcp.write(&empties[at..])).await {
            Ok(Ok(n)) => sent += n,
            Ok(Err(e)) => panic!("the node hung up on a throttled client: {e}"),
            Err(_) => {} // the node is not reading: the socket buffers are full
        }
    }
    // 3 s at 64 KiB/s plus the burst is 256 KiB read, the rest sits in socket buffers (~4 MiB
    // here); unthrottled, the node reads ~30 MiB of empty frames in the same 3 s.
    eprintln!("sent {sent} bytes in 3 s");
    assert!(sent < 12 << 20, "the node read {sent} bytes of empty fragments in 3 s");
    assert!(node.metric("websocket_gateway_read_throttled_total").await > 0.0);
    still_serves(&node).await;
}
