//! Cluster services: the session directory and offline inbox (Redis), the node registry and
//! backend discovery (etcd), push ingestion and presence events (Kafka).
//!
//! Owns: the clients of those services and the background tasks that talk to them. Every one of
//! them is optional (`cluster.*` in the config); with none configured the node is a complete
//! single-node gateway. A dependency that is down never stops the node: existing connections and
//! local pushes keep working, each task reconnects with back-off and recovers on its own, and the
//! state is visible in `websocket_gateway_dependency_up{service}` and `/ready` (not ready while
//! the session directory is unreachable, so load balancers prefer nodes that can be found).
//! Must never be awaited on a connection's frame path: the connection layer only calls the
//! non-blocking [`Cluster::connected`] and [`Cluster::disconnected`].

mod directory;
mod discovery;
mod kafka;
pub mod registry;
mod scripts;

use std::{net::SocketAddr, sync::Arc};

use tokio::sync::mpsc;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::warn;

use crate::{
    auth::Identity,
    config::{ClusterConfig, Config},
    links::{Link, LinkRegistry},
    protocol::pb::Node,
    routing::Router,
    telemetry::Metrics,
    upstream::Upstream,
};

pub use directory::{Directory, DirectoryError, Route, SessionEntry, SessionQuery};
pub use kafka::{KafkaPush, PresenceAction};
pub use registry::{NodeEntry, Registry};

use directory::{DirectorySettings, Outcome};

/// Where clients and peers reach this node.
#[derive(Clone, Debug)]
pub struct Advertised {
    pub host: String,
    pub ws_port: u16,
    pub grpc_port: u16,
    pub governor_port: u16,
}

impl Advertised {
    /// The advertised host of `config` for listeners bound at `ws` and `grpc`.
    pub fn new(
        config: &ClusterConfig,
        ws: SocketAddr,
        grpc: SocketAddr,
        governor: SocketAddr,
    ) -> Self {
        let host = match config.advertise_host.as_str() {
            "" if !ws.ip().is_unspecified() => ws.ip().to_string(),
            "" => "127.0.0.1".to_owned(),
            h => h.to_owned(),
        };
        Self { host, ws_port: ws.port(), grpc_port: grpc.port(), governor_port: governor.port() }
    }

    pub fn ws(&self) -> String {
        format!("{}:{}", self.host, self.ws_port)
    }

    fn grpc(&self) -> String {
        format!("{}:{}", self.host, self.grpc_port)
    }
}

/// The cluster services of one node.
pub struct Cluster {
    pub directory: Option<Arc<Directory>>,
    pub registry: Option<Arc<Registry>>,
    config: ClusterConfig,
    presence: Option<mpsc::Sender<(Identity, PresenceAction)>>,
    presence_rx: std::sync::Mutex<Option<mpsc::Receiver<(Identity, PresenceAction)>>>,
    metrics: Arc<Metrics>,
}

impl Cluster {
    /// Builds the clients of the configured services; connects nothing yet.
    pub fn new(
        config: &Config,
        node_id: &str,
        at: &Advertised,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let c = &config.cluster;
        let directory = (!c.redis.url.is_empty())
            .then(|| {
                let settings = DirectorySettings {
                    url: c.redis.url.clone(),
                    prefix: c.redis.prefix.clone(),
                    node_id: node_id.to_owned(),
                    grpc: at.grpc(),
                    ws: at.ws(),
                    ttl: c.redis.session_ttl,
                    inbox_max: c.redis.inbox_max,
                    inbox_ttl: c.redis.inbox_ttl,
                    queue: c.redis.queue,
                };
                Directory::new(settings, metrics.clone()).map(Arc::new)
            })
            .transpose()?;
        let registry = (!c.etcd.endpoints.is_empty()).then(|| {
            let entry = NodeEntry {
                id: node_id.to_owned(),
                ip: at.host.clone(),
                port: i32::from(at.ws_port),
                weight: c.weight,
                location: c.location.clone(),
                labels: c
                    .labels
                    .iter()
                    .cloned()
                    .chain([
                        format!("grpc={}", at.grpc()),
                        format!("governor={}:{}", at.host, at.governor_port),
                    ])
                    .collect(),
                capacity: config.server.websocket.max_connections as i64,
                load: 0,
            };
            Arc::new(Registry::new(&c.etcd, entry, metrics.clone()))
        });
        let presence_on = !c.kafka.brokers.is_empty() && !c.kafka.presence_topic.is_empty();
        let (presence, presence_rx) = if presence_on {
            let (tx, rx) = mpsc::channel(c.kafka.presence_buffer);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        Ok(Self {
            directory,
            registry,
            config: c.clone(),
            presence,
            presence_rx: std::sync::Mutex::new(presence_rx),
            metrics,
        })
    }

    /// A link is up (`first`: the user's first on this node). Never waits.
    pub fn connected(&self, link: &Arc<Link>, first: bool) {
        match &self.directory {
            Some(d) => d.connected(link, first),
            None if first => self.presence(link.identity, PresenceAction::Online),
            None => {}
        }
    }

    /// A link is down (`last`: the user's last on this node). Never waits.
    pub fn disconnected(&self, link: &Arc<Link>, last: bool) {
        match &self.directory {
            Some(d) => d.disconnected(link, last),
            None if last => self.presence(link.identity, PresenceAction::Offline),
            None => {}
        }
    }

    fn presence(&self, who: Identity, action: PresenceAction) {
        if let Some(tx) = &self.presence
            && tx.try_send((who, action)).is_err()
        {
            self.metrics.cluster_event("kafka", "presence_dropped");
        }
    }

    /// Why the node should not get new clients, if it should not.
    pub fn not_ready(&self) -> Option<&'static str> {
        match &self.directory {
            Some(d) if !d.healthy() => Some("session directory unreachable"),
            _ => None,
        }
    }

    /// Starts every configured service's task on `background`; they end when `stop` is
    /// cancelled.
    pub fn start(
        &self,
        links: &Arc<LinkRegistry>,
        router: &Arc<Router>,
        upstream: &Arc<Upstream>,
        background: &TaskTracker,
        stop: &CancellationToken,
    ) {
        if let Some(d) = &self.directory {
            let (tx, rx) = mpsc::channel(1024);
            background.spawn(d.clone().run(links.clone(), tx, stop.clone()));
            background.spawn(self.handle_outcomes(rx, router.clone()));
        }
        if let Some(r) = &self.registry {
            let links = links.clone();
            background.spawn(r.clone().run(move || links.len() as i64, stop.clone()));
            if self.config.etcd.discovery {
                let d = discovery::Discovery::new(
                    &self.config.etcd,
                    upstream.clone(),
                    self.metrics.clone(),
                );
                background.spawn(d.run(stop.clone()));
            }
        }
        let kafka = &self.config.kafka;
        if !kafka.brokers.is_empty() && !kafka.push_topic.is_empty() {
            let consumer = kafka::PushConsumer::new(kafka, router.clone(), self.metrics.clone());
            background.spawn(consumer.run(stop.clone()));
        }
        let rx = self.presence_rx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(rx) = rx {
            background.spawn(kafka::run_presence(
                kafka.clone(),
                rx,
                self.metrics.clone(),
                stop.clone(),
            ));
        }
    }

    /// Inbox pushes found on connect are routed (to every device of the user); presence
    /// changes the directory decided go to Kafka.
    fn handle_outcomes(
        &self,
        mut rx: mpsc::Receiver<Outcome>,
        router: Arc<Router>,
    ) -> impl Future<Output = ()> + Send + 'static {
        let presence = self.presence.clone();
        let metrics = self.metrics.clone();
        async move {
            while let Some(outcome) = rx.recv().await {
                let event = match outcome {
                    Outcome::Inbox(msgs) => {
                        for msg in msgs {
                            if let Err(e) = router.push(msg).await {
                                warn!(error = %e, "could not deliver a push from the offline inbox");
                            }
                        }
                        continue;
                    }
                    Outcome::Online(who) => (who, PresenceAction::Online),
                    Outcome::Offline(who) => (who, PresenceAction::Offline),
                };
                if let Some(tx) = &presence
                    && tx.try_send(event).is_err()
                {
                    metrics.cluster_event("kafka", "presence_dropped");
                }
            }
        }
    }

    /// The live peers in the registry, least loaded first (empty without etcd).
    pub async fn peers(&self) -> Result<Vec<Node>, String> {
        let Some(r) = &self.registry else { return Ok(Vec::new()) };
        let peers = r.peers().await.map_err(|e| format!("node registry (etcd): {e}"))?;
        Ok(peers.into_iter().map(NodeEntry::into_node).collect())
    }

    /// Leaves the registry (so nobody sends clients here) and returns the live peers, least
    /// loaded first, for the REDIRECT sent to this node's clients.
    pub async fn leave(&self) -> Vec<Node> {
        let Some(r) = &self.registry else { return Vec::new() };
        r.leave().await;
        match r.peers().await {
            Ok(peers) => peers.into_iter().map(NodeEntry::into_node).collect(),
            Err(e) => {
                warn!(error = %e, "cannot list peers for the redirect");
                Vec::new()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    #[test]
    fn the_advertised_host_is_configured_or_derived_from_the_listen_address() {
        let mut c = ClusterConfig::default();
        let at =
            Advertised::new(&c, addr("10.1.2.3:9002"), addr("0.0.0.0:9004"), addr("0.0.0.0:9003"));
        assert_eq!((at.ws(), at.grpc()), ("10.1.2.3:9002".into(), "10.1.2.3:9004".into()));
        let at =
            Advertised::new(&c, addr("0.0.0.0:9002"), addr("0.0.0.0:9004"), addr("0.0.0.0:9003"));
        assert_eq!(at.ws(), "127.0.0.1:9002", "unspecified listen: loopback");
        c.advertise_host = "gw-1.example.com".into();
        let at =
            Advertised::new(&c, addr("0.0.0.0:9002"), addr("0.0.0.0:9004"), addr("0.0.0.0:9003"));
        assert_eq!(at.grpc(), "gw-1.example.com:9004");
    }
}
