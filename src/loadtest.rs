//! The load generator behind `wsgw loadtest`: many real WebSocket clients against one or more
//! nodes, driving the scenarios of SPEC §7 and measuring what clients see.
//!
//! Owns: the simulated clients ([`client`]), the push/broadcast/churn drivers ([`drivers`]) and
//! the measurements ([`stats`]). Every run is bounded in count and time and stops by itself.
//! Latency is measured end to end: each message's key carries its send time (nanoseconds since
//! the run started), so no per-message state is kept. Must never be linked into the serving
//! path; it only uses the public protocol and gRPC contracts, like any client.

mod client;
mod drivers;
mod stats;
pub mod verify;

use std::{net::IpAddr, sync::Arc, time::Duration};

use tokio::time::Instant;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use stats::{Report, Stats, cpu_seconds, rss_of};

use crate::{
    auth::{self, Identity, TokenSpec},
    protocol::Serializer,
};

/// How simulated users get their tokens.
#[derive(Clone, Debug)]
pub enum Tokens {
    /// Mint one per user with this secret.
    Secret(String),
    /// Use this one token for every connection.
    Fixed(String),
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Plan {
    /// WebSocket URLs, used round-robin (`ws://host:port/`).
    pub urls: Vec<String>,
    pub connections: usize,
    /// New connections per second while ramping up.
    pub ramp: f64,
    pub tokens: Tokens,
    pub biz_id: i64,
    /// Connection i is user `first_user + i`.
    pub first_user: i64,
    /// Local addresses to connect from, round-robin (each gives ~28k ports).
    pub sources: Vec<IpAddr>,
    pub serializer: Serializer,
    /// How long to measure after the ramp (an upper bound in count mode).
    pub duration: Duration,
    /// Upstream messages per second per connection (0: none).
    pub upstream_rate: f64,
    /// Upstream messages per connection; when set, the run ends once all are answered.
    pub upstream_count: Option<u64>,
    pub body_size: usize,
    /// Pushes through the gRPC PushService.
    pub push: Option<PushPlan>,
    /// Broadcasts through the gRPC PushService.
    pub broadcast: Option<BroadcastPlan>,
    /// Extra connections opened and closed per second during the measurement.
    pub churn_rate: f64,
    /// A server process whose RSS to report.
    pub server_pid: Option<u32>,
}

/// The push scenario: pushes to the simulated users, round-robin.
#[derive(Clone, Debug)]
pub struct PushPlan {
    pub addr: String,
    pub token: Option<String>,
    /// Pushes per second in total.
    pub rate: f64,
    /// Pushes in total; when set, the run ends once all are delivered (or failed).
    pub count: Option<u64>,
}

/// The broadcast scenario: one message to every connection, `count` times.
#[derive(Clone, Debug)]
pub struct BroadcastPlan {
    pub addr: String,
    pub token: Option<String>,
    pub count: u64,
    /// Pause between broadcasts (0: back to back, for sustained fan-out).
    pub interval: Duration,
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum LoadtestError {
    #[error("no URL to connect to")]
    NoUrl,
    #[error("cannot mint tokens: {0}")]
    Token(#[from] jsonwebtoken::errors::Error),
}

/// Runs `plan` to completion; `stats` can be watched meanwhile (progress display).
pub async fn run(plan: Plan, stats: Arc<Stats>) -> Result<Report, LoadtestError> {
    if plan.urls.is_empty() {
        return Err(LoadtestError::NoUrl);
    }
    let plan = Arc::new(plan);
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    let rss_before = plan.server_pid.and_then(stats::rss_of);

    ramp_up(&plan, &stats, &tasks, &stop).await?;
    let rss_after_ramp = plan.server_pid.and_then(stats::rss_of);
    stats.begin_measurement();
    let measured = Instant::now();

    let drivers = TaskTracker::new();
    if let Some(push) = &plan.push {
        drivers.spawn(drivers::push(plan.clone(), push.clone(), stats.clone(), stop.clone()));
    }
    if let Some(b) = &plan.broadcast {
        drivers.spawn(drivers::broadcast(plan.clone(), b.clone(), stats.clone(), stop.clone()));
    }
    if plan.churn_rate > 0.0 {
        drivers.spawn(drivers::churn(plan.clone(), stats.clone(), stop.clone()));
    }
    let deadline = measured + plan.duration;
    loop {
        if stats.finished(&plan) || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = measured.elapsed();
    let rss_end = plan.server_pid.and_then(stats::rss_of);
    stop.cancel();
    drivers.close();
    drivers.wait().await;
    tasks.close();
    tasks.wait().await;
    Ok(stats.report(&plan, elapsed, [rss_before, rss_after_ramp, rss_end]))
}

/// Opens the connections at the ramp rate; each client then runs until `stop`.
async fn ramp_up(
    plan: &Arc<Plan>,
    stats: &Arc<Stats>,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) -> Result<(), LoadtestError> {
    let started = Instant::now();
    let per_connection = Duration::from_secs_f64(1.0 / plan.ramp.max(1.0));
    for i in 0..plan.connections {
        let token = token_for(plan, plan.first_user + i as i64)?;
        let target = client::Target::new(plan, i, token);
        tasks.spawn(client::run(target, plan.clone(), stats.clone(), stop.clone()));
        tokio::time::sleep_until(started + per_connection * (i as u32 + 1)).await;
    }
    // Wait (bounded) for the handshakes to finish.
    let deadline = Instant::now() + Duration::from_secs(30);
    while stats.settled() < plan.connections && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stats.ramp_took(started.elapsed());
    Ok(())
}

pub(crate) fn token_for(plan: &Plan, user_id: i64) -> Result<String, LoadtestError> {
    match &plan.tokens {
        Tokens::Fixed(t) => Ok(t.clone()),
        Tokens::Secret(secret) => {
            let spec = TokenSpec::hs256(
                Identity { biz_id: plan.biz_id, user_id },
                Duration::from_secs(24 * 3600),
            );
            Ok(auth::mint(&spec, secret.as_bytes())?)
        }
    }
}
