//! The verifying mode of `wsgw loadtest` (scenario `verify`), which the fault harness
//! (`scripts/chaos.sh`) runs while it injects faults.
//!
//! Clients behave like a well-written app: each simulated user reconnects with jittered
//! exponential back-off (100 ms to 2 s) to the next node when its connection ends, follows a
//! REDIRECT to the first node it lists, and acknowledges every push. Meanwhile keyed pushes go to
//! the users at a steady rate, alternately through `PushService.Push` (trying the next node when
//! one fails) and, with Kafka brokers given, through the push topic. Every key is accounted for:
//! *accepted* (the gRPC call answered OK, or the broker acknowledged the record), *refused*
//! (every node answered an error: never accepted, so never owed), *uncertain* (a call timed out:
//! it may or may not have been accepted), and on the clients' side delivered and duplicates.
//! Lost = accepted and never delivered within the settle time; any loss fails the run.
//!
//! Owns: nothing of the gateway; it uses only the public WebSocket, gRPC and Kafka contracts.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use base64::Engine as _;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;
use tokio::{net::TcpStream, sync::Semaphore, time::Instant};
use tokio_tungstenite::{WebSocketStream, tungstenite::Message as WsMessage};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::transport::Channel;

use super::{LoadtestError, Plan, client, token_for};
use crate::protocol::{
    CommandType, Message,
    pb::{NodeList, PushMessage, PushRequest, push_service_client::PushServiceClient},
};

/// The producing side of a verifying run.
#[derive(Clone, Debug)]
pub struct VerifyPlan {
    /// gRPC addresses of the nodes (`host:port`), tried in turn.
    pub push_addrs: Vec<String>,
    pub token: Option<String>,
    /// Pushes per second in total.
    pub rate: f64,
    /// Kafka bootstrap servers; half of the pushes go through the topic when set.
    pub kafka: Option<String>,
    pub topic: String,
    /// How long to wait after the last push for every accepted one to arrive.
    pub settle: Duration,
    /// Upstream messages per second per user (0: none). Each user has one message in flight
    /// and resends it, same key, after an error or a reconnect until its UPSTREAM_ACK.
    pub upstream_rate: f64,
    /// Users who drop their connection (and reconnect like after any other loss) per second,
    /// in total (0: none); each connection lives an exponentially distributed time.
    pub reconnect_rate: f64,
}

/// What a verifying run found. `lost` must be 0.
#[derive(Debug, Default, Serialize)]
pub struct VerifyReport {
    pub accepted_grpc: u64,
    pub accepted_kafka: u64,
    pub refused: u64,
    pub uncertain: u64,
    pub delivered: u64,
    pub duplicates: u64,
    pub lost: u64,
    /// Up to ten lost keys.
    pub lost_keys: Vec<String>,
    pub connects: u64,
    pub redirects: u64,
    /// Longest time without an accepted push while pushing, per path (how long producers of
    /// that path were refused or held up).
    pub max_gap_grpc_ms: u64,
    pub max_gap_kafka_ms: u64,
    /// From the last push until every accepted push had arrived (or the settle time ran out).
    pub settled_ms: u64,
    /// Upstream: distinct keys sent, acknowledged, sends of a key already sent (after an error
    /// or a reconnect), and errors / rate limits received.
    pub upstream_sent: u64,
    pub upstream_acked: u64,
    pub upstream_resent: u64,
    pub upstream_errors: u64,
    /// The keys of the acknowledged upstream messages (not in the JSON report).
    #[serde(skip)]
    pub upstream_acked_keys: Vec<String>,
}

/// Every key's fate.
#[derive(Default)]
struct Ledger {
    accepted: Mutex<HashMap<String, bool>>,
    seen: Mutex<HashMap<String, u32>>,
    refused: AtomicU64,
    uncertain: AtomicU64,
    connects: AtomicU64,
    redirects: AtomicU64,
    /// Per path (gRPC, Kafka): the last acceptance and the longest gap between two.
    gaps: Mutex<[(Option<Instant>, Duration); 2]>,
    up_sent: AtomicU64,
    up_acked: Mutex<Vec<String>>,
    up_resent: AtomicU64,
    up_errors: AtomicU64,
}

impl Ledger {
    fn accept(&self, key: String, kafka: bool) {
        lock(&self.accepted).insert(key, kafka);
        let mut gaps = lock(&self.gaps);
        let gap = &mut gaps[usize::from(kafka)];
        let now = Instant::now();
        if let Some(last) = gap.0 {
            gap.1 = gap.1.max(now - last);
        }
        gap.0 = Some(now);
    }

    fn lost(&self) -> Vec<String> {
        // `accepted` before `seen`, in the same order as `report`.
        let accepted = lock(&self.accepted);
        let seen = lock(&self.seen);
        accepted.keys().filter(|k| !seen.contains_key(*k)).cloned().collect()
    }

    fn report(&self, settled: Duration) -> VerifyReport {
        let accepted = lock(&self.accepted);
        let seen = lock(&self.seen);
        let kafka = accepted.values().filter(|k| **k).count() as u64;
        let mut lost_keys: Vec<String> =
            accepted.keys().filter(|k| !seen.contains_key(*k)).cloned().collect();
        lost_keys.sort();
        let delivered = accepted.keys().filter(|k| seen.contains_key(*k)).count() as u64;
        let duplicates =
            accepted.keys().filter_map(|k| seen.get(k)).map(|n| u64::from(n - 1)).sum();
        let [grpc_gap, kafka_gap] = lock(&self.gaps).map(|(_, gap)| gap.as_millis() as u64);
        let acked_keys = lock(&self.up_acked).clone();
        VerifyReport {
            accepted_grpc: accepted.len() as u64 - kafka,
            accepted_kafka: kafka,
            refused: self.refused.load(Ordering::Relaxed),
            uncertain: self.uncertain.load(Ordering::Relaxed),
            delivered,
            duplicates,
            lost: lost_keys.len() as u64,
            lost_keys: lost_keys.into_iter().take(10).collect(),
            connects: self.connects.load(Ordering::Relaxed),
            redirects: self.redirects.load(Ordering::Relaxed),
            max_gap_grpc_ms: grpc_gap,
            max_gap_kafka_ms: kafka_gap,
            settled_ms: settled.as_millis() as u64,
            upstream_sent: self.up_sent.load(Ordering::Relaxed),
            upstream_acked: acked_keys.len() as u64,
            upstream_resent: self.up_resent.load(Ordering::Relaxed),
            upstream_errors: self.up_errors.load(Ordering::Relaxed),
            upstream_acked_keys: acked_keys,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs the users and the pushes for `plan.duration`, then waits for the accepted pushes.
pub async fn run(plan: Plan, v: VerifyPlan) -> Result<VerifyReport, LoadtestError> {
    if plan.urls.is_empty() || v.push_addrs.is_empty() {
        return Err(LoadtestError::NoUrl);
    }
    let (plan, v) = (Arc::new(plan), Arc::new(v));
    let ledger = Arc::new(Ledger::default());
    let stop = CancellationToken::new();
    let users = TaskTracker::new();
    for i in 0..plan.connections {
        let token = token_for(&plan, plan.first_user + i as i64)?;
        let up = (v.upstream_rate > 0.0).then(|| Duration::from_secs_f64(1.0 / v.upstream_rate));
        let life = (v.reconnect_rate > 0.0)
            .then(|| Duration::from_secs_f64(plan.connections as f64 / v.reconnect_rate));
        let behaviour = Behaviour { upstream: up, mean_life: life };
        users.spawn(user(i, token, plan.clone(), behaviour, ledger.clone(), stop.clone()));
        tokio::time::sleep(Duration::from_secs_f64(1.0 / plan.ramp.max(1.0))).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while ledger.connects.load(Ordering::Relaxed) < plan.connections as u64
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    push(&plan, &v, &ledger).await;
    let pushed = Instant::now();
    while !ledger.lost().is_empty() && pushed.elapsed() < v.settle {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let settled = pushed.elapsed();
    stop.cancel();
    users.close();
    users.wait().await;
    Ok(ledger.report(settled))
}

/// One simulated user, connected (again and again) until `stop`.
async fn user(
    index: usize,
    token: String,
    plan: Arc<Plan>,
    behaviour: Behaviour,
    ledger: Arc<Ledger>,
    stop: CancellationToken,
) {
    let Behaviour { upstream, mean_life } = behaviour;
    let (mut next, mut backoff, mut redirect) = (index, Duration::from_millis(100), None);
    let id = plan.first_user + index as i64;
    let mut up = Upstream { every: upstream, user: id, sent: 0, pending: None };
    while !stop.is_cancelled() {
        let url = redirect.take().unwrap_or_else(|| {
            next += 1;
            plan.urls[next % plan.urls.len()].clone()
        });
        let target = client::Target { url, source: None, token: token.clone() };
        let began = Instant::now();
        let ws = tokio::select! {
            ws = client::connect(&target) => ws,
            _ = stop.cancelled() => return,
        };
        if let Ok(ws) = ws {
            ledger.connects.fetch_add(1, Ordering::Relaxed);
            // An exponentially distributed lifetime, when users churn.
            let life = mean_life.map(|m| m.mul_f64(-(1.0 - rand::random::<f64>()).ln()));
            redirect = session(ws, &plan, &mut up, life, &ledger, &stop).await;
            if began.elapsed() > Duration::from_secs(2) {
                backoff = Duration::from_millis(100);
            }
        }
        let pause = backoff.mul_f64(0.5 + rand::random::<f64>() / 2.0);
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Acknowledges and records pushes until the connection ends; returns where a REDIRECT said to
/// go.
async fn session(
    mut ws: WebSocketStream<TcpStream>,
    plan: &Plan,
    up: &mut Upstream,
    life: Option<Duration>,
    ledger: &Ledger,
    stop: &CancellationToken,
) -> Option<String> {
    let mut redirect = None;
    let ends = tokio::time::sleep(life.unwrap_or(Duration::from_secs(86_400 * 365)));
    tokio::pin!(ends);
    let period = up.every.unwrap_or(Duration::from_secs(3600));
    let mut tick =
        tokio::time::interval_at(Instant::now() + period.mul_f64(rand::random()), period);
    loop {
        let frame = tokio::select! {
            frame = ws.next() => frame,
            _ = &mut ends => {
                let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
                return None;
            }
            _ = tick.tick(), if up.every.is_some() => {
                let msg = up.next(ledger);
                if ws.send(WsMessage::Binary(plan.serializer.encode(&msg))).await.is_err() {
                    return redirect;
                }
                continue;
            }
            _ = stop.cancelled() => {
                let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
                return None;
            }
        };
        let bytes = match frame {
            Some(Ok(WsMessage::Binary(b))) => b,
            Some(Ok(WsMessage::Text(t))) => Bytes::from(t.as_str().to_owned()),
            Some(Ok(WsMessage::Close(_))) | Some(Err(_)) | None => return redirect,
            Some(Ok(_)) => continue,
        };
        let Ok(msg) = plan.serializer.decode::<Message>(&bytes) else { continue };
        match CommandType::try_from(msg.cmd) {
            Ok(CommandType::DownstreamMessage) => {
                *lock(&ledger.seen).entry(msg.key.clone()).or_default() += 1;
                let cmd = CommandType::DownstreamAck.into();
                let ack = Message { cmd, key: msg.key, body: Bytes::new() };
                let _ = ws.send(WsMessage::Binary(plan.serializer.encode(&ack))).await;
            }
            Ok(CommandType::UpstreamAck) => up.acked(&msg.key, ledger),
            Ok(CommandType::Error | CommandType::RateLimitExceeded) => {
                ledger.up_errors.fetch_add(1, Ordering::Relaxed);
            }
            Ok(CommandType::Redirect) => {
                ledger.redirects.fetch_add(1, Ordering::Relaxed);
                let nodes = plan.serializer.decode::<NodeList>(&msg.body).ok();
                redirect = nodes
                    .and_then(|l| l.nodes.into_iter().next())
                    .map(|n| format!("ws://{}:{}/", n.ip, n.port));
            }
            _ => {}
        }
    }
}

/// How a simulated user behaves besides acknowledging pushes.
#[derive(Clone, Copy)]
struct Behaviour {
    /// Send an upstream message this often.
    upstream: Option<Duration>,
    /// Drop the connection after this long on average.
    mean_life: Option<Duration>,
}

/// One user's upstream messages: at most one in flight, resent with its key until acknowledged.
struct Upstream {
    every: Option<Duration>,
    user: i64,
    sent: u64,
    pending: Option<String>,
}

impl Upstream {
    /// The message to send now: the unacknowledged one again, or a new one.
    fn next(&mut self, ledger: &Ledger) -> Message {
        let key = match &self.pending {
            Some(key) => {
                ledger.up_resent.fetch_add(1, Ordering::Relaxed);
                key.clone()
            }
            None => {
                self.sent += 1;
                ledger.up_sent.fetch_add(1, Ordering::Relaxed);
                let key = format!("u{}-{}", self.user, self.sent);
                self.pending = Some(key.clone());
                key
            }
        };
        let cmd = CommandType::UpstreamMessage.into();
        Message { cmd, key, body: Bytes::from_static(b"verify") }
    }

    fn acked(&mut self, key: &str, ledger: &Ledger) {
        if self.pending.as_deref() == Some(key) {
            self.pending = None;
            lock(&ledger.up_acked).push(key.to_owned());
        }
    }
}

/// Pushes at `v.rate` for `plan.duration`, then waits for the calls in flight.
async fn push(plan: &Arc<Plan>, v: &Arc<VerifyPlan>, ledger: &Arc<Ledger>) {
    let clients: Vec<PushServiceClient<Channel>> = v
        .push_addrs
        .iter()
        .filter_map(|a| tonic::transport::Endpoint::from_shared(format!("http://{a}")).ok())
        .map(|e| PushServiceClient::new(e.connect_timeout(Duration::from_secs(1)).connect_lazy()))
        .collect();
    let producer: Option<FutureProducer> = v.kafka.as_ref().and_then(|brokers| {
        rdkafka::ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("message.timeout.ms", "60000")
            .set("log_level", "3")
            .create()
            .ok()
    });
    let (clients, run) = (Arc::new(clients), rand::random::<u32>());
    // One window per path, so that a stalled broker never holds up the gRPC pushes.
    let gates = [Arc::new(Semaphore::new(256)), Arc::new(Semaphore::new(256))];
    let calls = TaskTracker::new();
    let started = Instant::now();
    let mut sent = 0u64;
    let mut ticker = tokio::time::interval(Duration::from_millis(5));
    while started.elapsed() < plan.duration {
        ticker.tick().await;
        let due = (started.elapsed().as_secs_f64() * v.rate) as u64;
        // A driver that falls behind (its in-flight windows full) ends on time, short of the
        // planned count, instead of pushing its backlog after the run.
        while sent < due && started.elapsed() < plan.duration {
            let kafka = producer.is_some() && sent % 2 == 1;
            let Ok(permit) = gates[usize::from(kafka)].clone().acquire_owned().await else { break };
            let msg = PushMessage {
                key: format!("v{run:08x}-{sent}"),
                biz_id: plan.biz_id,
                receiver_id: plan.first_user + (sent % plan.connections.max(1) as u64) as i64,
                body: Bytes::from(vec![b'x'; plan.body_size]),
            };
            let ledger = ledger.clone();
            match (&producer, kafka) {
                (Some(p), true) => {
                    let (p, topic) = (p.clone(), v.topic.clone());
                    calls.spawn(async move {
                        via_kafka(&p, &topic, msg, &ledger).await;
                        drop(permit);
                    });
                }
                _ => {
                    let (clients, token, first) = (clients.clone(), v.token.clone(), sent as usize);
                    calls.spawn(async move {
                        via_grpc(&clients, first, token, msg, &ledger).await;
                        drop(permit);
                    });
                }
            }
            sent += 1;
        }
    }
    calls.close();
    calls.wait().await;
}

/// One push through `PushService.Push`, trying each node once from `first`.
async fn via_grpc(
    clients: &[PushServiceClient<Channel>],
    first: usize,
    token: Option<String>,
    msg: PushMessage,
    ledger: &Ledger,
) {
    let mut timed_out = false;
    for i in 0..clients.len() {
        let mut client = clients[(first + i) % clients.len()].clone();
        let request = super::drivers::with_token(PushRequest { msg: Some(msg.clone()) }, &token);
        match tokio::time::timeout(Duration::from_secs(3), client.push(request)).await {
            Ok(Ok(_)) => return ledger.accept(msg.key, false),
            Ok(Err(_)) => {}
            Err(_) => timed_out = true,
        }
    }
    let outcome = if timed_out { &ledger.uncertain } else { &ledger.refused };
    outcome.fetch_add(1, Ordering::Relaxed);
}

/// One push through the push topic (the original gateway's JSON).
async fn via_kafka(producer: &FutureProducer, topic: &str, msg: PushMessage, ledger: &Ledger) {
    let json = serde_json::json!({
        "key": msg.key, "biz_id": msg.biz_id, "receiver_id": msg.receiver_id,
        "body": base64::engine::general_purpose::STANDARD.encode(&msg.body),
    })
    .to_string();
    let record = FutureRecord::to(topic).key(&msg.key).payload(&json);
    match producer.send(record, Duration::from_secs(60)).await {
        Ok(_) => ledger.accept(msg.key, true),
        Err(_) => {
            ledger.uncertain.fetch_add(1, Ordering::Relaxed);
        }
    }
}
