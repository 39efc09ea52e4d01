//! A JWKS cache: an identity provider's signing keys (`auth.jwt.jwks.url`), fetched when the
//! node starts, every `refresh`, and early — at most every `min_refresh` — when a token names a
//! `kid` the cache does not know (the provider rotated its keys). A failed fetch keeps the last
//! good keys; keys whose type or algorithm this node cannot use are skipped, not fatal.
//!
//! Owns: the HTTPS fetch and the key map. Must never block a handshake: a lookup only reads the
//! map, and a miss only wakes the refresher (that token is refused; the client's retry after
//! the fetch succeeds).

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use jsonwebtoken::{
    DecodingKey,
    jwk::{Jwk, PublicKeyUse},
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::keys::Family;
use crate::{config::JwksConfig, telemetry::Metrics};

/// Largest JWKS document accepted.
const MAX_BYTES: usize = 1 << 20;

/// Why a fetch failed (the previous keys stay).
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("cannot read the JWKS CA file {0}: {1}")]
    Ca(String, String),
    #[error("JWKS request failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("JWKS answered {0}")]
    Status(reqwest::StatusCode),
    #[error("JWKS document larger than {MAX_BYTES} bytes")]
    TooLarge,
    #[error("JWKS document is not a JSON object with a keys array")]
    NotJwks,
}

type KeyMap = HashMap<String, Vec<Arc<DecodingKey>>>;

/// The keys of the last good fetch, by `kid` ("" for keys without one).
#[derive(Default)]
pub struct Jwks {
    keys: RwLock<Arc<KeyMap>>,
    wanted: Notify,
}

impl Jwks {
    /// The key for `kid` of `family`; a miss asks the refresher for an early fetch.
    pub fn find(&self, kid: &str, family: Family) -> Option<Arc<DecodingKey>> {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner()).clone();
        let found = keys.get(kid).and_then(|s| s.iter().find(|k| k.family() == family)).cloned();
        if found.is_none() {
            self.wanted.notify_one();
        }
        found
    }

    /// Replaces the keys with the usable ones of `document`; returns how many there are.
    fn replace(&self, document: &serde_json::Value) -> Result<usize, JwksError> {
        let entries = document.get("keys").and_then(|k| k.as_array()).ok_or(JwksError::NotJwks)?;
        let mut map = KeyMap::new();
        let mut count = 0;
        for entry in entries {
            let Ok(jwk) = serde_json::from_value::<Jwk>(entry.clone()) else { continue };
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                continue;
            }
            let Ok(key) = DecodingKey::from_jwk(&jwk) else { continue };
            let kid = jwk.common.key_id.clone().unwrap_or_default();
            map.entry(kid).or_default().push(Arc::new(key));
            count += 1;
        }
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(map);
        Ok(count)
    }
}

/// Where the keys come from: the URL and an HTTPS client (the configured CA, or the system's).
pub struct JwksSource {
    client: reqwest::Client,
    config: JwksConfig,
}

impl JwksSource {
    pub fn new(config: &JwksConfig) -> Result<Self, JwksError> {
        // reqwest is built without a crypto provider: use ring, like the rest of the node.
        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder().timeout(config.timeout);
        if let Some(path) = &config.ca {
            let shown = path.display().to_string();
            let pem =
                std::fs::read(path).map_err(|e| JwksError::Ca(shown.clone(), e.to_string()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| JwksError::Ca(shown, e.to_string()))?;
            builder = builder.add_root_certificate(cert);
        }
        Ok(Self { client: builder.build()?, config: config.clone() })
    }

    async fn fetch(&self) -> Result<serde_json::Value, JwksError> {
        let mut resp = self.client.get(&self.config.url).send().await?;
        if !resp.status().is_success() {
            return Err(JwksError::Status(resp.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await? {
            if body.len() + chunk.len() > MAX_BYTES {
                return Err(JwksError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|_| JwksError::NotJwks)
    }
}

/// Keeps `jwks` fresh until `stop`: a fetch now, then every `refresh` (every `min_refresh`
/// while fetches fail), and early — not before `min_refresh` has passed — when a token named
/// an unknown `kid`.
pub async fn keep_fresh(
    jwks: Arc<Jwks>,
    source: JwksSource,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let (refresh, min) = (source.config.refresh, source.config.min_refresh);
    loop {
        let result = match source.fetch().await {
            Ok(document) => jwks.replace(&document),
            Err(e) => Err(e),
        };
        metrics.jwks_refresh(result.is_ok());
        let next = match result {
            Ok(keys) => {
                info!(keys, url = %source.config.url, "JWKS loaded");
                refresh
            }
            Err(e) => {
                warn!(error = %e, url = %source.config.url, "JWKS fetch failed; keeping the last keys");
                min
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(next) => {}
            _ = jwks.wanted.notified() => {
                // a burst of unknown kids: one fetch, not before `min` has passed
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(min.max(Duration::from_millis(100))) => {}
                }
            }
        }
    }
}
