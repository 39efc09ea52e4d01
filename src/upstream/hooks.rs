//! Connection hooks (`backends[].hooks`): a business's backend is told of every connection that
//! opens or closes (`ConnectionHookService.OnConnectionEvents`, a compatible addition to the
//! proto), so it need not consume Kafka presence to know who is online. Delivery receipts
//! (`backends[].receipts`): it is told when a push this node tracked was acknowledged or given
//! up (`DeliveryReceiptService.OnDeliveryReceipts`).
//!
//! Owns: the bounded event queue and the task that sends it. Events are queued without waiting
//! (a full queue drops them, counted `dropped`), sent in order per node, batched (everything
//! queued, up to [`PER_CALL`] per call and business), at most once: a call that fails or times
//! out (`upstream.timeout`) is counted `failed` and not retried, so a slow or absent hook
//! backend never holds a connection or the upstream path. Calls use the business's endpoints
//! (round robin, their in-flight limits) without touching their circuits. On shutdown the
//! events still queued (the drained connections' disconnects) are sent before the task ends.
//! Must never block a connection task.

use std::{
    collections::{BTreeMap, HashSet},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{Pick, Upstream};
use crate::{
    auth::Identity,
    downstream::{Receipt, Receipts},
    links::Link,
    protocol::pb::{
        ConnectionEvent, ConnectionEventsRequest, DeliveryReceipt, DeliveryReceiptsRequest,
        connection_event::Kind, connection_hook_service_client::ConnectionHookServiceClient,
        delivery_receipt::Outcome, delivery_receipt_service_client::DeliveryReceiptServiceClient,
    },
    telemetry::Metrics,
};

/// One queued event: a connection's, or a push's receipt.
enum Event {
    Connection(ConnectionEvent),
    Receipt(DeliveryReceipt),
}

impl Event {
    fn biz(&self) -> i64 {
        match self {
            Event::Connection(e) => e.biz_id,
            Event::Receipt(r) => r.biz_id,
        }
    }
}

/// Which businesses asked for what.
#[derive(Default)]
pub struct Wanted {
    pub connections: HashSet<i64>,
    pub receipts: HashSet<i64>,
}

impl Wanted {
    /// What the configured backends ask for (`backends[].hooks`, `backends[].receipts`).
    pub fn of(backends: &[crate::config::BackendConfig]) -> Self {
        let asking = |on: fn(&crate::config::BackendConfig) -> bool| {
            backends.iter().filter(|b| on(b)).map(|b| b.biz_id).collect()
        };
        Self { connections: asking(|b| b.hooks), receipts: asking(|b| b.receipts) }
    }
}

/// Events waiting to be sent, at most.
const QUEUE: usize = 65_536;
/// Events in one call, at most.
pub const PER_CALL: usize = 256;

/// The hook events of the businesses that asked for them.
pub struct Hooks {
    wanted: Wanted,
    queue: mpsc::Sender<Event>,
    metrics: Arc<Metrics>,
    node_id: String,
}

impl Hooks {
    /// The hooks of `businesses` and the task that sends them until `stop` (then it sends what
    /// is queued and ends); `None` when no business asked for hooks.
    pub fn start(
        wanted: Wanted,
        upstream: Arc<Upstream>,
        metrics: Arc<Metrics>,
        node_id: String,
        stop: CancellationToken,
    ) -> Option<(Arc<Self>, impl Future<Output = ()> + Send + 'static)> {
        if wanted.connections.is_empty() && wanted.receipts.is_empty() {
            return None;
        }
        let (queue, rx) = mpsc::channel(QUEUE);
        let timeout = upstream.config.timeout;
        let task = run(rx, upstream, metrics.clone(), timeout, stop);
        Some((Arc::new(Self { wanted, queue, metrics, node_id }), task))
    }

    /// Whether receipts are wanted by any business (the downstream path is told only then).
    pub fn wants_receipts(&self) -> bool {
        !self.wanted.receipts.is_empty()
    }

    pub fn connected(&self, link: &Link) {
        self.queue_event(link, Kind::Connected, 0, "");
    }

    /// `code`: the close code the gateway sent (1006 when none: the client closed or the
    /// connection was lost, which `reason` says).
    pub fn disconnected(&self, link: &Link, code: u16, reason: &str) {
        self.queue_event(link, Kind::Disconnected, code, reason);
    }

    fn queue_event(&self, link: &Link, kind: Kind, code: u16, reason: &str) {
        if !self.wanted.connections.contains(&link.identity.biz_id) {
            return;
        }
        let event = ConnectionEvent {
            kind: kind.into(),
            biz_id: link.identity.biz_id,
            user_id: link.identity.user_id,
            conn_id: link.id,
            node_id: self.node_id.clone(),
            client_addr: link.remote.to_string(),
            at_ms: now_ms(),
            close_code: i32::from(code),
            close_reason: reason.to_owned(),
        };
        self.enqueue(Event::Connection(event));
    }

    fn enqueue(&self, event: Event) {
        if self.queue.try_send(event).is_err() {
            self.metrics.hook_events("dropped", 1);
        }
    }
}

impl Receipts for Hooks {
    fn receipt(&self, who: Identity, key: &str, what: Receipt) {
        if !self.wanted.receipts.contains(&who.biz_id) {
            return;
        }
        let outcome = match what {
            Receipt::Acked => Outcome::Acked,
            Receipt::GivenUp => Outcome::GivenUp,
        };
        self.enqueue(Event::Receipt(DeliveryReceipt {
            outcome: outcome.into(),
            key: key.to_owned(),
            biz_id: who.biz_id,
            receiver_id: who.user_id,
            node_id: self.node_id.clone(),
            at_ms: now_ms(),
        }));
    }
}

fn now_ms() -> i64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    i64::try_from(now).unwrap_or(i64::MAX)
}

async fn run(
    mut rx: mpsc::Receiver<Event>,
    upstream: Arc<Upstream>,
    metrics: Arc<Metrics>,
    timeout: Duration,
    stop: CancellationToken,
) {
    let mut events = Vec::with_capacity(PER_CALL);
    loop {
        let n = tokio::select! {
            _ = stop.cancelled() => break,
            n = rx.recv_many(&mut events, PER_CALL) => n,
        };
        if n == 0 {
            return;
        }
        send(&upstream, &metrics, timeout, events.drain(..)).await;
    }
    // Stopping: what is queued now (the drained connections' disconnects) still goes out.
    rx.close();
    while rx.recv_many(&mut events, PER_CALL).await > 0 {
        send(&upstream, &metrics, timeout, events.drain(..)).await;
    }
}

/// Sends `events`: per business, one call for its connection events and one for its
/// receipts, each in order.
async fn send(
    upstream: &Upstream,
    metrics: &Metrics,
    timeout: Duration,
    events: impl Iterator<Item = Event>,
) {
    let mut by_biz: BTreeMap<i64, (Vec<ConnectionEvent>, Vec<DeliveryReceipt>)> = BTreeMap::new();
    for e in events {
        let (connections, receipts) = by_biz.entry(e.biz()).or_default();
        match e {
            Event::Connection(c) => connections.push(c),
            Event::Receipt(r) => receipts.push(r),
        }
    }
    for (biz, (connections, receipts)) in by_biz {
        for batch in [Batch::Connections(connections), Batch::Receipts(receipts)] {
            let n = batch.len();
            if n == 0 {
                continue;
            }
            let outcome = match call(upstream, biz, batch, timeout).await {
                Ok(()) => "sent",
                Err(e) => {
                    debug!(biz, events = n, error = %e, "hook call failed");
                    "failed"
                }
            };
            metrics.hook_events(outcome, n);
        }
    }
}

/// The events of one call.
enum Batch {
    Connections(Vec<ConnectionEvent>),
    Receipts(Vec<DeliveryReceipt>),
}

impl Batch {
    fn len(&self) -> usize {
        match self {
            Batch::Connections(v) => v.len(),
            Batch::Receipts(v) => v.len(),
        }
    }
}

async fn call(
    upstream: &Upstream,
    biz: i64,
    batch: Batch,
    timeout: Duration,
) -> Result<(), String> {
    let backends = upstream.backends.get(biz).ok_or("no backend for the business")?;
    let Pick::Ready(endpoint, _permit) = backends.pick() else {
        return Err("no endpoint available".into());
    };
    let channel = endpoint.channel();
    let answer = tokio::time::timeout(timeout, async move {
        match batch {
            Batch::Connections(events) => {
                let mut request = tonic::Request::new(ConnectionEventsRequest { events });
                request.set_timeout(timeout);
                let mut client = ConnectionHookServiceClient::new(channel);
                client.on_connection_events(request).await.map(drop)
            }
            Batch::Receipts(receipts) => {
                let mut request = tonic::Request::new(DeliveryReceiptsRequest { receipts });
                request.set_timeout(timeout);
                let mut client = DeliveryReceiptServiceClient::new(channel);
                client.on_delivery_receipts(request).await.map(drop)
            }
        }
    });
    match answer.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => {
            warn!(biz, endpoint = %endpoint.addr, "hooks or receipts are on but the backend does not serve them");
            Err(status.message().to_owned())
        }
        Ok(Err(status)) => Err(status.message().to_owned()),
        Err(_) => Err("timed out".into()),
    }
}
