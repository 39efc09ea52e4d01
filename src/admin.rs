//! The admin gRPC API (`proto/admin/v1/admin.proto`): node stats and a stats feed, sessions,
//! kick, redirect and drain. Served beside `PushService` behind the same bearer token.
//!
//! Owns: the stats sampler (one snapshot a second: rates and upstream latency quantiles from
//! counter deltas) and the operator actions. Must never hold a lock across an await, and never
//! touch a socket: kicks and redirects go through each link's queue like everything else.

pub mod client;
pub mod webhook;

use std::{
    sync::Arc,
    time::{Duration, Instant, UNIX_EPOCH},
};

use tokio::sync::watch;
use tokio_stream::wrappers::IntervalStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::info;

use crate::{
    auth::{Credential, Identity},
    cluster::{NodeRegistry, SessionDirectory, SessionQuery},
    downstream::Downstream,
    links::{Link, LinkRegistry},
    protocol::{
        admin_pb::{
            BackendHealth, DrainRequest, DrainResponse, InfoRequest, KickRequest, KickResponse,
            ListSessionsRequest, ListSessionsResponse, NodeStats, RedirectRequest,
            RedirectResponse, Session, WatchStatsRequest, admin_service_server::AdminService,
        },
        pb,
    },
    shutdown::{Lifecycle, Phase},
    telemetry::{ClusterEvent, Metrics, Totals},
    upstream::Upstream,
    wire::Wire,
};

/// The admin API's view of the node (built by the node).
pub struct NodeView {
    pub node_id: String,
    /// host:port clients connect to (advertised).
    pub advertised_ws: String,
    /// Connections the node accepts at most.
    pub capacity: usize,
    pub links: Arc<LinkRegistry>,
    pub wire: Arc<Wire>,
    pub upstream: Arc<Upstream>,
    pub downstream: Arc<Downstream>,
    pub directory: Arc<dyn SessionDirectory>,
    pub registry: Option<Arc<NodeRegistry>>,
    pub metrics: Arc<Metrics>,
    pub lifecycle: Arc<Lifecycle>,
}

impl NodeView {
    /// The live peers in the registry, least loaded first (none without etcd).
    async fn peers(&self) -> Result<Vec<pb::Node>, Status> {
        let Some(registry) = &self.registry else { return Ok(Vec::new()) };
        let peers = registry.peers().await;
        let peers = peers.map_err(|e| Status::unavailable(format!("node registry (etcd): {e}")))?;
        Ok(peers.into_iter().map(|p| p.into_node()).collect())
    }
}

/// Samples the node's stats once a second.
pub struct Sampler {
    node: Arc<NodeView>,
    started: Instant,
    latest: watch::Sender<NodeStats>,
}

impl Sampler {
    /// The sampler and its task, which samples until `stop`.
    pub fn new(
        node: Arc<NodeView>,
        stop: CancellationToken,
    ) -> (Arc<Self>, impl Future<Output = ()> + Send + 'static) {
        let started = Instant::now();
        let first = snapshot(&node, started, &node.metrics.totals(), &Totals::default(), 1.0);
        let sampler = Arc::new(Self { node, started, latest: watch::Sender::new(first) });
        (sampler.clone(), sampler.run(stop))
    }

    async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut before = (Instant::now(), self.node.metrics.totals());
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {
                    let now = (Instant::now(), self.node.metrics.totals());
                    let secs = now.0.duration_since(before.0).as_secs_f64().max(0.001);
                    self.latest.send_replace(snapshot(&self.node, self.started, &now.1, &before.1, secs));
                    before = now;
                }
            }
        }
    }

    pub fn latest(&self) -> NodeStats {
        self.latest.borrow().clone()
    }
}

fn snapshot(s: &NodeView, started: Instant, now: &Totals, before: &Totals, secs: f64) -> NodeStats {
    let backends = s
        .upstream
        .backends
        .all()
        .iter()
        .flat_map(|b| {
            b.endpoints.iter().map(|e| BackendHealth {
                biz_id: b.biz_id,
                addr: e.addr.clone(),
                healthy: !e.is_open(),
            })
        })
        .collect();
    let phase = s.lifecycle.phase();
    NodeStats {
        node_id: s.node_id.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        phase: phase.as_str().into(),
        ready: phase == Phase::Running && s.directory.healthy(),
        connections: s.links.len() as i64,
        users: s.links.users() as i64,
        capacity: s.capacity as i64,
        messages_in_per_s: now.messages_in.saturating_sub(before.messages_in) as f64 / secs,
        messages_out_per_s: now.messages_out.saturating_sub(before.messages_out) as f64 / secs,
        upstream_p50_ms: now.upstream_quantile(before, 0.5) * 1000.0,
        upstream_p99_ms: now.upstream_quantile(before, 0.99) * 1000.0,
        pushes_pending: s.downstream.pending() as i64,
        push_retries: now.push_retries,
        outbound_dropped: now.outbound_dropped,
        messages_in: now.messages_in,
        messages_out: now.messages_out,
        backends,
        uptime_s: started.elapsed().as_secs(),
        websocket_addr: s.advertised_ws.clone(),
    }
}

/// The `AdminService` implementation.
pub struct AdminApi {
    node: Arc<NodeView>,
    sampler: Arc<Sampler>,
}

impl AdminApi {
    pub fn new(node: Arc<NodeView>, sampler: Arc<Sampler>) -> Self {
        Self { node, sampler }
    }

    fn local_sessions(&self, req: &ListSessionsRequest) -> Vec<Session> {
        let mut links: Vec<Arc<Link>> = self
            .node
            .links
            .all()
            .into_iter()
            .filter(|l| req.biz_id == 0 || l.identity.biz_id == req.biz_id)
            .filter(|l| req.user_id == 0 || l.identity.user_id == req.user_id)
            .collect();
        links.sort_by_key(|l| l.id);
        links.iter().map(|l| self.session(l)).collect()
    }

    fn session(&self, l: &Link) -> Session {
        let (messages_in, messages_out) = l.message_counts();
        Session {
            node_id: self.node.node_id.clone(),
            conn_id: l.id,
            biz_id: l.identity.biz_id,
            user_id: l.identity.user_id,
            remote_addr: l.remote.to_string(),
            connected_at_ms: millis(l.connected_at),
            messages_in,
            messages_out,
        }
    }

    async fn cluster_sessions(&self, req: &ListSessionsRequest) -> Result<Vec<Session>, Status> {
        let query = match (req.biz_id, req.user_id) {
            (b, u) if b > 0 && u > 0 => SessionQuery::User(Identity { biz_id: b, user_id: u }),
            (b, _) if b > 0 => SessionQuery::Biz(b),
            _ => SessionQuery::All,
        };
        let entries = self
            .node
            .directory
            .sessions(query)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let local = |node: &str, conn| {
            (node == self.node.node_id).then(|| self.node.links.get(conn)).flatten()
        };
        Ok(entries
            .into_iter()
            .filter(|e| req.user_id == 0 || e.user_id == req.user_id)
            .map(|e| match local(&e.node, e.conn) {
                Some(link) => self.session(&link),
                None => Session {
                    node_id: e.node,
                    conn_id: e.conn,
                    biz_id: e.biz_id,
                    user_id: e.user_id,
                    remote_addr: e.remote,
                    connected_at_ms: e.since_ms as i64,
                    messages_in: 0,
                    messages_out: 0,
                },
            })
            .collect())
    }
}

fn millis(t: std::time::SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Pages `all` from the offset in `token`.
fn page(all: Vec<Session>, size: u32, token: &str) -> Result<ListSessionsResponse, Status> {
    let size = match size {
        0 => 100,
        n => n.min(1000) as usize,
    };
    let start: usize = match token {
        "" => 0,
        t => t.parse().map_err(|_| Status::invalid_argument("bad page_token"))?,
    };
    let end = (start + size).min(all.len());
    let next = if end < all.len() { end.to_string() } else { String::new() };
    let sessions = all.into_iter().skip(start).take(end.saturating_sub(start)).collect();
    Ok(ListSessionsResponse { sessions, next_page_token: next })
}

type StatsStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<NodeStats, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn info(&self, _: Request<InfoRequest>) -> Result<Response<NodeStats>, Status> {
        Ok(Response::new(self.sampler.latest()))
    }

    async fn list_sessions(
        &self,
        request: Request<ListSessionsRequest>,
    ) -> Result<Response<ListSessionsResponse>, Status> {
        let req = request.into_inner();
        let all = match req.cluster {
            true => self.cluster_sessions(&req).await?,
            false => self.local_sessions(&req),
        };
        page(all, req.page_size, &req.page_token).map(Response::new)
    }

    async fn kick(&self, request: Request<KickRequest>) -> Result<Response<KickResponse>, Status> {
        let by = caller(&request);
        let req = request.into_inner();
        if req.biz_id <= 0 || req.user_id <= 0 {
            return Err(Status::invalid_argument("biz_id and user_id must be positive"));
        }
        let who = Identity { biz_id: req.biz_id, user_id: req.user_id };
        let reason = if req.reason.is_empty() { "kicked".to_owned() } else { req.reason };
        let mut closed = 0;
        for link in self.node.links.user_links(&who) {
            if req.conn_id == 0 || link.id == req.conn_id {
                link.kick(reason.clone());
                closed += 1;
            }
        }
        self.node.metrics.cluster_events(ClusterEvent::Kicked, u64::from(closed));
        info!(target: AUDIT, action = "kick", caller = %by.addr, credential = %by.credential, biz = who.biz_id, user = who.user_id,
            conn = req.conn_id, %reason, closed, "operator action");
        Ok(Response::new(KickResponse { closed }))
    }

    async fn redirect(
        &self,
        request: Request<RedirectRequest>,
    ) -> Result<Response<RedirectResponse>, Status> {
        let by = caller(&request);
        let req = request.into_inner();
        let all = self.node.links.all();
        let n = match (req.fraction, req.count) {
            (f, _) if f > 0.0 && f <= 1.0 => (all.len() as f64 * f).ceil() as usize,
            (f, _) if f != 0.0 => {
                return Err(Status::invalid_argument("fraction must be in (0, 1]"));
            }
            (_, c) => c as usize,
        };
        let targets = self.node.peers().await?;
        if targets.is_empty() && n > 0 {
            return Err(Status::failed_precondition("no live peer to redirect to"));
        }
        let nodes = targets.iter().map(crate::cluster::registry::client_view).collect();
        let frame = self.node.wire.redirect_frame(nodes);
        let redirected = all.iter().filter(|l| l.redirect(frame.clone())).take(n).count() as u32;
        self.node.metrics.cluster_events(ClusterEvent::Redirected, u64::from(redirected));
        info!(target: AUDIT, action = "redirect", caller = %by.addr, credential = %by.credential, fraction = req.fraction,
            count = req.count, redirected, "operator action");
        Ok(Response::new(RedirectResponse { redirected, targets }))
    }

    async fn drain(
        &self,
        request: Request<DrainRequest>,
    ) -> Result<Response<DrainResponse>, Status> {
        let by = caller(&request);
        info!(target: AUDIT, action = "drain", caller = %by.addr, credential = %by.credential,
            "operator action");
        self.node.lifecycle.request_drain();
        Ok(Response::new(DrainResponse {}))
    }

    type WatchStatsStream = StatsStream;

    async fn watch_stats(
        &self,
        request: Request<WatchStatsRequest>,
    ) -> Result<Response<StatsStream>, Status> {
        let ms = match request.into_inner().interval_ms {
            0 => 1000,
            ms => ms.clamp(100, 60_000),
        };
        let sampler = self.sampler.clone();
        let ticks = IntervalStream::new(tokio::time::interval(Duration::from_millis(ms.into())));
        let stream = tokio_stream::StreamExt::map(ticks, move |_| Ok(sampler.latest()));
        Ok(Response::new(Box::pin(stream)))
    }
}

/// The log target of operator actions (kick, redirect, drain): one line each, with the caller.
pub const AUDIT: &str = "wsgw::audit";

/// Who made an admin request, for the audit line: the calling address and the token presented
/// (its config key and fingerprint, never the token).
struct Caller {
    addr: String,
    credential: String,
}

fn caller<T>(request: &Request<T>) -> Caller {
    let addr = request.remote_addr().map_or_else(|| "unknown".to_owned(), |a| a.to_string());
    let credential = request.extensions().get::<Credential>();
    Caller { addr, credential: credential.map_or_else(|| "none".to_owned(), |c| c.to_string()) }
}
