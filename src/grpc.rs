//! gRPC client plumbing shared by every caller of another process (backends, peer nodes, the
//! operator commands): a validated address, TLS, and the bearer token.
//!
//! Owns: parsing `host:port` or a URL once (at config load, or where an address arrives from
//! etcd or Redis) into a [`GrpcAddr`], building lazily connected channels — over TLS for
//! `https://` addresses ([`ClientTls`]) — and turning a token into an `authorization` header.
//! Must never import anything from the rest of the crate: it sits below the config.

use std::{
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tonic::{
    Request,
    metadata::{Ascii, MetadataValue},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri},
};

/// Why an address or a token is unusable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GrpcError {
    #[error("{0:?} is not host:port or a URL with a host and a port")]
    Address(String),
    #[error("the token must be printable ASCII without spaces")]
    Token,
    #[error("TLS: {0}")]
    Tls(String),
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

    /// Whether calls go over TLS (an `https://` address).
    pub fn is_tls(&self) -> bool {
        self.uri.scheme_str() == Some("https")
    }

    /// A channel that connects on first use and reconnects by itself.
    pub fn lazy_channel(
        &self,
        connect_timeout: Duration,
        tls: &ClientTls,
    ) -> Result<Channel, GrpcError> {
        Ok(self.endpoint(tls)?.connect_timeout(connect_timeout).tcp_nodelay(true).connect_lazy())
    }

    /// The tonic endpoint (with `tls` for an `https://` address), for callers that set more
    /// options.
    pub fn endpoint(&self, tls: &ClientTls) -> Result<Endpoint, GrpcError> {
        let endpoint = Endpoint::from(self.uri.clone());
        match self.is_tls() {
            false => Ok(endpoint),
            true => {
                let host = self.uri.host().unwrap_or_default().trim_matches(['[', ']']);
                endpoint.tls_config(tls.config(host)).map_err(|e| GrpcError::Tls(e.to_string()))
            }
        }
    }
}

/// Where a gRPC client's TLS files are (PEM): the CA that signs the servers' certificates
/// (none: the system's roots) and the certificate and key the client presents (mutual TLS).
/// Used for `https://` addresses only.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClientTlsFiles {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// A gRPC client's TLS settings, read from [`ClientTlsFiles`].
#[derive(Clone, Debug, Default)]
pub struct ClientTls {
    ca: Option<Certificate>,
    identity: Option<Identity>,
}

impl ClientTls {
    pub fn load(files: &ClientTlsFiles) -> Result<Self, GrpcError> {
        let ca = files.ca.as_deref().map(read).transpose()?.map(Certificate::from_pem);
        let identity = match (&files.cert, &files.key) {
            (Some(cert), Some(key)) => Some(Identity::from_pem(read(cert)?, read(key)?)),
            (None, None) => None,
            _ => return Err(GrpcError::Tls("a client certificate needs both cert and key".into())),
        };
        Ok(Self { ca, identity })
    }

    fn config(&self, host: &str) -> ClientTlsConfig {
        let config = ClientTlsConfig::new().domain_name(host);
        let config = match &self.ca {
            Some(ca) => config.ca_certificate(ca.clone()),
            None => config.with_native_roots(),
        };
        match &self.identity {
            Some(identity) => config.identity(identity.clone()),
            None => config,
        }
    }
}

/// The gRPC port's TLS: its certificate and key (PEM files), and with `client_ca` the CA whose
/// certificates every caller must present (mutual TLS).
pub fn server_tls(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<tonic::transport::ServerTlsConfig, GrpcError> {
    let config = tonic::transport::ServerTlsConfig::new()
        .identity(Identity::from_pem(read(cert)?, read(key)?));
    Ok(match client_ca {
        Some(ca) => config.client_ca_root(Certificate::from_pem(read(ca)?)),
        None => config,
    })
}

/// The contents of a PEM file, or an error naming it.
pub fn read(path: &Path) -> Result<Vec<u8>, GrpcError> {
    std::fs::read(path).map_err(|e| GrpcError::Tls(format!("cannot read {}: {e}", path.display())))
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
