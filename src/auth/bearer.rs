//! Bearer-token check for the node's gRPC services (push, node-to-node, admin), one token per
//! role (`server.grpc.tokens`). Compared in constant time: the time an answer takes says
//! nothing about how much of a guessed token was right. An accepted call carries a
//! [`Credential`] naming the token it presented, never the token itself, for audit lines.

use std::{fmt, sync::Arc};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::{Request, Status, service::Interceptor};

/// Requires `authorization: Bearer <token>` when a token is configured.
#[derive(Clone)]
pub struct BearerAuth {
    expected: Option<Arc<[u8]>>,
    credential: Credential,
}

/// Which token a call presented: the config key it comes from and the first 8 hex digits of
/// its SHA-256 (`server.grpc.tokens.operator sha256:3f2a9c01`), or `none` when the service
/// has no token. Put in the request's extensions by [`BearerAuth`].
#[derive(Clone, Debug)]
pub struct Credential(Arc<str>);

impl fmt::Display for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl BearerAuth {
    /// No check when `token` is empty; `source` is the config key `token` came from.
    pub fn new(source: &str, token: &str) -> Self {
        if token.is_empty() {
            return Self { expected: None, credential: Credential("none".into()) };
        }
        let digest = Sha256::digest(token.as_bytes());
        let short: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
        Self {
            expected: Some(format!("Bearer {token}").as_bytes().into()),
            credential: Credential(format!("{source} sha256:{short}").into()),
        }
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
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let given = request.metadata().get("authorization").map(|v| v.as_bytes());
        match self.accepts(given) {
            true => {
                request.extensions_mut().insert(self.credential.clone());
                Ok(request)
            }
            false => Err(Status::unauthenticated("missing or wrong bearer token")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_token_passes() {
        let auth = BearerAuth::new("k", "s3cret");
        assert!(auth.accepts(Some(b"Bearer s3cret")));
        for wrong in [&b"Bearer s3cre"[..], b"Bearer s3cret2", b"bearer s3cret", b"", b"s3cret"] {
            assert!(!auth.accepts(Some(wrong)), "{wrong:?}");
        }
        assert!(!auth.accepts(None));
        assert!(BearerAuth::new("k", "").accepts(None), "no token configured: no check");
    }

    #[test]
    fn accepted_calls_name_their_token_by_key_and_fingerprint_only() {
        let mut auth = BearerAuth::new("server.grpc.tokens.operator", "s3cret");
        let mut request = Request::new(());
        request.metadata_mut().insert("authorization", "Bearer s3cret".parse().expect("ascii"));
        let request = auth.call(request).expect("accepted");
        let credential = request.extensions().get::<Credential>().expect("credential").to_string();
        // sha256("s3cret") starts with 4b7d1e... ; the token itself never appears
        assert_eq!(
            credential,
            format!("server.grpc.tokens.operator sha256:{}", &hex_sha("s3cret")[..8])
        );
        assert!(!credential.contains("s3cret"));
        let mut open = BearerAuth::new("k", "");
        let request = open.call(Request::new(())).expect("no token: accepted");
        assert_eq!(
            request.extensions().get::<Credential>().expect("credential").to_string(),
            "none"
        );
    }

    fn hex_sha(text: &str) -> String {
        Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
    }
}
