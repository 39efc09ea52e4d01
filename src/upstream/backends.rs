//! Which gRPC endpoints serve which business, and each endpoint's health (its circuit).
//!
//! The registry is a plain map that any source can update at run time ([`BackendRegistry::set`]):
//! the config file and etcd discovery (merged by `Upstream::set_discovered`). The upstream path only ever asks
//! [`BackendRegistry::get`], so a new source never touches it.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
    time::Instant,
};
use tonic::transport::Channel;

use super::batch::BatchItem;
use crate::{
    grpc::{ClientTls, GrpcAddr, GrpcError},
    protocol::pb::{
        backend_service_client::BackendServiceClient,
        batch_backend_service_client::BatchBackendServiceClient,
    },
};

/// One backend endpoint: a lazily connected channel and a circuit breaker.
pub struct Endpoint {
    pub addr: String,
    channel: Channel,
    /// Calls in flight are bounded: a permit per call.
    permits: Arc<Semaphore>,
    failures: AtomicU32,
    open_until: Mutex<Option<Instant>>,
}

impl Endpoint {
    /// An endpoint whose channel connects on first use and reconnects by itself (over TLS
    /// with `tls` for an `https://` address).
    pub fn new(
        addr: &GrpcAddr,
        connect_timeout: Duration,
        max_calls: u32,
        tls: &ClientTls,
    ) -> Result<Self, GrpcError> {
        Ok(Self {
            addr: addr.to_string(),
            channel: addr.lazy_channel(connect_timeout, tls)?,
            permits: Arc::new(Semaphore::new(max_calls as usize)),
            failures: AtomicU32::new(0),
            open_until: Mutex::new(None),
        })
    }

    pub fn client(&self) -> BackendServiceClient<Channel> {
        BackendServiceClient::new(self.channel.clone())
    }

    /// The endpoint's channel, for the other services a backend may serve.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    pub fn batch_client(&self) -> BatchBackendServiceClient<Channel> {
        BatchBackendServiceClient::new(self.channel.clone())
    }

    fn open_until(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.open_until.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A permit for one call, or `None` when the endpoint is at its in-flight limit.
    pub fn try_call(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }

    /// Whether calls may go to this endpoint now (circuit closed, or its cool-down is over).
    pub fn available(&self, now: Instant) -> bool {
        self.open_until().is_none_or(|until| now >= until)
    }

    /// The endpoint answered: close the circuit.
    pub fn succeeded(&self) {
        self.failures.store(0, Ordering::Relaxed);
        *self.open_until() = None;
    }

    /// The endpoint failed; after `threshold` failures in a row its circuit opens for `cooldown`.
    /// Returns true when this failure opened the circuit.
    pub fn failed(&self, threshold: u32, cooldown: Duration) -> bool {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= threshold {
            *self.open_until() = Some(Instant::now() + cooldown);
            return failures == threshold;
        }
        false
    }

    /// Whether the circuit is open now.
    pub fn is_open(&self) -> bool {
        !self.available(Instant::now())
    }
}

/// The endpoints of one business.
pub struct BizBackends {
    pub biz_id: i64,
    pub endpoints: Vec<Arc<Endpoint>>,
    next: AtomicUsize,
    batcher: Option<mpsc::Sender<BatchItem>>,
    /// Cleared when the backend answers BatchOnReceive with UNIMPLEMENTED.
    batch_supported: AtomicBool,
}

impl BizBackends {
    pub(crate) fn new(
        biz_id: i64,
        endpoints: Vec<Arc<Endpoint>>,
        batcher: Option<mpsc::Sender<BatchItem>>,
    ) -> Self {
        Self {
            biz_id,
            endpoints,
            next: AtomicUsize::new(0),
            batch_supported: AtomicBool::new(batcher.is_some()),
            batcher,
        }
    }

    /// The next endpoint with a closed circuit and a free call slot, round-robin.
    pub fn pick(&self) -> Pick {
        let now = Instant::now();
        let n = self.endpoints.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut busy = false;
        for endpoint in (0..n).map(|i| &self.endpoints[(start + i) % n]) {
            if !endpoint.available(now) {
                continue;
            }
            match endpoint.try_call() {
                Some(permit) => return Pick::Ready(endpoint.clone(), permit),
                None => busy = true,
            }
        }
        if busy { Pick::Busy } else { Pick::CircuitOpen }
    }

    /// The batcher, while the backend supports batching.
    pub(super) fn batcher(&self) -> Option<&mpsc::Sender<BatchItem>> {
        self.batcher.as_ref().filter(|_| self.batch_supported.load(Ordering::Relaxed))
    }

    /// The batcher's queue, whether or not the backend supports batching.
    pub(crate) fn batch_sender(&self) -> Option<mpsc::Sender<BatchItem>> {
        self.batcher.clone()
    }

    pub(super) fn batch_unsupported(&self) {
        self.batch_supported.store(false, Ordering::Relaxed);
    }
}

/// The outcome of [`BizBackends::pick`].
pub enum Pick {
    /// Call this endpoint while holding the permit.
    Ready(Arc<Endpoint>, OwnedSemaphorePermit),
    /// Every healthy endpoint is at its in-flight limit.
    Busy,
    /// Every endpoint's circuit is open.
    CircuitOpen,
}

/// Every business's backends.
#[derive(Default)]
pub struct BackendRegistry {
    bizs: RwLock<HashMap<i64, Arc<BizBackends>>>,
}

impl BackendRegistry {
    /// Sets (or replaces) the backends of one business.
    pub fn set(&self, backends: BizBackends) {
        let mut map = self.bizs.write().unwrap_or_else(|e| e.into_inner());
        map.insert(backends.biz_id, Arc::new(backends));
    }

    /// Forgets a business's backends.
    pub fn remove(&self, biz_id: i64) {
        self.bizs.write().unwrap_or_else(|e| e.into_inner()).remove(&biz_id);
    }

    /// Every business's backends, by business id.
    pub fn all(&self) -> Vec<Arc<BizBackends>> {
        let map = self.bizs.read().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<Arc<BizBackends>> = map.values().cloned().collect();
        all.sort_by_key(|b| b.biz_id);
        all
    }

    /// The backends of `biz_id`, if any.
    pub fn get(&self, biz_id: i64) -> Option<Arc<BizBackends>> {
        self.bizs.read().unwrap_or_else(|e| e.into_inner()).get(&biz_id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(addr: &str, max_calls: u32) -> Arc<Endpoint> {
        let addr = GrpcAddr::parse(addr).expect("addr");
        let tls = ClientTls::default();
        Arc::new(Endpoint::new(&addr, Duration::from_secs(1), max_calls, &tls).expect("endpoint"))
    }

    #[tokio::test]
    async fn circuits_open_after_failures_and_round_robin_skips_them() {
        let a = endpoint("127.0.0.1:1", 10);
        let b = endpoint("127.0.0.1:2", 10);
        let biz = BizBackends::new(1, vec![a.clone(), b.clone()], None);
        let picks: Vec<String> = (0..4).map(|_| addr(biz.pick())).collect();
        assert_eq!(picks, ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:1", "127.0.0.1:2"]);
        assert!(!a.failed(2, Duration::from_secs(60)));
        assert!(a.failed(2, Duration::from_secs(60)), "the second failure opens it");
        assert!(a.is_open());
        assert!((0..4).all(|_| addr(biz.pick()) == "127.0.0.1:2"));
        b.failed(1, Duration::from_secs(60));
        assert!(matches!(biz.pick(), Pick::CircuitOpen), "every circuit open");
        b.succeeded();
        assert_eq!(addr(biz.pick()), "127.0.0.1:2");
    }

    fn addr(pick: Pick) -> String {
        match pick {
            Pick::Ready(e, _) => e.addr.clone(),
            _ => panic!("expected an endpoint"),
        }
    }

    #[tokio::test]
    async fn endpoints_at_their_call_limit_are_busy() {
        let a = endpoint("127.0.0.1:1", 1);
        let biz = BizBackends::new(1, vec![a], None);
        let held = biz.pick();
        assert!(matches!(held, Pick::Ready(..)));
        assert!(matches!(biz.pick(), Pick::Busy));
        drop(held);
        assert!(matches!(biz.pick(), Pick::Ready(..)), "the permit comes back");
    }
}
