//! Kafka → client push benchmark (`scripts/bench/kafka.sh` starts the services and runs it).
//!
//! Two wsgw nodes run in this process against the real Redis and Kafka-protocol broker; node A
//! consumes the push topic, `--users` clients are connected, half on A and half on B, so half of
//! the pushes cross nodes (directory lookup + node-to-node gRPC). Each push body carries its
//! produce time; clients decode it, record produce → client latency and acknowledge.
//!
//! The baseline, measured in the same run on the same broker: a bare rdkafka consumer reading an
//! identical stream (produce → consume, nothing else). Two phases each: throughput (a burst of
//! `--pushes` as fast as the producer goes; time from the first produce to the last receipt) and
//! latency (`--rate` pushes/s for `--seconds`; p50/p99). Prints one JSON line. A benchmark: it
//! never fails on a number.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt, stream::FuturesUnordered};
use hdrhistogram::Histogram;
use rdkafka::{
    ClientConfig, Message as _,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{Consumer, StreamConsumer},
    producer::{FutureProducer, FutureRecord},
};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::{Message as WsMessage, protocol::WebSocketConfig};
use wsgw::{
    auth::{self, Identity, TokenSpec},
    config::{Config, RoleTokens},
    node::Node,
    protocol::{CommandType, Message, Serializer},
};

const SECRET: &str = "bench-secret-0123456789abcdef0123456789";
const BIZ: i64 = 9;

struct Opts {
    brokers: String,
    redis: String,
    users: i64,
    pushes: u64,
    rate: u64,
    seconds: u64,
    concurrency: usize,
}

/// Received pushes: count and produce → receive latency (µs).
struct Sink {
    latency: Mutex<Histogram<u64>>,
    received: std::sync::atomic::AtomicU64,
    changed: Notify,
}

impl Sink {
    fn new() -> Arc<Sink> {
        Arc::new(Sink {
            latency: Mutex::new(Histogram::new(3).expect("histogram")),
            received: 0.into(),
            changed: Notify::new(),
        })
    }

    fn record(&self, produced_us: u64) {
        let lat = now_us().saturating_sub(produced_us).max(1);
        let _ = self.latency.lock().expect("lock").record(lat);
        self.received.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.changed.notify_waiters();
    }

    fn count(&self) -> u64 {
        self.received.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn reset(&self) {
        self.latency.lock().expect("lock").reset();
        self.received.store(0, std::sync::atomic::Ordering::Relaxed);
    }

    async fn wait_for(&self, n: u64, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while self.count() < n {
            let wait = self.changed.notified();
            if tokio::time::timeout_at(deadline, wait).await.is_err() {
                return self.count() >= n;
            }
        }
        true
    }

    fn summary(&self) -> (u64, u64) {
        let h = self.latency.lock().expect("lock");
        (h.value_at_quantile(0.5), h.value_at_quantile(0.99))
    }
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag =
        |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    if !args.iter().any(|a| a == "run") {
        return eprintln!(
            "usage: kafka_push run [--users 1000] [--pushes 20000] [--rate 2000] [--seconds 5] [--concurrency 256]"
        );
    }
    let opts = Opts {
        brokers: flag("--brokers").unwrap_or_else(|| "127.0.0.1:9092".into()),
        redis: flag("--redis").unwrap_or_else(|| "redis://127.0.0.1:6379".into()),
        users: flag("--users").and_then(|v| v.parse().ok()).unwrap_or(1000),
        pushes: flag("--pushes").and_then(|v| v.parse().ok()).unwrap_or(20_000),
        rate: flag("--rate").and_then(|v| v.parse().ok()).unwrap_or(2000),
        seconds: flag("--seconds").and_then(|v| v.parse().ok()).unwrap_or(5),
        concurrency: flag("--concurrency").and_then(|v| v.parse().ok()).unwrap_or(256),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("rt");
    runtime.block_on(run(opts));
}

async fn run(o: Opts) {
    let tag = format!("bench{}", now_us());
    let (gw_topic, floor_topic) = (format!("{tag}-push"), format!("{tag}-floor"));
    create_topics(&o.brokers, &[&gw_topic, &floor_topic]).await;
    let a = node(&o, &tag, "a", &gw_topic).await;
    let b = node(&o, &tag, "b", "").await;

    let sink = Sink::new();
    for user in 1..=o.users {
        let addr = if user % 2 == 0 { a } else { b };
        connect(addr, user, sink.clone()).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await; // directory writes settle
    let floor_sink = Sink::new();
    let floor = consume_floor(&o.brokers, &floor_topic, floor_sink.clone());
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &o.brokers)
        .set("linger.ms", "2")
        .set("log_level", "3")
        .create()
        .expect("producer");
    // Warm up both paths (group join, connections, caches).
    burst(&producer, &gw_topic, &o, 200).await;
    burst(&producer, &floor_topic, &o, 200).await;
    sink.wait_for(200, Duration::from_secs(60)).await;
    floor_sink.wait_for(200, Duration::from_secs(60)).await;

    let floor_tput = throughput(&producer, &floor_topic, &o, &floor_sink).await;
    let gw_tput = throughput(&producer, &gw_topic, &o, &sink).await;
    let floor_lat = paced(&producer, &floor_topic, &o, &floor_sink).await;
    let gw_lat = paced(&producer, &gw_topic, &o, &sink).await;
    floor.abort();
    let report = serde_json::json!({
        "users": o.users, "pushes": o.pushes, "rate": o.rate, "concurrency": o.concurrency,
        "floor": { "pushes_per_s": floor_tput, "p50_us": floor_lat.0, "p99_us": floor_lat.1 },
        "wsgw": { "pushes_per_s": gw_tput, "p50_us": gw_lat.0, "p99_us": gw_lat.1 },
        "ratio": {
            "throughput": gw_tput / floor_tput.max(1.0),
            "p99": gw_lat.1 as f64 / floor_lat.1.max(1) as f64,
        },
    });
    println!("{report}");
    std::process::exit(0);
}

async fn node(o: &Opts, tag: &str, id: &str, topic: &str) -> std::net::SocketAddr {
    let mut c = Config::default();
    c.node.id = id.into();
    c.server.websocket.listen = Some("127.0.0.1:0".parse().expect("addr"));
    c.server.governor.listen = "127.0.0.1:0".parse().expect("addr");
    c.server.grpc.listen = "127.0.0.1:0".parse().expect("addr");
    c.auth.jwt.secret = SECRET.into();
    c.log.level = "warn".into();
    c.server.grpc.tokens = RoleTokens {
        backend: "bench-backend".into(),
        peer: "bench-peer".into(),
        operator: "bench-operator".into(),
    };
    c.cluster.redis.url = o.redis.clone();
    c.cluster.redis.prefix = format!("{tag}:");
    c.cluster.kafka.brokers = o.brokers.clone();
    c.cluster.kafka.group_id = format!("{tag}-group");
    c.cluster.kafka.push_topic = topic.into();
    c.cluster.kafka.start_from = "earliest".into();
    c.cluster.kafka.concurrency = o.concurrency;
    c.cluster.kafka.presence_topic = String::new();
    c.downstream.max_pending = 1_000_000;
    let node = Node::bind(c).await.expect("node binds");
    let addr = node.ws_addr();
    tokio::spawn(node.run(std::future::pending()));
    addr
}

async fn connect(addr: std::net::SocketAddr, user: i64, sink: Arc<Sink>) {
    let spec = TokenSpec::hs256(Identity { biz_id: BIZ, user_id: user }, Duration::from_secs(3600));
    let token = auth::mint(&spec, SECRET.as_bytes()).expect("token");
    // Small buffers, as `wsgw loadtest` uses: tungstenite's default 128 KiB read buffer is
    // zeroed on every read and made this load generator the biggest CPU user of the run.
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let url = format!("ws://{addr}/?token={token}");
    let (ws, _) =
        tokio_tungstenite::connect_async_with_config(url, Some(config), true).await.expect("ws");
    let (mut tx, mut rx) = ws.split();
    tokio::spawn(async move {
        while let Some(Ok(frame)) = rx.next().await {
            let WsMessage::Binary(b) = frame else { continue };
            let Ok(m) = Serializer::Json.decode::<Message>(&b) else { continue };
            if m.cmd != i32::from(CommandType::DownstreamMessage) {
                continue;
            }
            let produced =
                m.body.get(..8).map(|b| u64::from_be_bytes(b.try_into().unwrap_or_default()));
            sink.record(produced.unwrap_or(0));
            let ack = Message {
                cmd: CommandType::DownstreamAck.into(),
                key: m.key,
                body: Default::default(),
            };
            let _ = tx.send(WsMessage::Binary(Serializer::Json.encode(&ack))).await;
        }
    });
}

fn consume_floor(brokers: &str, topic: &str, sink: Arc<Sink>) -> tokio::task::JoinHandle<()> {
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{topic}-floor"))
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "50")
        .set("log_level", "3")
        .create()
        .expect("consumer");
    c.subscribe(&[topic]).expect("subscribe");
    tokio::spawn(async move {
        while let Ok(m) = c.recv().await {
            let Some(payload) = m.payload() else { continue };
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload) else { continue };
            let body = v["body"].as_str().unwrap_or_default();
            let bytes = base64::engine::general_purpose::STANDARD.decode(body).unwrap_or_default();
            sink.record(
                bytes
                    .get(..8)
                    .map(|b| u64::from_be_bytes(b.try_into().unwrap_or_default()))
                    .unwrap_or(0),
            );
        }
    })
}

fn record(seq: u64, o: &Opts) -> String {
    let mut body = now_us().to_be_bytes().to_vec();
    body.extend_from_slice(&[b'x'; 56]);
    serde_json::json!({
        "key": format!("p{seq}-{}", now_us()),
        "biz_id": BIZ,
        "receiver_id": (seq % o.users as u64) as i64 + 1,
        "body": base64::engine::general_purpose::STANDARD.encode(body),
    })
    .to_string()
}

async fn burst(p: &FutureProducer, topic: &str, o: &Opts, n: u64) {
    let mut sends = FuturesUnordered::new();
    for seq in 0..n {
        let payload = record(seq, o);
        sends.push(async move {
            let _ = p
                .send(FutureRecord::<(), _>::to(topic).payload(&payload), Duration::from_secs(30))
                .await;
        });
        if sends.len() >= 5000 {
            sends.next().await;
        }
    }
    while sends.next().await.is_some() {}
}

/// Pushes/s from the first produce to the last receipt of a burst.
async fn throughput(p: &FutureProducer, topic: &str, o: &Opts, sink: &Sink) -> f64 {
    sink.reset();
    let started = Instant::now();
    burst(p, topic, o, o.pushes).await;
    let complete = sink.wait_for(o.pushes, Duration::from_secs(120)).await;
    if !complete {
        eprintln!("{topic}: only {} of {} arrived", sink.count(), o.pushes);
    }
    sink.count() as f64 / started.elapsed().as_secs_f64()
}

/// p50 and p99 produce → receive latency (µs) at `rate` pushes/s.
async fn paced(p: &FutureProducer, topic: &str, o: &Opts, sink: &Sink) -> (u64, u64) {
    sink.reset();
    let total = o.rate * o.seconds;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let per_tick = (o.rate / 100).max(1);
    let mut seq = 0;
    while seq < total {
        tick.tick().await;
        for _ in 0..per_tick.min(total - seq) {
            let payload = record(seq, o);
            let _ = p.send_result(FutureRecord::<(), _>::to(topic).payload(&payload));
            seq += 1;
        }
    }
    sink.wait_for(total, Duration::from_secs(60)).await;
    sink.summary()
}

async fn create_topics(brokers: &str, topics: &[&str]) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).create().expect("admin");
    let new: Vec<NewTopic> =
        topics.iter().map(|t| NewTopic::new(t, 1, TopicReplication::Fixed(1))).collect();
    let _ = admin.create_topics(&new, &AdminOptions::new()).await.expect("create topics");
}
