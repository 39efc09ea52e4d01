//! Connection hooks (`backends[].hooks`): a business's backend is told of every connection that
//! opens or closes (`ConnectionHookService.OnConnectionEvents`, a compatible addition to the
//! proto), so it need not consume Kafka presence to know who is online.
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
    links::Link,
    protocol::pb::{
        ConnectionEvent, ConnectionEventsRequest, connection_event::Kind,
        connection_hook_service_client::ConnectionHookServiceClient,
    },
    telemetry::Metrics,
};

/// Events waiting to be sent, at most.
const QUEUE: usize = 65_536;
/// Events in one call, at most.
pub const PER_CALL: usize = 256;

/// The hook events of the businesses that asked for them.
pub struct Hooks {
    businesses: HashSet<i64>,
    queue: mpsc::Sender<ConnectionEvent>,
    metrics: Arc<Metrics>,
    node_id: String,
}

impl Hooks {
    /// The hooks of `businesses` and the task that sends them until `stop` (then it sends what
    /// is queued and ends); `None` when no business asked for hooks.
    pub fn start(
        businesses: HashSet<i64>,
        upstream: Arc<Upstream>,
        metrics: Arc<Metrics>,
        node_id: String,
        stop: CancellationToken,
    ) -> Option<(Arc<Self>, impl Future<Output = ()> + Send + 'static)> {
        if businesses.is_empty() {
            return None;
        }
        let (queue, rx) = mpsc::channel(QUEUE);
        let timeout = upstream.config.timeout;
        let task = run(rx, upstream, metrics.clone(), timeout, stop);
        Some((Arc::new(Self { businesses, queue, metrics, node_id }), task))
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
        if !self.businesses.contains(&link.identity.biz_id) {
            return;
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let event = ConnectionEvent {
            kind: kind.into(),
            biz_id: link.identity.biz_id,
            user_id: link.identity.user_id,
            conn_id: link.id,
            node_id: self.node_id.clone(),
            client_addr: link.remote.to_string(),
            at_ms: i64::try_from(now).unwrap_or(i64::MAX),
            close_code: i32::from(code),
            close_reason: reason.to_owned(),
        };
        if self.queue.try_send(event).is_err() {
            self.metrics.hook_events("dropped", 1);
        }
    }
}

async fn run(
    mut rx: mpsc::Receiver<ConnectionEvent>,
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

/// Sends `events`, one call per business, in order within each.
async fn send(
    upstream: &Upstream,
    metrics: &Metrics,
    timeout: Duration,
    events: impl Iterator<Item = ConnectionEvent>,
) {
    let mut by_biz: BTreeMap<i64, Vec<ConnectionEvent>> = BTreeMap::new();
    for e in events {
        by_biz.entry(e.biz_id).or_default().push(e);
    }
    for (biz, events) in by_biz {
        let n = events.len();
        let outcome = match call(upstream, biz, events, timeout).await {
            Ok(()) => "sent",
            Err(e) => {
                debug!(biz, events = n, error = %e, "connection hook call failed");
                "failed"
            }
        };
        metrics.hook_events(outcome, n);
    }
}

async fn call(
    upstream: &Upstream,
    biz: i64,
    events: Vec<ConnectionEvent>,
    timeout: Duration,
) -> Result<(), String> {
    let backends = upstream.backends.get(biz).ok_or("no backend for the business")?;
    let Pick::Ready(endpoint, _permit) = backends.pick() else {
        return Err("no endpoint available".into());
    };
    let mut client = ConnectionHookServiceClient::new(endpoint.channel());
    let mut request = tonic::Request::new(ConnectionEventsRequest { events });
    request.set_timeout(timeout);
    match tokio::time::timeout(timeout, client.on_connection_events(request)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => {
            warn!(biz, endpoint = %endpoint.addr, "backends[].hooks is on but the backend has no ConnectionHookService");
            Err(status.message().to_owned())
        }
        Ok(Err(status)) => Err(status.message().to_owned()),
        Err(_) => Err("timed out".into()),
    }
}
