//! Backend discovery from etcd, compatible with the original gateway: `gateway.backend.services`
//! holds `[{"bizId":9999,"name":"mockServer"}]`, and each backend registers itself under
//! `/ego/{name}/providers/grpc://{host:port}`. Both are watched; every change re-reads the whole
//! map and publishes it on a watch channel; the node hands it to the upstream, which merges it
//! with the static backends of the config (a static endpoint is never removed by discovery).
//!
//! Owns: reading and watching those keys. Must never remove a business's backends because etcd is
//! unreachable, or because `gateway.backend.services` is missing or unparsable: then the last
//! known map stays (counted as `discovery_error`, logged) until etcd answers with a valid list
//! again. To remove every discovered backend on purpose, write `[]`.

use std::{sync::Arc, time::Duration};

use etcd_client::{Client, GetOptions, WatchOptions};
use serde::Deserialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::registry::{EtcdAccess, connect};
use crate::{
    config::{BackendMap, EtcdConfig},
    grpc::GrpcAddr,
    telemetry::{ClusterEvent, Metrics},
};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Service {
    biz_id: i64,
    name: String,
}

/// Watches the backend map and publishes every version of it.
pub struct Discovery {
    etcd: EtcdAccess,
    prefix: String,
    maps: watch::Sender<Option<BackendMap>>,
    metrics: Arc<Metrics>,
}

impl Discovery {
    /// The discovery task's state and the receiving end of its maps (`None` until the first
    /// read succeeds).
    pub fn new(
        config: &EtcdConfig,
        metrics: Arc<Metrics>,
    ) -> (Self, watch::Receiver<Option<BackendMap>>) {
        let (maps, rx) = watch::channel(None);
        let etcd = EtcdAccess::of(config);
        (Self { etcd, prefix: config.prefix.clone(), maps, metrics }, rx)
    }

    fn services_key(&self) -> String {
        format!("{}gateway.backend.services", self.prefix)
    }

    fn providers_prefix(&self, name: &str) -> String {
        format!("{}/ego/{name}/providers/", self.prefix)
    }

    pub async fn run(self, stop: CancellationToken) {
        let mut backoff = Duration::from_millis(200);
        while !stop.is_cancelled() {
            if let Err(e) = self.session(&stop).await {
                self.metrics.cluster_event(ClusterEvent::DiscoveryError);
                warn!(error = %e, retry_in = ?backoff, "backend discovery (etcd) unavailable");
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Watches both key spaces and re-reads the map on every change.
    async fn session(&self, stop: &CancellationToken) -> Result<(), etcd_client::Error> {
        let mut client = connect(&self.etcd).await?;
        let mut services = client.watch(self.services_key(), None).await?;
        let ego = format!("{}/ego/", self.prefix);
        let mut providers = client.watch(ego, Some(WatchOptions::new().with_prefix())).await?;
        // Read after the watches exist, so no change between the two is missed.
        self.reload(&mut client).await?;
        loop {
            let changed = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                m = services.message() => m?,
                m = providers.message() => m?,
            };
            if changed.is_none() {
                return Err(etcd_client::Error::WatchError("watch ended".into()));
            }
            self.reload(&mut client).await?;
        }
    }

    async fn reload(&self, client: &mut Client) -> Result<(), etcd_client::Error> {
        let resp = client.get(self.services_key(), None).await?;
        let parsed = match resp.kvs().first() {
            None => Err("missing".to_owned()),
            Some(kv) => {
                serde_json::from_slice::<Vec<Service>>(kv.value()).map_err(|e| e.to_string())
            }
        };
        // A deleted or mangled key is far more likely a mistake than "no backends any more"
        // (that is `[]`): every business would lose its backends at once.
        let services = match parsed {
            Ok(services) => services,
            Err(e) => {
                self.metrics.cluster_event(ClusterEvent::DiscoveryError);
                warn!(key = %self.services_key(), error = %e,
                    "not a JSON list of {{bizId, name}}; keeping the last backend map");
                return Ok(());
            }
        };
        let mut map = BackendMap::new();
        for s in services {
            let prefix = self.providers_prefix(&s.name);
            let resp = client.get(prefix.as_str(), Some(GetOptions::new().with_prefix())).await?;
            let addrs = map.entry(s.biz_id).or_default();
            for kv in resp.kvs() {
                let Ok(key) = kv.key_str() else { continue };
                let provider = key.strip_prefix(prefix.as_str()).unwrap_or_default();
                let Some(addr) = provider.strip_prefix("grpc://") else { continue };
                match GrpcAddr::parse(addr) {
                    Ok(addr) => addrs.push(addr),
                    Err(e) => warn!(key, error = %e, "ignoring a backend registration"),
                }
            }
        }
        let summary: Vec<String> = map.iter().map(|(b, a)| format!("{b}={}", join(a))).collect();
        info!(backends = %summary.join(" "), "discovered backends");
        self.maps.send_replace(Some(map));
        self.metrics.cluster_event(ClusterEvent::DiscoveryApplied);
        Ok(())
    }
}

fn join(addrs: &[GrpcAddr]) -> String {
    addrs.iter().map(GrpcAddr::as_str).collect::<Vec<_>>().join("|")
}
