//! The narrow interface between where pushes come from and where they go.
//!
//! Ingestion sources (the Kafka consumer, an offline inbox found on connect, the gRPC
//! `PushService`) hand a push to a [`PushSink`] and learn what became of it; the node wires the
//! router in as the sink. Owns: that trait and the vocabulary of outcomes and errors. Must never
//! import anything above `protocol`: the cluster adapters depend on it, and it depends on none of
//! the domain.

use std::future::Future;

use crate::protocol::pb::PushMessage;

/// What became of a routed push.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Routed {
    /// Connections it was handed to, on every node.
    pub connections: usize,
    /// Kept in the receiver's offline inbox (nobody held them, or a node could not be reached).
    pub stored: bool,
}

/// Why a push was not delivered on a node.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    #[error("biz_id and receiver_id must be positive")]
    Invalid,
    #[error("user {user} of biz {biz} has no connection on this node")]
    NotConnected { biz: i64, user: i64 },
    #[error("too many pushes await acknowledgement ({0}); try again later")]
    Overloaded(usize),
    #[error("the push is {size} bytes (body and key); downstream.max_push_size is {max}")]
    TooLarge { size: usize, max: usize },
}

/// Why a push could not be routed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error(transparent)]
    Push(#[from] PushError),
    /// The directory is unreachable and the receiver is not on this node, or the push could
    /// neither be delivered nor stored. Retry later.
    #[error("cannot route the push now: {0}")]
    Unavailable(String),
}

impl RouteError {
    /// Whether trying again later can help (false: the push can never be delivered as it is).
    pub fn is_retriable(&self) -> bool {
        !matches!(
            self,
            Self::Push(
                PushError::Invalid | PushError::NotConnected { .. } | PushError::TooLarge { .. }
            )
        )
    }
}

/// A push nobody acknowledged, on its way to the dead-letter topic (when one is configured).
#[derive(Clone, Debug, PartialEq)]
pub struct DeadLetter {
    pub msg: PushMessage,
    /// Why: `given_up` (no acknowledgement after `downstream.max_retries`).
    pub reason: &'static str,
}

/// Where ingestion sources hand pushes: every connection of the receiver, cluster-wide, or their
/// inbox. Must not retry on its own; the caller decides whether to wait and try again.
pub trait PushSink: Send + Sync + 'static {
    fn push(&self, msg: PushMessage) -> impl Future<Output = Result<Routed, RouteError>> + Send;

    /// [`PushSink::push`] for several pushes at once (a Kafka batch): the results in order.
    fn push_many(
        &self,
        msgs: Vec<PushMessage>,
    ) -> impl Future<Output = Vec<Result<Routed, RouteError>>> + Send;

    /// Keeps `msg` for its receiver's next connection (the offline inbox) instead of routing it;
    /// `Unavailable` when there is no inbox or it cannot be written now.
    fn keep(&self, msg: PushMessage) -> impl Future<Output = Result<(), RouteError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_failures_are_worth_a_retry() {
        let cases = [
            (RouteError::Push(PushError::Invalid), false),
            (RouteError::Push(PushError::NotConnected { biz: 1, user: 2 }), false),
            (RouteError::Push(PushError::TooLarge { size: 9, max: 8 }), false),
            (RouteError::Push(PushError::Overloaded(10)), true),
            (RouteError::Unavailable("redis".into()), true),
        ];
        for (e, want) in cases {
            assert_eq!(e.is_retriable(), want, "{e}");
        }
    }
}
