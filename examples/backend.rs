//! A minimal business backend for wsgw, in Rust with tonic: it serves `BackendService.OnReceive`
//! and `BatchBackendService.BatchOnReceive` (`proto/gatewayapi/v1/gateway.proto`) and answers
//! every upstream message with the next message id. With `--log-keys` it prints one line per
//! message received (`<biz> <key> <bytes>`), which the fault harness counts (upstream messages
//! acknowledged vs backend calls).
//!
//! With `--push-back <node gRPC address>` it also answers every message with a push to its
//! sender through the node's `PushService` (key `echo-<key>`, the same body): the sender comes
//! from the call's `x-wsgw-user-id` metadata (one value per request of a batch), and the backend
//! token from `--push-token` or `WSGW_PUSH_TOKEN`.
//!
//! ```sh
//! cargo run --example backend -- --listen 127.0.0.1:9100 --biz 9999
//! # and in the node's config:
//! #   backends: [{ biz_id: 9999, endpoints: ["127.0.0.1:9100"] }]
//! WSGW_PUSH_TOKEN=… cargo run --example backend -- --biz 9999 --push-back 127.0.0.1:9004
//! ```

use std::{
    io::Write as _,
    net::SocketAddr,
    sync::atomic::{AtomicI64, Ordering},
};

use clap::Parser;
use tonic::{
    Request, Response, Status,
    transport::{Channel, Server},
};
use wsgw::{
    grpc::{Bearer, GrpcAddr},
    protocol::pb::{
        BatchOnReceiveRequest, BatchOnReceiveResponse, OnReceiveRequest, OnReceiveResponse,
        PushMessage, PushRequest,
        backend_service_server::{BackendService, BackendServiceServer},
        batch_backend_service_server::{BatchBackendService, BatchBackendServiceServer},
        push_service_client::PushServiceClient,
    },
};

#[derive(Parser)]
struct Args {
    /// Where to serve gRPC.
    #[arg(long, default_value = "127.0.0.1:9100")]
    listen: SocketAddr,
    /// The business this backend answers for (echoed in every answer).
    #[arg(long, default_value_t = 9999)]
    biz: i64,
    /// Print `<biz> <key> <bytes>` for every message received, on stdout.
    #[arg(long)]
    log_keys: bool,
    /// Push every message back to its sender through this node's PushService (host:port).
    #[arg(long, value_parser = parse_addr)]
    push_back: Option<GrpcAddr>,
    /// The node's backend token for PushService.
    #[arg(long, env = "WSGW_PUSH_TOKEN", default_value = "", hide_env_values = true)]
    push_token: String,
}

fn parse_addr(s: &str) -> Result<GrpcAddr, String> {
    GrpcAddr::parse(s).map_err(|e| e.to_string())
}

struct Backend {
    biz: i64,
    log_keys: bool,
    next_id: AtomicI64,
    push_back: Option<(PushServiceClient<Channel>, Bearer)>,
}

impl Backend {
    /// Handles one upstream message: here, just numbers it. A real backend stores or forwards
    /// it, and may answer with a push through the gateway's PushService.
    fn receive(&self, req: &OnReceiveRequest) -> OnReceiveResponse {
        if self.log_keys {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{} {} {}", self.biz, req.key.escape_debug(), req.body.len());
        }
        let msg_id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        OnReceiveResponse { msg_id, biz_id: self.biz }
    }

    /// With `--push-back`: pushes each request back to its sender (`x-wsgw-user-id` holds one
    /// user id per request, comma-separated). Spawned: the answer to the gateway never waits.
    fn push_back<T>(&self, request: &Request<T>, reqs: &[OnReceiveRequest]) {
        let Some((client, token)) = &self.push_back else { return };
        let users = request.metadata().get("x-wsgw-user-id").and_then(|v| v.to_str().ok());
        let users: Vec<i64> =
            users.unwrap_or_default().split(',').filter_map(|u| u.trim().parse().ok()).collect();
        for (req, user) in reqs.iter().zip(users) {
            let msg = PushMessage {
                key: format!("echo-{}", req.key),
                biz_id: self.biz,
                receiver_id: user,
                body: req.body.clone(),
            };
            let (mut client, push) =
                (client.clone(), token.request(PushRequest { msg: Some(msg) }));
            tokio::spawn(async move {
                if let Err(e) = client.push(push).await {
                    eprintln!("push back to user {user} failed: {}", e.message());
                }
            });
        }
    }
}

#[tonic::async_trait]
impl BackendService for &'static Backend {
    async fn on_receive(
        &self,
        request: Request<OnReceiveRequest>,
    ) -> Result<Response<OnReceiveResponse>, Status> {
        self.push_back(&request, std::slice::from_ref(request.get_ref()));
        Ok(Response::new(self.receive(request.get_ref())))
    }
}

#[tonic::async_trait]
impl BatchBackendService for &'static Backend {
    async fn batch_on_receive(
        &self,
        request: Request<BatchOnReceiveRequest>,
    ) -> Result<Response<BatchOnReceiveResponse>, Status> {
        self.push_back(&request, &request.get_ref().reqs);
        let res = request.get_ref().reqs.iter().map(|r| self.receive(r)).collect();
        Ok(Response::new(BatchOnReceiveResponse { res }))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let push_back = match &args.push_back {
        Some(node) => {
            let channel =
                node.lazy_channel(std::time::Duration::from_secs(2), &Default::default())?;
            Some((PushServiceClient::new(channel), Bearer::new(&args.push_token)?))
        }
        None => None,
    };
    let backend: &'static Backend = Box::leak(Box::new(Backend {
        biz: args.biz,
        log_keys: args.log_keys,
        next_id: AtomicI64::new(0),
        push_back,
    }));
    eprintln!("backend for biz {} on {}", args.biz, args.listen);
    Server::builder()
        .add_service(BackendServiceServer::new(backend))
        .add_service(BatchBackendServiceServer::new(backend))
        .serve_with_shutdown(args.listen, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
