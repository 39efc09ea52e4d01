//! Upstream: client messages to business backends, and their acknowledgements.
//!
//! Owns: the backend registry, the per-user dedup window, batching and the retry / circuit
//! policy. [`Upstream::submit`] never waits: it answers from the dedup cache, refuses beyond
//! the connection's or the user's in-flight limit (RATE_LIMIT_EXCEEDED), or spawns the backend call on the
//! node's task tracker; the answer (UPSTREAM_ACK or COMMAND_TYPE_ERROR) is queued on the link.
//! Must never block a connection task or hold a lock across a backend call.
//!
//! Delivery to the backend is at least once: a call that timed out may have arrived and is
//! retried; backends deduplicate by key.

mod backends;
mod batch;
mod dedup;
mod hooks;
mod sender;
mod share;

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use futures_util::future::join_all;
use prost::Message as _;
use tokio::{sync::oneshot, time::Instant};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::{Code, Status};
use tracing::{debug, warn};

pub use backends::{BackendRegistry, BizBackends, Endpoint, Pick};
pub use hooks::{Hooks, Wanted};
pub use sender::Sender;

use self::{
    batch::BatchItem,
    dedup::{Begin, Dedup},
    share::UserShare,
};
use crate::{
    cluster::{SessionDirectory, UpstreamClaim},
    config::{BackendConfig, BackendMap, UpstreamConfig},
    grpc::{ClientTls, GrpcAddr},
    links::Link,
    protocol::{CommandType, ErrorCode, Message, pb::OnReceiveRequest, pb::OnReceiveResponse},
    telemetry::Metrics,
    wire::Wire,
};

/// Why a message was not accepted by a backend.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error("no backend serves biz {0}")]
    NoBackend(i64),
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    #[error("backend rejected the message: {0}")]
    Rejected(String),
    /// Every endpoint is at its in-flight limit: the message is shed, not queued.
    #[error("backends are busy")]
    Busy,
}

impl UpstreamError {
    fn code(&self) -> ErrorCode {
        match self {
            Self::NoBackend(_) => ErrorCode::NoBackend,
            Self::Unavailable(_) => ErrorCode::BackendUnavailable,
            Self::Rejected(_) => ErrorCode::BackendRejected,
            // Never sent as an error: a busy backend is answered with RATE_LIMIT_EXCEEDED.
            Self::Busy => ErrorCode::Unspecified,
        }
    }

    fn outcome(&self) -> &'static str {
        match self {
            Self::NoBackend(_) => "no_backend",
            Self::Unavailable(_) => "unavailable",
            Self::Rejected(_) => "rejected",
            Self::Busy => "busy",
        }
    }
}

/// How often a node waiting for another node's answer to the same message looks again.
const CLAIM_POLL: Duration = Duration::from_millis(20);

/// A failed attempt: either worth retrying on another endpoint, or final.
enum Attempt {
    Retry(String),
    Final(Status),
}

/// The upstream service of one node.
pub struct Upstream {
    pub backends: BackendRegistry,
    config: UpstreamConfig,
    dedup: Dedup,
    /// Each user's share of the backend calls (`max_in_flight_per_user`).
    share: Arc<UserShare>,
    wire: Arc<Wire>,
    metrics: Arc<Metrics>,
    tasks: TaskTracker,
    /// Cluster-wide dedup (the session directory); the in-memory one always says "call".
    directory: Arc<dyn SessionDirectory>,
    /// Endpoints of the config file, per business; discovery adds to them, never removes them.
    static_endpoints: HashMap<i64, Vec<GrpcAddr>>,
    /// Businesses whose backends came (partly) from discovery.
    discovered: std::sync::Mutex<HashSet<i64>>,
    /// This node, as backends are told (`x-wsgw-node-id`; `None`: not printable ASCII).
    node_header: Option<tonic::metadata::AsciiMetadataValue>,
    tls: ClientTls,
}

/// What the upstream service works with, besides its config.
pub struct UpstreamContext {
    pub wire: Arc<Wire>,
    pub metrics: Arc<Metrics>,
    /// Backend calls are spawned on it (the node drains it).
    pub tasks: TaskTracker,
    /// Cluster-wide dedup (the session directory).
    pub directory: Arc<dyn SessionDirectory>,
    pub node_id: String,
    /// TLS of `https://` backend endpoints (`upstream.tls`).
    pub tls: ClientTls,
}

/// A backend endpoint, or (logged) none when its TLS settings cannot be applied.
fn endpoint(addr: &GrpcAddr, config: &UpstreamConfig, tls: &ClientTls) -> Option<Arc<Endpoint>> {
    match Endpoint::new(addr, config.timeout, config.max_calls_per_endpoint, tls) {
        Ok(e) => Some(Arc::new(e)),
        Err(e) => {
            tracing::error!(%addr, error = %e, "backend endpoint left out");
            None
        }
    }
}

impl Upstream {
    /// Builds the service with the static backends of the config, and the task that runs its
    /// batchers until `stop` (the caller spawns and awaits it). `tasks` is the tracker backend
    /// calls are spawned on (the node drains it).
    pub fn new(
        config: UpstreamConfig,
        static_backends: &[BackendConfig],
        context: UpstreamContext,
        stop: CancellationToken,
    ) -> (Arc<Self>, impl Future<Output = ()> + Send + 'static) {
        let UpstreamContext { wire, metrics, tasks, directory, node_id, tls } = context;
        let backends = BackendRegistry::default();
        let mut batchers = Vec::new();
        for b in static_backends {
            let endpoints = b.endpoints.iter().filter_map(|a| endpoint(a, &config, &tls)).collect();
            let sender = b.batch.enabled.then(|| {
                let (batcher, sender) = batch::Batcher::new(b.biz_id, b.batch.clone());
                batchers.push(batcher);
                sender
            });
            backends.set(BizBackends::new(b.biz_id, endpoints, sender));
        }
        let static_endpoints =
            static_backends.iter().map(|b| (b.biz_id, b.endpoints.clone())).collect();
        let upstream = Arc::new(Self {
            static_endpoints,
            discovered: std::sync::Mutex::default(),
            dedup: Dedup::new(
                config.dedup_window,
                config.dedup_capacity,
                config.dedup_max_bytes.as_u64(),
            ),
            share: UserShare::new(config.max_in_flight_per_user),
            backends,
            config,
            wire,
            metrics,
            tasks,
            directory,
            node_header: sender::node_header(&node_id),
            tls,
        });
        let runs: Vec<_> =
            batchers.into_iter().map(|b| b.run(upstream.clone(), stop.clone())).collect();
        (upstream, async move {
            join_all(runs).await;
        })
    }

    /// Applies discovered backends (business → addresses), merged with the static ones.
    /// Endpoints whose address is unchanged are kept (with their connection and circuit); a
    /// business that disappears from discovery falls back to its static endpoints, if any.
    pub fn set_discovered(&self, found: &BackendMap) {
        let mut discovered = self.discovered.lock().unwrap_or_else(|e| e.into_inner());
        let gone: Vec<i64> =
            discovered.iter().filter(|b| !found.contains_key(b)).copied().collect();
        for biz in gone {
            discovered.remove(&biz);
            match self.static_endpoints.get(&biz) {
                Some(addrs) => self.replace_endpoints(biz, addrs),
                None => self.backends.remove(biz),
            }
        }
        for (biz, addrs) in found {
            let mut all = self.static_endpoints.get(biz).cloned().unwrap_or_default();
            all.extend(addrs.iter().filter(|a| !all.contains(a)).cloned().collect::<Vec<_>>());
            self.replace_endpoints(*biz, &all);
            discovered.insert(*biz);
        }
    }

    fn replace_endpoints(&self, biz: i64, addrs: &[GrpcAddr]) {
        let current = self.backends.get(biz);
        let existing = |addr: &GrpcAddr| {
            let endpoints = current.as_ref().map(|c| c.endpoints.as_slice()).unwrap_or_default();
            endpoints.iter().find(|e| e.addr == addr.as_str()).cloned()
        };
        let endpoints: Vec<Arc<Endpoint>> = addrs
            .iter()
            .filter_map(|a| existing(a).or_else(|| endpoint(a, &self.config, &self.tls)))
            .collect();
        let batcher = current.as_ref().and_then(|c| c.batch_sender());
        self.backends.set(BizBackends::new(biz, endpoints, batcher));
    }

    /// Handles an UPSTREAM_MESSAGE from `link` without waiting.
    pub fn submit(self: &Arc<Self>, link: &Arc<Link>, key: String, body: Bytes) {
        let dkey = (link.identity, key);
        match self.dedup.begin(&dkey, link) {
            Begin::Acked(ack) => {
                self.metrics.dedup_hits.inc();
                self.send_ack(link, &dkey.1, &ack);
                return;
            }
            Begin::Joined => {
                self.metrics.dedup_hits.inc();
                return;
            }
            Begin::New => {}
        }
        if !link.try_begin_upstream(self.config.max_in_flight) {
            self.metrics.upstream_done(dkey.0.biz_id, "rate_limited", Duration::ZERO);
            self.rate_limited(link, &dkey);
            return;
        }
        let Some(share) = self.share.try_begin(link.identity) else {
            link.end_upstream();
            self.metrics.upstream_done(dkey.0.biz_id, "user_limited", Duration::ZERO);
            self.rate_limited(link, &dkey);
            return;
        };
        let this = self.clone();
        let link = link.clone();
        self.tasks.spawn(async move {
            let started = Instant::now();
            let sender = Sender { identity: link.identity, conn: link.id, remote: link.remote };
            let result = this.answer(sender, &dkey.1, body).await;
            link.end_upstream();
            drop(share);
            this.finish(&link, &dkey, result, started.elapsed());
        });
    }

    /// The backend's answer to (user, key): the one another node already got within the dedup
    /// window (cluster mode), or this node's own backend call, recorded for the others. A call
    /// another node has in flight is waited for, up to the time that call may take; then this
    /// node calls itself (delivery to backends is at least once). With the directory down,
    /// only this node's own dedup applies.
    async fn answer(
        &self,
        sender: Sender,
        key: &str,
        body: Bytes,
    ) -> Result<OnReceiveResponse, UpstreamError> {
        let who = sender.identity;
        let window = self.config.dedup_window;
        let deadline = Instant::now() + self.config.timeout * (self.config.retries + 1);
        let shared = loop {
            match self.directory.claim_upstream(who, key, window).await {
                Ok(UpstreamClaim::Answered(answer)) => {
                    if let Ok(response) = OnReceiveResponse::decode(answer) {
                        self.metrics.dedup_hits.inc();
                        return Ok(response);
                    }
                    break true;
                }
                Ok(UpstreamClaim::InFlight) if Instant::now() < deadline => {
                    tokio::time::sleep(CLAIM_POLL).await;
                }
                Ok(UpstreamClaim::InFlight | UpstreamClaim::Owned) | Err(_) => break true,
                Ok(UpstreamClaim::Unshared) => break false,
            }
        };
        let request = OnReceiveRequest { key: key.to_owned(), body };
        let result = self.forward(sender, request).await;
        if !shared {
            return result;
        }
        let answer = result.as_ref().ok().map(|r| Bytes::from(r.encode_to_vec()));
        if let Err(e) = self.directory.settle_upstream(who, key, answer, window).await {
            debug!(error = %e, "could not record the upstream answer for the cluster");
        }
        result
    }

    /// Sends the outcome to the asking link and to any duplicate waiters.
    fn finish(
        &self,
        link: &Arc<Link>,
        dkey: &dedup::Key,
        result: Result<OnReceiveResponse, UpstreamError>,
        took: Duration,
    ) {
        let biz = dkey.0.biz_id;
        match result {
            Ok(response) => {
                self.metrics.upstream_done(biz, "ok", took);
                let ack = self.wire.serializer.encode(&response);
                for l in std::iter::once(link.clone()).chain(self.dedup.finish(dkey, Some(&ack))) {
                    self.send_ack(&l, &dkey.1, &ack);
                }
            }
            Err(UpstreamError::Busy) => {
                self.metrics.upstream_done(biz, UpstreamError::Busy.outcome(), took);
                self.rate_limited(link, dkey);
            }
            Err(e) => {
                self.metrics.upstream_done(biz, e.outcome(), took);
                debug!(biz, key = %crate::telemetry::Untrusted::text(&dkey.1), error = %e, "upstream message not accepted");
                for l in std::iter::once(link.clone()).chain(self.dedup.finish(dkey, None)) {
                    self.wire.send_error(&l, dkey.1.clone(), e.code(), e.to_string());
                }
            }
        }
    }

    /// Answers RATE_LIMIT_EXCEEDED (same key, no body) to the link and any waiters.
    fn rate_limited(&self, link: &Arc<Link>, dkey: &dedup::Key) {
        let cmd = CommandType::RateLimitExceeded.into();
        let limited = Message { cmd, key: dkey.1.clone(), body: Bytes::new() };
        for l in std::iter::once(link.clone()).chain(self.dedup.finish(dkey, None)) {
            let _ = self.wire.send(&l, &limited);
        }
    }

    fn send_ack(&self, link: &Link, key: &str, ack: &Bytes) {
        let msg = Message {
            cmd: CommandType::UpstreamAck.into(),
            key: key.to_owned(),
            body: self.wire.seal(ack),
        };
        let _ = self.wire.send(link, &msg);
    }

    /// Sends one request to the biz's backend, batched when configured.
    async fn forward(
        &self,
        sender: Sender,
        request: OnReceiveRequest,
    ) -> Result<OnReceiveResponse, UpstreamError> {
        let biz_id = sender.identity.biz_id;
        let biz = self.backends.get(biz_id).ok_or(UpstreamError::NoBackend(biz_id))?;
        if let Some(batcher) = biz.batcher() {
            let (reply, answer) = oneshot::channel();
            let item = BatchItem { request: request.clone(), sender, reply };
            if batcher.try_send(item).is_ok() {
                return answer
                    .await
                    .unwrap_or_else(|_| Err(UpstreamError::Unavailable("batcher stopped".into())));
            }
        }
        self.call_one(&biz, request, sender).await
    }

    /// One OnReceive call with retries, telling the backend who sent it.
    async fn call_one(
        &self,
        biz: &BizBackends,
        request: OnReceiveRequest,
        sender: Sender,
    ) -> Result<OnReceiveResponse, UpstreamError> {
        self.with_retries(biz, |endpoint| {
            let request = sender::with_senders(request.clone(), &[sender], self.node_header.as_ref());
            async move { endpoint.client().on_receive(request).await.map(tonic::Response::into_inner) }
        })
        .await
        .map_err(|status| UpstreamError::Rejected(status_text(&status)))?
    }

    /// Runs `call` against the biz's endpoints: per-call timeout, retries with exponential
    /// back-off and jitter on retryable failures, circuit bookkeeping. The outer error is a
    /// final status from the backend; the inner one an exhausted or impossible call.
    async fn with_retries<T, F, Fut>(
        &self,
        biz: &BizBackends,
        mut call: F,
    ) -> Result<Result<T, UpstreamError>, Status>
    where
        F: FnMut(Arc<Endpoint>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let c = &self.config;
        let mut last = String::new();
        for attempt in 0..=c.retries {
            if attempt > 0 {
                tokio::time::sleep(backoff(c.backoff, c.max_backoff, attempt)).await;
            }
            let (endpoint, _permit) = match biz.pick() {
                Pick::Ready(endpoint, permit) => (endpoint, permit),
                Pick::Busy => {
                    self.metrics.backend_error(biz.biz_id, "busy");
                    return Ok(Err(UpstreamError::Busy));
                }
                Pick::CircuitOpen => {
                    self.metrics.backend_error(biz.biz_id, "circuit_open");
                    last = "every endpoint's circuit is open".into();
                    continue;
                }
            };
            let outcome = match tokio::time::timeout(c.timeout, call(endpoint.clone())).await {
                Ok(Ok(value)) => {
                    endpoint.succeeded();
                    return Ok(Ok(value));
                }
                Ok(Err(status)) if retryable(status.code()) => {
                    Attempt::Retry(format!("{}: {}", endpoint.addr, status_text(&status)))
                }
                Ok(Err(status)) => Attempt::Final(status),
                Err(_) => {
                    Attempt::Retry(format!("{}: timed out after {:?}", endpoint.addr, c.timeout))
                }
            };
            match outcome {
                Attempt::Final(status) => {
                    endpoint.succeeded();
                    return Err(status);
                }
                Attempt::Retry(reason) => {
                    self.metrics.backend_error(
                        biz.biz_id,
                        if reason.contains("timed out") { "timeout" } else { "unavailable" },
                    );
                    if endpoint.failed(c.circuit_failures, c.circuit_cooldown) {
                        warn!(biz = biz.biz_id, endpoint = %endpoint.addr, cooldown = ?c.circuit_cooldown, "circuit opened");
                    }
                    last = reason;
                }
            }
        }
        Ok(Err(UpstreamError::Unavailable(last)))
    }
}

/// Statuses that say the endpoint (not the message) is the problem.
fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::Unknown
    )
}

fn status_text(status: &Status) -> String {
    match status.message() {
        "" => format!("{:?}", status.code()),
        m => format!("{:?}: {m}", status.code()),
    }
}

/// Exponential back-off with "equal jitter": half fixed, half random.
fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1 << attempt.saturating_sub(1).min(16)).min(max);
    let half = exp / 2;
    half + half.mul_f64(rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let (base, max) = (Duration::from_millis(100), Duration::from_millis(500));
        for _ in 0..100 {
            let b1 = backoff(base, max, 1);
            assert!(b1 >= Duration::from_millis(50) && b1 <= base);
            let b2 = backoff(base, max, 2);
            assert!(b2 >= base && b2 <= Duration::from_millis(200));
            assert!(backoff(base, max, 10) <= max);
        }
    }

    #[test]
    fn only_endpoint_failures_are_retried() {
        assert!(retryable(Code::Unavailable) && retryable(Code::DeadlineExceeded));
        assert!(!retryable(Code::InvalidArgument) && !retryable(Code::Unimplemented));
    }
}
