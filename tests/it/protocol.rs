//! The message protocol over a real connection: both serializers, replies, errors.

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use wsgw::protocol::{CommandType, ErrorCode, ErrorInfo, Message, Serializer};

use crate::support::{TestNode, code};

#[tokio::test]
async fn heartbeat_is_echoed_in_canonical_json_as_a_binary_frame() {
    let node = TestNode::spawn().await;
    let mut c = node.connect(42, 9999).await;
    c.send_text(r#"{"cmd":"COMMAND_TYPE_HEARTBEAT","key":"k1"}"#).await;
    match c.recv().await {
        WsMessage::Binary(b) => {
            assert_eq!(&b[..], br#"{"cmd":"COMMAND_TYPE_HEARTBEAT","key":"k1"}"#)
        }
        other => panic!("expected binary, got {other:?}"),
    }
    // Binary frames in, enum by number, body kept.
    c.send_binary(br#"{"cmd":1,"key":"k2","body":"aGk="}"#.to_vec()).await;
    let reply = c.recv_msg(Serializer::Json).await;
    assert_eq!((reply.cmd, reply.key.as_str(), &reply.body[..]), (1, "k2", &b"hi"[..]));
}

#[tokio::test]
async fn heartbeat_is_echoed_in_binary_protobuf() {
    let node =
        TestNode::builder().config(|c| c.protocol.serializer = Serializer::Proto).spawn().await;
    let mut c = node.connect(42, 9999).await;
    // The reference implementation's bytes for {cmd: HEARTBEAT, key: "k1"}.
    c.send_binary(vec![0x08, 0x01, 0x12, 0x02, b'k', b'1']).await;
    match c.recv().await {
        WsMessage::Binary(b) => assert_eq!(&b[..], &[0x08, 0x01, 0x12, 0x02, b'k', b'1']),
        other => panic!("expected binary, got {other:?}"),
    }
}

#[tokio::test]
async fn client_sending_server_commands_gets_an_error_reply_and_stays_connected() {
    for serializer in [Serializer::Json, Serializer::Proto] {
        let node = TestNode::builder().config(|c| c.protocol.serializer = serializer).spawn().await;
        let mut c = node.connect(1, 7).await;
        let bad =
            Message { cmd: CommandType::Redirect.into(), key: "r1".into(), body: Bytes::new() };
        c.send(&bad, serializer).await;
        let reply = c.recv_msg(serializer).await;
        assert_eq!((reply.cmd, reply.key.as_str()), (CommandType::Error as i32, "r1"));
        let info: ErrorInfo = serializer.decode(&reply.body).expect("ErrorInfo");
        assert_eq!(info.code, ErrorCode::UnsupportedCommand as i32);
        let up = Message {
            cmd: CommandType::UpstreamMessage.into(),
            key: "u1".into(),
            body: Bytes::new(),
        };
        c.send(&up, serializer).await;
        let reply = c.recv_msg(serializer).await;
        let info: ErrorInfo = serializer.decode(&reply.body).expect("ErrorInfo");
        assert_eq!((reply.key.as_str(), info.code), ("u1", ErrorCode::NoBackend as i32));
        let hb =
            Message { cmd: CommandType::Heartbeat.into(), key: "h".into(), body: Bytes::new() };
        c.send(&hb, serializer).await;
        assert_eq!(c.recv_msg(serializer).await, hb, "still connected");
    }
}

/// `protocol.error_replies: false` (legacy JSON clients that cannot parse COMMAND_TYPE_ERROR):
/// bad messages and failed upstream calls get no answer, as from the original gateway, and
/// the connection keeps serving.
#[tokio::test]
async fn without_error_replies_bad_messages_get_no_answer() {
    let node = TestNode::builder().config(|c| c.protocol.error_replies = false).spawn().await;
    let mut c = node.connect(1, 7).await;
    let msg = |cmd: CommandType, key: &str| Message {
        cmd: cmd.into(),
        key: key.into(),
        body: Bytes::new(),
    };
    c.send(&msg(CommandType::Redirect, "r1"), Serializer::Json).await;
    c.send(&msg(CommandType::UpstreamMessage, ""), Serializer::Json).await;
    c.send(&msg(CommandType::UpstreamMessage, "no-backend"), Serializer::Json).await;
    let hb = msg(CommandType::Heartbeat, "h");
    c.send(&hb, Serializer::Json).await;
    assert_eq!(c.recv_msg(Serializer::Json).await, hb, "the first answer is the heartbeat's");
}

#[tokio::test]
async fn undecodable_messages_close_with_1007() {
    let node = TestNode::spawn().await;
    for bad in [r#"{"cmd":"COMMAND_TYPE_NOPE"}"#, r#"{"cmd":1,"extra":true}"#, "not json"] {
        let mut c = node.connect(1, 7).await;
        c.send_text(bad).await;
        assert_eq!(code(&c.closed().await), (1007, "invalid message".into()), "{bad}");
    }
    assert_eq!(node.metric("websocket_gateway_decode_errors_total").await, 3.0);
    assert_eq!(
        node.metric(r#"websocket_gateway_closes_total{code="1007",reason="invalid message"}"#)
            .await,
        3.0
    );
}

#[tokio::test]
async fn oversized_messages_close_with_1009() {
    let node = TestNode::builder()
        .config(|c| c.limits.max_message_size = bytesize::ByteSize::b(1024))
        .spawn()
        .await;
    let mut c = node.connect(1, 7).await;
    let body = "x".repeat(2000);
    c.send_text(&format!(r#"{{"cmd":1,"key":"{body}"}}"#)).await;
    assert_eq!(code(&c.closed().await), (1009, "message too big".into()));
    let mut ok = node.connect(2, 7).await;
    ok.send_text(r#"{"cmd":1,"key":"small"}"#).await;
    assert_eq!(
        ok.recv_msg(Serializer::Json).await.key,
        "small",
        "other connections are unaffected"
    );
}

#[tokio::test]
async fn websocket_protocol_violations_close_with_1002() {
    let node = TestNode::spawn().await;
    let mut c = node.connect(1, 7).await;
    // An unmasked client frame violates RFC 6455 §5.1.
    let raw = match c.ws.get_mut() {
        tokio_tungstenite::MaybeTlsStream::Plain(s) => s,
        _ => unreachable!("plain TCP"),
    };
    raw.write_all(&[0x81, 0x02, b'h', b'i']).await.expect("raw write");
    assert_eq!(code(&c.closed().await), (1002, "protocol error".into()));
}

/// Browsers offer permessage-deflate on every connection. wsgw does not negotiate it (see the
/// README's evaluation): the offer is answered without the extension, the connection serves
/// uncompressed, and a frame sent compressed anyway (RSV1 set) is a protocol error (1002) that
/// ends only that connection.
#[tokio::test]
async fn a_deflate_offer_is_declined_and_a_compressed_frame_closes_with_1002() {
    use tokio::io::AsyncReadExt;
    let node = TestNode::spawn().await;
    let mut tcp = tokio::net::TcpStream::connect(node.ws_addr).await.expect("tcp");
    let deflate = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";
    let request = crate::support::upgrade_request(&TestNode::token(1, 9), deflate);
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tcp.read_exact(&mut byte).await.expect("response head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(!head.contains("sec-websocket-extensions"), "no extension accepted: {head}");
    // A masked text frame with RSV1 set ("compressed"), payload "x".
    let mask = [1u8, 2, 3, 4];
    tcp.write_all(&[0xC1, 0x81, mask[0], mask[1], mask[2], mask[3], b'x' ^ mask[0]])
        .await
        .expect("frame");
    let mut reply = [0u8; 4];
    tcp.read_exact(&mut reply).await.expect("a close frame");
    assert_eq!(reply[0], 0x88, "close frame: {reply:?}");
    assert_eq!(u16::from_be_bytes([reply[2], reply[3]]), 1002, "protocol error");
    let mut other = node.connect(2, 9).await;
    let hb = Message { cmd: CommandType::Heartbeat.into(), key: "h".into(), body: Bytes::new() };
    other.send(&hb, Serializer::Json).await;
    assert_eq!(other.recv_msg(Serializer::Json).await, hb, "the node still serves");
}
