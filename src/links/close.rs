//! Why a connection ended, and the close code and reason the client is sent.

use tokio_tungstenite::tungstenite::protocol::{CloseFrame, frame::coding::CloseCode};

/// Why a connection ended (see the table in the [`gateway`](crate::gateway) docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed the connection (close frame or EOF).
    ClientClosed,
    /// The socket failed; nothing can be sent.
    ConnectionLost,
    /// The node drains.
    GoingAway,
    PongTimeout,
    IdleTimeout,
    ProtocolError,
    InvalidMessage,
    MessageTooBig,
    SlowConsumer,
    /// An operator kicked the connection (the close reason text is theirs).
    Kicked,
    /// Sent a REDIRECT to other nodes (operator rebalance).
    Redirected,
    /// Kept sending above twice `limits.message_rate`.
    RateLimited,
    /// The token's `exp` passed (`auth.jwt.close_on_expiry`): fetch a new token, reconnect.
    TokenExpired,
}

/// The close code of [`CloseReason::TokenExpired`] (private-use range, RFC 6455 §7.4.2).
pub const TOKEN_EXPIRED: u16 = 4001;

impl CloseReason {
    /// The close code sent, or `None` when no close frame is sent.
    pub fn code(self) -> Option<u16> {
        match self {
            Self::ClientClosed | Self::ConnectionLost => None,
            Self::IdleTimeout => Some(1000),
            Self::GoingAway | Self::PongTimeout | Self::Redirected => Some(1001),
            Self::ProtocolError => Some(1002),
            Self::InvalidMessage => Some(1007),
            Self::SlowConsumer | Self::Kicked | Self::RateLimited => Some(1008),
            Self::MessageTooBig => Some(1009),
            Self::TokenExpired => Some(TOKEN_EXPIRED),
        }
    }

    /// The reason text sent with the close frame, and the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientClosed => "client closed",
            Self::ConnectionLost => "connection lost",
            Self::GoingAway => "going away",
            Self::PongTimeout => "pong timeout",
            Self::IdleTimeout => "idle timeout",
            Self::ProtocolError => "protocol error",
            Self::InvalidMessage => "invalid message",
            Self::MessageTooBig => "message too big",
            Self::SlowConsumer => "slow consumer",
            Self::Kicked => "kicked",
            Self::Redirected => "redirected",
            Self::TokenExpired => "token expired",
            Self::RateLimited => "rate limit",
        }
    }

    pub fn frame(self) -> Option<CloseFrame> {
        self.code()
            .map(|code| CloseFrame { code: CloseCode::from(code), reason: self.as_str().into() })
    }
}
