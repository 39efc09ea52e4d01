//! Downstream: pushes from backends to every connection of the addressed user, retransmitted
//! until the user acknowledges.
//!
//! Owns: the table of pushes awaiting DOWNSTREAM_ACK on this node's connections, tracked per
//! (user, key) and bounded (`downstream.max_pending`), and the retransmission sweep. Each
//! (re)transmission encrypts the original plaintext afresh and is encoded once for all of the
//! user's connections. A push that is never acknowledged is given up after
//! `downstream.max_retries`, logged and counted (and dead-lettered when configured).
//!
//! In cluster mode this table is only the retransmission schedule: the durable truth is the
//! user's inbox in the directory, which recorded the push before it reached this node and
//! forgets it when the user acknowledges it on any node ([`Downstream::acked`] tells it). So a
//! push given up here, or whose user left this node, or still pending when the node drains or
//! dies, stays in the inbox and is delivered on the user's next connection, anywhere. On a
//! single node the table is all there is: what is pending at exit is logged and counted as
//! dropped ([`Downstream::settle_at_exit`]). Must never block: delivery is a non-blocking
//! enqueue on each link.
//!
//! Delivers on this node only; the router decides which node(s) a push goes to and calls
//! [`Downstream::push`] here. The retransmission schedule is `Pending::on_due`, a pure step
//! driven by the instants it is given.

use std::{
    ops::Range,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use dashmap::DashMap;
use futures_util::future::join_all;
use tokio::{sync::mpsc, time::Instant};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    auth::Identity,
    cluster::SessionDirectory,
    config::DownstreamConfig,
    links::{ConnId, LinkRegistry},
    protocol::{CommandType, Message, pb::PushMessage},
    push::{DeadLetter, PushError},
    telemetry::{ClusterEvent, Metrics, PushEvent},
    wire::{Fanout, Wire},
};

/// A push awaiting acknowledgement: its plaintext and its retransmission schedule.
struct Pending {
    body: Bytes,
    retries: u32,
    due: Instant,
}

/// What to do with a pending push whose time has come.
#[derive(Debug, PartialEq, Eq)]
enum Due {
    /// Not yet: nothing to do.
    Wait,
    /// Send it again; the next attempt is scheduled.
    Resend,
    /// `max_retries` retransmissions went unacknowledged: stop.
    GiveUp,
}

impl Pending {
    fn new(body: Bytes, now: Instant, interval: Duration) -> Self {
        Self { body, retries: 0, due: now + interval }
    }

    /// The step of the schedule at `now`: every `interval`, at most `max_retries` times.
    fn on_due(&mut self, now: Instant, interval: Duration, max_retries: u32) -> Due {
        if self.due > now {
            return Due::Wait;
        }
        if self.retries >= max_retries {
            return Due::GiveUp;
        }
        self.retries += 1;
        self.due = now + interval;
        Due::Resend
    }
}

/// Where a push goes when this node is done with it unacknowledged.
pub struct Fallback {
    /// The users' inboxes (cluster mode; the in-memory directory keeps none), told of acks.
    pub directory: Arc<dyn SessionDirectory>,
    /// The dead-letter topic's queue, when one is configured.
    pub dead_letters: Option<mpsc::Sender<DeadLetter>>,
    /// Told when a tracked push is acknowledged or given up (delivery receipts), when wanted.
    pub receipts: Option<Arc<dyn Receipts>>,
}

/// What became of a push this node tracked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Receipt {
    Acked,
    GivenUp,
}

/// Where delivery receipts go. Must not block: called on the ack path.
pub trait Receipts: Send + Sync {
    fn receipt(&self, who: Identity, key: &str, what: Receipt);
}

/// The downstream service of one node.
pub struct Downstream {
    links: Arc<LinkRegistry>,
    wire: Arc<Wire>,
    metrics: Arc<Metrics>,
    config: DownstreamConfig,
    pending: DashMap<(Identity, String), Pending>,
    fallback: Fallback,
    /// Pushes are recorded in inboxes that outlive this node (cluster mode).
    durable: bool,
    node_id: String,
    next_key: AtomicU64,
    /// Body bytes of `pending` (bounded by `max_pending_bytes`).
    pending_bytes: AtomicUsize,
    /// When the last broadcast ended.
    pace: Pace,
}

/// How long after a broadcast the next one counts as arriving after a quiet spell.
const QUIET: Duration = Duration::from_millis(10);

/// When the last broadcast ended.
#[derive(Default)]
struct Pace(std::sync::Mutex<Option<Instant>>);

impl Pace {
    fn quiet(&self, now: Instant) -> bool {
        let last = *self.0.lock().unwrap_or_else(|e| e.into_inner());
        last.is_none_or(|t| now.saturating_duration_since(t) >= QUIET)
    }

    fn ended(&self, now: Instant) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(now);
    }
}

impl Downstream {
    /// The service and its retransmission task, which runs until `stop` (the caller spawns and
    /// awaits it).
    pub fn new(
        config: DownstreamConfig,
        links: Arc<LinkRegistry>,
        wire: Arc<Wire>,
        metrics: Arc<Metrics>,
        node_id: String,
        fallback: Fallback,
        stop: CancellationToken,
    ) -> (Arc<Self>, impl Future<Output = ()> + Send + 'static) {
        let downstream = Arc::new(Self {
            links,
            wire,
            metrics,
            config,
            pending: DashMap::new(),
            durable: fallback.directory.keeps_inboxes(),
            fallback,
            node_id,
            next_key: AtomicU64::new(1),
            pending_bytes: AtomicUsize::new(0),
            pace: Pace::default(),
        });
        (downstream.clone(), downstream.run_retries(stop))
    }

    /// Delivers `msg` to every connection of its receiver on this node and tracks it until
    /// acknowledged. Returns how many connections it was handed to. A push with a key that is
    /// already pending for the user is delivered again but tracked once.
    pub fn push(&self, msg: PushMessage) -> Result<usize, PushError> {
        self.admit(&msg)?;
        let msg = self.keyed(msg);
        let identity = Identity { biz_id: msg.biz_id, user_id: msg.receiver_id };
        let track = (identity, msg.key);
        let already = self.pending.contains_key(&track);
        let bytes = self.pending_bytes.load(Ordering::Relaxed) + msg.body.len();
        let full = self.pending.len() >= self.config.max_pending
            || bytes as u64 > self.config.max_pending_bytes.as_u64();
        if !already && full {
            self.metrics.push_event(PushEvent::Refused);
            return Err(PushError::Overloaded(self.pending.len()));
        }
        // Tracked before it is sent: the client's ACK may arrive before `deliver` returns.
        let tracked = self.config.max_retries > 0 && !already;
        if tracked {
            let pending =
                Pending::new(msg.body.clone(), Instant::now(), self.config.retry_interval);
            self.pending_bytes.fetch_add(msg.body.len(), Ordering::Relaxed);
            self.pending.insert(track.clone(), pending);
        }
        let delivered = self.deliver(&track, &msg.body);
        if delivered == 0 && tracked {
            self.untrack(&track);
        }
        self.metrics.pushes_pending.set(self.pending.len() as i64);
        if delivered == 0 {
            self.metrics.push_event(PushEvent::NotConnected);
            return Err(PushError::NotConnected { biz: identity.biz_id, user: identity.user_id });
        }
        self.metrics.push_event(PushEvent::Delivered);
        Ok(delivered)
    }

    /// `msg` with a key: its own, or one unique to this node (`{node}-{n}`) when it has none, so
    /// that the client can acknowledge it and the inbox can record it.
    pub fn keyed(&self, mut msg: PushMessage) -> PushMessage {
        if msg.key.is_empty() {
            let n = self.next_key.fetch_add(1, Ordering::Relaxed);
            msg.key = format!("{}-{n}", self.node_id);
        }
        msg
    }

    /// Encodes the push once (encrypted afresh) and queues it on each of the user's links.
    fn deliver(&self, (identity, key): &(Identity, String), plaintext: &Bytes) -> usize {
        let links = self.links.user_links(identity);
        if links.is_empty() {
            return 0;
        }
        let cmd = CommandType::DownstreamMessage.into();
        let msg = Message { cmd, key: key.clone(), body: self.wire.seal(plaintext) };
        let mut fanout = self.wire.fanout(self.wire.frame(&msg), cmd, true);
        links.iter().for_each(|l| {
            fanout.send(l);
        });
        fanout.finish() as usize
    }

    /// Sends one message to every connection of business `biz_id` (every connection when 0),
    /// encoded (and encrypted) once and shared. Not tracked for acknowledgement. Returns how
    /// many connections took it.
    ///
    /// A broadcast that comes after a quiet spell (no broadcast ended within [`QUIET`]) is
    /// latency-bound: its frame is written straight to every idle plain connection (split into
    /// one task per runtime worker when there are several). Back-to-back broadcasts are
    /// throughput-bound: they queue, and each connection's task writes what piled up in one
    /// wake-up. Either way the connections are visited oldest first
    /// ([`LinkRegistry::walk_in_order`]): the kernel's sockets are then walked in the order they
    /// were made, which took a fifth off a fan-out to 10k connections.
    pub async fn broadcast(
        &self,
        biz_id: i64,
        key: String,
        body: &[u8],
    ) -> Result<usize, PushError> {
        self.fits(key.len() + body.len())?;
        let cmd = CommandType::DownstreamMessage.into();
        let frame = self.wire.frame(&Message { cmd, key, body: self.wire.seal(body) });
        let workers = tokio::runtime::Handle::current().metrics().num_workers();
        let direct = self.pace.quiet(Instant::now());
        let sent = if direct && workers > 1 {
            self.write_each(biz_id, frame, cmd, workers).await
        } else {
            let mut fanout = self.wire.fanout(frame, cmd, direct);
            send_to(&self.links, 0..ConnId::MAX, biz_id, &mut fanout);
            fanout.finish()
        };
        self.pace.ended(Instant::now());
        self.metrics.push_event(PushEvent::Broadcast);
        Ok(sent as usize)
    }

    /// Hands `frame` to the links of `biz_id` (or all when 0), written directly where they are
    /// idle, split into one task per runtime worker, each a run of consecutive ids (writes are
    /// syscalls: several workers make them on several cores at once).
    async fn write_each(&self, biz_id: i64, frame: WsMessage, cmd: i32, workers: usize) -> u64 {
        let tasks = self.links.split_in_order(workers).into_iter().map(|ids| {
            let (wire, links, frame) = (self.wire.clone(), self.links.clone(), frame.clone());
            tokio::spawn(async move {
                let mut fanout = wire.fanout(frame, cmd, true);
                send_to(&links, ids, biz_id, &mut fanout);
                fanout.finish()
            })
        });
        join_all(tasks).await.into_iter().map(|sent| sent.unwrap_or(0)).sum()
    }

    /// Whether this node would take `msg` at all: valid ids and within `max_push_size` (a push
    /// larger than a connection's queue could hold would close every connection it went to).
    /// Every entry point checks this before doing anything else with a push.
    pub fn admit(&self, msg: &PushMessage) -> Result<(), PushError> {
        if msg.biz_id <= 0 || msg.receiver_id <= 0 {
            return Err(PushError::Invalid);
        }
        self.fits(msg.key.len() + msg.body.len())
    }

    fn fits(&self, size: usize) -> Result<(), PushError> {
        let max = self.config.max_push_size.as_u64() as usize;
        if size > max {
            self.metrics.push_event(PushEvent::TooLarge);
            return Err(PushError::TooLarge { size, max });
        }
        Ok(())
    }

    /// The user acknowledged `key` (from any of their connections here): done here, and done
    /// in their inbox (which may hold it although this node never tracked it).
    pub fn acked(&self, identity: Identity, key: String) {
        let track = (identity, key);
        if self.untrack(&track).is_some() {
            self.metrics.push_event(PushEvent::Acked);
            self.metrics.pushes_pending.set(self.pending.len() as i64);
            if let Some(receipts) = &self.fallback.receipts {
                receipts.receipt(identity, &track.1, Receipt::Acked);
            }
        }
        self.fallback.directory.acked(identity, track.1);
    }

    /// Stops tracking `track`, keeping `pending_bytes` in step.
    fn untrack(&self, track: &(Identity, String)) -> Option<((Identity, String), Pending)> {
        let removed = self.pending.remove(track);
        if let Some((_, p)) = &removed {
            self.pending_bytes.fetch_sub(p.body.len(), Ordering::Relaxed);
        }
        removed
    }

    /// Body bytes awaiting acknowledgement.
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes.load(Ordering::Relaxed)
    }

    /// Pushes awaiting acknowledgement.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Retransmits due pushes until `stop` is cancelled.
    async fn run_retries(self: Arc<Self>, stop: CancellationToken) {
        let tick = (self.config.retry_interval / 4)
            .clamp(Duration::from_millis(10), Duration::from_secs(1));
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticker.tick() => {
                    for msg in self.retry_due(Instant::now()) {
                        self.given_up(msg);
                    }
                }
            }
        }
    }

    /// A given-up push goes to the dead-letter topic (when configured); in cluster mode it stays
    /// in its user's inbox for their next connection. On a single node the give-up is final.
    fn given_up(&self, msg: PushMessage) {
        if self.durable {
            self.metrics.push_event(PushEvent::KeptInInbox);
        }
        if let Some(letters) = &self.fallback.dead_letters {
            let letter = DeadLetter { msg, reason: "given_up" };
            if letters.try_send(letter).is_err() {
                self.metrics.cluster_event(ClusterEvent::DeadLetterDropped);
            }
        }
    }

    /// The keys pending now (a draining node waits for their acknowledgement).
    pub fn outstanding(&self) -> Vec<(Identity, String)> {
        self.pending.iter().map(|p| p.key().clone()).collect()
    }

    /// Whether any of `tracks` is still pending.
    pub fn any_pending(&self, tracks: &[(Identity, String)]) -> bool {
        tracks.iter().any(|t| self.pending.contains_key(t))
    }

    /// The node exits: what is still unacknowledged stays in the users' inboxes (cluster mode,
    /// counted as handed over) or is lost (single node: counted as dropped and logged).
    /// Returns how many were pending.
    pub fn settle_at_exit(&self) -> usize {
        let left = self.pending.len();
        self.pending.clear();
        self.pending_bytes.store(0, Ordering::Relaxed);
        self.metrics.pushes_pending.set(0);
        if left == 0 {
            return 0;
        }
        match self.durable {
            true => {
                self.metrics.push_events(PushEvent::HandedOver, left as u64);
                info!(left, "unacknowledged pushes left in their users' inboxes");
            }
            false => {
                self.metrics.push_events(PushEvent::Dropped, left as u64);
                warn!(left, "unacknowledged pushes dropped at exit (a single node keeps no inbox)");
            }
        }
        left
    }

    /// Retransmits what is due; returns what was given up.
    fn retry_due(&self, now: Instant) -> Vec<PushMessage> {
        let mut given_up = Vec::new();
        let due: Vec<(Identity, String)> =
            self.pending.iter().filter(|p| p.due <= now).map(|p| p.key().clone()).collect();
        let (interval, max_retries) = (self.config.retry_interval, self.config.max_retries);
        for track in due {
            if self.durable && !self.links.holds(&track.0) {
                // The user left this node: their inbox delivers it wherever they connect next.
                if self.untrack(&track).is_some() {
                    self.metrics.push_event(PushEvent::HandedOver);
                }
                continue;
            }
            let step = match self.pending.get_mut(&track) {
                None => continue, // acknowledged meanwhile
                Some(mut p) => match p.on_due(now, interval, max_retries) {
                    Due::Resend => Some(p.body.clone()),
                    Due::GiveUp => None,
                    Due::Wait => continue,
                },
            };
            match step {
                Some(body) => {
                    self.metrics.push_event(PushEvent::Retried);
                    self.deliver(&track, &body);
                }
                None => {
                    let Some(((identity, key), p)) = self.untrack(&track) else { continue };
                    self.metrics.push_event(PushEvent::GivenUp);
                    if let Some(receipts) = &self.fallback.receipts {
                        receipts.receipt(identity, &key, Receipt::GivenUp);
                    }
                    warn!(biz = identity.biz_id, user = identity.user_id, key = %crate::telemetry::Untrusted::text(&key),
                        retries = max_retries, "push never acknowledged; giving up");
                    given_up.push(PushMessage {
                        key,
                        biz_id: identity.biz_id,
                        receiver_id: identity.user_id,
                        body: p.body,
                    });
                }
            }
        }
        self.metrics.pushes_pending.set(self.pending.len() as i64);
        given_up
    }
}

/// Sends to each open link whose id is in `ids` (of `biz_id`, or all when 0), oldest first.
fn send_to(links: &LinkRegistry, ids: Range<ConnId>, biz_id: i64, fanout: &mut Fanout<'_>) {
    links.walk_in_order(ids, |link| {
        if biz_id == 0 || link.identity.biz_id == biz_id {
            fanout.send(link);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    /// Steps a push accepted at `t0` through the instants `at` (seconds after `t0`).
    fn schedule(max_retries: u32, at: &[u64]) -> Vec<Due> {
        let t0 = Instant::now();
        let mut p = Pending::new(Bytes::new(), t0, 5 * SECOND);
        at.iter().map(|s| p.on_due(t0 + Duration::from_secs(*s), 5 * SECOND, max_retries)).collect()
    }

    #[test]
    fn pushes_are_resent_every_interval_until_the_retries_are_spent() {
        use Due::*;
        let cases: &[(u32, &[u64], &[Due])] = &[
            (3, &[1, 4], &[Wait, Wait]),
            (3, &[5], &[Resend]),
            (3, &[5, 6, 9, 10], &[Resend, Wait, Wait, Resend]),
            (3, &[5, 10, 15, 20], &[Resend, Resend, Resend, GiveUp]),
            // A late sweep resends once and schedules from when it ran, never in a burst.
            (3, &[12, 13, 17], &[Resend, Wait, Resend]),
            (1, &[5, 10], &[Resend, GiveUp]),
            (0, &[5], &[GiveUp]),
        ];
        for (max, at, want) in cases {
            assert_eq!(&schedule(*max, at), want, "max_retries {max}, at {at:?}");
        }
    }

    #[test]
    fn giving_up_is_final_and_waits_for_the_last_interval() {
        let t0 = Instant::now();
        let mut p = Pending::new(Bytes::new(), t0, SECOND);
        assert_eq!(p.on_due(t0 + SECOND, SECOND, 1), Due::Resend);
        assert_eq!(p.on_due(t0 + SECOND, SECOND, 1), Due::Wait, "the retry gets its interval");
        assert_eq!(p.on_due(t0 + 2 * SECOND, SECOND, 1), Due::GiveUp);
        assert_eq!(p.retries, 1);
    }
}
