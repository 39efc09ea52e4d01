//! `wsgw loadtest`: drive a node or cluster with many real WebSocket clients and report
//! throughput, latency percentiles and errors.
//!
//! Exit codes: 0 all connections opened and no errors; 1 some connections failed or errors
//! were answered; 2 bad arguments or no connection at all.

use crate::{exit, secrets};
use std::{
    io::IsTerminal, net::IpAddr, path::PathBuf, process::ExitCode, sync::Arc, time::Duration,
};

use anyhow::{Context as _, bail};
use clap::ValueEnum;
use indicatif::{ProgressBar, ProgressStyle};
use wsgw::{
    config,
    loadtest::{self, BroadcastPlan, Plan, PushPlan, Report, Stats, Tokens, verify::VerifyPlan},
    protocol::Serializer,
};

/// Drive nodes with many real WebSocket clients; report throughput, latency and errors.
///
/// Scenarios (combine with repeated --scenario or commas):
///   idle       hold the connections; with --server-pid, report the server's RSS per connection
///   upstream   each client sends UPSTREAM_MESSAGE at --rate per second (or --messages in all)
///              and measures the time to its UPSTREAM_ACK
///   push       pushes through the node's PushService (--push-addr) to the simulated users at
///              --push-rate per second (or --pushes in all); clients ack them; measures
///              push → client latency
///   broadcast  --broadcasts messages to every connection of --biz through PushService
///              Broadcast; measures each delivery and the fan-out time (last recipient)
///   churn      opens and closes extra connections at --churn-rate per second
///   verify     (alone) users that reconnect with back-off and follow REDIRECT; keyed pushes
///              at --push-rate through every --push-addr in turn and, with --kafka-brokers,
///              half through --kafka-topic; accounts for every key (accepted, delivered,
///              duplicates, lost) and exits 1 when an accepted push never arrived (--settle);
///              with --upstream-rate, users also send upstream messages (resent until acked)
///
/// The run ramps up the connections, measures for --duration (or until every counted message
/// is answered), and stops by itself. Latency is end to end: each key carries its send time.
/// Pin it to another core than the server (taskset -c 1 wsgw loadtest ...).
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// WebSocket URL(s) of the node(s), used round-robin.
    #[arg(long = "url", default_value = "ws://127.0.0.1:9002/")]
    urls: Vec<String>,
    /// Connections to open (each one a distinct user).
    #[arg(short = 'n', long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    connections: u64,
    /// New connections per second while ramping up.
    #[arg(long, default_value_t = 2000.0)]
    ramp: f64,
    /// Mint tokens with this secret (default: the --config / WSGW_AUTH__JWT__SECRET secret).
    #[arg(long, conflicts_with = "token_file")]
    secret: Option<String>,
    /// Read the secret to mint tokens with from this file.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["token_file", "secret"])]
    secret_file: Option<PathBuf>,
    /// Node config to take the JWT secret from.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Use the token in this file for every connection.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Business id of the simulated users.
    #[arg(long, default_value_t = 9999)]
    biz: i64,
    /// User id of the first connection; connection i is user first_user + i.
    #[arg(long, default_value_t = 1)]
    first_user: i64,
    /// Local source addresses to spread connections over (127.0.0.2,127.0.0.3,...).
    #[arg(long, value_delimiter = ',')]
    source: Vec<IpAddr>,
    /// The node's serializer.
    #[arg(long, value_enum, default_value = "json")]
    serializer: SerializerArg,
    /// Scenarios to run.
    #[arg(long = "scenario", value_enum, value_delimiter = ',', default_value = "idle")]
    scenarios: Vec<Scenario>,
    /// How long to measure after the ramp-up (an upper bound when counts are given).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// upstream: messages per second per connection.
    #[arg(long, default_value_t = 1.0)]
    rate: f64,
    /// upstream: messages per connection; the run ends when all are answered.
    #[arg(long)]
    messages: Option<u64>,
    /// Body size of upstream, push and broadcast messages, in bytes.
    #[arg(long, default_value_t = 64)]
    body_size: usize,
    /// push/broadcast: the node's gRPC address (verify: the nodes', comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:9004")]
    push_addr: Vec<String>,
    /// push/broadcast/verify: the backend token (server.grpc.tokens.backend; else
    /// WSGW_SERVER__GRPC__TOKEN).
    #[arg(long, env = "WSGW_SERVER__GRPC__TOKENS__BACKEND", hide_env_values = true)]
    push_token: Option<String>,
    /// Read the backend token from this file.
    #[arg(long, value_name = "FILE")]
    push_token_file: Option<PathBuf>,
    /// push: pushes per second in total.
    #[arg(long, default_value_t = 1000.0)]
    push_rate: f64,
    /// push: pushes in total; the run ends when all are delivered or failed.
    #[arg(long)]
    pushes: Option<u64>,
    /// broadcast: how many broadcasts.
    #[arg(long, default_value_t = 10)]
    broadcasts: u64,
    /// broadcast: pause between broadcasts (each first waits for its fan-out); 0 = back to back.
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    broadcast_interval: Duration,
    /// churn: connect/close cycles per second.
    #[arg(long, default_value_t = 100.0)]
    churn_rate: f64,
    /// verify: Kafka bootstrap servers; half of the pushes go through the push topic.
    #[arg(long)]
    kafka_brokers: Option<String>,
    /// verify: the push topic.
    #[arg(long, default_value = "push_message_event")]
    kafka_topic: String,
    /// verify: how long to wait after the last push for every accepted one to arrive.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// verify: upstream messages per second per user (0: none); each user resends its message,
    /// same key, after an error or a reconnect until it is acknowledged.
    #[arg(long, default_value_t = 0.0)]
    upstream_rate: f64,
    /// verify: users who drop their connection and reconnect, per second in total (0: none).
    #[arg(long, default_value_t = 0.0)]
    reconnect_rate: f64,
    /// verify: write the keys of the acknowledged upstream messages to this file, one per line.
    #[arg(long)]
    upstream_keys: Option<PathBuf>,
    /// Report this server process's RSS (idle memory per connection).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Idle,
    Upstream,
    Push,
    Broadcast,
    Churn,
    Verify,
}

#[derive(Clone, Copy, ValueEnum)]
enum SerializerArg {
    Json,
    Proto,
}

/// Longest measurement accepted, so that a run always ends.
const MAX_DURATION: Duration = Duration::from_secs(3600);

pub fn run(mut args: Args) -> anyhow::Result<ExitCode> {
    if args.duration > MAX_DURATION {
        bail!("--duration is at most 1h");
    }
    let token = secrets::token(args.push_token.as_deref(), args.push_token_file.as_ref())?;
    args.push_token = (!token.is_empty()).then_some(token);
    if let Some(path) = &args.secret_file {
        args.secret = Some(secrets::read(None, Some(path))?);
    }
    let plan = plan(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    if args.scenarios.contains(&Scenario::Verify) {
        return verify(&args, plan, &runtime);
    }
    let stats = Arc::new(Stats::new());
    let progress = progress_bar();
    let report = runtime.block_on(async {
        let ticker =
            tokio::spawn(show_progress(progress.clone(), stats.clone(), plan.connections as u64));
        let report = loadtest::run(plan, stats.clone()).await;
        ticker.abort();
        report
    })?;
    progress.finish_and_clear();
    println!("{report}");
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report).context("cannot encode the report")?;
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(exit_code(&report))
}

/// The verifying run: a JSON report on stdout (and in --json), exit 1 when a push was lost.
fn verify(args: &Args, plan: Plan, runtime: &tokio::runtime::Runtime) -> anyhow::Result<ExitCode> {
    if args.scenarios.len() > 1 {
        bail!("--scenario verify runs alone");
    }
    let v = VerifyPlan {
        push_addrs: args.push_addr.clone(),
        token: args.push_token.clone(),
        rate: args.push_rate,
        kafka: args.kafka_brokers.clone(),
        topic: args.kafka_topic.clone(),
        settle: args.settle,
        upstream_rate: args.upstream_rate,
        reconnect_rate: args.reconnect_rate,
    };
    let report = runtime.block_on(loadtest::verify::run(plan, v))?;
    let text = serde_json::to_string_pretty(&report).context("cannot encode the report")?;
    println!("{text}");
    if let Some(path) = &args.json {
        std::fs::write(path, &text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.upstream_keys {
        let keys: String = report.upstream_acked_keys.iter().map(|k| format!("{k}\n")).collect();
        std::fs::write(path, keys).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(exit::yes_or_no(report.lost == 0))
}

fn exit_code(report: &Report) -> ExitCode {
    let c = &report.connections;
    if c.opened == 0 {
        return exit::failed();
    }
    let errors =
        report.upstream.errors.values().sum::<u64>() + report.push.errors.values().sum::<u64>();
    exit::yes_or_no(c.opened >= c.target && errors == 0)
}

fn plan(args: &Args) -> anyhow::Result<Plan> {
    let has = |s| args.scenarios.contains(&s);
    let tokens = match (&args.token_file, &args.secret) {
        (Some(path), _) => Tokens::Fixed(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?
                .trim()
                .to_owned(),
        ),
        (None, Some(secret)) => Tokens::Secret(secret.clone()),
        (None, None) => {
            let secret = config::load_from_env(args.config.as_deref())
                .context("cannot load the configuration")?
                .auth
                .jwt
                .secret;
            if secret.is_empty() {
                bail!("no secret: pass --secret, --config or --token-file");
            }
            Tokens::Secret(secret)
        }
    };
    let api = |rate: f64| (rate > 0.0).then_some(rate);
    Ok(Plan {
        urls: args.urls.clone(),
        connections: args.connections as usize,
        ramp: args.ramp,
        tokens,
        biz_id: args.biz,
        first_user: args.first_user,
        sources: args.source.clone(),
        serializer: match args.serializer {
            SerializerArg::Json => Serializer::Json,
            SerializerArg::Proto => Serializer::Proto,
        },
        duration: args.duration,
        upstream_rate: if has(Scenario::Upstream) { args.rate } else { 0.0 },
        upstream_count: args.messages.filter(|_| has(Scenario::Upstream)),
        body_size: args.body_size,
        push: has(Scenario::Push).then(|| PushPlan {
            addr: args.push_addr.first().cloned().unwrap_or_default(),
            token: args.push_token.clone(),
            rate: api(args.push_rate).unwrap_or(1.0),
            count: args.pushes,
        }),
        broadcast: has(Scenario::Broadcast).then(|| BroadcastPlan {
            addr: args.push_addr.first().cloned().unwrap_or_default(),
            token: args.push_token.clone(),
            count: args.broadcasts,
            interval: args.broadcast_interval,
        }),
        churn_rate: if has(Scenario::Churn) { args.churn_rate } else { 0.0 },
        server_pid: args.server_pid,
    })
}

/// A one-line live display on a terminal; nothing when stderr is not one.
fn progress_bar() -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} {elapsed} {msg}") {
        bar.set_style(style);
    }
    bar
}

async fn show_progress(bar: ProgressBar, stats: Arc<Stats>, target: u64) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut last = (0u64, 0u64, 0u64);
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    loop {
        ticker.tick().await;
        let now = (
            stats.up_acked.load(Relaxed),
            stats.push_received.load(Relaxed),
            stats.broadcast_received.load(Relaxed),
        );
        bar.set_message(format!(
            "conns {}/{target} (closed {}) | acks {}/s | pushes {}/s | broadcast deliveries {}/s",
            stats.opened.load(Relaxed),
            stats.closed.load(Relaxed),
            (now.0 - last.0) * 2,
            (now.1 - last.1) * 2,
            (now.2 - last.2) * 2,
        ));
        bar.tick();
        last = now;
    }
}
