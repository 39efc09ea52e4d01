//! The node registry in etcd: `/services/gateway/node/{id}` → JSON `Node` (SPEC §3) under a
//! lease of `cluster.etcd.lease_ttl`, kept alive, rewritten with the current load every
//! `report_interval`, re-created after the lease is lost, revoked on graceful shutdown.
//!
//! Owns: this node's entry and reading its peers' entries. The entry's labels carry
//! `grpc=host:port`, where the node serves its gRPC APIs (admin tools use it). Must never block
//! the node: every call has a deadline and failures only delay the next attempt.

use std::{
    fs,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::Duration,
};

use etcd_client::{
    Certificate, Client, ConnectOptions, GetOptions, Identity, PutOptions, TlsOptions,
};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    config::EtcdConfig,
    grpc::ClientTlsFiles,
    protocol::pb::Node,
    telemetry::{ClusterEvent, Dependency, Metrics},
};

/// A registry entry, with the key names of the original gateway.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeEntry {
    pub id: String,
    pub ip: String,
    pub port: i32,
    pub weight: i32,
    pub location: String,
    pub labels: Vec<String>,
    pub capacity: i64,
    pub load: i64,
}

impl NodeEntry {
    pub fn into_node(self) -> Node {
        Node {
            id: self.id,
            ip: self.ip,
            port: self.port,
            weight: self.weight,
            location: self.location,
            labels: self.labels,
            capacity: self.capacity,
            load: self.load,
        }
    }

    /// The node as clients see it in a REDIRECT: its public WebSocket address and the
    /// original's fields, without the labels only the cluster uses (where the node serves gRPC
    /// and its governor: never shown beyond the cluster).
    pub fn for_clients(self) -> Node {
        client_view(&self.into_node())
    }

    /// The `grpc=host:port` label: where the node serves its gRPC APIs.
    pub fn grpc_addr(&self) -> Option<&str> {
        self.labels.iter().find_map(|l| l.strip_prefix("grpc="))
    }
}

/// Labels of the registry entry that only the cluster and its operators use.
const INTERNAL_LABELS: [&str; 2] = ["grpc=", "governor="];

/// `node` without its internal labels (see [`NodeEntry::for_clients`]).
pub fn client_view(node: &Node) -> Node {
    let mut node = node.clone();
    node.labels.retain(|l| !INTERNAL_LABELS.iter().any(|p| l.starts_with(p)));
    node
}

/// How to reach etcd: its members, and the TLS files and user it may require.
#[derive(Clone, Debug, Default)]
pub struct EtcdAccess {
    /// `host:port`, or `https://host:port` for TLS.
    pub endpoints: Vec<String>,
    /// For `https://` members: the CA of their certificates (none: the system's roots) and
    /// the client certificate when etcd requires one (`--client-cert-auth`).
    pub tls: ClientTlsFiles,
    /// An etcd user (etcd's authentication enabled); empty: none.
    pub username: String,
    pub password: String,
}

impl EtcdAccess {
    pub fn of(config: &EtcdConfig) -> Self {
        Self {
            endpoints: config.endpoints.clone(),
            tls: config.tls.clone(),
            username: config.username.clone(),
            password: config.password.clone(),
        }
    }

    fn options(&self) -> Result<ConnectOptions, etcd_client::Error> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(3));
        if !self.username.is_empty() {
            options = options.with_user(&self.username, &self.password);
        }
        if self.endpoints.iter().any(|e| e.starts_with("https://")) {
            let files = &self.tls;
            let tls = match &files.ca {
                Some(ca) => TlsOptions::new().ca_certificate(Certificate::from_pem(fs::read(ca)?)),
                None => TlsOptions::new().with_native_roots(),
            };
            let tls = match (&files.cert, &files.key) {
                (Some(cert), Some(key)) => {
                    tls.identity(Identity::from_pem(fs::read(cert)?, fs::read(key)?))
                }
                _ => tls,
            };
            options = options.with_tls(tls);
        }
        Ok(options)
    }
}

/// Connects to etcd with deadlines suited to a gateway (never hang on a dead member).
pub async fn connect(access: &EtcdAccess) -> Result<Client, etcd_client::Error> {
    Client::connect(&access.endpoints, Some(access.options()?)).await
}

/// The key prefix of node entries under `prefix`.
pub fn nodes_prefix(prefix: &str) -> String {
    format!("{prefix}/services/gateway/node/")
}

/// Every registered node, least loaded first.
pub async fn list_nodes(
    client: &mut Client,
    prefix: &str,
) -> Result<Vec<NodeEntry>, etcd_client::Error> {
    let resp = client.get(nodes_prefix(prefix), Some(GetOptions::new().with_prefix())).await?;
    let mut nodes: Vec<NodeEntry> =
        resp.kvs().iter().filter_map(|kv| serde_json::from_slice(kv.value()).ok()).collect();
    nodes.sort_by(|a, b| a.load.cmp(&b.load).then_with(|| a.id.cmp(&b.id)));
    Ok(nodes)
}

/// This node's registration.
pub struct NodeRegistry {
    etcd: EtcdAccess,
    prefix: String,
    entry: NodeEntry,
    ttl: Duration,
    report_interval: Duration,
    lease: AtomicI64,
    left: AtomicBool,
    left_signal: CancellationToken,
    metrics: Arc<Metrics>,
}

impl NodeRegistry {
    pub fn new(config: &EtcdConfig, entry: NodeEntry, metrics: Arc<Metrics>) -> Self {
        Self {
            etcd: EtcdAccess::of(config),
            prefix: config.prefix.clone(),
            entry,
            ttl: config.lease_ttl,
            report_interval: config.report_interval,
            lease: AtomicI64::new(0),
            left: AtomicBool::new(false),
            left_signal: CancellationToken::new(),
            metrics,
        }
    }

    fn key(&self) -> String {
        format!("{}{}", nodes_prefix(&self.prefix), self.entry.id)
    }

    /// Keeps this node registered until `stop` is cancelled or the node [leaves](Self::leave).
    pub async fn run(self: Arc<Self>, load: impl Fn() -> i64, stop: CancellationToken) {
        let mut backoff = Duration::from_millis(200);
        while !stop.is_cancelled() && !self.left.load(Ordering::Relaxed) {
            match self.session(&load, &stop).await {
                Ok(()) => break,
                Err(e) => {
                    self.metrics.dependency(Dependency::Etcd, false);
                    self.metrics.cluster_event(ClusterEvent::EtcdError);
                    warn!(error = %e, retry_in = ?backoff, "node registry (etcd) unavailable");
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = self.left_signal.cancelled() => break,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        self.leave().await;
    }

    /// One registration: grant a lease, write the entry, keep both alive.
    async fn session(
        &self,
        load: &impl Fn() -> i64,
        stop: &CancellationToken,
    ) -> Result<(), etcd_client::Error> {
        let mut client = connect(&self.etcd).await?;
        let lease = client.lease_grant(self.ttl.as_secs() as i64, None).await?.id();
        self.lease.store(lease, Ordering::Relaxed);
        self.put(&mut client, lease, load()).await?;
        let (mut keeper, mut responses) = client.lease_keep_alive(lease).await?;
        self.metrics.dependency(Dependency::Etcd, true);
        info!(key = %self.key(), lease, "registered in the node registry");
        let mut keep = tokio::time::interval(self.ttl / 3);
        let mut report = tokio::time::interval(self.report_interval);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = self.left_signal.cancelled() => return Ok(()),
                _ = keep.tick() => {
                    keeper.keep_alive().await?;
                    let answer = tokio::time::timeout(self.ttl / 3, responses.message()).await;
                    match answer {
                        Ok(Ok(Some(r))) if r.ttl() > 0 => {}
                        _ => return Err(etcd_client::Error::LeaseKeepAliveError("lease lost".into())),
                    }
                }
                _ = report.tick() => self.put(&mut client, lease, load()).await?,
            }
        }
    }

    async fn put(
        &self,
        client: &mut Client,
        lease: i64,
        load: i64,
    ) -> Result<(), etcd_client::Error> {
        let entry = NodeEntry { load, ..self.entry.clone() };
        let json = serde_json::to_string(&entry).unwrap_or_default();
        client.put(self.key(), json, Some(PutOptions::new().with_lease(lease))).await?;
        Ok(())
    }

    /// Removes this node from the registry for good (graceful shutdown). Idempotent.
    pub async fn leave(&self) {
        if self.left.swap(true, Ordering::Relaxed) {
            return;
        }
        self.left_signal.cancel();
        let lease = self.lease.swap(0, Ordering::Relaxed);
        if lease == 0 {
            return;
        }
        let revoke = async {
            let mut client = connect(&self.etcd).await?;
            client.lease_revoke(lease).await.map(|_| ())
        };
        match tokio::time::timeout(Duration::from_secs(3), revoke).await {
            Ok(Ok(())) => info!("left the node registry"),
            Ok(Err(e)) => {
                warn!(error = %e, "could not leave the node registry; the lease will expire")
            }
            Err(_) => warn!("leaving the node registry timed out; the lease will expire"),
        }
    }

    /// Every other registered node, least loaded first.
    pub async fn peers(&self) -> Result<Vec<NodeEntry>, etcd_client::Error> {
        let list = async {
            let mut client = connect(&self.etcd).await?;
            list_nodes(&mut client, &self.prefix).await
        };
        let nodes = tokio::time::timeout(Duration::from_secs(3), list)
            .await
            .map_err(|_| etcd_client::Error::InvalidArgs("timed out".into()))??;
        Ok(nodes.into_iter().filter(|n| n.id != self.entry.id).collect())
    }
}
