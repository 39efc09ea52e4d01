//! Wiring the cluster adapters to the domain.
//!
//! The adapters (`crate::cluster`) publish what they learn — directory events, backend maps,
//! pushes read from Kafka — and never see the router, the upstream or the downstream. This
//! module builds them from the config (the Redis directory, or the in-memory one for a single
//! node; the etcd registry and discovery; the Kafka consumer and presence producer) and connects
//! their outputs: Kafka records go to the router as the [`crate::push::PushSink`], inbox pushes
//! found on connect to the user's connections here, presence changes to the Kafka producer,
//! backend maps to the upstream.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{NodeError, Task};
use crate::{
    auth::Identity,
    cluster::{
        Advertised, DirectoryEvent, Inbox, LocalDirectory, NodeEntry, NodeRegistry, PresenceAction,
        RedisDirectory, SessionDirectory,
        directory::{DirectorySettings, RedisAuth},
        discovery::Discovery,
        kafka::{self, PushConsumer},
    },
    config::{BackendMap, Config},
    links::LinkRegistry,
    push::{DeadLetter, PushError},
    routing::Router,
    shutdown::{Lifecycle, Stage},
    telemetry::{ClusterEvent, Metrics},
    upstream::Upstream,
};

/// Directory events waiting for the node (presence changes, inbox pushes found on connect).
const EVENTS: usize = 1024;

/// The adapters, built but not yet connected to the domain.
pub(super) struct Adapters {
    pub directory: Arc<dyn SessionDirectory>,
    pub registry: Option<Arc<NodeRegistry>>,
    /// The dead-letter topic's queue (`cluster.kafka.dead_letter_topic`).
    pub dead_letters: Option<mpsc::Sender<DeadLetter>>,
    events: mpsc::Receiver<DirectoryEvent>,
    tasks: Vec<Task>,
}

/// The tasks of the wired adapters, by the stage that ends them.
pub(super) struct Wired {
    /// End at `StopBackground`.
    pub background: Vec<Task>,
    /// End at `StopRouting`.
    pub routing: Vec<Task>,
}

/// Builds the configured adapters; connects nothing yet.
pub(super) fn build(
    config: &Config,
    node_id: &str,
    at: &Advertised,
    links: &Arc<LinkRegistry>,
    metrics: &Arc<Metrics>,
    lifecycle: &Lifecycle,
) -> Result<Adapters, NodeError> {
    let c = &config.cluster;
    let stop = lifecycle.token(Stage::StopBackground);
    let (events_tx, events) = mpsc::channel(EVENTS);
    let mut tasks: Vec<Task> = Vec::new();
    let presence = !c.kafka.brokers.is_empty() && !c.kafka.presence_topic.is_empty();
    let directory: Arc<dyn SessionDirectory> = match c.redis.urls() {
        urls if urls.is_empty() => Arc::new(LocalDirectory::new(
            node_id.to_owned(),
            links.clone(),
            metrics.clone(),
            presence.then_some(events_tx),
        )),
        urls => {
            let settings = DirectorySettings {
                cluster: c.redis.is_cluster(),
                urls,
                auth: RedisAuth {
                    tls: c.redis.tls.clone(),
                    username: c.redis.username.clone(),
                    password: c.redis.password.clone(),
                },
                prefix: c.redis.prefix.clone(),
                node_id: node_id.to_owned(),
                grpc: at.grpc(),
                ws: at.ws(),
                ttl: c.redis.session_ttl,
                inbox_max: c.redis.inbox_max,
                inbox_max_bytes: c.redis.inbox_max_bytes.as_u64(),
                inbox_ttl: c.redis.inbox_ttl,
                queue: c.redis.queue,
            };
            let (dir, writer) =
                RedisDirectory::new(settings, links.clone(), events_tx, metrics.clone(), stop)?;
            tasks.push(writer);
            dir
        }
    };
    let registry = (!c.etcd.endpoints.is_empty()).then(|| {
        let entry = registry_entry(config, node_id, at);
        Arc::new(NodeRegistry::new(&c.etcd, entry, metrics.clone()))
    });
    let k = &c.kafka;
    let dead_letters = (!k.brokers.is_empty() && !k.dead_letter_topic.is_empty()).then(|| {
        let stop = lifecycle.token(Stage::StopBackground);
        let (tx, task) = kafka::dead_letter_producer(k, metrics.clone(), stop);
        tasks.push(Box::pin(task));
        tx
    });
    Ok(Adapters { directory, registry, dead_letters, events, tasks })
}

/// This node as the registry lists it (the original's JSON, plus `grpc=` and `governor=`).
fn registry_entry(config: &Config, node_id: &str, at: &Advertised) -> NodeEntry {
    let c = &config.cluster;
    let ours =
        [format!("grpc={}", at.grpc()), format!("governor={}:{}", at.host, at.governor_port)];
    NodeEntry {
        id: node_id.to_owned(),
        ip: at.host.clone(),
        port: i32::from(at.ws_port),
        weight: c.weight,
        location: c.location.clone(),
        labels: c.labels.iter().cloned().chain(ours).collect(),
        capacity: config.server.websocket.max_connections as i64,
        load: 0,
    }
}

impl Adapters {
    /// Connects the adapters' outputs to the domain and returns every task.
    pub(super) fn wire(
        self,
        config: &Config,
        router: &Arc<Router>,
        upstream: &Arc<Upstream>,
        links: &Arc<LinkRegistry>,
        metrics: &Arc<Metrics>,
        lifecycle: &Lifecycle,
    ) -> Wired {
        let stop = lifecycle.token(Stage::StopBackground);
        let mut background = self.tasks;
        let (c, kafka) = (&config.cluster, &config.cluster.kafka);
        if let Some(r) = &self.registry {
            let links = links.clone();
            background.push(Box::pin(r.clone().run(move || links.len() as i64, stop.clone())));
            if c.etcd.discovery {
                let (discovery, maps) = Discovery::new(&c.etcd, metrics.clone());
                background.push(Box::pin(discovery.run(stop.clone())));
                background.push(Box::pin(apply_backends(maps, upstream.clone(), stop.clone())));
            }
        }
        if !kafka.brokers.is_empty() && !kafka.push_topic.is_empty() {
            let consumer = PushConsumer::new(kafka, router.clone(), metrics.clone());
            background.push(Box::pin(consumer.run(stop.clone())));
        }
        let presence = (!kafka.brokers.is_empty() && !kafka.presence_topic.is_empty()).then(|| {
            let (tx, task) = kafka::presence_producer(kafka, metrics.clone(), stop.clone());
            background.push(Box::pin(task));
            tx
        });
        let events = hand_off_events(
            self.events,
            router.clone(),
            self.directory.clone(),
            presence,
            metrics.clone(),
            lifecycle.token(Stage::StopRouting),
        );
        Wired { background, routing: vec![Box::pin(events)] }
    }
}

/// Applies every backend map discovery publishes to the upstream.
async fn apply_backends(
    mut maps: watch::Receiver<Option<BackendMap>>,
    upstream: Arc<Upstream>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = maps.changed() => if changed.is_err() { return },
        }
        if let Some(map) = &*maps.borrow_and_update() {
            upstream.set_discovered(map);
        }
    }
}

/// Delivers inbox pushes found on connect to the user's connections here and forwards presence
/// changes to Kafka, until `stop` (entered after the directory writer has finished), then
/// hands off what is left.
async fn hand_off_events(
    mut events: mpsc::Receiver<DirectoryEvent>,
    router: Arc<Router>,
    directory: Arc<dyn SessionDirectory>,
    presence: Option<mpsc::Sender<(Identity, PresenceAction)>>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            _ = stop.cancelled() => events.try_recv().ok(),
        };
        let Some(event) = event else { return };
        let (who, action) = match event {
            DirectoryEvent::Inbox(inbox) => {
                hand_off_inbox(inbox, &router, &*directory, &metrics);
                continue;
            }
            DirectoryEvent::Online(who) => (who, PresenceAction::Online),
            DirectoryEvent::Offline(who) => (who, PresenceAction::Offline),
        };
        if let Some(tx) = &presence
            && tx.try_send((who, action)).is_err()
        {
            metrics.cluster_event(ClusterEvent::PresenceDropped);
        }
    }
}

/// Delivers the pushes of one inbox to the user's connections on this node, oldest first. They
/// stay in the inbox until acknowledged (a push refused here waits for the next connection);
/// only entries that cannot be read or can never be delivered are removed.
fn hand_off_inbox(inbox: Inbox, router: &Router, directory: &dyn SessionDirectory, m: &Metrics) {
    let (biz, user) = (inbox.who.biz_id, inbox.who.user_id);
    for push in inbox.pushes {
        let Some(msg) = push.msg else {
            m.cluster_event(ClusterEvent::InboxUnreadable);
            warn!(biz, user, key = %crate::telemetry::Untrusted::text(&push.key), "removing an unreadable inbox entry");
            directory.acked(inbox.who, push.key);
            continue;
        };
        match router.deliver_here(msg) {
            Ok(_) | Err(PushError::NotConnected { .. }) => {}
            Err(e @ PushError::Overloaded(_)) => {
                warn!(biz, user, error = %e, "inbox push not delivered; kept for the next connection");
            }
            Err(e @ (PushError::Invalid | PushError::TooLarge { .. })) => {
                m.cluster_event(ClusterEvent::InboxUndeliverable);
                warn!(biz, user, error = %e, "removing an inbox push that can never be delivered");
                directory.acked(inbox.who, push.key);
            }
        }
    }
}
