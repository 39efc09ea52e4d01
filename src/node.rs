//! One gateway node: binds its listeners, builds and wires the services, runs the gateway, the
//! gRPC API and the governor, and drains on shutdown.
//!
//! [`Node::bind`] builds every service and gives each of its consumers the narrow view it needs
//! (`Gateway` for the connection layer, `NodeView` for the admin API, `GovernorView` for the
//! governor); `node/cluster.rs` wires the cluster adapters to the domain. [`Node::run`] is the
//! lifecycle, read top to bottom. Owns: every long-lived task — each is spawned here, on one of
//! the node's task trackers, and awaited before `run` returns.

mod cluster;
mod grpc;

use grpc::{client_tls, grpc_server_tls, serve_grpc};

use std::{future::Future, net::SocketAddr, pin::Pin, sync::Arc};

use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::task::TaskTracker;
use tonic::transport::ServerTlsConfig;
use tracing::{info, warn};

use crate::{
    admin::{NodeView, Sampler},
    auth::{Jwks, JwksError, JwksSource, KeyError, TokenVerifier},
    cluster::{Advertised, DirectoryError, SessionDirectory},
    config::{Config, GrpcConfig, GrpcRole},
    downstream::{Downstream, Fallback, Receipts},
    gateway::{self, AddressRates, Gateway, ReadRate, Tls, TlsError},
    governor::{self, GovernorView},
    grpc::{Bearer, GrpcError},
    links::LinkRegistry,
    protocol::{CipherError, CommandType},
    routing::{Peers, Router},
    shutdown::{Lifecycle, Phase, Stage},
    telemetry::Metrics,
    upstream::{Hooks, Upstream, UpstreamContext, Wanted},
    wire::Wire,
};

/// A long-lived task, built with its service and spawned by [`Node::run`].
type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

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
    Keys(#[from] KeyError),
    #[error("auth.jwt.jwks: {0}")]
    Jwks(#[from] JwksError),
    #[error("protocol.encryption: {0}")]
    Cipher(#[from] CipherError),
    #[error("server.grpc.token: {0}")]
    Token(#[from] GrpcError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("{key}: {source}")]
    GrpcTls {
        key: &'static str,
        #[source]
        source: GrpcError,
    },
    #[error("cluster: {0}")]
    Cluster(#[from] DirectoryError),
}

/// A node with its sockets bound and its services built, ready to [`run`](Node::run).
pub struct Node {
    listeners: Listeners,
    addrs: Addrs,
    services: Services,
    tasks: Tasks,
    ephemeral_secret: Option<String>,
}

/// The long-lived tasks built with the services, by the stage that ends them.
struct Tasks {
    /// Spawned on the background tracker; end at `StopBackground`.
    background: Vec<Task>,
    /// Spawned on the routing tracker; end at `StopRouting`.
    routing: Vec<Task>,
}

/// Where the listeners are bound.
#[derive(Clone, Copy)]
struct Addrs {
    ws: SocketAddr,
    grpc: SocketAddr,
    governor: SocketAddr,
}

/// The built services and their tasks; the stages of [`Node::run`] are its methods.
struct Services {
    node_id: String,
    lifecycle: Arc<Lifecycle>,
    gateway: Arc<Gateway>,
    admin: Arc<NodeView>,
    governor: GovernorView,
    router: Arc<Router>,
    grpc: GrpcConfig,
    grpc_tls: Option<ServerTlsConfig>,
    drain_timeout: std::time::Duration,
    ack_wait: std::time::Duration,
    /// Connection tasks and the backend calls they start.
    connections: TaskTracker,
    /// Node-to-node delivery (one task per peer, started on first use) and routing tasks.
    routing: TaskTracker,
    sampler: Arc<Sampler>,
}

struct Listeners {
    ws: TcpListener,
    governor: TcpListener,
    grpc: TcpListener,
}

/// A view of a running node, for the binary and for tests.
#[derive(Clone)]
pub struct NodeHandle {
    view: Arc<NodeView>,
}

impl NodeHandle {
    pub fn metrics(&self) -> &Metrics {
        &self.view.metrics
    }

    pub fn phase(&self) -> Phase {
        self.view.lifecycle.phase()
    }

    /// Live connections.
    pub fn connections(&self) -> usize {
        self.view.links.len()
    }

    /// Users with at least one live connection.
    pub fn users(&self) -> usize {
        self.view.links.users()
    }

    /// The node's session directory (Redis in cluster mode, else the in-memory one).
    pub fn directory(&self) -> &Arc<dyn SessionDirectory> {
        &self.view.directory
    }

    /// Pushes awaiting acknowledgement.
    pub fn pending_pushes(&self) -> usize {
        self.view.downstream.pending()
    }
}

impl Node {
    /// Binds the WebSocket, gRPC and governor listeners (port 0 picks a free port) and builds
    /// the node's services.
    pub async fn bind(config: Config) -> Result<Self, NodeError> {
        let (secret, ephemeral_secret) = match config.auth.jwt.has_keys() {
            false => {
                let hex = random_hex();
                (hex.clone(), Some(hex))
            }
            true => (config.auth.jwt.secret.clone(), None),
        };
        let listeners = Listeners {
            ws: bind("websocket", config.websocket_listen()).await?,
            governor: bind("governor", config.server.governor.listen).await?,
            grpc: bind("grpc", config.server.grpc.listen).await?,
        };
        let addrs = Addrs {
            ws: local_addr(&listeners.ws),
            grpc: local_addr(&listeners.grpc),
            governor: local_addr(&listeners.governor),
        };
        let mut at = Advertised::new(&config.cluster, addrs.ws, addrs.grpc, addrs.governor);
        at.grpc_tls = config.server.grpc.tls.is_enabled();
        let (services, tasks) = build(config, secret.as_bytes(), &at)?;
        Ok(Self { listeners, addrs, services, tasks, ephemeral_secret })
    }

    pub fn ws_addr(&self) -> SocketAddr {
        self.addrs.ws
    }

    pub fn governor_addr(&self) -> SocketAddr {
        self.addrs.governor
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.addrs.grpc
    }

    pub fn node_id(&self) -> &str {
        &self.services.node_id
    }

    /// The generated development secret, when none was configured.
    pub fn ephemeral_secret(&self) -> Option<&str> {
        self.ephemeral_secret.as_deref()
    }

    pub fn handle(&self) -> NodeHandle {
        NodeHandle { view: self.services.admin.clone() }
    }

    /// Serves until `shutdown` completes (or an operator asks for a drain), then drains and
    /// returns when every task has ended.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Self { listeners, addrs, services, tasks, .. } = self;
        let servers = services.start_servers(listeners.governor, listeners.grpc);
        let background = services.start_background(tasks);
        let acceptor = services.start_accepting(listeners.ws);
        services.lifecycle.set_phase(Phase::Running);
        services.log_running(addrs);

        services.wait_for(shutdown).await;
        services.lifecycle.set_phase(Phase::Draining);
        services.stop_accepting(acceptor).await;
        services.wait_for_acks().await;
        services.redirect_to_peers().await;
        services.drain_clients().await;
        services.admin.downstream.settle_at_exit();
        services.stop_background(background).await;
        services.stop_routing().await;
        services.lifecycle.set_phase(Phase::Stopped);
        services.stop_servers(servers).await;
        info!("stopped");
    }
}

impl Services {
    /// The governor and the gRPC API (push, node-to-node, admin), until `StopServers`.
    fn start_servers(
        &self,
        governor: TcpListener,
        grpc: TcpListener,
    ) -> [JoinHandle<std::io::Result<()>>; 2] {
        let stop = self.lifecycle.token(Stage::StopServers);
        let routes = governor::router(self.governor.clone());
        let governor = tokio::spawn(governor::serve(governor, routes, stop.clone()));
        let grpc = tokio::spawn(serve_grpc(
            grpc,
            self.admin.clone(),
            self.sampler.clone(),
            self.router.clone(),
            (self.grpc.clone(), self.grpc_tls.clone()),
            stop,
        ));
        [governor, grpc]
    }

    /// Every service task built with the node (until `StopBackground`), and the routing tasks
    /// (until `StopRouting`).
    fn start_background(&self, tasks: Tasks) -> TaskTracker {
        let background = TaskTracker::new();
        for task in tasks.background {
            background.spawn(task);
        }
        for task in tasks.routing {
            self.routing.spawn(task);
        }
        background.close();
        background
    }

    /// The WebSocket accept loop, until `StopAccepting`.
    fn start_accepting(&self, listener: TcpListener) -> JoinHandle<()> {
        let stop = self.lifecycle.token(Stage::StopAccepting);
        tokio::spawn(gateway::run_listener(
            listener,
            self.gateway.clone(),
            stop,
            self.connections.clone(),
        ))
    }

    fn log_running(&self, at: Addrs) {
        let (ws, grpc, governor) = (at.ws, at.grpc, at.governor);
        info!(node = %self.node_id, websocket = %ws, grpc = %grpc, governor = %governor, "node running");
    }

    async fn wait_for(&self, shutdown: impl Future<Output = ()>) {
        tokio::select! {
            _ = shutdown => {}
            _ = self.lifecycle.drain_requested() => info!("drain requested through the admin API"),
        }
        info!(connections = self.admin.links.len(), "draining");
    }

    async fn stop_accepting(&self, acceptor: JoinHandle<()>) {
        self.lifecycle.enter(Stage::StopAccepting);
        let _ = acceptor.await;
    }

    /// Leaves the registry and sends every client a REDIRECT to the live peers (least loaded
    /// first), which goes out just before the 1001 close.
    async fn redirect_to_peers(&self) {
        let Some(registry) = &self.admin.registry else { return };
        registry.leave().await;
        let nodes: Vec<_> = match registry.peers().await {
            Ok(peers) => peers.into_iter().map(|p| p.for_clients()).collect(),
            Err(e) => return warn!(error = %e, "cannot list peers for the redirect"),
        };
        if nodes.is_empty() {
            return;
        }
        let wire = &self.admin.wire;
        let cmd = CommandType::Redirect.into();
        let mut fanout = wire.fanout(wire.redirect_frame(nodes), cmd, false);
        self.admin.links.for_each(|link| {
            fanout.send(link);
        });
        info!(clients = fanout.finish(), "redirected clients to peers");
    }

    /// Tells every client to go and waits until they have left and in-flight backend calls
    /// have finished, or `shutdown.drain_timeout` passes (then drops the rest).
    async fn drain_clients(&self) {
        self.lifecycle.enter(Stage::TellClients);
        self.connections.close();
        let waited = tokio::time::timeout(self.drain_timeout, self.connections.wait()).await;
        if waited.is_err() {
            let left = self.admin.links.len();
            warn!(left, "drain timeout passed; dropping the remaining clients");
            self.lifecycle.enter(Stage::DropClients);
            self.connections.wait().await;
        }
    }

    /// Waits (at most `shutdown.ack_wait`, within the drain timeout) until the clients have
    /// acknowledged the pushes that were pending when the drain began.
    async fn wait_for_acks(&self) {
        let outstanding = self.admin.downstream.outstanding();
        if outstanding.is_empty() {
            return;
        }
        let wait = self.ack_wait.min(self.drain_timeout);
        let acked = tokio::time::timeout(wait, async {
            while self.admin.downstream.any_pending(&outstanding) {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        });
        match acked.await {
            Ok(()) => info!(pushes = outstanding.len(), "pending pushes acknowledged"),
            Err(_) => info!(?wait, "some pushes are still unacknowledged; going on"),
        }
    }

    async fn stop_background(&self, background: TaskTracker) {
        self.lifecycle.enter(Stage::StopBackground);
        background.wait().await;
    }

    async fn stop_routing(&self) {
        self.lifecycle.enter(Stage::StopRouting);
        self.routing.close();
        self.routing.wait().await;
    }

    async fn stop_servers(&self, servers: [JoinHandle<std::io::Result<()>>; 2]) {
        self.lifecycle.enter(Stage::StopServers);
        for (what, server) in ["governor", "grpc"].into_iter().zip(servers) {
            match server.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(server = what, error = %e, "server ended with an error"),
                Err(e) => warn!(server = what, error = %e, "server task failed"),
            }
        }
    }
}

/// Builds the node's services from its config and gives each consumer its view.
fn build(config: Config, secret: &[u8], at: &Advertised) -> Result<(Services, Tasks), NodeError> {
    let node_id = config.node_id();
    let lifecycle = Arc::new(Lifecycle::default());
    let background = lifecycle.token(Stage::StopBackground);
    let metrics = Arc::new(Metrics::new());
    let wire = Wire::new(
        config.protocol.serializer,
        config.protocol.encryption.cipher()?,
        metrics.clone(),
    );
    let wire = Arc::new(wire.with_error_replies(config.protocol.error_replies));
    let mut links = LinkRegistry::new(config.server.websocket.max_connections);
    if config.limits.max_connections_per_ip > 0 {
        links = links.counting_addresses();
    }
    let links = Arc::new(links);
    let connections = TaskTracker::new();
    let adapters = cluster::build(&config, &node_id, at, &links, &metrics, &lifecycle)?;
    let context = UpstreamContext {
        wire: wire.clone(),
        metrics: metrics.clone(),
        tasks: connections.clone(),
        directory: adapters.directory.clone(),
        node_id: node_id.clone(),
        tls: client_tls("upstream.tls", &config.upstream.tls)?,
    };
    let (upstream, batchers) =
        Upstream::new(config.upstream.clone(), &config.backends, context, background.clone());

    let hooks = Hooks::start(
        Wanted::of(&config.backends),
        upstream.clone(),
        metrics.clone(),
        node_id.clone(),
        background.clone(),
    );
    let (hooks, hooks_task) = hooks.unzip();
    let receipts = hooks.clone().filter(|h| h.wants_receipts()).map(|h| h as Arc<dyn Receipts>);
    let (downstream, retries) = Downstream::new(
        config.downstream.clone(),
        links.clone(),
        wire.clone(),
        metrics.clone(),
        node_id.clone(),
        Fallback {
            directory: adapters.directory.clone(),
            dead_letters: adapters.dead_letters.clone(),
            receipts,
        },
        background.clone(),
    );
    let routing = TaskTracker::new();
    let peers = Peers::new(
        Bearer::new(config.server.grpc.token_for(GrpcRole::Peer))?,
        client_tls("server.grpc.tls", &config.server.grpc.tls.peer_files())?,
        routing.clone(),
        lifecycle.token(Stage::StopRouting),
        metrics.clone(),
    );
    let router = Arc::new(Router::new(
        node_id.clone(),
        downstream.clone(),
        adapters.directory.clone(),
        peers,
        metrics.clone(),
    ));
    let (directory, registry) = (adapters.directory.clone(), adapters.registry.clone());
    let wired = adapters.wire(&config, &router, &upstream, &links, &metrics, &lifecycle);
    let mut tasks: Vec<Task> = vec![Box::pin(batchers), Box::pin(retries)];
    tasks.extend(wired.background);
    tasks.extend(hooks_task.map(|t| Box::pin(t) as Task));
    let tls = match &config.server.websocket.tls {
        t if t.is_enabled() => Some(Arc::new(Tls::load(t)?)),
        _ => None,
    };
    if let Some(tls) = &tls {
        let every = config.server.websocket.tls.reload_check;
        tasks.push(Box::pin(tls.clone().watch(every, metrics.clone(), background.clone())));
    }

    let jwks = match &config.auth.jwt.jwks {
        j if j.is_enabled() => Some((Arc::new(Jwks::default()), JwksSource::new(j)?)),
        _ => None,
    };
    let verifier =
        TokenVerifier::with_jwks(&config.auth.jwt, secret, jwks.as_ref().map(|(j, _)| j.clone()))?;
    if let Some((jwks, source)) = jwks {
        let refresh = crate::auth::keep_fresh(jwks, source, metrics.clone(), background.clone());
        tasks.push(Box::pin(refresh));
    }

    let gateway = Arc::new(Gateway {
        ws_config: Gateway::ws_config(&config),
        verifier,
        links: links.clone(),
        wire: wire.clone(),
        upstream: upstream.clone(),
        downstream: downstream.clone(),
        directory: directory.clone(),
        metrics: metrics.clone(),
        tls: tls.clone(),
        trusted_proxies: config.server.websocket.trusted_networks(),
        hooks,
        address_rates: AddressRates::new(
            config.limits.handshake_rate_per_ip,
            config.limits.handshake_burst_per_ip,
        ),
        read_rate: ReadRate::new(
            config.limits.read_rate.as_u64(),
            config.limits.read_burst.as_u64(),
            metrics.read_throttled.clone(),
        ),
        drain: lifecycle.token(Stage::TellClients),
        abort: lifecycle.token(Stage::DropClients),
        config: config.clone(),
    });
    let admin = Arc::new(NodeView {
        node_id: node_id.clone(),
        advertised_ws: at.ws(),
        capacity: config.server.websocket.max_connections,
        links,
        wire,
        upstream,
        downstream,
        directory: directory.clone(),
        registry,
        metrics: metrics.clone(),
        lifecycle: lifecycle.clone(),
    });
    let (sampler, sampling) = Sampler::new(admin.clone(), background);
    tasks.push(Box::pin(sampling));
    let grpc_tls = grpc_server_tls(&config.server.grpc.tls)?;
    let governor = GovernorView { metrics, lifecycle: lifecycle.clone(), directory };
    let services = Services {
        node_id,
        lifecycle,
        gateway,
        admin,
        governor,
        router,
        grpc: config.server.grpc.clone(),
        grpc_tls,
        drain_timeout: config.shutdown.drain_timeout,
        ack_wait: config.shutdown.ack_wait,
        connections,
        routing,
        sampler,
    };
    Ok((services, Tasks { background: tasks, routing: wired.routing }))
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, NodeError> {
    TcpListener::bind(addr).await.map_err(|source| NodeError::Bind { what, addr, source })
}

fn local_addr(listener: &TcpListener) -> SocketAddr {
    listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
