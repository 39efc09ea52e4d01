//! `wsgw serve`: run a gateway node.
//!
//! Signals: the first SIGTERM or SIGINT drains the node gracefully (exit 0 when done); a second
//! one exits at once (exit 130).

use crate::exit;
use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};
use wsgw::{
    config::{self, ConfigError, LogFormat},
    node::Node,
    telemetry,
};

/// Run a gateway node (embedded defaults when no config is given).
#[derive(clap::Args)]
pub struct Args {
    /// YAML config file; every key can be overridden by WSGW_<KEY__PATH> variables.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Validate the configuration and exit (0 valid, 2 invalid).
    #[arg(long)]
    check: bool,
}

pub fn run(args: Args, log_format: Option<LogFormat>) -> anyhow::Result<ExitCode> {
    let config = match config::load_from_env(args.config.as_deref()) {
        Ok(config) => config,
        Err(e @ ConfigError::Invalid(_)) => {
            eprintln!("{e}");
            return Ok(exit::failed());
        }
        Err(e) => return Err(e.into()),
    };
    if args.check {
        println!("configuration is valid");
        return Ok(ExitCode::SUCCESS);
    }
    telemetry::logging::init(&config.log.level, log_format.unwrap_or(config.log.format));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let served = runtime.block_on(async move {
        let node = Node::bind(config).await.context("cannot start the node")?;
        if let Some(secret) = node.ephemeral_secret() {
            announce_ephemeral_secret(secret);
        }
        let (first_signal, signalled) = tokio::sync::oneshot::channel();
        let watcher = tokio::spawn(watch_signals(first_signal));
        node.run(async {
            let _ = signalled.await;
        })
        .await;
        watcher.abort();
        Ok(ExitCode::SUCCESS)
    });
    // Every task was stopped and awaited by `run`; a blocking call stuck in a library (a
    // Kafka client waiting on a broker) must not keep the process alive after it.
    runtime.shutdown_timeout(Duration::from_secs(5));
    served
}

/// Waits for the first signal (→ drain), then for a second (→ exit at once).
async fn watch_signals(drain: tokio::sync::oneshot::Sender<()>) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let name = tokio::select! { _ = term.recv() => "SIGTERM", _ = int.recv() => "SIGINT" };
    info!(signal = name, "shutting down gracefully; send another signal to exit at once");
    let _ = drain.send(());
    let name = tokio::select! { _ = term.recv() => "SIGTERM", _ = int.recv() => "SIGINT" };
    warn!(signal = name, "second signal: exiting now");
    std::process::exit(130);
}

fn announce_ephemeral_secret(secret: &str) {
    let exe = std::env::args().next().unwrap_or_else(|| "wsgw".into());
    warn!("no auth.jwt.secret configured: using an EPHEMERAL secret, for development only");
    warn!("tokens stop working when this node restarts; set WSGW_AUTH__JWT__SECRET in production");
    warn!("mint a token with: {exe} token --user 42 --biz 9999 --secret {secret}");
}
