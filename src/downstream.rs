//! Downstream: pushes from backends to every connection of the addressed user, retransmitted
//! until the user acknowledges.
//!
//! Owns: the table of pushes awaiting DOWNSTREAM_ACK, tracked per (user, key) and bounded
//! (`downstream.max_pending`), and the retransmission sweep. Each (re)transmission encrypts the
//! original plaintext afresh and is encoded once for all of the user's connections. A push that
//! is never acknowledged is given up after `downstream.max_retries`, logged and counted. Must
//! never block: delivery is a non-blocking enqueue on each link.
//!
//! Delivers on this node only; [`crate::routing`] decides which node(s) a push goes to and
//! calls [`Downstream::push`] here.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use dashmap::DashMap;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::{
    auth::Identity,
    config::DownstreamConfig,
    links::LinkRegistry,
    protocol::{CommandType, Message, pb::PushMessage},
    telemetry::Metrics,
    wire::Wire,
};

/// Why a push was not delivered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    #[error("biz_id and receiver_id must be positive")]
    Invalid,
    #[error("user {user} of biz {biz} has no connection on this node")]
    NotConnected { biz: i64, user: i64 },
    #[error("too many pushes await acknowledgement ({0}); try again later")]
    Overloaded(usize),
}

struct Pending {
    body: Bytes,
    retries: u32,
    due: Instant,
}

/// The downstream service of one node.
pub struct Downstream {
    links: Arc<LinkRegistry>,
    wire: Arc<Wire>,
    metrics: Arc<Metrics>,
    config: DownstreamConfig,
    pending: DashMap<(Identity, String), Pending>,
    node_id: String,
    next_key: AtomicU64,
}

impl Downstream {
    pub fn new(
        config: DownstreamConfig,
        links: Arc<LinkRegistry>,
        wire: Arc<Wire>,
        metrics: Arc<Metrics>,
        node_id: String,
    ) -> Self {
        Self {
            links,
            wire,
            metrics,
            config,
            pending: DashMap::new(),
            node_id,
            next_key: AtomicU64::new(1),
        }
    }

    /// Delivers `msg` to every connection of its receiver on this node and tracks it until
    /// acknowledged. Returns how many connections it was handed to. A push with a key that is
    /// already pending for the user is delivered again but tracked once.
    pub fn push(&self, msg: PushMessage) -> Result<usize, PushError> {
        if msg.biz_id <= 0 || msg.receiver_id <= 0 {
            return Err(PushError::Invalid);
        }
        let identity = Identity { biz_id: msg.biz_id, user_id: msg.receiver_id };
        let key = match msg.key {
            k if k.is_empty() => {
                format!("{}-{}", self.node_id, self.next_key.fetch_add(1, Ordering::Relaxed))
            }
            k => k,
        };
        let track = (identity, key);
        let already = self.pending.contains_key(&track);
        if !already && self.pending.len() >= self.config.max_pending {
            self.metrics.push_event("refused");
            return Err(PushError::Overloaded(self.config.max_pending));
        }
        // Tracked before it is sent: the client's ACK may arrive before `deliver` returns.
        let tracked = self.config.max_retries > 0 && !already;
        if tracked {
            let due = Instant::now() + self.config.retry_interval;
            self.pending.insert(track.clone(), Pending { body: msg.body.clone(), retries: 0, due });
        }
        let delivered = self.deliver(&track, &msg.body);
        if delivered == 0 && tracked {
            self.pending.remove(&track);
        }
        self.metrics.pushes_pending.set(self.pending.len() as i64);
        if delivered == 0 {
            self.metrics.push_event("not_connected");
            return Err(PushError::NotConnected { biz: identity.biz_id, user: identity.user_id });
        }
        self.metrics.push_event("delivered");
        Ok(delivered)
    }

    /// Encodes the push once (encrypted afresh) and queues it on each of the user's links.
    fn deliver(&self, (identity, key): &(Identity, String), plaintext: &Bytes) -> usize {
        let links = self.links.user_links(identity);
        if links.is_empty() {
            return 0;
        }
        let cmd = CommandType::DownstreamMessage.into();
        let msg = Message { cmd, key: key.clone(), body: self.wire.seal(plaintext) };
        let mut batch = self.wire.batch(self.wire.frame(&msg), cmd);
        links.iter().for_each(|l| {
            batch.send(l);
        });
        batch.finish() as usize
    }

    /// Sends one message to every connection of business `biz_id` (every connection when 0),
    /// encoded (and encrypted) once and shared. Not tracked for acknowledgement. Returns how
    /// many connections it was queued on.
    pub fn broadcast(&self, biz_id: i64, key: String, body: &[u8]) -> usize {
        let cmd = CommandType::DownstreamMessage.into();
        let frame = self.wire.frame(&Message { cmd, key, body: self.wire.seal(body) });
        let mut batch = self.wire.batch(frame, cmd);
        self.links.for_each(|link| {
            if biz_id == 0 || link.identity.biz_id == biz_id {
                batch.send(link);
            }
        });
        self.metrics.push_event("broadcast");
        batch.finish() as usize
    }

    /// The user acknowledged `key` (from any of their connections).
    pub fn acked(&self, identity: Identity, key: String) {
        if self.pending.remove(&(identity, key)).is_some() {
            self.metrics.push_event("acked");
            self.metrics.pushes_pending.set(self.pending.len() as i64);
        }
    }

    /// Pushes awaiting acknowledgement.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Retransmits due pushes until `stop` is cancelled.
    pub async fn run_retries(self: Arc<Self>, stop: CancellationToken) {
        let tick = (self.config.retry_interval / 4)
            .clamp(Duration::from_millis(10), Duration::from_secs(1));
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticker.tick() => self.retry_due(Instant::now()),
            }
        }
    }

    fn retry_due(&self, now: Instant) {
        let due: Vec<(Identity, String)> =
            self.pending.iter().filter(|p| p.due <= now).map(|p| p.key().clone()).collect();
        for track in due {
            let body = match self.pending.get_mut(&track) {
                None => continue, // acknowledged meanwhile
                Some(p) if p.retries >= self.config.max_retries => None,
                Some(mut p) => {
                    p.retries += 1;
                    p.due = now + self.config.retry_interval;
                    Some(p.body.clone())
                }
            };
            match body {
                Some(body) => {
                    self.metrics.push_event("retried");
                    self.deliver(&track, &body);
                }
                None => {
                    self.pending.remove(&track);
                    self.metrics.push_event("given_up");
                    let (identity, key) = &track;
                    warn!(biz = identity.biz_id, user = identity.user_id, key = %key,
                        retries = self.config.max_retries, "push never acknowledged; giving up");
                }
            }
        }
        self.metrics.pushes_pending.set(self.pending.len() as i64);
    }
}
