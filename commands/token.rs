//! `wsgw token`: mint a JWT that a node accepts (for development, tests and load tests).

use crate::secrets;
use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context as _, bail};
use wsgw::{
    auth::{self, Identity, TokenSpec},
    config::{self, JwtAlgorithm},
};

/// Print a JWT for a user that a node with the same secret accepts.
#[derive(clap::Args)]
pub struct Args {
    /// User id (claim `user_id`).
    #[arg(long)]
    user: i64,
    /// Business id (claim `biz_id`).
    #[arg(long)]
    biz: i64,
    /// Lifetime of the token ("1h", "30m", ...).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// HMAC secret; defaults to the node's `auth.jwt.secret` from --config or WSGW_AUTH__JWT__SECRET.
    #[arg(long, conflicts_with = "config")]
    secret: Option<String>,
    /// Read the HMAC secret from this file.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["config", "secret"])]
    secret_file: Option<PathBuf>,
    /// Take secret, issuer, audience and algorithm from this node config.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Claim `iss` (default: the config's auth.jwt.issuer).
    #[arg(long)]
    issuer: Option<String>,
    /// Claim `aud` (default: the config's auth.jwt.audience).
    #[arg(long)]
    audience: Option<String>,
    /// Sign with the config's `auth.jwt.secrets` entry of this kid (or with --secret), and name
    /// it in the token's header.
    #[arg(long)]
    kid: Option<String>,
    /// HMAC algorithm (default: the first HMAC one of the config's auth.jwt.algorithms).
    /// Public-key tokens come from the identity provider that holds the private key.
    #[arg(long, value_parser = parse_alg)]
    alg: Option<JwtAlgorithm>,
}

fn parse_alg(s: &str) -> Result<JwtAlgorithm, String> {
    match s.to_ascii_uppercase().as_str() {
        "HS256" => Ok(JwtAlgorithm::HS256),
        "HS384" => Ok(JwtAlgorithm::HS384),
        "HS512" => Ok(JwtAlgorithm::HS512),
        _ => Err("expected HS256, HS384 or HS512".into()),
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.user <= 0 || args.biz <= 0 {
        bail!("--user and --biz must be positive integers");
    }
    let jwt = config::load_from_env(args.config.as_deref())
        .context("cannot load the configuration")?
        .auth
        .jwt;
    let configured = match &args.kid {
        Some(kid) => jwt.secrets.get(kid).cloned().unwrap_or_default(),
        None => jwt.secret,
    };
    let secret = match &args.secret_file {
        Some(path) => secrets::read(None, Some(path))?,
        None => args.secret.unwrap_or(configured),
    };
    if secret.is_empty() {
        bail!(
            "no secret: pass --secret (a node without one prints its ephemeral secret at start) or --config"
        );
    }
    let spec = TokenSpec {
        identity: Identity { biz_id: args.biz, user_id: args.user },
        ttl: args.ttl,
        issuer: args.issuer.or(jwt.issuer),
        audience: args.audience.or(jwt.audience),
        algorithm: args
            .alg
            .or(jwt.algorithms.iter().copied().find(|a| a.is_hmac()))
            .unwrap_or(JwtAlgorithm::HS256),
        kid: args.kid,
    };
    let token = auth::mint(&spec, secret.as_bytes()).context("cannot sign the token")?;
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}
