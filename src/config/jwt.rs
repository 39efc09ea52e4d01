//! The `auth.jwt` section: which tokens a node accepts. HMAC secrets (the original's tokens),
//! public keys from PEM files, and a JWKS document fetched from a URL, each selected by the
//! token's `kid` header; the claims rules (`exp`, lifetime, `iss`, `aud`).

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct JwtConfig {
    /// HMAC secret (raw UTF-8 bytes) of tokens without a `kid`. Empty (and no other key): an
    /// ephemeral secret is generated at start (dev only).
    pub secret: String,
    /// Further HMAC secrets, selected by the token's `kid` header: key rotation (`kid` → secret).
    pub secrets: BTreeMap<String, String>,
    /// A public key (PEM: RSA, EC P-256/P-384 or Ed25519) for tokens without a `kid`.
    pub public_key: Option<PathBuf>,
    /// Public keys selected by the token's `kid` (`kid` → PEM file).
    pub public_keys: BTreeMap<String, PathBuf>,
    /// Public keys from an identity provider's JWKS document.
    pub jwks: JwksConfig,
    /// Accepted signature algorithms. A key verifies only the algorithms of its own family
    /// (an RSA key never checks an HMAC signature).
    pub algorithms: Vec<JwtAlgorithm>,
    /// Required `iss` claim, when set.
    pub issuer: Option<String>,
    /// Required `aud` claim, when set.
    pub audience: Option<String>,
    /// Clock skew tolerated when checking `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// Tokens without `exp` are refused (off: accepted, as the original did).
    pub require_exp: bool,
    /// Tokens valid for longer than this from now are refused; 0s: no limit.
    #[serde(with = "humantime_serde")]
    pub max_lifetime: Duration,
    /// A connection is closed (4001 "token expired") when its token's `exp` passes.
    pub close_on_expiry: bool,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            secret: String::new(),
            secrets: BTreeMap::new(),
            public_key: None,
            public_keys: BTreeMap::new(),
            jwks: JwksConfig::default(),
            algorithms: vec![JwtAlgorithm::HS256, JwtAlgorithm::HS384, JwtAlgorithm::HS512],
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(30),
            require_exp: true,
            max_lifetime: Duration::from_secs(7 * 24 * 3600),
            close_on_expiry: true,
        }
    }
}

impl JwtConfig {
    /// Whether any HMAC secret is configured.
    pub fn has_secret(&self) -> bool {
        !self.secret.is_empty() || !self.secrets.is_empty()
    }

    /// Whether any key is configured: a secret, a public key or a JWKS URL (else the node uses
    /// an ephemeral secret, on loopback only).
    pub fn has_keys(&self) -> bool {
        self.has_secret()
            || self.public_key.is_some()
            || !self.public_keys.is_empty()
            || self.jwks.is_enabled()
    }
}

/// `auth.jwt.jwks`: an identity provider's signing keys, fetched over HTTPS and kept fresh.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct JwksConfig {
    /// `https://idp.example.com/.well-known/jwks.json`; empty: off. `http://` only to loopback.
    pub url: String,
    /// Fetched again this often (a key the provider adds is known within this time).
    #[serde(with = "humantime_serde")]
    pub refresh: Duration,
    /// A token with an unknown `kid` triggers an early fetch, at most this often.
    #[serde(with = "humantime_serde")]
    pub min_refresh: Duration,
    /// Deadline of one fetch.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// PEM file of the CA that signs the JWKS server's certificate (empty: the system's roots).
    pub ca: Option<PathBuf>,
}

impl Default for JwksConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            refresh: Duration::from_secs(300),
            min_refresh: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
            ca: None,
        }
    }
}

impl JwksConfig {
    pub fn is_enabled(&self) -> bool {
        !self.url.is_empty()
    }
}

/// Signature algorithms: the original's HMAC ones, and public-key ones (RFC 7518, RFC 8037).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub enum JwtAlgorithm {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl JwtAlgorithm {
    /// HS256/384/512: signed with a shared secret.
    pub fn is_hmac(self) -> bool {
        matches!(self, Self::HS256 | Self::HS384 | Self::HS512)
    }
}
