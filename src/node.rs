//! One gateway node: binds its listeners, runs the gateway and the governor, and drains on
//! shutdown.
//!
//! Lifecycle, read top to bottom in [`Node::run`]: phase → running; wait for the shutdown
//! future; phase → draining (`/ready` turns 503); stop accepting; tell every client (close 1001);
//! wait until the last client has left or `shutdown.drain_timeout` passes (then drop the rest);
//! phase → stopped; stop the governor. Every task is owned here and awaited.

use std::{future::Future, net::SocketAddr, sync::Arc};

use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};

use crate::{
    auth::EmptySecret,
    config::Config,
    gateway::{self, Shared},
    governor,
    shutdown::{Phase, PhaseCell},
    telemetry::Metrics,
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
}

/// A node with its sockets bound, ready to [`run`](Node::run).
pub struct Node {
    shared: Arc<Shared>,
    ws: TcpListener,
    governor: TcpListener,
    ws_addr: SocketAddr,
    governor_addr: SocketAddr,
    ephemeral_secret: Option<String>,
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
}

impl Node {
    /// Binds the WebSocket and governor listeners (port 0 picks a free port).
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
        let ws = bind("websocket", config.server.websocket.listen).await?;
        let governor = bind("governor", config.server.governor.listen).await?;
        let ws_addr = local_addr(&ws, config.server.websocket.listen);
        let governor_addr = local_addr(&governor, config.server.governor.listen);
        let metrics = Arc::new(Metrics::new());
        let phase = Arc::new(PhaseCell::default());
        let shared = Arc::new(Shared::new(config, secret.as_bytes(), metrics, phase)?);
        Ok(Self { shared, ws, governor, ws_addr, governor_addr, ephemeral_secret })
    }

    pub fn ws_addr(&self) -> SocketAddr {
        self.ws_addr
    }

    pub fn governor_addr(&self) -> SocketAddr {
        self.governor_addr
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
        let Self { shared, ws, governor, ws_addr, governor_addr, .. } = self;
        let connections = TaskTracker::new();
        let stop_accept = CancellationToken::new();
        let stop_governor = CancellationToken::new();
        let router = governor::router(shared.metrics.clone(), shared.phase.clone());
        let governor_task = tokio::spawn(governor::serve(governor, router, stop_governor.clone()));
        let acceptor = tokio::spawn(gateway::run_listener(
            ws,
            shared.clone(),
            stop_accept.clone(),
            connections.clone(),
        ));
        shared.phase.set(Phase::Running);
        info!(node = %shared.node_id, websocket = %ws_addr, governor = %governor_addr, "node running");

        shutdown.await;

        shared.phase.set(Phase::Draining);
        info!(connections = shared.links.len(), "draining");
        stop_accept.cancel();
        let _ = acceptor.await;
        shared.drain.cancel();
        connections.close();
        let drain_timeout = shared.config.shutdown.drain_timeout;
        if tokio::time::timeout(drain_timeout, connections.wait()).await.is_err() {
            warn!(
                left = shared.links.len(),
                "drain timeout passed; dropping the remaining clients"
            );
            shared.abort.cancel();
            connections.wait().await;
        }
        shared.phase.set(Phase::Stopped);
        stop_governor.cancel();
        match governor_task.await {
            Ok(Err(e)) => warn!(error = %e, "governor ended with an error"),
            Err(e) => warn!(error = %e, "governor task failed"),
            Ok(Ok(())) => {}
        }
        info!("stopped");
    }
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, NodeError> {
    TcpListener::bind(addr).await.map_err(|source| NodeError::Bind { what, addr, source })
}

fn local_addr(listener: &TcpListener, fallback: SocketAddr) -> SocketAddr {
    listener.local_addr().unwrap_or(fallback)
}
