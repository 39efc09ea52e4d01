//! gRPC client plumbing shared by every caller of another process (backends, peer nodes, the
//! operator commands): a validated address and the bearer token.
//!
//! Owns: parsing `host:port` or a URL once (at config load, or where an address arrives from
//! etcd or Redis) into a [`GrpcAddr`], building lazily connected channels, and turning a token
//! into an `authorization` header. Must never import anything from the rest of the crate: it sits
//! below the config.

use std::{fmt, time::Duration};

use serde::{Deserialize, Serialize};
use tonic::{
    Request,
    metadata::{Ascii, MetadataValue},
    transport::{Channel, Endpoint, Uri},
};

/// Why an address or a token is unusable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GrpcError {
    #[error("{0:?} is not host:port or a URL with a host and a port")]
    Address(String),
    #[error("the token must be printable ASCII without spaces")]
    Token,
}

/// A gRPC endpoint address: `host:port` (plain HTTP/2) or a URL with a host and a port.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct GrpcAddr {
    /// As given (what operators see in logs and stats).
    text: String,
    uri: Uri,
}

impl GrpcAddr {
    pub fn parse(text: &str) -> Result<Self, GrpcError> {
        let bad = || GrpcError::Address(text.to_owned());
        let url = match text.contains("://") {
            true => text.to_owned(),
            false => format!("http://{text}"),
        };
        let uri: Uri = url.parse().map_err(|_| bad())?;
        match (uri.host(), uri.port_u16()) {
            (Some(h), Some(_)) if !h.is_empty() => Ok(Self { text: text.to_owned(), uri }),
            _ => Err(bad()),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// A channel that connects on first use and reconnects by itself.
    pub fn lazy_channel(&self, connect_timeout: Duration) -> Channel {
        self.endpoint().connect_timeout(connect_timeout).tcp_nodelay(true).connect_lazy()
    }

    /// The tonic endpoint, for callers that set more options.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint::from(self.uri.clone())
    }
}

impl TryFrom<String> for GrpcAddr {
    type Error = GrpcError;

    fn try_from(text: String) -> Result<Self, GrpcError> {
        Self::parse(&text)
    }
}

impl From<GrpcAddr> for String {
    fn from(a: GrpcAddr) -> Self {
        a.text
    }
}

impl fmt::Display for GrpcAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for GrpcAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.text)
    }
}

/// The `authorization: Bearer …` header every call carries (none for an empty token).
#[derive(Clone, Debug, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    /// The header for `token`; an empty token means none. A token that is not printable ASCII
    /// is an error, never silently dropped or sent as bytes the server cannot read back.
    pub fn new(token: &str) -> Result<Self, GrpcError> {
        if token.is_empty() {
            return Ok(Self(None));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(GrpcError::Token);
        }
        let value = format!("Bearer {token}").parse().map_err(|_| GrpcError::Token)?;
        Ok(Self(Some(value)))
    }

    /// `msg` as a request carrying the token.
    pub fn request<T>(&self, msg: T) -> Request<T> {
        let mut request = Request::new(msg);
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        request
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_host_port_or_urls_with_a_port() {
        for ok in ["127.0.0.1:50051", "backend.local:80", "http://backend.local:80", "[::1]:9"] {
            let a = GrpcAddr::parse(ok).expect(ok);
            assert_eq!(a.as_str(), ok, "kept as given");
        }
        for bad in ["", "backend", "http://backend", "host:port", "http://:80", "a b:1"] {
            assert!(GrpcAddr::parse(bad).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn addresses_deserialize_through_validation() {
        let a: GrpcAddr = serde_json::from_str("\"127.0.0.1:1\"").expect("valid");
        assert_eq!(serde_json::to_string(&a).expect("json"), "\"127.0.0.1:1\"");
        assert!(serde_json::from_str::<GrpcAddr>("\"nope\"").is_err());
    }

    #[test]
    fn tokens_become_headers_or_errors() {
        let r = Bearer::new("s3cret").expect("ascii").request(());
        assert_eq!(r.metadata().get("authorization").expect("set"), "Bearer s3cret");
        assert!(Bearer::new("").expect("none").request(()).metadata().is_empty());
        assert_eq!(Bearer::new("schlüssel").err(), Some(GrpcError::Token));
        assert_eq!(Bearer::new("a\nb").err(), Some(GrpcError::Token));
    }
}
