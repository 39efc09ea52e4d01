//! The node's gRPC port: `PushService` and `PresenceService` (backends), `NodeService` (peers)
//! and `AdminService` (operators), each behind its role's token, over TLS when
//! `server.grpc.tls` is set; and the TLS of the node's own gRPC calls.

use std::{sync::Arc, time::Duration};

use futures_util::{Stream, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::{ServerTlsConfig, server::TcpIncoming};

use super::NodeError;
use crate::{
    admin::{AdminApi, NodeView, Sampler},
    auth::BearerAuth,
    config::{GrpcConfig, GrpcRole, GrpcTlsConfig},
    grpc::{ClientTls, ClientTlsFiles},
    protocol::{
        admin_pb::admin_service_server::AdminServiceServer,
        cluster_pb::node_service_server::NodeServiceServer,
        pb::{
            presence_service_server::PresenceServiceServer, push_service_server::PushServiceServer,
        },
    },
    routing::{
        Router,
        api::{NodeApi, PushApi},
        presence::PresenceApi,
    },
};

/// Serves the gRPC APIs (`PushService`, `NodeService`, `AdminService`) until `stop`.
pub(super) async fn serve_grpc(
    listener: TcpListener,
    view: Arc<NodeView>,
    sampler: Arc<Sampler>,
    router: Arc<Router>,
    (grpc, tls): (GrpcConfig, Option<ServerTlsConfig>),
    stop: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    // One credential per role: a backend's push token cannot kick or drain.
    let auth = |role| {
        let (source, token) = grpc.token_source(role);
        BearerAuth::new(source, token)
    };
    let push = PushServiceServer::with_interceptor(
        PushApi::new(router.clone(), view.downstream.clone()),
        auth(GrpcRole::Backend),
    );
    let presence = PresenceServiceServer::with_interceptor(
        PresenceApi::new(view.directory.clone()),
        auth(GrpcRole::Backend),
    );
    let node = NodeServiceServer::with_interceptor(
        NodeApi::new(router, stop.clone()),
        auth(GrpcRole::Peer),
    );
    let admin = AdminServiceServer::with_interceptor(
        AdminApi::new(view, sampler),
        auth(GrpcRole::Operator),
    );
    // Bounded per client connection: streams, queued calls, time per call; dead peers are
    // found by HTTP/2 keepalive pings. TCP_NODELAY on every accepted connection: without it an
    // answer written in two parts waits for the caller's delayed ACK (~40 ms per call).
    let incoming = speaking(listener, grpc.handshake_timeout);
    let streams = grpc.max_concurrent_streams;
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        let tls = tls.timeout(grpc.handshake_timeout);
        server = server.tls_config(tls).map_err(std::io::Error::other)?;
    }
    server
        .max_concurrent_streams(streams)
        .concurrency_limit_per_connection(streams as usize)
        .timeout(grpc.request_timeout)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
        .add_service(push)
        .add_service(presence)
        .add_service(node)
        .add_service(admin)
        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
        .await
        .map_err(std::io::Error::other)
}

/// Callers waiting to be heard at once, at most; more wait in the listen backlog.
const WAITING: usize = 1024;

/// The accepted connections whose caller sent the first 24 bytes (the HTTP/2 preface, or a TLS
/// hello) within `deadline`; the others are closed. The HTTP/2 server has no deadline of its
/// own before the preface, so a caller that connects and stays silent would keep its socket
/// for ever (a slowloris). Waiting happens for up to [`WAITING`] callers at once, in any order.
fn speaking(
    listener: TcpListener,
    deadline: Duration,
) -> impl Stream<Item = std::io::Result<TcpStream>> {
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .map(move |accepted| async move {
            let stream = accepted.ok()?;
            let heard = tokio::time::timeout(deadline, has_bytes(&stream, 24)).await;
            matches!(heard, Ok(true)).then_some(Ok(stream))
        })
        .buffer_unordered(WAITING)
        .filter_map(std::future::ready)
}

/// Whether `n` bytes arrive on `stream` before it closes (read without consuming them).
async fn has_bytes(stream: &TcpStream, n: usize) -> bool {
    let mut buf = [0u8; 24];
    loop {
        match stream.peek(&mut buf[..n.min(24)]).await {
            Ok(0) | Err(_) => return false,
            Ok(k) if k >= n.min(24) => return true,
            Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// A gRPC client's TLS from the files at config `key`.
pub(super) fn client_tls(
    key: &'static str,
    files: &ClientTlsFiles,
) -> Result<ClientTls, NodeError> {
    ClientTls::load(files).map_err(|source| NodeError::GrpcTls { key, source })
}

/// The gRPC port's TLS (`server.grpc.tls`), when configured.
pub(super) fn grpc_server_tls(tls: &GrpcTlsConfig) -> Result<Option<ServerTlsConfig>, NodeError> {
    let (Some(cert), Some(key)) = (&tls.cert, &tls.key) else { return Ok(None) };
    let config = crate::grpc::server_tls(cert, key, tls.client_ca.as_deref());
    config.map(Some).map_err(|source| NodeError::GrpcTls { key: "server.grpc.tls", source })
}
