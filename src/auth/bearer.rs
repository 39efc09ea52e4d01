//! Bearer-token check for the node's gRPC services (push, node-to-node, admin).

use std::sync::Arc;

use tonic::{Request, Status, service::Interceptor};

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
