//! Every counted event as a type, so a label cannot be misspelt at a call site: the label values
//! of `websocket_gateway_pushes_total{event}`, `websocket_gateway_cluster_events_total{service,
//! event}` and `websocket_gateway_dependency_up{service}` are defined here and only here.

/// What happened to a push on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushEvent {
    /// Handed to at least one connection.
    Delivered,
    /// The receiver has no connection here.
    NotConnected,
    /// Refused: too many pushes await acknowledgement.
    Refused,
    /// Retransmitted after `retry_interval` without an ACK.
    Retried,
    /// Dropped after `max_retries` retransmissions.
    GivenUp,
    /// Acknowledged by the client.
    Acked,
    /// A broadcast was queued.
    Broadcast,
    /// Refused: larger than `downstream.max_push_size`.
    TooLarge,
    /// Given up, and left in the user's inbox for their next connection (cluster mode).
    KeptInInbox,
    /// No longer retransmitted here (the user left this node, or it drained) but left in the
    /// user's inbox for their next connection, on any node (cluster mode).
    HandedOver,
    /// Lost: unacknowledged at a single node's exit (no inbox to keep it).
    Dropped,
}

impl PushEvent {
    pub fn label(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::NotConnected => "not_connected",
            Self::Refused => "refused",
            Self::Retried => "retried",
            Self::GivenUp => "given_up",
            Self::Acked => "acked",
            Self::Broadcast => "broadcast",
            Self::TooLarge => "too_large",
            Self::KeptInInbox => "kept_in_inbox",
            Self::HandedOver => "handed_over",
            Self::Dropped => "dropped",
        }
    }
}

/// A service the node depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dependency {
    Redis,
    Etcd,
    Kafka,
}

impl Dependency {
    pub fn label(self) -> &'static str {
        match self {
            Self::Redis => "redis",
            Self::Etcd => "etcd",
            Self::Kafka => "kafka",
        }
    }
}

/// An event of the cluster services, node-to-node delivery or the admin API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterEvent {
    RedisError,
    /// A directory update could not be queued (a rebuild follows).
    UpdateDropped,
    InboxStored,
    /// Older pushes dropped from a full inbox (`inbox_max` or `inbox_max_bytes`).
    InboxOverflow,
    /// Unacknowledged pushes older than `inbox_ttl`, dropped from an inbox.
    InboxExpired,
    InboxDelivered,
    /// An inbox entry that could not be read, removed.
    InboxUnreadable,
    /// An inbox push that can never be delivered (invalid, too large), removed.
    InboxUndeliverable,
    Rebuilt,
    NodeSwept,
    EtcdError,
    DiscoveryError,
    DiscoveryApplied,
    ConsumeError,
    PushInvalid,
    PushRetried,
    PushUndeliverable,
    /// A record larger than `downstream.max_push_size`, skipped.
    PushTooLarge,
    PushStored,
    PushRouted,
    /// Not routable within `route_timeout`; kept in the user's inbox.
    PushKept,
    /// Records routed together (one directory round trip); `push_routed + push_stored` over this is
    /// the mean batch.
    RouteBatch,
    PresenceProduced,
    PresenceFailed,
    PresenceDropped,
    DeadLetterProduced,
    DeadLetterFailed,
    DeadLetterDropped,
    PeerDelivered,
    PeerFailed,
    /// A `DeliverStream` to a peer opened (one per peer while it stays up).
    PeerStreamOpened,
    /// A peer without `DeliverStream` (an older node): called with unary `Deliver` for now.
    PeerUnary,
    Kicked,
    Redirected,
}

impl ClusterEvent {
    /// (service, event) labels.
    pub fn labels(self) -> (&'static str, &'static str) {
        use ClusterEvent::*;
        match self {
            RedisError => ("redis", "error"),
            UpdateDropped => ("redis", "update_dropped"),
            InboxStored => ("redis", "inbox_stored"),
            InboxOverflow => ("redis", "inbox_overflow"),
            InboxExpired => ("redis", "inbox_expired"),
            InboxDelivered => ("redis", "inbox_delivered"),
            InboxUnreadable => ("redis", "inbox_unreadable"),
            InboxUndeliverable => ("redis", "inbox_undeliverable"),
            Rebuilt => ("redis", "rebuilt"),
            NodeSwept => ("redis", "node_swept"),
            EtcdError => ("etcd", "error"),
            DiscoveryError => ("etcd", "discovery_error"),
            DiscoveryApplied => ("etcd", "discovery_applied"),
            ConsumeError => ("kafka", "consume_error"),
            PushInvalid => ("kafka", "push_invalid"),
            PushRetried => ("kafka", "push_retried"),
            PushUndeliverable => ("kafka", "push_undeliverable"),
            PushTooLarge => ("kafka", "push_too_large"),
            PushStored => ("kafka", "push_stored"),
            PushRouted => ("kafka", "push_routed"),
            PushKept => ("kafka", "push_kept"),
            RouteBatch => ("kafka", "route_batch"),
            PresenceProduced => ("kafka", "presence_produced"),
            PresenceFailed => ("kafka", "presence_failed"),
            PresenceDropped => ("kafka", "presence_dropped"),
            DeadLetterProduced => ("kafka", "dead_letter_produced"),
            DeadLetterFailed => ("kafka", "dead_letter_failed"),
            DeadLetterDropped => ("kafka", "dead_letter_dropped"),
            PeerDelivered => ("peer", "delivered"),
            PeerFailed => ("peer", "failed"),
            PeerStreamOpened => ("peer", "stream_opened"),
            PeerUnary => ("peer", "unary_fallback"),
            Kicked => ("admin", "kicked"),
            Redirected => ("admin", "redirected"),
        }
    }
}
