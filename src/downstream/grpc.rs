//! `PushService` over gRPC: how backends hand pushes to a node.

use std::sync::Arc;

use tonic::{Request, Response, Status, service::Interceptor};

use super::{Downstream, PushError};
use crate::protocol::pb::{
    BroadcastRequest, BroadcastResponse, PushRequest, PushResponse,
    push_service_server::PushService,
};

/// The `PushService` implementation.
pub struct PushApi {
    downstream: Arc<Downstream>,
}

impl PushApi {
    pub fn new(downstream: Arc<Downstream>) -> Self {
        Self { downstream }
    }
}

#[tonic::async_trait]
impl PushService for PushApi {
    async fn push(&self, request: Request<PushRequest>) -> Result<Response<PushResponse>, Status> {
        let msg =
            request.into_inner().msg.ok_or_else(|| Status::invalid_argument("msg is required"))?;
        match self.downstream.push(msg) {
            Ok(n) => Ok(Response::new(PushResponse {
                connections: i32::try_from(n).unwrap_or(i32::MAX),
            })),
            Err(e @ PushError::Invalid) => Err(Status::invalid_argument(e.to_string())),
            Err(e @ PushError::NotConnected { .. }) => Err(Status::not_found(e.to_string())),
            Err(e @ PushError::Overloaded(_)) => Err(Status::resource_exhausted(e.to_string())),
        }
    }

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
        let n = self.downstream.broadcast(req.biz_id, req.key, &req.body);
        Ok(Response::new(BroadcastResponse { connections: n as i64 }))
    }
}

/// Requires `authorization: Bearer <token>` when a token is configured.
#[derive(Clone)]
pub struct BearerAuth {
    expected: Option<Arc<str>>,
}

impl BearerAuth {
    /// No check when `token` is empty.
    pub fn new(token: &str) -> Self {
        Self { expected: (!token.is_empty()).then(|| format!("Bearer {token}").into()) }
    }
}

impl Interceptor for BearerAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(want) = &self.expected else { return Ok(request) };
        let given = request.metadata().get("authorization").and_then(|v| v.to_str().ok());
        match given {
            Some(given) if given == &**want => Ok(request),
            _ => Err(Status::unauthenticated("missing or wrong bearer token")),
        }
    }
}
