//! A minimal business backend for wsgw, in Rust with tonic: it serves `BackendService.OnReceive`
//! and `BatchBackendService.BatchOnReceive` (`proto/gatewayapi/v1/gateway.proto`) and answers
//! every upstream message with the next message id. With `--log-keys` it prints one line per
//! message received (`<biz> <key> <bytes>`), which the fault harness counts (upstream messages
//! acknowledged vs backend calls).
//!
//! ```sh
//! cargo run --example backend -- --listen 127.0.0.1:9100 --biz 9999
//! # and in the node's config:
//! #   backends: [{ biz_id: 9999, endpoints: ["127.0.0.1:9100"] }]
//! ```

use std::{
    io::Write as _,
    net::SocketAddr,
    sync::atomic::{AtomicI64, Ordering},
};

use clap::Parser;
use tonic::{Request, Response, Status, transport::Server};
use wsgw::protocol::pb::{
    BatchOnReceiveRequest, BatchOnReceiveResponse, OnReceiveRequest, OnReceiveResponse,
    backend_service_server::{BackendService, BackendServiceServer},
    batch_backend_service_server::{BatchBackendService, BatchBackendServiceServer},
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
}

struct Backend {
    biz: i64,
    log_keys: bool,
    next_id: AtomicI64,
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
}

#[tonic::async_trait]
impl BackendService for &'static Backend {
    async fn on_receive(
        &self,
        request: Request<OnReceiveRequest>,
    ) -> Result<Response<OnReceiveResponse>, Status> {
        Ok(Response::new(self.receive(request.get_ref())))
    }
}

#[tonic::async_trait]
impl BatchBackendService for &'static Backend {
    async fn batch_on_receive(
        &self,
        request: Request<BatchOnReceiveRequest>,
    ) -> Result<Response<BatchOnReceiveResponse>, Status> {
        let res = request.get_ref().reqs.iter().map(|r| self.receive(r)).collect();
        Ok(Response::new(BatchOnReceiveResponse { res }))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let backend: &'static Backend = Box::leak(Box::new(Backend {
        biz: args.biz,
        log_keys: args.log_keys,
        next_id: AtomicI64::new(0),
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
