//! A real tonic business backend in the test process: `BackendService` (and optionally
//! `BatchBackendService` and `ConnectionHookService`) on a loopback port, with scripted
//! behaviour and call accounting.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use tokio::{net::TcpListener, sync::oneshot};
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Request, Response, Status};
use wsgw::protocol::pb::{
    BatchOnReceiveRequest, BatchOnReceiveResponse, ConnectionEvent, ConnectionEventsRequest,
    ConnectionEventsResponse, DeliveryReceipt, DeliveryReceiptsRequest, DeliveryReceiptsResponse,
    OnReceiveRequest, OnReceiveResponse,
    backend_service_server::{BackendService, BackendServiceServer},
    batch_backend_service_server::{BatchBackendService, BatchBackendServiceServer},
    connection_hook_service_server::{ConnectionHookService, ConnectionHookServiceServer},
    delivery_receipt_service_server::{DeliveryReceiptService, DeliveryReceiptServiceServer},
};

/// How the backend behaves.
#[derive(Clone, Default)]
pub struct Behaviour {
    /// Wait this long before answering.
    pub delay: Duration,
    /// Answer every call with this status.
    pub fail: Option<Code>,
    /// Serve `BatchBackendService` too.
    pub batch: bool,
    /// Serve `ConnectionHookService` and `DeliveryReceiptService` too.
    pub hooks: bool,
}

#[derive(Default)]
struct Record {
    calls: AtomicUsize,
    batch_calls: AtomicUsize,
    next_id: AtomicI64,
    received: Mutex<Vec<(String, Bytes)>>,
    /// The `x-wsgw-*` metadata of every call, in order (name → value).
    senders: Mutex<Vec<Vec<(String, String)>>>,
    /// Connection hook events and delivery receipts, in order.
    hook_events: Mutex<Vec<ConnectionEvent>>,
    receipts: Mutex<Vec<DeliveryReceipt>>,
}

/// The sender metadata of a call.
fn senders<T>(request: &Request<T>) -> Vec<(String, String)> {
    let mut found: Vec<(String, String)> = request
        .metadata()
        .iter()
        .filter_map(|kv| match kv {
            tonic::metadata::KeyAndValueRef::Ascii(k, v) if k.as_str().starts_with("x-wsgw-") => {
                Some((k.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned()))
            }
            _ => None,
        })
        .collect();
    found.sort();
    found
}

pub struct TestBackend {
    pub addr: SocketAddr,
    record: Arc<Record>,
    _stop: oneshot::Sender<()>,
}

#[derive(Clone)]
struct Service {
    behaviour: Behaviour,
    biz_id: i64,
    record: Arc<Record>,
}

impl Service {
    async fn answer(&self, req: OnReceiveRequest) -> Result<OnReceiveResponse, Status> {
        self.record.received.lock().expect("lock").push((req.key, req.body));
        tokio::time::sleep(self.behaviour.delay).await;
        if let Some(code) = self.behaviour.fail {
            return Err(Status::new(code, "scripted failure"));
        }
        let msg_id = self.record.next_id.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(OnReceiveResponse { msg_id, biz_id: self.biz_id })
    }
}

#[tonic::async_trait]
impl BackendService for Service {
    async fn on_receive(
        &self,
        request: Request<OnReceiveRequest>,
    ) -> Result<Response<OnReceiveResponse>, Status> {
        self.record.calls.fetch_add(1, Ordering::SeqCst);
        self.record.senders.lock().expect("lock").push(senders(&request));
        self.answer(request.into_inner()).await.map(Response::new)
    }
}

#[tonic::async_trait]
impl BatchBackendService for Service {
    async fn batch_on_receive(
        &self,
        request: Request<BatchOnReceiveRequest>,
    ) -> Result<Response<BatchOnReceiveResponse>, Status> {
        self.record.batch_calls.fetch_add(1, Ordering::SeqCst);
        self.record.senders.lock().expect("lock").push(senders(&request));
        let mut res = Vec::new();
        for req in request.into_inner().reqs {
            res.push(self.answer(req).await?);
        }
        Ok(Response::new(BatchOnReceiveResponse { res }))
    }
}

#[tonic::async_trait]
impl ConnectionHookService for Service {
    async fn on_connection_events(
        &self,
        request: Request<ConnectionEventsRequest>,
    ) -> Result<Response<ConnectionEventsResponse>, Status> {
        self.record.hook_events.lock().expect("lock").extend(request.into_inner().events);
        Ok(Response::new(ConnectionEventsResponse {}))
    }
}

#[tonic::async_trait]
impl DeliveryReceiptService for Service {
    async fn on_delivery_receipts(
        &self,
        request: Request<DeliveryReceiptsRequest>,
    ) -> Result<Response<DeliveryReceiptsResponse>, Status> {
        self.record.receipts.lock().expect("lock").extend(request.into_inner().receipts);
        Ok(Response::new(DeliveryReceiptsResponse {}))
    }
}

impl TestBackend {
    /// Starts a backend for `biz_id` on a free loopback port.
    pub async fn spawn(biz_id: i64, behaviour: Behaviour) -> TestBackend {
        Self::spawn_with(biz_id, behaviour, None).await
    }

    /// Like [`spawn`](Self::spawn), serving TLS only.
    pub async fn spawn_tls(biz_id: i64, tls: tonic::transport::ServerTlsConfig) -> TestBackend {
        Self::spawn_with(biz_id, Behaviour::default(), Some(tls)).await
    }

    async fn spawn_with(
        biz_id: i64,
        behaviour: Behaviour,
        tls: Option<tonic::transport::ServerTlsConfig>,
    ) -> TestBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let record = Arc::new(Record::default());
        let service = Service { behaviour: behaviour.clone(), biz_id, record: record.clone() };
        let (stop, stopped) = oneshot::channel::<()>();
        let mut server = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            server = server.tls_config(tls).expect("backend TLS");
        }
        let mut router = server.add_service(BackendServiceServer::new(service.clone()));
        if behaviour.batch {
            router = router.add_service(BatchBackendServiceServer::new(service.clone()));
        }
        if behaviour.hooks {
            router = router
                .add_service(ConnectionHookServiceServer::new(service.clone()))
                .add_service(DeliveryReceiptServiceServer::new(service));
        }
        tokio::spawn(router.serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            async {
                let _ = stopped.await;
            },
        ));
        TestBackend { addr, record, _stop: stop }
    }

    /// Single OnReceive calls so far.
    pub fn calls(&self) -> usize {
        self.record.calls.load(Ordering::SeqCst)
    }

    /// BatchOnReceive calls so far.
    pub fn batch_calls(&self) -> usize {
        self.record.batch_calls.load(Ordering::SeqCst)
    }

    /// The sender metadata (`x-wsgw-*`, sorted by name) of every call, in order.
    pub fn senders(&self) -> Vec<Vec<(String, String)>> {
        self.record.senders.lock().expect("lock").clone()
    }

    /// Connection hook events received, in order.
    pub fn hook_events(&self) -> Vec<ConnectionEvent> {
        self.record.hook_events.lock().expect("lock").clone()
    }

    /// Delivery receipts received, in order.
    pub fn receipts(&self) -> Vec<DeliveryReceipt> {
        self.record.receipts.lock().expect("lock").clone()
    }

    /// Every (key, body) received, in order.
    pub fn received(&self) -> Vec<(String, Bytes)> {
        self.record.received.lock().expect("lock").clone()
    }
}

/// A loopback address where nothing listens.
pub fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}
