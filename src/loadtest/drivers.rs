//! Drivers that act on the simulated clients from outside: pushes and broadcasts through the
//! gRPC PushService, and connection churn.

use std::{sync::Arc, sync::atomic::Ordering, time::Duration};

use tokio::{sync::Semaphore, time::Instant};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::{Request, transport::Channel};

use super::{BroadcastPlan, Plan, PushPlan, Stats, client, token_for};
use crate::protocol::pb::{
    BroadcastRequest, PushMessage, PushRequest, push_service_client::PushServiceClient,
};

/// Pushes in flight at once.
const PUSH_CONCURRENCY: usize = 256;

async fn push_client(addr: &str) -> Result<PushServiceClient<Channel>, String> {
    let url = if addr.contains("://") { addr.to_owned() } else { format!("http://{addr}") };
    let endpoint = tonic::transport::Endpoint::from_shared(url).map_err(|e| e.to_string())?;
    let channel = endpoint.connect().await.map_err(|e| format!("push API: {e}"))?;
    Ok(PushServiceClient::new(channel))
}

pub(super) fn with_token<T>(msg: T, token: &Option<String>) -> Request<T> {
    let mut request = Request::new(msg);
    if let Some(value) = token.as_ref().and_then(|t| format!("Bearer {t}").parse().ok()) {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// Pushes to the simulated users round-robin at `plan.rate` per second.
pub(super) async fn push(
    plan: Arc<Plan>,
    push: PushPlan,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
    let client = match push_client(&push.addr).await {
        Ok(c) => c,
        Err(e) => return stats.push_failed(e),
    };
    let gate = Arc::new(Semaphore::new(PUSH_CONCURRENCY));
    let calls = TaskTracker::new();
    let started = Instant::now();
    let users = plan.connections.max(1) as u64;
    let mut sent = 0u64;
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let due = (started.elapsed().as_secs_f64() * push.rate) as u64;
        let due = push.count.map_or(due, |c| due.min(c));
        while sent < due {
            let Ok(permit) = gate.clone().acquire_owned().await else { break };
            let msg = PushMessage {
                key: stats.key('p', sent),
                biz_id: plan.biz_id,
                receiver_id: plan.first_user + (sent % users) as i64,
                body: vec![b'x'; plan.body_size].into(),
            };
            sent += 1;
            stats.push_sent.fetch_add(1, Ordering::Relaxed);
            let (mut client, stats, token) = (client.clone(), stats.clone(), push.token.clone());
            calls.spawn(async move {
                if let Err(status) =
                    client.push(with_token(PushRequest { msg: Some(msg) }, &token)).await
                {
                    stats.push_failed(format!("{:?}", status.code()));
                }
                drop(permit);
            });
        }
        if push.count.is_some_and(|c| sent >= c) {
            break;
        }
    }
    calls.close();
    calls.wait().await;
}

/// Sends `plan.count` broadcasts; with an interval, each waits for its fan-out to complete.
pub(super) async fn broadcast(
    plan: Arc<Plan>,
    b: BroadcastPlan,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
    let mut client = match push_client(&b.addr).await {
        Ok(c) => c,
        Err(e) => return stats.push_failed(e),
    };
    for seq in 0..b.count {
        if stop.is_cancelled() {
            return;
        }
        let before = stats.broadcast_received.load(Ordering::Relaxed);
        let msg = BroadcastRequest {
            biz_id: plan.biz_id,
            key: stats.key('b', seq),
            body: vec![b'x'; plan.body_size].into(),
        };
        stats.broadcast_sent.fetch_add(1, Ordering::Relaxed);
        match client.broadcast(with_token(msg, &b.token)).await {
            Ok(_) if !b.interval.is_zero() => {
                let expected = before + stats.opened.load(Ordering::Relaxed);
                let deadline = Instant::now() + Duration::from_secs(10);
                while stats.broadcast_received.load(Ordering::Relaxed) < expected
                    && Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                tokio::select! {
                    _ = tokio::time::sleep(b.interval) => {}
                    _ = stop.cancelled() => return,
                }
            }
            Ok(_) => {}
            Err(status) => stats.push_failed(format!("broadcast {:?}", status.code())),
        }
    }
}

/// Opens (a full authenticated handshake) and closes extra connections at `plan.churn_rate`
/// per second.
pub(super) async fn churn(plan: Arc<Plan>, stats: Arc<Stats>, stop: CancellationToken) {
    let cycles = TaskTracker::new();
    let gate = Arc::new(Semaphore::new(256));
    let period = Duration::from_secs_f64(1.0 / plan.churn_rate);
    let mut ticker = tokio::time::interval(period);
    let mut n = 0usize;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let Ok(permit) = gate.clone().try_acquire_owned() else {
            stats.churn(false);
            continue;
        };
        let user = plan.first_user + (plan.connections + n) as i64;
        n += 1;
        let Ok(token) = token_for(&plan, user) else { continue };
        let target = client::Target::new(&plan, n, token);
        let stats = stats.clone();
        cycles.spawn(async move {
            let ok = match client::connect(&target).await {
                Ok(mut ws) => ws.close(None).await.is_ok(),
                Err(_) => false,
            };
            stats.churn(ok);
            drop(permit);
        });
    }
    cycles.close();
    cycles.wait().await;
}
