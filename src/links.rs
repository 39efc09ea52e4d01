//! The registry of live links: connection id → [`Link`], user → their connections, and the
//! links in connection order for broadcasts (`order.rs`).
//!
//! A [`Link`] is how anything outside a connection's task talks to it: a bounded outbound queue
//! (bounded in bytes) and a close request. Enqueueing never blocks; a full queue marks the link
//! as a slow consumer, which its task then closes. A plain connection's link can also write a
//! message straight to the socket when the connection is idle (see `gate.rs`): the common case
//! of a push or broadcast costs no task wake-up. The registry is low level on purpose: the
//! connection task, upstream and downstream all use it, and none of them reaches into another.
//! Must never own a socket (a link only borrows its connection's [`Gate`] while the task lives)
//! or await anything but the link's own wake-up.

mod close;
mod gate;
mod order;

pub use close::CloseReason;
use gate::Direct;
pub use gate::{Gate, GateStream};

use std::{
    collections::VecDeque,
    net::{IpAddr, SocketAddr},
    ops::Range,
    sync::{
        Arc, Mutex, MutexGuard, Weak,
        atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering},
    },
    time::SystemTime,
};

use bytes::Bytes;
use dashmap::DashMap;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::{
    Message as WsMessage,
    protocol::frame::{
        Frame,
        coding::{Data, OpCode},
    },
};

use crate::auth::Identity;

/// A connection's id, unique within the node for its lifetime.
pub type ConnId = u64;

/// Why a message could not be queued for a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("connection is closing")]
    Closed,
    #[error("outbound queue full: slow consumer")]
    Full,
}

/// One live connection, as seen from outside its task.
pub struct Link {
    pub id: ConnId,
    pub identity: Identity,
    pub remote: SocketAddr,
    pub connected_at: SystemTime,
    limit: usize,
    outbound: Mutex<Outbound>,
    wake: Notify,
    /// The plain socket, for direct writes while the connection's task lives.
    gate: Option<Weak<Gate>>,
    /// Upstream messages of this connection waiting for a backend.
    upstream_in_flight: AtomicU32,
    /// Data messages received from the client.
    messages_in: AtomicU64,
}

#[derive(Default)]
struct Outbound {
    queue: VecDeque<WsMessage>,
    /// Bytes queued or taken but not yet written.
    bytes: usize,
    closing: Option<CloseReason>,
    /// The close reason text of a kick.
    close_text: Option<String>,
    /// Messages accepted for sending.
    sent: u64,
    /// The task took messages and has not written them all yet.
    in_flight: bool,
}

impl Link {
    fn lock(&self) -> MutexGuard<'_, Outbound> {
        // A panic while holding this lock leaves plain data behind; keep going with it.
        self.outbound.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `msg` without waiting, or writes it to the socket at once when the connection is
    /// idle (plain connections; see `gate.rs`). A queue over its byte limit marks the link as a
    /// slow consumer: its task closes it and nothing more is accepted.
    pub fn send(&self, msg: WsMessage) -> Result<(), SendError> {
        self.send_with(msg, None, true)
    }

    /// Queues `msg` for the connection's task, never writing it here.
    pub fn queue(&self, msg: WsMessage) -> Result<(), SendError> {
        self.send_with(msg, None, false)
    }

    /// [`Link::send`] of a message whose frame is encoded already (by [`encode`]; a broadcast
    /// encodes once for every link).
    pub fn send_encoded(&self, msg: WsMessage, frame: &Bytes) -> Result<(), SendError> {
        self.send_with(msg, Some(frame), true)
    }

    fn send_with(
        &self,
        msg: WsMessage,
        frame: Option<&Bytes>,
        direct: bool,
    ) -> Result<(), SendError> {
        let len = msg.len();
        let mut out = self.lock();
        if out.closing.is_some() {
            return Err(SendError::Closed);
        }
        if direct && out.queue.is_empty() && !out.in_flight && self.write_now(&msg, frame) {
            out.sent += 1;
            return Ok(());
        }
        if out.bytes + len > self.limit {
            out.closing = Some(CloseReason::SlowConsumer);
            out.queue.clear();
            drop(out);
            self.wake.notify_one();
            return Err(SendError::Full);
        }
        out.bytes += len;
        out.sent += 1;
        out.queue.push_back(msg);
        drop(out);
        self.wake.notify_one();
        Ok(())
    }

    /// Writes `msg` to the socket directly if it has a gate that takes it now (called with
    /// nothing queued or in flight). A frame written in part leaves its end to the task.
    fn write_now(&self, msg: &WsMessage, frame: Option<&Bytes>) -> bool {
        let Some(gate) = self.gate.as_ref().and_then(Weak::upgrade) else { return false };
        let encoded;
        let frame = match frame {
            Some(frame) => frame,
            None => match encode(msg) {
                Some(f) => {
                    encoded = f;
                    &encoded
                }
                None => return false,
            },
        };
        match gate.try_frame(frame) {
            Direct::Written { rest } => {
                if rest {
                    self.wake.notify_one();
                }
                true
            }
            Direct::Busy => false,
        }
    }

    /// Whether a direct write left the end of a frame for the task.
    pub fn has_partial(&self) -> bool {
        self.gate.as_ref().and_then(Weak::upgrade).is_some_and(|g| g.has_partial())
    }

    /// Asks the connection's task to close with `reason` (the first request wins).
    pub fn close(&self, reason: CloseReason) {
        self.lock().closing.get_or_insert(reason);
        self.wake.notify_one();
    }

    /// Closes the connection with 1008 and `text` as the close reason (an operator's kick).
    pub fn kick(&self, text: String) {
        let mut out = self.lock();
        if out.closing.is_none() {
            out.closing = Some(CloseReason::Kicked);
            out.close_text = Some(text);
        }
        drop(out);
        self.wake.notify_one();
    }

    /// Queues `msg` (a REDIRECT) regardless of the byte limit and closes the connection after
    /// it with [`CloseReason::Redirected`]. False when the connection was already closing.
    pub fn redirect(&self, msg: WsMessage) -> bool {
        let mut out = self.lock();
        if out.closing.is_some() {
            return false;
        }
        out.bytes += msg.len();
        out.sent += 1;
        out.queue.push_back(msg);
        out.closing = Some(CloseReason::Redirected);
        drop(out);
        self.wake.notify_one();
        true
    }

    /// The close reason text set by [`Link::kick`].
    pub fn close_text(&self) -> Option<String> {
        self.lock().close_text.clone()
    }

    /// Takes what is still queued even though the link is closing (sent before a polite close).
    pub fn take_rest(&self) -> VecDeque<WsMessage> {
        std::mem::take(&mut self.lock().queue)
    }

    /// Counts one data message from the client.
    pub fn received(&self) {
        self.messages_in.fetch_add(1, Ordering::Relaxed);
    }

    /// (messages received from the client, messages queued for it).
    pub fn message_counts(&self) -> (u64, u64) {
        (self.messages_in.load(Ordering::Relaxed), self.lock().sent)
    }

    /// Waits until something was queued or a close was requested.
    pub async fn woken(&self) {
        self.wake.notified().await;
    }

    /// Takes everything queued, or the close request.
    pub fn take(&self) -> Result<VecDeque<WsMessage>, CloseReason> {
        let mut out = self.lock();
        match out.closing {
            Some(reason) => Err(reason),
            None => {
                out.in_flight = !out.queue.is_empty();
                Ok(std::mem::take(&mut out.queue))
            }
        }
    }

    /// Takes one of `limit` upstream slots; false when all are in use.
    pub fn try_begin_upstream(&self, limit: u32) -> bool {
        self.upstream_in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < limit).then_some(n + 1))
            .is_ok()
    }

    /// Gives an upstream slot back.
    pub fn end_upstream(&self) {
        self.upstream_in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// Reports `bytes` of taken messages as written.
    pub fn written(&self, bytes: usize) {
        let mut out = self.lock();
        out.bytes = out.bytes.saturating_sub(bytes);
        out.in_flight = false;
    }
}

/// The frame a server sends for a data message (`None` for other messages, which always queue).
pub fn encode(msg: &WsMessage) -> Option<Bytes> {
    let (payload, data): (Bytes, _) = match msg {
        WsMessage::Text(t) => (t.clone().into(), Data::Text),
        WsMessage::Binary(b) => (b.clone(), Data::Binary),
        _ => return None,
    };
    let frame = Frame::message(payload, OpCode::Data(data), true);
    let mut out = Vec::with_capacity(frame.len());
    frame.format(&mut out).ok()?;
    Some(out.into())
}

/// Every live link of the node, by connection and by user.
pub struct LinkRegistry {
    links: DashMap<ConnId, Arc<Link>>,
    users: DashMap<Identity, Vec<ConnId>>,
    next_id: AtomicU64,
    /// Connections admitted (handshaking or live); bounded by `capacity`.
    admitted: AtomicUsize,
    capacity: usize,
    /// Live links per client address, when a per-address limit needs it.
    addresses: Option<DashMap<IpAddr, usize>>,
    /// Live links in connection order, for broadcasts.
    order: order::Order,
}

/// A place under the node's connection capacity, released when dropped.
pub struct Slot(Arc<LinkRegistry>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.admitted.fetch_sub(1, Ordering::AcqRel);
    }
}

impl LinkRegistry {
    pub fn new(capacity: usize) -> Self {
        Self {
            links: DashMap::new(),
            users: DashMap::new(),
            next_id: AtomicU64::new(1),
            admitted: AtomicUsize::new(0),
            capacity,
            addresses: None,
            order: order::Order::default(),
        }
    }

    /// Also counts live links per client address ([`address_connections`](Self::address_connections)).
    pub fn counting_addresses(mut self) -> Self {
        self.addresses = Some(DashMap::new());
        self
    }

    /// Live links from `ip` (0 when addresses are not counted).
    pub fn address_connections(&self, ip: &IpAddr) -> usize {
        self.addresses.as_ref().and_then(|a| a.get(ip).map(|n| *n)).unwrap_or(0)
    }

    /// A place for one more connection, or `None` at capacity.
    pub fn admit(self: &Arc<Self>) -> Option<Slot> {
        self.admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.capacity).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(self.clone()))
    }

    /// Registers a new link. Returns it and whether it is the user's first on this node.
    pub fn insert(
        &self,
        identity: Identity,
        remote: SocketAddr,
        limit: usize,
    ) -> (Arc<Link>, bool) {
        self.insert_gated(identity, remote, limit, None)
    }

    /// [`LinkRegistry::insert`] of a plain connection whose socket publishers may write directly
    /// (the link keeps only a weak reference: the socket closes with its task).
    pub fn insert_gated(
        &self,
        identity: Identity,
        remote: SocketAddr,
        limit: usize,
        gate: Option<&Arc<Gate>>,
    ) -> (Arc<Link>, bool) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let link = Arc::new(Link {
            id,
            identity,
            remote,
            connected_at: SystemTime::now(),
            limit,
            outbound: Mutex::default(),
            wake: Notify::new(),
            gate: gate.map(Arc::downgrade),
            upstream_in_flight: AtomicU32::new(0),
            messages_in: AtomicU64::new(0),
        });
        self.links.insert(id, link.clone());
        self.order.insert(link.clone());
        if let Some(addresses) = &self.addresses {
            *addresses.entry(remote.ip()).or_default() += 1;
        }
        let mut conns = self.users.entry(identity).or_default();
        conns.push(id);
        let first = conns.len() == 1;
        (link, first)
    }

    /// Unregisters a link. Returns whether it was the user's last on this node.
    pub fn remove(&self, link: &Link) -> bool {
        self.links.remove(&link.id);
        self.order.remove(link.id);
        if let Some(addresses) = &self.addresses {
            let ip = link.remote.ip();
            if let Some(mut n) = addresses.get_mut(&ip) {
                *n = n.saturating_sub(1);
            }
            addresses.remove_if(&ip, |_, n| *n == 0);
        }
        let last = match self.users.get_mut(&link.identity) {
            Some(mut conns) => {
                conns.retain(|id| *id != link.id);
                conns.is_empty()
            }
            None => false,
        };
        if last {
            self.users.remove_if(&link.identity, |_, conns| conns.is_empty());
        }
        last
    }

    /// How many links the user has on this node.
    pub fn user_connections(&self, identity: &Identity) -> usize {
        self.users.get(identity).map_or(0, |c| c.len())
    }

    /// Whether the user has a link on this node.
    pub fn holds(&self, identity: &Identity) -> bool {
        self.users.contains_key(identity)
    }

    /// The user's links on this node.
    pub fn user_links(&self, identity: &Identity) -> Vec<Arc<Link>> {
        let Some(ids) = self.users.get(identity).map(|c| c.clone()) else {
            return Vec::new();
        };
        ids.iter().filter_map(|id| self.links.get(id).map(|l| l.clone())).collect()
    }

    /// Calls `f` with every live link (no snapshot is allocated; links may come and go).
    pub fn for_each(&self, mut f: impl FnMut(&Arc<Link>)) {
        self.links.iter().for_each(|l| f(l.value()));
    }

    /// A live link by id.
    pub fn get(&self, id: ConnId) -> Option<Arc<Link>> {
        self.links.get(&id).map(|l| l.clone())
    }

    /// Every live link (a snapshot).
    pub fn all(&self) -> Vec<Arc<Link>> {
        self.links.iter().map(|l| l.clone()).collect()
    }

    /// Calls `f` with every live link whose id is in `ids`, oldest first (links coming and
    /// going meanwhile may or may not be visited). Writing to many sockets in this order walks
    /// the links, the kernel's file table and its sockets in the order they were allocated; in
    /// the registry's hash order, a fan-out to 10k / 18k connections took 1.19x / 1.31x as
    /// long (docs/benchmarks.md, "Fan-out in connection order"). `f` must not register or
    /// remove links.
    pub fn walk_in_order(&self, ids: Range<ConnId>, f: impl FnMut(&Link)) {
        self.order.walk(ids, f);
    }

    /// Id ranges that split the live links into `parts` runs of about the same length (for
    /// [`walk_in_order`](Self::walk_in_order) on several workers).
    pub fn split_in_order(&self, parts: usize) -> Vec<Range<ConnId>> {
        self.order.split(parts)
    }

    /// Live connections.
    pub fn len(&self) -> usize {
        self.links.len()
    }

    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// Users with at least one live connection.
    pub fn users(&self) -> usize {
        self.users.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: Identity = Identity { biz_id: 1, user_id: 7 };
    const BOB: Identity = Identity { biz_id: 1, user_id: 8 };

    fn addr() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 1))
    }

    /// Reads exactly `want` from `client`.
    async fn expect_bytes(client: &mut tokio::net::TcpStream, want: &[u8]) {
        use tokio::io::AsyncReadExt;
        let mut got = vec![0u8; want.len()];
        client.read_exact(&mut got).await.expect("read");
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn an_idle_link_writes_at_once_and_never_overtakes_what_its_task_holds() {
        let (gate, mut client) = gate::tests::pair().await;
        let r = LinkRegistry::new(10);
        let (link, _) = r.insert_gated(ALICE, addr(), 1 << 20, Some(&gate));
        let text = |t: &str| WsMessage::Text(t.into());
        let frame = |t: &str| encode(&text(t)).expect("a data frame");

        link.send(text("a")).expect("sent");
        expect_bytes(&mut client, &frame("a")).await;
        assert!(link.take().expect("open").is_empty(), "written, not queued");

        // The task took "b" and has not written it yet: "c" must wait behind it.
        link.queue(text("b")).expect("queued");
        assert_eq!(link.take().expect("open").len(), 1);
        link.send(text("c")).expect("queued behind b");
        assert_eq!(link.take().expect("open").into_iter().collect::<Vec<_>>(), [text("c")]);
        link.written(2);
        // Nothing held any more: written at once again. Control messages always queue.
        link.send(text("d")).expect("sent");
        expect_bytes(&mut client, &frame("d")).await;
        link.send(WsMessage::Ping(Bytes::new())).expect("queued");
        assert_eq!(link.take().expect("open").len(), 1);
        assert_eq!(link.message_counts().1, 5, "every message counts as sent");

        // Once the task is gone (its stream dropped), the link queues as any other.
        drop(gate);
        link.written(0);
        link.send(text("e")).expect("queued");
        assert_eq!(link.take().expect("open").len(), 1);
    }

    #[test]
    fn capacity_is_enforced_and_released() {
        let r = Arc::new(LinkRegistry::new(2));
        let a = r.admit().expect("first");
        let _b = r.admit().expect("second");
        assert!(r.admit().is_none());
        drop(a);
        assert!(r.admit().is_some());
    }

    #[test]
    fn users_may_hold_many_links_with_unique_ids() {
        let r = LinkRegistry::new(10);
        let (l1, first1) = r.insert(ALICE, addr(), 100);
        let (l2, first2) = r.insert(ALICE, addr(), 100);
        let (l3, _) = r.insert(BOB, addr(), 100);
        assert!(first1 && !first2);
        assert_ne!(l1.id, l2.id);
        assert_eq!((r.len(), r.users()), (3, 2));
        assert_eq!(r.user_links(&ALICE).len(), 2);
        assert!(!r.remove(&l1));
        assert!(r.remove(&l2));
        assert!(r.user_links(&ALICE).is_empty());
        assert!(r.remove(&l3));
        assert!(r.is_empty() && r.users() == 0);
    }

    #[test]
    fn links_are_walked_oldest_first_without_the_closed_ones() {
        let r = LinkRegistry::new(1000);
        let links: Vec<_> = (0..300)
            .map(|i| r.insert(if i % 2 == 0 { ALICE } else { BOB }, addr(), 100).0)
            .collect();
        for closed in links.iter().step_by(7) {
            r.remove(closed);
        }
        let open: Vec<ConnId> =
            links.iter().enumerate().filter(|(i, _)| i % 7 != 0).map(|(_, l)| l.id).collect();
        let mut walked = Vec::new();
        r.walk_in_order(0..ConnId::MAX, |l| walked.push(l.id));
        assert_eq!(walked, open);
    }

    #[test]
    fn a_full_queue_marks_a_slow_consumer() {
        let r = LinkRegistry::new(10);
        let (l, _) = r.insert(ALICE, addr(), 10);
        assert_eq!(l.send(WsMessage::binary(vec![0; 6])), Ok(()));
        assert_eq!(l.send(WsMessage::binary(vec![0; 6])), Err(SendError::Full));
        assert_eq!(l.send(WsMessage::binary(vec![0; 1])), Err(SendError::Closed));
        assert_eq!(l.take().err(), Some(CloseReason::SlowConsumer));
    }

    #[test]
    fn written_bytes_free_the_queue() {
        let r = LinkRegistry::new(10);
        let (l, _) = r.insert(ALICE, addr(), 10);
        l.send(WsMessage::binary(vec![0; 8])).expect("fits");
        let taken = l.take().expect("open");
        assert_eq!(taken.len(), 1);
        assert_eq!(l.send(WsMessage::binary(vec![0; 8])), Err(SendError::Full), "not yet written");
        let r2 = LinkRegistry::new(1);
        let (l2, _) = r2.insert(BOB, addr(), 10);
        l2.send(WsMessage::binary(vec![0; 8])).expect("fits");
        let _ = l2.take();
        l2.written(8);
        assert_eq!(l2.send(WsMessage::binary(vec![0; 8])), Ok(()));
    }
}
