//! A gateway node running in the test process on loopback port 0.

use std::{net::SocketAddr, time::Duration};

use tokio::{sync::oneshot, task::JoinHandle};
use tonic::{service::interceptor::InterceptedService, transport::Channel};
use wsgw::{
    auth::{self, Identity, TokenSpec},
    config::{BackendConfig, Config},
    grpc::GrpcAddr,
    node::{Node, NodeHandle},
    protocol::pb::{
        PresenceRequest, PushMessage, PushRequest, presence_service_client::PresenceServiceClient,
        push_service_client::PushServiceClient,
    },
};

use super::Client;

pub const SECRET: &str = "integration-test-secret-0123456789abcdef";

/// The role tokens of cluster-scope nodes (`Scope::apply`); `wsgw()` children carry the backend
/// and operator ones in their environment, test clients the backend one.
pub const BACKEND_TOKEN: &str = "test-backend-token";
pub const PEER_TOKEN: &str = "test-peer-token";
pub const OPERATOR_TOKEN: &str = "test-operator-token";

/// A `PushService` client that sends [`BACKEND_TOKEN`] (ignored by nodes without tokens).
pub type PushClient = PushServiceClient<InterceptedService<Channel, BackendAuth>>;
type BackendAuth = fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>;

fn backend_auth(mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    let value = format!("Bearer {BACKEND_TOKEN}").parse().expect("ascii token");
    request.metadata_mut().insert("authorization", value);
    Ok(request)
}

pub struct TestNode {
    pub at: Endpoints,
    pub handle: NodeHandle,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// Where a node listens (in this process or another), and what a test does through it.
#[derive(Clone, Copy)]
pub struct Endpoints {
    pub ws_addr: SocketAddr,
    pub governor_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
}

impl std::ops::Deref for TestNode {
    type Target = Endpoints;

    fn deref(&self) -> &Endpoints {
        &self.at
    }
}

pub struct Builder {
    pub config: Config,
}

impl Builder {
    /// Changes the test config (loopback, port 0, known secret, short timeouts by default).
    pub fn config(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(&mut self.config);
        self
    }

    pub fn into_config(self) -> Config {
        self.config
    }

    pub async fn spawn(self) -> TestNode {
        let node = Node::bind(self.config).await.expect("node binds");
        let (ws_addr, governor_addr, handle) =
            (node.ws_addr(), node.governor_addr(), node.handle());
        let grpc_addr = node.grpc_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(node.run(async {
            let _ = stopped.await;
        }));
        let at = Endpoints { ws_addr, governor_addr, grpc_addr };
        TestNode { at, handle, stop: Some(stop), task: Some(task) }
    }
}

impl Endpoints {
    /// A `PushService` client for this node.
    pub async fn push_client(&self) -> PushClient {
        let endpoint =
            tonic::transport::Endpoint::from_shared(format!("http://{}", self.grpc_addr))
                .expect("endpoint");
        let channel = endpoint.connect().await.expect("grpc connect");
        PushServiceClient::with_interceptor(channel, backend_auth as BackendAuth)
    }

    /// Asks `PresenceService` about (user, biz): (online, connections, nodes).
    pub async fn presence(&self, user: i64, biz: i64) -> Result<(bool, i32, i32), tonic::Status> {
        let endpoint =
            tonic::transport::Endpoint::from_shared(format!("http://{}", self.grpc_addr))
                .expect("endpoint");
        let channel = endpoint.connect().await.expect("grpc connect");
        let mut client =
            PresenceServiceClient::with_interceptor(channel, backend_auth as BackendAuth);
        let r = client.presence(PresenceRequest { biz_id: biz, user_id: user }).await?;
        let r = r.into_inner();
        Ok((r.online, r.connections, r.nodes))
    }

    /// Pushes `body` to (user, biz) with `key`: Ok(connections) or the gRPC status.
    pub async fn push(
        &self,
        user: i64,
        biz: i64,
        key: &str,
        body: &[u8],
    ) -> Result<i32, tonic::Status> {
        let msg = PushMessage {
            key: key.into(),
            biz_id: biz,
            receiver_id: user,
            body: body.to_vec().into(),
        };
        let mut client = self.push_client().await;
        client.push(PushRequest { msg: Some(msg) }).await.map(|r| r.into_inner().connections)
    }

    pub fn url(&self, query: &str) -> String {
        format!("ws://{}/{query}", self.ws_addr)
    }

    /// Connects an authenticated client.
    pub async fn connect(&self, user: i64, biz: i64) -> Client {
        Client::connect(&self.url(&format!("?token={}", TestNode::token(user, biz))))
            .await
            .expect("connect")
    }

    /// GET on the governor: (status, body).
    pub async fn get(&self, path: &str) -> (u16, String) {
        let resp =
            super::http_get(format!("http://{}{path}", self.governor_addr)).await.expect("GET");
        let status = resp.status().as_u16();
        (status, resp.text().await.expect("body"))
    }

    /// The value of one metric series in `/metrics` (0 when absent).
    pub async fn metric(&self, series: &str) -> f64 {
        let (_, text) = self.get("/metrics").await;
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
            .map(|v| v.trim().parse().expect("number"))
            .unwrap_or(0.0)
    }
}

impl TestNode {
    pub fn builder() -> Builder {
        let mut config = Config::default();
        config.node.id = "test-node".into();
        config.server.websocket.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        config.server.governor.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.server.grpc.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.auth.jwt.secret = SECRET.into();
        config.shutdown.drain_timeout = Duration::from_secs(10);
        Builder { config }
    }

    pub async fn spawn() -> TestNode {
        Self::builder().spawn().await
    }

    /// A node whose biz `biz_id` is served by `backend` (fast retries for tests).
    pub fn with_backend(biz_id: i64, backend: SocketAddr) -> Builder {
        Self::builder().config(|c| {
            c.upstream.timeout = Duration::from_millis(500);
            c.upstream.backoff = Duration::from_millis(10);
            c.upstream.max_backoff = Duration::from_millis(20);
            c.backends.push(BackendConfig {
                biz_id,
                endpoints: vec![GrpcAddr::parse(&backend.to_string()).expect("backend address")],
                ..BackendConfig::default()
            });
        })
    }

    /// A valid token for (user, biz).
    pub fn token(user: i64, biz: i64) -> String {
        let spec =
            TokenSpec::hs256(Identity { biz_id: biz, user_id: user }, Duration::from_secs(3600));
        auth::mint(&spec, SECRET.as_bytes()).expect("mint")
    }

    /// The node's task, without asking it to stop (it ends when drained by other means).
    pub fn task(&mut self) -> JoinHandle<()> {
        self.task.take().expect("running")
    }

    /// Starts the graceful shutdown and returns the node's task (finishes when drained).
    pub fn begin_shutdown(&mut self) -> JoinHandle<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.take().expect("running")
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
