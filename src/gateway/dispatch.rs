//! What the gateway answers to each decoded client message. Pure: no I/O, so every rule is
//! table-tested.

use bytes::Bytes;

use crate::protocol::{CommandType, ErrorCode, ErrorInfo, Message, Serializer};

/// The gateway's answer to one client message.
#[derive(Debug, PartialEq)]
pub(super) enum Reply {
    /// Send this message back on the same connection.
    Send(Message),
    /// Nothing to send (for example a DOWNSTREAM_ACK).
    None,
}

/// Decides the answer to `msg` from a client of business `biz_id`.
pub(super) fn dispatch(msg: Message, biz_id: i64, serializer: Serializer) -> Reply {
    match CommandType::try_from(msg.cmd) {
        Ok(CommandType::Heartbeat) => Reply::Send(msg),
        Ok(CommandType::DownstreamAck) => Reply::None,
        Ok(CommandType::UpstreamMessage) => error(
            msg.key,
            ErrorCode::NoBackend,
            format!("no backend serves biz {biz_id}"),
            serializer,
        ),
        Ok(cmd) => error(
            msg.key,
            ErrorCode::UnsupportedCommand,
            format!("{} is not a client command", cmd.as_str_name()),
            serializer,
        ),
        Err(_) => error(
            msg.key,
            ErrorCode::UnsupportedCommand,
            format!("unknown command {}", msg.cmd),
            serializer,
        ),
    }
}

/// A COMMAND_TYPE_ERROR reply for `key` (its body is never encrypted).
pub(super) fn error(key: String, code: ErrorCode, reason: String, serializer: Serializer) -> Reply {
    let body: Bytes = serializer.encode(&ErrorInfo { code: code.into(), reason });
    Reply::Send(Message { cmd: CommandType::Error.into(), key, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(cmd: i32, key: &str, body: &[u8]) -> Message {
        Message { cmd, key: key.into(), body: Bytes::copy_from_slice(body) }
    }

    fn error_code(reply: Reply, serializer: Serializer) -> (String, ErrorCode) {
        let Reply::Send(m) = reply else { panic!("expected a reply") };
        assert_eq!(m.cmd, CommandType::Error as i32);
        let info: ErrorInfo = serializer.decode(&m.body).expect("ErrorInfo body");
        (m.key, ErrorCode::try_from(info.code).expect("known code"))
    }

    #[test]
    fn heartbeat_is_echoed_with_key_and_body() {
        let hb = msg(CommandType::Heartbeat as i32, "k1", b"ping");
        assert_eq!(dispatch(hb.clone(), 1, Serializer::Json), Reply::Send(hb));
    }

    #[test]
    fn downstream_ack_needs_no_answer() {
        let ack = msg(CommandType::DownstreamAck as i32, "p1", b"");
        assert_eq!(dispatch(ack, 1, Serializer::Proto), Reply::None);
    }

    #[test]
    fn server_only_and_unknown_commands_get_an_error_with_the_key() {
        for s in [Serializer::Json, Serializer::Proto] {
            for cmd in [0, 3, 4, 6, 7, 8, 42] {
                let (key, code) = error_code(dispatch(msg(cmd, "k", b""), 1, s), s);
                assert_eq!((key.as_str(), code), ("k", ErrorCode::UnsupportedCommand), "cmd {cmd}");
            }
        }
    }

    #[test]
    fn upstream_without_a_backend_is_refused_visibly() {
        let up = msg(CommandType::UpstreamMessage as i32, "u1", b"hello");
        let (key, code) = error_code(dispatch(up, 9, Serializer::Json), Serializer::Json);
        assert_eq!((key.as_str(), code), ("u1", ErrorCode::NoBackend));
    }
}
