//! What the gateway does with each decoded client message. No I/O: the decision is returned,
//! the connection task carries it out, and every rule is table-tested.

use bytes::Bytes;

use crate::{
    protocol::{CommandType, ErrorCode, Message},
    wire::Wire,
};

/// The gateway's answer to one client message.
#[derive(Debug, PartialEq)]
pub(super) enum Reply {
    /// Send this message back on the same connection.
    Send(Message),
    /// Forward to the business backend (body already decrypted).
    Upstream { key: String, body: Bytes },
    /// The client acknowledged the push with this key.
    Acked(String),
    /// Nothing to do (a bad message with `protocol.error_replies: false`).
    Nothing,
}

/// Decides what to do with `msg`; upstream keys longer than `max_key` bytes are refused.
pub(super) fn dispatch(msg: Message, wire: &Wire, max_key: usize) -> Reply {
    let error = |key, code, reason: String| match wire.error_replies() {
        true => Reply::Send(wire.error(key, code, reason)),
        false => Reply::Nothing,
    };
    match CommandType::try_from(msg.cmd) {
        Ok(CommandType::Heartbeat) => match wire.open(msg.body) {
            Ok(body) => {
                Reply::Send(Message { body: wire.seal(&body), ..msg_head(msg.cmd, msg.key) })
            }
            Err(e) => error(msg.key, ErrorCode::BadBody, e.to_string()),
        },
        Ok(CommandType::UpstreamMessage) if msg.key.is_empty() => {
            error(msg.key, ErrorCode::InvalidMessage, "an upstream message needs a key".into())
        }
        Ok(CommandType::UpstreamMessage) if msg.key.len() > max_key => {
            let reason = format!("the key is longer than {max_key} bytes");
            error(msg.key, ErrorCode::InvalidMessage, reason)
        }
        Ok(CommandType::UpstreamMessage) => match wire.open(msg.body) {
            Ok(body) => Reply::Upstream { key: msg.key, body },
            Err(e) => error(msg.key, ErrorCode::BadBody, e.to_string()),
        },
        Ok(CommandType::DownstreamAck) => Reply::Acked(msg.key),
        Ok(cmd) => error(
            msg.key,
            ErrorCode::UnsupportedCommand,
            format!("{} is not a client command", cmd.as_str_name()),
        ),
        Err(_) => {
            error(msg.key, ErrorCode::UnsupportedCommand, format!("unknown command {}", msg.cmd))
        }
    }
}

fn msg_head(cmd: i32, key: String) -> Message {
    Message { cmd, key, body: Bytes::new() }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        config::{EncryptionAlgorithm, EncryptionConfig},
        protocol::{BodyCipher, ErrorInfo, Serializer},
        telemetry::Metrics,
    };

    const KEY: usize = 256;

    fn wire(serializer: Serializer) -> Wire {
        Wire::new(serializer, None, Arc::new(Metrics::new()))
    }

    fn encrypted() -> (Wire, BodyCipher) {
        let config = EncryptionConfig {
            algorithm: EncryptionAlgorithm::AesGcm,
            key: "0123456789abcdef".into(),
        };
        let cipher = || config.cipher().expect("key").expect("on");
        (Wire::new(Serializer::Json, Some(cipher()), Arc::new(Metrics::new())), cipher())
    }

    fn msg(cmd: CommandType, key: &str, body: &[u8]) -> Message {
        Message { cmd: cmd.into(), key: key.into(), body: Bytes::copy_from_slice(body) }
    }

    fn error_code(reply: Reply, s: Serializer) -> (String, ErrorCode) {
        let Reply::Send(m) = reply else { panic!("expected a reply, got {reply:?}") };
        assert_eq!(m.cmd, CommandType::Error as i32);
        let info: ErrorInfo = s.decode(&m.body).expect("ErrorInfo body");
        (m.key, ErrorCode::try_from(info.code).expect("known code"))
    }

    #[test]
    fn heartbeat_is_echoed_with_key_and_body() {
        let hb = msg(CommandType::Heartbeat, "k1", b"ping");
        assert_eq!(dispatch(hb.clone(), &wire(Serializer::Json), KEY), Reply::Send(hb));
    }

    #[test]
    fn upstream_and_acks_are_handed_on() {
        let w = wire(Serializer::Proto);
        let up = msg(CommandType::UpstreamMessage, "u1", b"hello");
        let want = Reply::Upstream { key: "u1".into(), body: "hello".into() };
        assert_eq!(dispatch(up, &w, KEY), want);
        let ack = msg(CommandType::DownstreamAck, "p1", b"");
        assert_eq!(dispatch(ack, &w, KEY), Reply::Acked("p1".into()));
        let keyless = msg(CommandType::UpstreamMessage, "", b"x");
        assert_eq!(
            error_code(dispatch(keyless, &w, KEY), Serializer::Proto).1,
            ErrorCode::InvalidMessage
        );
        let long = "k".repeat(KEY + 1);
        let too_long = msg(CommandType::UpstreamMessage, &long, b"x");
        assert_eq!(
            error_code(dispatch(too_long, &w, KEY), Serializer::Proto),
            (long, ErrorCode::InvalidMessage)
        );
        let longest = msg(CommandType::UpstreamMessage, &"k".repeat(KEY), b"x");
        assert!(matches!(dispatch(longest, &w, KEY), Reply::Upstream { .. }));
    }

    #[test]
    fn server_only_and_unknown_commands_get_an_error_with_the_key() {
        for s in [Serializer::Json, Serializer::Proto] {
            for cmd in [0, 3, 4, 6, 7, 8, 42] {
                let m = Message { cmd, key: "k".into(), body: Bytes::new() };
                let (key, code) = error_code(dispatch(m, &wire(s), KEY), s);
                assert_eq!((key.as_str(), code), ("k", ErrorCode::UnsupportedCommand), "cmd {cmd}");
            }
        }
    }

    #[test]
    fn encrypted_bodies_are_opened_and_sealed_afresh() {
        let (w, cipher) = encrypted();
        let sent = cipher.seal(b"ping");
        let Reply::Send(echo) = dispatch(msg(CommandType::Heartbeat, "h", &sent), &w, KEY) else {
            panic!("echo expected")
        };
        assert_ne!(echo.body, sent, "a fresh nonce");
        assert_eq!(cipher.open(&echo.body).expect("decrypts").as_ref(), b"ping");
        let up = msg(CommandType::UpstreamMessage, "u", &cipher.seal(b"hello"));
        let want = Reply::Upstream { key: "u".into(), body: "hello".into() };
        assert_eq!(dispatch(up, &w, KEY), want);
        let garbage = msg(CommandType::UpstreamMessage, "u2", b"not encrypted at all, no");
        assert_eq!(
            error_code(dispatch(garbage, &w, KEY), Serializer::Json),
            ("u2".into(), ErrorCode::BadBody)
        );
    }
}
