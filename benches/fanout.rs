//! Side-by-side fan-out benchmark client (and the kernel-floor server), used by
//! `scripts/bench/run.sh` to measure wsgw and peer servers under the same load.
//!
//!   fanout client --url ws://127.0.0.1:8082/sub --conns 10000 --publish http:http://127.0.0.1:8082/pub
//!                 [--server-pid PID[,PID…]] [--token-secret S] [--fanouts 5] [--burst 20]
//!   fanout floor  --port 8083        (a bare one-write()-per-connection broadcast server)
//!
//! Publish kinds: `http:URL` (POST the body: nchan, Node ws, the floor), `pushpin:URL` (GRIP
//! publish JSON), `wsgw:HOST:PORT` (gRPC PushService.Broadcast). The client prints one JSON
//! line: connects/s and the server's CPU per connection set up (from /proc: the connect rate
//! is bounded by this one-core client, the CPU cost is the server's own), RSS per idle
//! connection (server), median fan-out time to every connection, and sustained deliveries/s
//! over a burst of back-to-back messages.

use std::{
    io::{Read, Write},
    net::{TcpListener as StdListener, TcpStream as StdStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage, protocol::WebSocketConfig};
use wsgw::{
    auth::{self, Identity, TokenSpec},
    loadtest::{cpu_seconds, rss_of},
    protocol::{
        Message, Serializer, pb::BroadcastRequest, pb::push_service_client::PushServiceClient,
    },
};

const MAX_MESSAGES: usize = 256;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag =
        |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    match args.get(1).map(String::as_str) {
        Some("floor") => floor(flag("--port").and_then(|p| p.parse().ok()).unwrap_or(8083)),
        Some("client") => {
            let runtime =
                tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
            runtime.block_on(client(Options {
                url: flag("--url").expect("--url"),
                conns: flag("--conns").and_then(|v| v.parse().ok()).unwrap_or(10_000),
                publish: flag("--publish").expect("--publish"),
                server_pids: flag("--server-pid")
                    .map(|v| v.split(',').filter_map(|p| p.trim().parse().ok()).collect())
                    .unwrap_or_default(),
                secret: flag("--token-secret"),
                fanouts: flag("--fanouts").and_then(|v| v.parse().ok()).unwrap_or(5),
                burst: flag("--burst").and_then(|v| v.parse().ok()).unwrap_or(20),
            }));
        }
        // `cargo bench` runs every bench with `--bench`: nothing to do without a mode.
        _ => eprintln!("usage: fanout client ... | fanout floor --port P"),
    }
}

struct Options {
    url: String,
    conns: usize,
    publish: String,
    /// Server processes whose RSS is summed (pushpin and nginx run several).
    server_pids: Vec<u32>,
    secret: Option<String>,
    fanouts: usize,
    burst: usize,
}

/// Per message: deliveries and the latest arrival (µs since the run's start).
struct Arrivals {
    t0: Instant,
    count: Vec<AtomicU64>,
    last: Vec<AtomicU64>,
}

impl Arrivals {
    fn record(&self, seq: usize) {
        if seq < MAX_MESSAGES {
            self.count[seq].fetch_add(1, Ordering::Relaxed);
            self.last[seq].fetch_max(self.t0.elapsed().as_micros() as u64, Ordering::Relaxed);
        }
    }
}

async fn client(o: Options) {
    let arrivals = Arc::new(Arrivals {
        t0: Instant::now(),
        count: (0..MAX_MESSAGES).map(|_| AtomicU64::new(0)).collect(),
        last: (0..MAX_MESSAGES).map(|_| AtomicU64::new(0)).collect(),
    });
    let rss_before = rss_sum(&o.server_pids);
    let cpu_before = cpu_sum(&o.server_pids);
    let gate = Arc::new(Semaphore::new(256));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(o.conns);
    for i in 0..o.conns {
        let url = match &o.secret {
            Some(secret) => format!("{}?token={}", o.url, token(secret, i as i64 + 1)),
            None => o.url.clone(),
        };
        let (gate, arrivals) = (gate.clone(), arrivals.clone());
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await.expect("gate");
            let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
            let (mut ws, _) =
                tokio_tungstenite::connect_async_with_config(url, Some(config), true).await.ok()?;
            drop(permit);
            Some(tokio::spawn(async move {
                while let Some(Ok(frame)) = ws.next().await {
                    if let Some(seq) = sequence(&frame) {
                        arrivals.record(seq);
                    }
                }
            }))
        }));
    }
    let mut readers = Vec::new();
    for t in tasks {
        if let Ok(Some(reader)) = t.await {
            readers.push(reader);
        }
    }
    let connected = readers.len();
    let setup_rate = connected as f64 / started.elapsed().as_secs_f64();
    // The server's CPU per connection set up: what its connect rate would be with the load
    // generator (one core, the same for every server) out of the way.
    let setup_cpu_us = match (cpu_before, cpu_sum(&o.server_pids)) {
        (Some(a), Some(b)) if connected > 0 => Some((b - a) * 1e6 / connected as f64),
        _ => None,
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_idle = rss_sum(&o.server_pids);
    let publisher = Publisher::new(&o.publish).await;
    // Fan-out: one message at a time, each until every connection has it.
    let mut fanouts = Vec::new();
    for seq in 0..o.fanouts {
        let sent = arrivals.t0.elapsed().as_micros() as u64;
        publisher.publish(seq).await;
        wait_for(&arrivals, seq, connected as u64).await;
        fanouts.push(
            (arrivals.last[seq].load(Ordering::Relaxed).saturating_sub(sent)) as f64 / 1000.0,
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Sustained: a burst of messages back to back; deliveries per second until the last lands.
    let first = o.fanouts;
    let burst_start = Instant::now();
    let t_start = arrivals.t0.elapsed().as_micros() as u64;
    for seq in first..first + o.burst {
        publisher.publish(seq).await;
    }
    let mut delivered = 0u64;
    let mut last = t_start;
    for seq in first..first + o.burst {
        wait_for(&arrivals, seq, connected as u64).await;
        delivered += arrivals.count[seq].load(Ordering::Relaxed);
        last = last.max(arrivals.last[seq].load(Ordering::Relaxed));
    }
    let burst_secs = ((last - t_start) as f64 / 1e6).max(1e-6);
    let _ = burst_start;
    fanouts.sort_by(f64::total_cmp);
    let per_conn = match (rss_before, rss_idle) {
        (Some(a), Some(b)) if connected > 0 => {
            Some((b.saturating_sub(a)) as f64 / connected as f64)
        }
        _ => None,
    };
    println!(
        "{}",
        serde_json::json!({
            "connections": connected,
            "setup_per_second": setup_rate,
            "setup_server_cpu_us_per_connection": setup_cpu_us,
            "rss_per_idle_connection_bytes": per_conn,
            "fanout_ms_median": fanouts.get(fanouts.len() / 2),
            "fanout_ms_all": fanouts,
            "sustained_deliveries_per_second": delivered as f64 / burst_secs,
        })
    );
    for r in readers {
        r.abort();
    }
}

async fn wait_for(arrivals: &Arrivals, seq: usize, expected: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while arrivals.count[seq].load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The message number carried by a frame: peers get text "m<seq>|…", wsgw a protocol message
/// with key "m<seq>".
fn sequence(frame: &WsMessage) -> Option<usize> {
    let text: &[u8] = match frame {
        WsMessage::Text(t) => t.as_bytes(),
        WsMessage::Binary(b) => b,
        _ => return None,
    };
    let key = match Serializer::Json.decode::<Message>(text) {
        Ok(m) => m.key,
        Err(_) => String::from_utf8_lossy(text).split('|').next()?.to_owned(),
    };
    key.strip_prefix('m')?.parse().ok()
}

fn token(secret: &str, user_id: i64) -> String {
    let spec = TokenSpec::hs256(Identity { biz_id: 9999, user_id }, Duration::from_secs(3600));
    auth::mint(&spec, secret.as_bytes()).expect("mint")
}

enum Publisher {
    Http(String),
    Pushpin(String),
    Wsgw(Mutex<PushServiceClient<tonic::transport::Channel>>),
}

impl Publisher {
    async fn new(spec: &str) -> Self {
        let (kind, target) = spec.split_once(':').expect("kind:target");
        match kind {
            "http" => Self::Http(target.to_owned()),
            "pushpin" => Self::Pushpin(target.to_owned()),
            "wsgw" => {
                let channel = tonic::transport::Endpoint::from_shared(format!("http://{target}"))
                    .expect("endpoint")
                    .connect()
                    .await
                    .expect("connect to the push API");
                Self::Wsgw(Mutex::new(PushServiceClient::new(channel)))
            }
            other => panic!("unknown publish kind {other}"),
        }
    }

    /// A 64-byte message numbered `seq`.
    async fn publish(&self, seq: usize) {
        let body = format!("{:-<64}", format!("m{seq}|"));
        match self {
            Self::Http(url) => post(url, body.as_bytes()).await,
            Self::Pushpin(url) => {
                let grip = serde_json::json!({"items": [{"channel": "bench", "formats": {"ws-message": {"content": body}}}]});
                post(url, grip.to_string().as_bytes()).await
            }
            Self::Wsgw(client) => {
                let mut client = client.lock().expect("lock").clone();
                let req = BroadcastRequest {
                    biz_id: 9999,
                    key: format!("m{seq}"),
                    body: body.into_bytes().into(),
                };
                client.broadcast(req).await.expect("broadcast");
            }
        }
    }
}

async fn post(url: &str, body: &[u8]) {
    let resp = {
        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::new()
    }
    .post(url)
    .body(body.to_vec())
    .send()
    .await
    .expect("publish");
    assert!(resp.status().is_success(), "publish answered {}", resp.status());
}

/// The kernel floor: WebSocket handshakes, then one write() of a pre-encoded text frame per
/// connection for each POST to port+1.
fn floor(port: u16) {
    let conns: Arc<Mutex<Vec<StdStream>>> = Arc::default();
    let ws = StdListener::bind(("127.0.0.1", port)).expect("bind");
    let accepted = conns.clone();
    std::thread::spawn(move || {
        for stream in ws.incoming().flatten() {
            if let Ok(ws) = tungstenite::accept(stream) {
                accepted.lock().expect("lock").push(ws.into_inner());
            }
        }
    });
    let publish = StdListener::bind(("127.0.0.1", port + 1)).expect("bind publish");
    for mut req in publish.incoming().flatten() {
        let body = read_body(&mut req);
        let mut frame = vec![0x81, body.len() as u8];
        frame.extend_from_slice(&body);
        let mut list = conns.lock().expect("lock");
        for c in list.iter_mut() {
            let _ = c.write_all(&frame);
        }
        let _ = req.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    }
}

/// Reads one HTTP request and returns its body (by Content-Length).
fn read_body(req: &mut StdStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let Ok(n) = req.read(&mut chunk) else { return Vec::new() };
        if n == 0 {
            return Vec::new();
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if buf.len() >= end + 4 + len {
            return buf[end + 4..end + 4 + len].to_vec();
        }
    }
}

fn cpu_sum(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|p| cpu_seconds(*p)).sum()
}

fn rss_sum(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|p| rss_of(*p)).sum()
}
