//! Bearer-token check for the node's gRPC services (push, node-to-node, admin), one token per
//! role (`server.grpc.tokens`). Compared in constant time: the time an answer takes says
//! nothing about how much of a guessed token was right.

use std::sync::Arc;

use subtle::ConstantTimeEq;
use tonic::{Request, Status, service::Interceptor};

/// Requires `authorization: Bearer <token>` when a token is configured.
#[derive(Clone)]
pub struct BearerAuth {
    expected: Option<Arc<[u8]>>,
}

impl BearerAuth {
    /// No check when `token` is empty.
    pub fn new(token: &str) -> Self {
        Self { expected: (!token.is_empty()).then(|| format!("Bearer {token}").as_bytes().into()) }
    }

    /// Whether `given` (an `authorization` value) carries the expected token.
    pub fn accepts(&self, given: Option<&[u8]>) -> bool {
        match (&self.expected, given) {
            (None, _) => true,
            (Some(want), Some(given)) => bool::from(want.ct_eq(given)),
            (Some(_), None) => false,
        }
    }
}

impl Interceptor for BearerAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let given = request.metadata().get("authorization").map(|v| v.as_bytes());
        match self.accepts(given) {
            true => Ok(request),
            false => Err(Status::unauthenticated("missing or wrong bearer token")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_token_passes() {
        let auth = BearerAuth::new("s3cret");
        assert!(auth.accepts(Some(b"Bearer s3cret")));
        for wrong in [&b"Bearer s3cre"[..], b"Bearer s3cret2", b"bearer s3cret", b"", b"s3cret"] {
            assert!(!auth.accepts(Some(wrong)), "{wrong:?}");
        }
        assert!(!auth.accepts(None));
        assert!(BearerAuth::new("").accepts(None), "no token configured: no check");
    }
}
