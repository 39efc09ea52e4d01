//! One gateway node: binds its listeners, wires the services, runs the gateway, the gRPC API
//! and the governor, and drains on shutdown.
//!
//! Lifecycle, read top to bottom in [`Node::run`]: phase → running; wait for the shutdown
//! future; phase → draining (`/ready` turns 503); stop accepting; tell every client (close
//! 1001); wait until the last client has left and in-flight backend calls have finished, or
//! `shutdown.drain_timeout` passes (then drop the rest); stop background work (retransmission,
//! batchers); phase → stopped; stop the gRPC API and the governor. Every task is owned here
//! and awaited.

use std::{future::Future, net::SocketAddr, sync::Arc};

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};

use crate::{
    admin::{AdminApi, Sampler},
    auth::{BearerAuth, EmptySecret, TokenVerifier},
    cluster::{Advertised, Cluster},
    config::Config,
    downstream::Downstream,
    gateway::{self, Shared},
    governor,
    links::LinkRegistry,
    protocol::{
        BodyCipher, CipherError, CommandType, Message,
        admin_pb::admin_service_server::AdminServiceServer,
        cluster_pb::node_service_server::NodeServiceServer,
        pb::{NodeList, push_service_server::PushServiceServer},
    },
    routing::{
        Router,
        api::{NodeApi, PushApi},
    },
    shutdown::{Phase, PhaseCell},
    telemetry::Metrics,
    upstream::Upstream,
    wire::Wire,
};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Secret(#[from] EmptySecret),
    #[error("protocol.encryption: {0}")]
    Cipher(#[from] CipherError),
    #[error("backends: {0}")]
    Backend(String),
    #[error("cluster: {0}")]
    Cluster(String),
}

/// A node with its sockets bound, ready to [`run`](Node::run).
pub struct Node {
    shared: Arc<Shared>,
    router: Arc<Router>,
    listeners: Listeners,
    /// Connection tasks and the backend calls they start; drained on shutdown.
    tasks: TaskTracker,
    ephemeral_secret: Option<String>,
}

struct Listeners {
    ws: TcpListener,
    governor: TcpListener,
    grpc: TcpListener,
}

/// A view of a running node, for the binary and for tests.
#[derive(Clone)]
pub struct NodeHandle {
    shared: Arc<Shared>,
}

impl NodeHandle {
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    pub fn phase(&self) -> Phase {
        self.shared.phase.get()
    }

    /// Live connections.
    pub fn connections(&self) -> usize {
        self.shared.links.len()
    }

    /// Users with at least one live connection.
    pub fn users(&self) -> usize {
        self.shared.links.users()
    }

    /// The node's cluster services (session directory, registry).
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.shared.cluster
    }

    /// Pushes awaiting acknowledgement.
    pub fn pending_pushes(&self) -> usize {
        self.shared.downstream.pending()
    }
}

impl Node {
    /// Binds the WebSocket, gRPC and governor listeners (port 0 picks a free port) and builds
    /// the node's services.
    pub async fn bind(config: Config) -> Result<Self, NodeError> {
        let (secret, ephemeral_secret) = match config.auth.jwt.secret.as_str() {
            "" => {
                let mut bytes = [0u8; 32];
                rand::fill(&mut bytes);
                let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                (hex.clone(), Some(hex))
            }
            configured => (configured.to_owned(), None),
        };
        let listeners = Listeners {
            ws: bind("websocket", config.server.websocket.listen).await?,
            governor: bind("governor", config.server.governor.listen).await?,
            grpc: bind("grpc", config.server.grpc.listen).await?,
        };
        let tasks = TaskTracker::new();
        let at = Advertised::new(
            &config.cluster,
            local_addr(&listeners.ws),
            local_addr(&listeners.grpc),
            local_addr(&listeners.governor),
        );
        let shared = Arc::new(build(config, secret.as_bytes(), tasks.clone(), &at)?);
        let router = Arc::new(Router::new(
            shared.node_id.clone(),
            shared.downstream.clone(),
            shared.cluster.directory.clone(),
            &shared.config.server.grpc.token,
            shared.metrics.clone(),
        ));
        Ok(Self { shared, router, listeners, tasks, ephemeral_secret })
    }

    pub fn ws_addr(&self) -> SocketAddr {
        local_addr(&self.listeners.ws)
    }

    pub fn governor_addr(&self) -> SocketAddr {
        local_addr(&self.listeners.governor)
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        local_addr(&self.listeners.grpc)
    }

    pub fn node_id(&self) -> &str {
        &self.shared.node_id
    }

    /// The generated development secret, when none was configured.
    pub fn ephemeral_secret(&self) -> Option<&str> {
        self.ephemeral_secret.as_deref()
    }

    pub fn handle(&self) -> NodeHandle {
        NodeHandle { shared: self.shared.clone() }
    }

    /// Serves until `shutdown` completes, then drains and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let addrs = (self.ws_addr(), self.grpc_addr(), self.governor_addr());
        let Self { shared, router, listeners, tasks, .. } = self;
        let background = TaskTracker::new();
        let stop_background = CancellationToken::new();
        let stop_accept = CancellationToken::new();
        let stop_servers = CancellationToken::new();

        let routes =
            governor::router(shared.metrics.clone(), shared.phase.clone(), shared.cluster.clone());
        let governor =
            tokio::spawn(governor::serve(listeners.governor, routes, stop_servers.clone()));
        let sampler = Sampler::new(shared.clone());
        background.spawn(sampler.clone().run(stop_background.clone()));
        let grpc = tokio::spawn(serve_grpc(
            listeners.grpc,
            shared.clone(),
            router.clone(),
            sampler,
            stop_servers.clone(),
        ));
        shared.upstream.start(&background, &stop_background);
        shared.cluster.start(
            &shared.links,
            &router,
            &shared.upstream,
            &background,
            &stop_background,
        );
        background.spawn(shared.downstream.clone().run_retries(stop_background.clone()));
        let acceptor = tokio::spawn(gateway::run_listener(
            listeners.ws,
            shared.clone(),
            stop_accept.clone(),
            tasks.clone(),
        ));
        shared.phase.set(Phase::Running);
        info!(node = %shared.node_id, websocket = %addrs.0, grpc = %addrs.1, governor = %addrs.2, "node running");

        tokio::select! {
            _ = shutdown => {}
            _ = shared.drain_requested.cancelled() => info!("drain requested through the admin API"),
        }

        shared.phase.set(Phase::Draining);
        info!(connections = shared.links.len(), "draining");
        stop_accept.cancel();
        let _ = acceptor.await;
        redirect_to_peers(&shared).await;
        shared.drain.cancel();
        tasks.close();
        let drain_timeout = shared.config.shutdown.drain_timeout;
        if tokio::time::timeout(drain_timeout, tasks.wait()).await.is_err() {
            warn!(
                left = shared.links.len(),
                "drain timeout passed; dropping the remaining clients"
            );
            shared.abort.cancel();
            tasks.wait().await;
        }
        stop_background.cancel();
        background.close();
        background.wait().await;
        router.shutdown().await;
        shared.phase.set(Phase::Stopped);
        stop_servers.cancel();
        report("governor", governor.await);
        report("grpc", grpc.await.map(|r| r.map_err(std::io::Error::other)));
        info!("stopped");
    }
}

/// Leaves the registry and sends every client a REDIRECT to the live peers (least loaded
/// first), which goes out just before the 1001 close.
async fn redirect_to_peers(shared: &Shared) {
    let nodes = shared.cluster.leave().await;
    if nodes.is_empty() {
        return;
    }
    let cmd = CommandType::Redirect.into();
    let body = shared.wire.serializer.encode(&NodeList { nodes });
    let mut batch =
        shared.wire.batch(shared.wire.frame(&Message { cmd, key: String::new(), body }), cmd);
    shared.links.for_each(|link| {
        batch.send(link);
    });
    info!(clients = batch.finish(), "redirected clients to peers");
}

/// Builds the node's services from its config.
fn build(
    config: Config,
    secret: &[u8],
    tasks: TaskTracker,
    at: &Advertised,
) -> Result<Shared, NodeError> {
    let node_id = config.node_id();
    let metrics = Arc::new(Metrics::new());
    let cipher = BodyCipher::from_config(&config.protocol.encryption)?;
    let wire = Arc::new(Wire::new(config.protocol.serializer, cipher, metrics.clone()));
    let links = Arc::new(LinkRegistry::new(config.server.websocket.max_connections));
    let upstream = Upstream::new(
        config.upstream.clone(),
        &config.backends,
        wire.clone(),
        metrics.clone(),
        tasks,
    )
    .map_err(NodeError::Backend)?;
    let downstream = Downstream::new(
        config.downstream.clone(),
        links.clone(),
        wire.clone(),
        metrics.clone(),
        node_id.clone(),
    );
    let cluster =
        Cluster::new(&config, &node_id, at, metrics.clone()).map_err(NodeError::Cluster)?;
    Ok(Shared {
        advertised_ws: at.ws(),
        drain_requested: CancellationToken::new(),
        cluster: Arc::new(cluster),
        node_id,
        ws_config: Shared::ws_config(&config),
        verifier: TokenVerifier::new(&config.auth.jwt, secret)?,
        links,
        wire,
        upstream: Arc::new(upstream),
        downstream: Arc::new(downstream),
        metrics,
        phase: Arc::new(PhaseCell::default()),
        drain: CancellationToken::new(),
        abort: CancellationToken::new(),
        config,
    })
}

/// Serves the gRPC APIs (`PushService`, `NodeService`) until `stop` is cancelled.
async fn serve_grpc(
    listener: TcpListener,
    shared: Arc<Shared>,
    router: Arc<Router>,
    sampler: Arc<Sampler>,
    stop: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let auth = BearerAuth::new(&shared.config.server.grpc.token);
    let push = PushServiceServer::with_interceptor(
        PushApi::new(router.clone(), shared.downstream.clone()),
        auth.clone(),
    );
    let node = NodeServiceServer::with_interceptor(NodeApi::new(router), auth.clone());
    let admin = AdminServiceServer::with_interceptor(AdminApi::new(shared, sampler), auth);
    tonic::transport::Server::builder()
        .add_service(push)
        .add_service(node)
        .add_service(admin)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop.cancelled_owned())
        .await
}

fn report(what: &str, result: Result<std::io::Result<()>, tokio::task::JoinError>) {
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(server = what, error = %e, "server ended with an error"),
        Err(e) => warn!(server = what, error = %e, "server task failed"),
    }
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, NodeError> {
    TcpListener::bind(addr).await.map_err(|source| NodeError::Bind { what, addr, source })
}

fn local_addr(listener: &TcpListener) -> SocketAddr {
    listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}
