//! The gRPC services that take pushes in: `gatewayapi.v1.PushService` (backends, `wsgw push`)
//! and `wsgw.cluster.v1.NodeService` (peer nodes). Both sit behind the node's bearer token.

use std::{pin::Pin, sync::Arc};

use futures_util::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::{DeliverRequest, DeliverResponse, Router};
use crate::{
    downstream::Downstream,
    protocol::{
        cluster_pb::node_service_server::NodeService,
        pb::{
            BroadcastRequest, BroadcastResponse, PushRequest, PushResponse,
            push_service_server::PushService,
        },
    },
    push::{PushError, RouteError},
};

/// The `PushService` implementation: every push is routed through the cluster.
pub struct PushApi {
    router: Arc<Router>,
    downstream: Arc<Downstream>,
}

impl PushApi {
    pub fn new(router: Arc<Router>, downstream: Arc<Downstream>) -> Self {
        Self { router, downstream }
    }
}

fn status(e: RouteError) -> Status {
    match e {
        RouteError::Push(e @ (PushError::Invalid | PushError::TooLarge { .. })) => {
            Status::invalid_argument(e.to_string())
        }
        RouteError::Push(e @ PushError::NotConnected { .. }) => Status::not_found(e.to_string()),
        RouteError::Push(e @ PushError::Overloaded(_)) => Status::resource_exhausted(e.to_string()),
        e @ RouteError::Unavailable(_) => Status::unavailable(e.to_string()),
    }
}

#[tonic::async_trait]
impl PushService for PushApi {
    async fn push(&self, request: Request<PushRequest>) -> Result<Response<PushResponse>, Status> {
        let msg =
            request.into_inner().msg.ok_or_else(|| Status::invalid_argument("msg is required"))?;
        let routed = self.router.push(msg).await.map_err(status)?;
        Ok(Response::new(PushResponse {
            connections: i32::try_from(routed.connections).unwrap_or(i32::MAX),
            stored: routed.stored,
        }))
    }

    /// Broadcasts reach the connections of this node (see the proto).
    async fn broadcast(
        &self,
        request: Request<BroadcastRequest>,
    ) -> Result<Response<BroadcastResponse>, Status> {
        let req = request.into_inner();
        if req.biz_id < 0 {
            return Err(Status::invalid_argument(
                "biz_id must be positive, or 0 for every connection",
            ));
        }
        let n = self.downstream.broadcast(req.biz_id, req.key, &req.body).await;
        let n = n.map_err(|e| status(e.into()))?;
        Ok(Response::new(BroadcastResponse { connections: n as i64 }))
    }
}

/// The `NodeService` implementation: deliveries from peers, on this node only.
pub struct NodeApi {
    router: Arc<Router>,
    /// Ends the peers' `DeliverStream`s when the node stops serving gRPC: an open stream would
    /// otherwise hold the server's graceful shutdown until the peer closes it.
    stop: CancellationToken,
}

impl NodeApi {
    pub fn new(router: Arc<Router>, stop: CancellationToken) -> Self {
        Self { router, stop }
    }
}

/// The answers of one peer's `DeliverStream`.
type Answers = Pin<Box<dyn Stream<Item = Result<DeliverResponse, Status>> + Send>>;

#[tonic::async_trait]
impl NodeService for NodeApi {
    async fn deliver(
        &self,
        request: Request<DeliverRequest>,
    ) -> Result<Response<DeliverResponse>, Status> {
        Ok(Response::new(self.router.deliver_local(request.into_inner().msgs)))
    }

    type DeliverStreamStream = Answers;

    /// Each request is delivered as it arrives and answered in order; no task of its own (the
    /// server's stream polls it), and the peer's HTTP/2 window bounds what it can queue here.
    async fn deliver_stream(
        &self,
        request: Request<Streaming<DeliverRequest>>,
    ) -> Result<Response<Answers>, Status> {
        let router = self.router.clone();
        let answers = request
            .into_inner()
            .take_until(self.stop.clone().cancelled_owned())
            .map(move |r| r.map(|req| router.deliver_local(req.msgs)));
        Ok(Response::new(Box::pin(answers)))
    }
}
