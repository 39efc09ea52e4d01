//! The keys that verify handshake tokens: HMAC secrets (`auth.jwt.secret`, `secrets`), public
//! keys from PEM files (`public_key`, `public_keys`) and the JWKS cache, selected by the token's
//! `kid` and by the family of its `alg` (a slot may hold an HMAC secret and a public key; an
//! RSA key never verifies an HS256 signature, so algorithm confusion is impossible).
//!
//! Owns: loading the static keys at start and choosing a key for a token. Must never log a
//! secret.

use std::{collections::HashMap, path::PathBuf, sync::Arc};

use jsonwebtoken::{DecodingKey, errors::Error as JwtError};

pub use jsonwebtoken::AlgorithmFamily as Family;

use super::jwks::Jwks;
use crate::config::JwtConfig;

/// Why the configured keys cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("no key to verify tokens: set auth.jwt.secret, secrets, public_key(s) or jwks.url")]
    NoKeys,
    #[error("cannot read {key} ({path}): {source}")]
    Read {
        key: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{key} ({path}) is not a PEM public key of an algorithm in auth.jwt.algorithms: {source}"
    )]
    Parse {
        key: String,
        path: PathBuf,
        #[source]
        source: JwtError,
    },
}

/// The keys of one `kid` (or of tokens without one): at most one per family.
type Slot = Vec<Arc<DecodingKey>>;

/// Every key a node verifies tokens with.
pub struct Keys {
    default: Slot,
    by_kid: HashMap<String, Slot>,
    jwks: Option<Arc<Jwks>>,
}

impl Keys {
    /// The static keys of `config`, with `secret` as the HMAC secret of tokens without a `kid`.
    pub fn load(
        config: &JwtConfig,
        secret: &[u8],
        jwks: Option<Arc<Jwks>>,
    ) -> Result<Self, KeyError> {
        let families = families(config);
        let mut default: Slot =
            DecodingKey::from_secret(secret).ok().map(Arc::new).into_iter().collect();
        if let Some(path) = &config.public_key {
            default.push(Arc::new(read_pem("auth.jwt.public_key", path, &families)?));
        }
        let mut by_kid: HashMap<String, Slot> = HashMap::new();
        for (kid, s) in &config.secrets {
            if let Ok(key) = DecodingKey::from_secret(s.as_bytes()) {
                by_kid.entry(kid.clone()).or_default().push(Arc::new(key));
            }
        }
        for (kid, path) in &config.public_keys {
            let key = read_pem(&format!("auth.jwt.public_keys.{kid}"), path, &families)?;
            by_kid.entry(kid.clone()).or_default().push(Arc::new(key));
        }
        if default.is_empty() && by_kid.is_empty() && jwks.is_none() {
            return Err(KeyError::NoKeys);
        }
        Ok(Self { default, by_kid, jwks })
    }

    /// The key for a token with `kid` signed with an algorithm of `family`: a static key first,
    /// then the JWKS (an unknown `kid` asks it to fetch again soon).
    pub fn find(&self, kid: Option<&str>, family: Family) -> Option<Arc<DecodingKey>> {
        let slot = match kid {
            Some(kid) => self.by_kid.get(kid),
            None => Some(&self.default),
        };
        let found = slot.and_then(|s| s.iter().find(|k| k.family() == family));
        found.cloned().or_else(|| self.jwks.as_ref()?.find(kid.unwrap_or_default(), family))
    }
}

/// The families of the configured algorithms.
fn families(config: &JwtConfig) -> Vec<Family> {
    let mut out: Vec<Family> = Vec::new();
    for a in &config.algorithms {
        let f = super::algorithm(*a).family();
        if !out.contains(&f) {
            out.push(f);
        }
    }
    out
}

/// A PEM public key of one of `families`.
fn read_pem(key: &str, path: &PathBuf, families: &[Family]) -> Result<DecodingKey, KeyError> {
    let pem = std::fs::read(path).map_err(|source| KeyError::Read {
        key: key.into(),
        path: path.clone(),
        source,
    })?;
    let mut last = JwtError::from(jsonwebtoken::errors::ErrorKind::InvalidKeyFormat);
    for family in families {
        let parsed = match family {
            Family::Rsa => DecodingKey::from_rsa_pem(&pem),
            Family::Ec => DecodingKey::from_ec_pem(&pem),
            Family::Ed => DecodingKey::from_ed_pem(&pem),
            Family::Hmac => continue,
        };
        match parsed {
            Ok(k) => return Ok(k),
            Err(e) => last = e,
        }
    }
    Err(KeyError::Parse { key: key.into(), path: path.clone(), source: last })
}
