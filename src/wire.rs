//! How messages become frames on links: encode with the node's serializer, encrypt bodies when
//! configured, count, and enqueue without waiting. Shared by the connection task, upstream and
//! downstream so that every outgoing message is encoded and counted the same way.
//!
//! Must never block or await: a full queue is the link's problem (it becomes a slow consumer).

use std::sync::Arc;

use bytes::Bytes;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::{
    links::{Link, SendError},
    protocol::{BodyCipher, CipherError, CommandType, ErrorCode, ErrorInfo, Message, Serializer},
    telemetry::{BizMetrics, Direction, Metrics},
};

/// The node's message encoding and body encryption.
pub struct Wire {
    pub serializer: Serializer,
    cipher: Option<BodyCipher>,
    metrics: Arc<Metrics>,
    /// `protocol.error_replies`: false sends no COMMAND_TYPE_ERROR at all.
    errors: bool,
}

impl Wire {
    pub fn new(serializer: Serializer, cipher: Option<BodyCipher>, metrics: Arc<Metrics>) -> Self {
        Self { serializer, cipher, metrics, errors: true }
    }

    /// Whether COMMAND_TYPE_ERROR is sent (`protocol.error_replies`; false: silence).
    pub fn with_error_replies(mut self, on: bool) -> Self {
        self.errors = on;
        self
    }

    /// Whether COMMAND_TYPE_ERROR replies are sent.
    pub fn error_replies(&self) -> bool {
        self.errors
    }

    /// Encrypts a body for sending (a fresh nonce each call), or passes it through.
    pub fn seal(&self, plaintext: &[u8]) -> Bytes {
        match &self.cipher {
            Some(c) => c.seal(plaintext),
            None => Bytes::copy_from_slice(plaintext),
        }
    }

    /// Decrypts a body a client sent, or passes it through.
    pub fn open(&self, body: Bytes) -> Result<Bytes, CipherError> {
        match &self.cipher {
            Some(c) => c.open(&body),
            None => Ok(body),
        }
    }

    /// Encodes `msg` (its body as given) into one frame that may be sent to many links.
    pub fn frame(&self, msg: &Message) -> WsMessage {
        WsMessage::Binary(self.serializer.encode(msg))
    }

    /// Encodes and queues `msg` on `link`.
    pub fn send(&self, link: &Link, msg: &Message) -> Result<(), SendError> {
        self.send_frame(link, self.frame(msg), msg.cmd)
    }

    /// Queues an encoded frame of command `cmd` on `link`, counting it (or its drop).
    pub fn send_frame(&self, link: &Link, frame: WsMessage, cmd: i32) -> Result<(), SendError> {
        let len = frame.len();
        let result = link.send(frame);
        match result {
            Ok(()) => {
                self.metrics.biz(link.identity.biz_id).message(Direction::Out, len);
                self.metrics.command(Direction::Out, command(cmd));
            }
            Err(_) => self.metrics.outbound_dropped.inc(),
        }
        result
    }

    /// A counter for queueing one shared frame on many links (a broadcast): counts in bulk
    /// instead of per link. Call [`Fanout::finish`] at the end.
    /// `direct`: a link whose connection is idle may have the frame written at once (see
    /// [`Link::send`]); otherwise every link queues it.
    pub fn fanout(&self, frame: WsMessage, cmd: i32, direct: bool) -> Fanout<'_> {
        Fanout {
            wire: self,
            len: frame.len(),
            encoded: if direct { crate::links::encode(&frame) } else { None },
            frame,
            cmd,
            biz: None,
            sent: 0,
            pending: 0,
            dropped: 0,
        }
    }

    /// A REDIRECT frame (shared by every link it goes to) listing `nodes`; its key is the time
    /// in Unix ms, as the original gateway sent it. Never encrypted.
    pub fn redirect_frame(&self, nodes: Vec<crate::protocol::pb::Node>) -> WsMessage {
        let body = self.serializer.encode(&crate::protocol::pb::NodeList { nodes });
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        let key = now.map_or(0, |d| d.as_millis()).to_string();
        self.frame(&Message { cmd: CommandType::Redirect.into(), key, body })
    }

    /// Queues a COMMAND_TYPE_ERROR for `key` (its body is never encrypted).
    pub fn send_error(&self, link: &Link, key: String, code: ErrorCode, reason: String) {
        if self.errors {
            let _ = self.send(link, &self.error(key, code, reason));
        }
    }

    /// A COMMAND_TYPE_ERROR message for `key`.
    pub fn error(&self, key: String, code: ErrorCode, reason: String) -> Message {
        let body = self.serializer.encode(&ErrorInfo { code: code.into(), reason });
        Message { cmd: CommandType::Error.into(), key, body }
    }
}

/// The command of a raw `cmd` value (unknown values count as unspecified).
pub fn command(cmd: i32) -> CommandType {
    CommandType::try_from(cmd).unwrap_or(CommandType::InvalidUnspecified)
}

/// One frame queued on many links, counted once per business at the end.
pub struct Fanout<'a> {
    wire: &'a Wire,
    frame: WsMessage,
    /// The frame's bytes, encoded once for the links that write directly (`None`: queue).
    encoded: Option<bytes::Bytes>,
    len: usize,
    cmd: i32,
    biz: Option<(i64, Arc<BizMetrics>)>,
    sent: u64,
    pending: u64,
    dropped: u64,
}

impl Fanout<'_> {
    /// Queues the frame on `link` (or writes it, see [`Link::send`]); false when its queue
    /// refused it.
    pub fn send(&mut self, link: &Link) -> bool {
        let msg = self.frame.clone();
        let sent = match &self.encoded {
            Some(frame) => link.send_encoded(msg, frame),
            None => link.queue(msg),
        };
        if sent.is_err() {
            self.dropped += 1;
            return false;
        }
        let biz = link.identity.biz_id;
        if self.biz.as_ref().is_none_or(|(id, _)| *id != biz) {
            self.flush_biz();
            self.biz = Some((biz, self.wire.metrics.biz(biz)));
        }
        self.pending += 1;
        self.sent += 1;
        true
    }

    fn flush_biz(&mut self) {
        if let Some((_, m)) = &self.biz {
            m.messages(Direction::Out, self.pending, self.pending * self.len as u64);
        }
        self.pending = 0;
    }

    /// Records the counts; returns how many links took the frame.
    pub fn finish(mut self) -> u64 {
        self.flush_biz();
        self.wire.metrics.commands(Direction::Out, command(self.cmd), self.sent);
        self.wire.metrics.outbound_dropped.inc_by(self.dropped);
        self.sent
    }
}
