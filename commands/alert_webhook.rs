//! `wsgw alert-webhook`: a Grafana webhook contact point that rebalances overloaded nodes.
//! See `wsgw::admin::webhook` for what it does with each alert; `scripts/grafana/` has the
//! scrape config, dashboard and alert rule that point at it.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context as _, bail};
use tokio_util::sync::CancellationToken;
use tracing::info;
use wsgw::{
    admin::webhook::{self, WebhookConfig},
    http::{self, HttpLimits},
};

use crate::{nodes::TargetArgs, secrets};

/// Grafana contact point: POST /webhook/v1 redirects a share of an alerting node's clients.
#[derive(clap::Args)]
pub struct Args {
    /// Where to listen.
    #[arg(long, default_value = "0.0.0.0:8001")]
    listen: SocketAddr,
    /// Serve HTTPS with this certificate chain (PEM), with --listen-key.
    #[arg(long, value_name = "FILE", requires = "listen_key")]
    listen_cert: Option<PathBuf>,
    /// The private key (PEM) of --listen-cert.
    #[arg(long, value_name = "FILE", requires = "listen_cert")]
    listen_key: Option<PathBuf>,
    /// The node every alert acts on (--addr), or the registry the alerting node is found in.
    #[command(flatten)]
    to: TargetArgs,
    /// Token webhook requests must carry (Authorization: Bearer TOKEN; Grafana's
    /// "Authorization header - Credentials").
    #[arg(long, env = "WSGW_WEBHOOK_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Read the webhook token from this file.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Or basic auth credentials requests must carry, as user:password.
    #[arg(long, env = "WSGW_WEBHOOK_BASIC_AUTH", hide_env_values = true)]
    basic_auth: Option<String>,
    /// Read the basic auth credentials (user:password) from this file.
    #[arg(long, value_name = "FILE")]
    basic_auth_file: Option<PathBuf>,
    /// The nodes' operator token (server.grpc.tokens.operator; else WSGW_SERVER__GRPC__TOKEN).
    #[arg(long, env = "WSGW_SERVER__GRPC__TOKENS__OPERATOR", hide_env_values = true)]
    admin_token: Option<String>,
    /// Read the nodes' operator token from this file.
    #[arg(long, value_name = "FILE")]
    admin_token_file: Option<PathBuf>,
    /// Share of the alerting node's connections to redirect (0 < p ≤ 1).
    #[arg(long, default_value_t = 0.5)]
    percent: f64,
    /// Alert label that names the node (tried after node_id, before instance).
    #[arg(long, default_value = "")]
    label: String,
    /// The same alert is not acted on again within this time.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    cooldown: Duration,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let token = secrets::read(args.token.as_deref(), args.token_file.as_deref())?;
    let basic_auth = secrets::read(args.basic_auth.as_deref(), args.basic_auth_file.as_deref())?;
    let admin_token = secrets::token(args.admin_token.as_deref(), args.admin_token_file.as_ref())?;
    if token.is_empty() && basic_auth.is_empty() {
        bail!("give --token or --basic-auth: the webhook never acts on unauthenticated requests");
    }
    if !(args.percent > 0.0 && args.percent <= 1.0) {
        bail!("--percent must be in (0, 1]");
    }
    tracing_subscriber::fmt().with_env_filter("info").with_writer(std::io::stderr).init();
    let target = args.to.target()?;
    let config = WebhookConfig {
        target,
        admin_token,
        token,
        basic_auth,
        fraction: args.percent,
        label: args.label,
        cooldown: args.cooldown,
        tls: args.to.tls()?,
    };
    let https = match (&args.listen_cert, &args.listen_key) {
        (Some(cert), Some(key)) => Some(https(cert, key)?),
        _ => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let scheme = if https.is_some() { "https" } else { "http" };
        info!(listen = %args.listen, scheme, "alert webhook: POST /webhook/v1");
        let stop = CancellationToken::new();
        let on_signal = stop.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            on_signal.cancel();
        });
        // Acting on an alert calls nodes (up to 10 s each): a minute per request.
        let limits =
            HttpLimits { request_timeout: Duration::from_secs(60), ..HttpLimits::default() };
        let router = webhook::router(config);
        match https {
            Some(tls) => http::serve_tls(listener, router, limits, tls, stop).await,
            None => http::serve(listener, router, limits, stop).await,
        }
        .context("webhook server")
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The TLS acceptor of --listen-cert and --listen-key.
fn https(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let config = wsgw::config::TlsConfig {
        cert: cert.display().to_string(),
        key: key.display().to_string(),
        reload_check: Duration::from_secs(60),
    };
    let tls = wsgw::gateway::Tls::load(&config).context("--listen-cert / --listen-key")?;
    Ok(tls.acceptor())
}
