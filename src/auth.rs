//! Client authentication: verifying the handshake JWT and minting tokens (for `wsgw token`).
//!
//! Owns: the claims contract of SPEC §3 (`user_id`, `biz_id` positive integers, as JSON numbers
//! or numeric strings; `exp` required unless `require_exp` is off, and at most `max_lifetime`
//! away; `nbf` honoured; `iss`/`aud` when configured) and the short, client-safe reason for
//! each failure. Must never log or return the secret or the token.

mod bearer;
mod jwks;
mod keys;

pub use bearer::{BearerAuth, Credential};
pub use jwks::{Jwks, JwksError, JwksSource, keep_fresh};
pub use keys::KeyError;

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use jsonwebtoken::{Algorithm, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Deserializer, Serialize, de};

use crate::config::{JwtAlgorithm, JwtConfig};

/// Who a connection belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    pub biz_id: i64,
    pub user_id: i64,
}

/// Why a token was refused. `Display` is the one-line reason sent to the client.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing token")]
    Missing,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token lifetime exceeds the allowed maximum")]
    TooLong,
    #[error("invalid token issuer")]
    Issuer,
    #[error("invalid token audience")]
    Audience,
    #[error("invalid token claims: {0}")]
    Claims(&'static str),
    #[error("invalid token")]
    Invalid,
}

impl AuthError {
    /// The handshake-outcome label for metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Missing => "missing_token",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::Issuer | Self::Audience | Self::Claims(_) | Self::TooLong => "bad_claims",
            Self::Invalid => "bad_token",
        }
    }
}

/// Verifies handshake tokens against one configuration.
pub struct TokenVerifier {
    keys: keys::Keys,
    /// The checks of a token, per key family: only that family's configured algorithms.
    validations: Vec<(keys::Family, Validation)>,
    leeway: u64,
    /// Longest accepted distance from now to `exp`, in seconds (none: no limit).
    max_lifetime: Option<u64>,
}

/// A verified token: whom it is for, and until when (`exp`, Unix seconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verified {
    pub identity: Identity,
    pub expires: Option<u64>,
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default, deserialize_with = "id")]
    user_id: Option<i64>,
    #[serde(default, deserialize_with = "id")]
    biz_id: Option<i64>,
    #[serde(default)]
    exp: Option<f64>,
}

impl TokenVerifier {
    /// A verifier with `secret` for tokens without a `kid` and the keys of `config`.
    pub fn new(config: &JwtConfig, secret: &[u8]) -> Result<Self, KeyError> {
        Self::with_jwks(config, secret, None)
    }

    /// Like [`new`](Self::new), with the keys of a JWKS cache as well.
    pub fn with_jwks(
        config: &JwtConfig,
        secret: &[u8],
        jwks: Option<Arc<Jwks>>,
    ) -> Result<Self, KeyError> {
        let mut base = Validation::new(Algorithm::HS256);
        base.required_spec_claims.clear();
        if config.require_exp {
            base.required_spec_claims.insert("exp".into());
        }
        base.validate_nbf = true;
        base.leeway = config.leeway.as_secs();
        if let Some(iss) = &config.issuer {
            base.set_issuer(&[iss]);
            base.required_spec_claims.insert("iss".into());
        }
        match &config.audience {
            Some(aud) => {
                base.set_audience(&[aud]);
                base.required_spec_claims.insert("aud".into());
            }
            None => base.validate_aud = false,
        }
        let mut validations: Vec<(keys::Family, Validation)> = Vec::new();
        for alg in config.algorithms.iter().copied().map(algorithm) {
            match validations.iter_mut().find(|(f, _)| *f == alg.family()) {
                Some((_, v)) => v.algorithms.push(alg),
                None => {
                    let mut v = base.clone();
                    v.algorithms = vec![alg];
                    validations.push((alg.family(), v));
                }
            }
        }
        let keys = keys::Keys::load(config, secret, jwks)?;
        let max_lifetime =
            (!config.max_lifetime.is_zero()).then_some(config.max_lifetime.as_secs());
        Ok(Self { keys, validations, leeway: base.leeway, max_lifetime })
    }

    /// Checks `token` (an optional `Bearer ` prefix is tolerated) and returns who it is for.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        self.verify_token(token).map(|v| v.identity)
    }

    /// Like [`verify`](Self::verify), with the token's expiry.
    pub fn verify_token(&self, token: &str) -> Result<Verified, AuthError> {
        let token = strip_bearer(token);
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Invalid)?;
        let family = header.alg.family();
        let (_, validation) =
            self.validations.iter().find(|(f, _)| *f == family).ok_or(AuthError::Invalid)?;
        let key = self.keys.find(header.kid.as_deref(), family).ok_or(AuthError::Invalid)?;
        let data = jsonwebtoken::decode::<Claims>(token, &key, validation).map_err(|e| match e
            .kind()
        {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            ErrorKind::MissingRequiredClaim(c) if c == "exp" => {
                AuthError::Claims("exp is required")
            }
            ErrorKind::InvalidIssuer => AuthError::Issuer,
            ErrorKind::InvalidAudience => AuthError::Audience,
            ErrorKind::MissingRequiredClaim(c) if c == "iss" => AuthError::Issuer,
            ErrorKind::MissingRequiredClaim(c) if c == "aud" => AuthError::Audience,
            ErrorKind::Json(_) => AuthError::Claims("user_id and biz_id must be positive integers"),
            _ => AuthError::Invalid,
        })?;
        let user_id = data.claims.user_id.ok_or(AuthError::Claims("user_id is required"))?;
        let biz_id = data.claims.biz_id.ok_or(AuthError::Claims("biz_id is required"))?;
        let expires = data.claims.exp.map(|e| e.max(0.0) as u64);
        if let (Some(exp), Some(max)) = (expires, self.max_lifetime)
            && exp > now_secs() + max + self.leeway
        {
            return Err(AuthError::TooLong);
        }
        Ok(Verified { identity: Identity { biz_id, user_id }, expires })
    }
}

/// Removes a case-insensitive `Bearer ` prefix.
pub fn strip_bearer(token: &str) -> &str {
    let token = token.trim();
    match token.get(..6) {
        Some(p) if p.eq_ignore_ascii_case("bearer") && token[6..].starts_with([' ', '\t']) => {
            token[6..].trim_start()
        }
        Some(p) if p.eq_ignore_ascii_case("bearer") && token.len() == 6 => "",
        _ => token,
    }
}

fn algorithm(a: JwtAlgorithm) -> Algorithm {
    match a {
        JwtAlgorithm::HS256 => Algorithm::HS256,
        JwtAlgorithm::HS384 => Algorithm::HS384,
        JwtAlgorithm::HS512 => Algorithm::HS512,
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::RS384 => Algorithm::RS384,
        JwtAlgorithm::RS512 => Algorithm::RS512,
        JwtAlgorithm::PS256 => Algorithm::PS256,
        JwtAlgorithm::PS384 => Algorithm::PS384,
        JwtAlgorithm::PS512 => Algorithm::PS512,
        JwtAlgorithm::ES256 => Algorithm::ES256,
        JwtAlgorithm::ES384 => Algorithm::ES384,
        JwtAlgorithm::EdDSA => Algorithm::EdDSA,
    }
}

/// A positive id given as a JSON number (integral) or a numeric string.
fn id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(i64),
        Float(f64),
        Text(String),
    }
    let n = match Raw::deserialize(d)? {
        Raw::Int(n) => Some(n),
        Raw::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Some(f as i64),
        Raw::Text(s) => s.trim().parse::<i64>().ok(),
        Raw::Float(_) => None,
    };
    match n {
        Some(n) if n > 0 => Ok(Some(n)),
        _ => Err(de::Error::custom("not a positive integer")),
    }
}

/// What to put in a minted token.
#[derive(Clone, Debug)]
pub struct TokenSpec {
    pub identity: Identity,
    pub ttl: Duration,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub algorithm: JwtAlgorithm,
    /// The `kid` header: which of the node's `auth.jwt.secrets` signs it.
    pub kid: Option<String>,
}

impl TokenSpec {
    /// An HS256 token for `identity`, valid for `ttl`, without issuer, audience or kid.
    pub fn hs256(identity: Identity, ttl: Duration) -> Self {
        let algorithm = JwtAlgorithm::HS256;
        Self { identity, ttl, issuer: None, audience: None, algorithm, kid: None }
    }
}

#[derive(Serialize)]
struct MintClaims<'a> {
    user_id: i64,
    biz_id: i64,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

/// Seconds since the Unix epoch.
fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// Signs a token the gateway accepts.
pub fn mint(spec: &TokenSpec, secret: &[u8]) -> Result<String, jsonwebtoken::errors::Error> {
    let key = EncodingKey::from_secret(secret)?;
    let now = now_secs();
    let claims = MintClaims {
        user_id: spec.identity.user_id,
        biz_id: spec.identity.biz_id,
        iat: now,
        exp: now + spec.ttl.as_secs(),
        iss: spec.issuer.as_deref(),
        aud: spec.audience.as_deref(),
    };
    let mut header = Header::new(algorithm(spec.algorithm));
    header.kid = spec.kid.clone();
    jsonwebtoken::encode(&header, &claims, &key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &[u8] = b"test-secret";

    fn sign(claims: serde_json::Value, alg: Algorithm, secret: &[u8]) -> String {
        let key = EncodingKey::from_secret(secret).expect("non-empty secret");
        jsonwebtoken::encode(&Header::new(alg), &claims, &key).expect("sign")
    }

    /// An `exp` an hour from now.
    fn soon() -> u64 {
        now_secs() + 3600
    }

    fn verifier(f: impl FnOnce(&mut JwtConfig)) -> TokenVerifier {
        let mut c = JwtConfig::default();
        f(&mut c);
        TokenVerifier::new(&c, SECRET).expect("non-empty secret")
    }

    #[test]
    fn accepts_numbers_numeric_strings_all_hmac_and_bearer_prefix() {
        let v = verifier(|_| {});
        let want = Identity { biz_id: 9999, user_id: 42 };
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            let t = sign(json!({"user_id": 42, "biz_id": 9999, "exp": soon()}), alg, SECRET);
            assert_eq!(v.verify(&t), Ok(want));
            assert_eq!(v.verify(&format!("Bearer {t}")), Ok(want));
        }
        let claims = json!({"user_id": "42", "biz_id": 9999.0, "exp": soon()});
        let t = sign(claims, Algorithm::HS256, SECRET);
        assert_eq!(v.verify(&t), Ok(want));
    }

    #[test]
    fn refuses_with_a_reason() {
        let v = verifier(|_| {});
        let ok = json!({"user_id": 1, "biz_id": 2, "exp": soon()});
        assert_eq!(v.verify(""), Err(AuthError::Missing));
        assert_eq!(v.verify("Bearer "), Err(AuthError::Missing));
        assert_eq!(v.verify("not.a.jwt"), Err(AuthError::Invalid));
        assert_eq!(
            v.verify(&sign(ok.clone(), Algorithm::HS256, b"other")),
            Err(AuthError::Invalid)
        );
        let expired = json!({"user_id": 1, "biz_id": 2, "exp": 1_000_000});
        assert_eq!(v.verify(&sign(expired, Algorithm::HS256, SECRET)), Err(AuthError::Expired));
        for bad in [
            json!({"biz_id": 2, "exp": soon()}),
            json!({"user_id": 1, "exp": soon()}),
            json!({"user_id": 0, "biz_id": 2, "exp": soon()}),
            json!({"user_id": -5, "biz_id": 2, "exp": soon()}),
            json!({"user_id": "x", "biz_id": 2, "exp": soon()}),
            json!({"user_id": 1.5, "biz_id": 2, "exp": soon()}),
        ] {
            let got = v.verify(&sign(bad.clone(), Algorithm::HS256, SECRET));
            assert!(matches!(got, Err(AuthError::Claims(_))), "{bad}: {got:?}");
        }
    }

    #[test]
    fn algorithms_issuer_and_audience_are_enforced_when_configured() {
        let v = verifier(|c| {
            c.algorithms = vec![JwtAlgorithm::HS512];
            c.issuer = Some("im".into());
            c.audience = Some("gw".into());
        });
        let good = json!({"user_id": 1, "biz_id": 2, "iss": "im", "aud": "gw", "exp": soon()});
        assert!(v.verify(&sign(good.clone(), Algorithm::HS512, SECRET)).is_ok());
        assert_eq!(v.verify(&sign(good, Algorithm::HS256, SECRET)), Err(AuthError::Invalid));
        let no_iss = json!({"user_id": 1, "biz_id": 2, "aud": "gw", "exp": soon()});
        assert_eq!(v.verify(&sign(no_iss, Algorithm::HS512, SECRET)), Err(AuthError::Issuer));
        let bad_aud = json!({"user_id": 1, "biz_id": 2, "iss": "im", "aud": "x", "exp": soon()});
        assert_eq!(v.verify(&sign(bad_aud, Algorithm::HS512, SECRET)), Err(AuthError::Audience));
    }

    #[test]
    fn exp_is_required_bounded_and_nbf_honoured() {
        let v = verifier(|c| c.leeway = Duration::ZERO);
        let sign256 = |c: serde_json::Value| sign(c, Algorithm::HS256, SECRET);
        let no_exp = json!({"user_id": 1, "biz_id": 2});
        assert_eq!(v.verify(&sign256(no_exp.clone())), Err(AuthError::Claims("exp is required")));
        let lenient = verifier(|c| c.require_exp = false);
        assert_eq!(lenient.verify_token(&sign256(no_exp)).map(|v| v.expires), Ok(None));
        let year = json!({"user_id": 1, "biz_id": 2, "exp": now_secs() + 365 * 86400});
        assert_eq!(v.verify(&sign256(year.clone())), Err(AuthError::TooLong));
        let unbounded = verifier(|c| c.max_lifetime = Duration::ZERO);
        assert!(unbounded.verify(&sign256(year)).is_ok(), "0s: no limit");
        let later = json!({"user_id": 1, "biz_id": 2, "exp": soon(), "nbf": now_secs() + 600});
        assert_eq!(v.verify(&sign256(later)), Err(AuthError::NotYetValid));
        let exp = soon();
        let fine = json!({"user_id": 1, "biz_id": 2, "exp": exp, "nbf": now_secs() - 1});
        assert_eq!(v.verify_token(&sign256(fine)).map(|v| v.expires), Ok(Some(exp)));
    }

    #[test]
    fn a_kid_selects_its_secret_for_rotation() {
        let (old, new) =
            (b"old-secret-0123456789abcdef012345", b"new-secret-0123456789abcdef012345");
        let v = verifier(|c| {
            c.secrets.insert("2026-11".into(), String::from_utf8_lossy(old).into());
            c.secrets.insert("2026-12".into(), String::from_utf8_lossy(new).into());
        });
        let signed = |kid: Option<&str>, secret: &[u8]| {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = kid.map(str::to_owned);
            let claims = json!({"user_id": 1, "biz_id": 2, "exp": soon()});
            let key = EncodingKey::from_secret(secret).expect("key");
            jsonwebtoken::encode(&header, &claims, &key).expect("sign")
        };
        let want = Ok(Identity { biz_id: 2, user_id: 1 });
        assert_eq!(v.verify(&signed(Some("2026-11"), old)), want);
        assert_eq!(v.verify(&signed(Some("2026-12"), new)), want);
        assert_eq!(v.verify(&signed(Some("2026-12"), old)), Err(AuthError::Invalid));
        assert_eq!(v.verify(&signed(Some("2025-01"), old)), Err(AuthError::Invalid), "unknown kid");
        assert_eq!(v.verify(&signed(None, SECRET)), Ok(Identity { biz_id: 2, user_id: 1 }));
        let only_kids = TokenVerifier::new(
            &JwtConfig {
                secrets: [("k".to_owned(), "s".repeat(32))].into_iter().collect(),
                ..JwtConfig::default()
            },
            b"",
        )
        .expect("kids alone are enough");
        assert_eq!(only_kids.verify(&signed(None, SECRET)), Err(AuthError::Invalid), "no kid");
    }

    #[test]
    fn an_empty_secret_is_refused() {
        let none = TokenVerifier::new(&JwtConfig::default(), b"");
        assert!(matches!(none, Err(KeyError::NoKeys)));
    }

    #[test]
    fn minted_tokens_verify() {
        let spec = TokenSpec {
            identity: Identity { biz_id: 9999, user_id: 42 },
            ttl: Duration::from_secs(60),
            issuer: Some("im".into()),
            audience: None,
            algorithm: JwtAlgorithm::HS384,
            kid: None,
        };
        let token = mint(&spec, SECRET).expect("mint");
        let v = verifier(|c| c.issuer = Some("im".into()));
        assert_eq!(v.verify(&token), Ok(spec.identity));
    }
}
