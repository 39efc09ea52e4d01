//! Cluster test harness: the real Redis, etcd and Kafka-protocol broker started by
//! `scripts/services.sh`, isolated per test by unique key prefixes, topics and groups; private
//! Redis and tansu processes for the tests that restart them; Kafka producer and consumer helpers.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use rdkafka::{
    ClientConfig, Message as _,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{Consumer, StreamConsumer},
    producer::{FutureProducer, FutureRecord},
    {Offset, TopicPartitionList},
};
use wsgw::config::{Config, RoleTokens};

use super::free_port;
use super::node::{Builder, TestNode};

pub const REDIS: &str = "redis://127.0.0.1:6379";
/// Set to run the cluster tests on another Redis, e.g. the Redis Cluster `scripts/services.sh`
/// starts: `WSGW_TEST_REDIS=redis://127.0.0.1:7001,redis://127.0.0.1:7002,redis://127.0.0.1:7003`
/// (several URLs mean a Redis Cluster).
pub const REDIS_ENV: &str = "WSGW_TEST_REDIS";
pub const ETCD: &str = "127.0.0.1:2379";
pub const KAFKA: &str = "127.0.0.1:9092";

/// Names unique to one test (keys, topics, group), so tests share the services safely.
#[derive(Clone)]
pub struct Scope {
    pub name: String,
    pub redis: String,
    pub kafka: String,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Scope {
    /// A fresh scope on the shared services; panics with a hint when they are not running.
    pub fn new(test: &str) -> Scope {
        let redis = std::env::var(REDIS_ENV).unwrap_or_else(|_| REDIS.into());
        let first = redis.split(',').next().unwrap_or_default().trim_start_matches("redis://");
        for (what, addr) in [("redis", first), ("etcd", ETCD), ("kafka", KAFKA)] {
            assert!(
                std::net::TcpStream::connect(addr).is_ok(),
                "{what} is not running on {addr}: start the services with scripts/services.sh start"
            );
        }
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("{test}-{}-{n}", std::process::id());
        Scope { name, redis, kafka: KAFKA.into() }
    }

    pub fn push_topic(&self) -> String {
        format!("push-{}", self.name)
    }

    pub fn presence_topic(&self) -> String {
        format!("presence-{}", self.name)
    }

    /// Cluster settings of a node `id` in this scope, with short TTLs for tests.
    pub fn apply(&self, c: &mut Config, id: &str) {
        c.node.id = id.into();
        c.server.grpc.tokens = RoleTokens {
            backend: super::BACKEND_TOKEN.into(),
            peer: super::PEER_TOKEN.into(),
            operator: super::OPERATOR_TOKEN.into(),
        };
        let cl = &mut c.cluster;
        cl.redis.url = self.redis.clone();
        cl.redis.prefix = format!("{}:", self.name);
        cl.redis.session_ttl = Duration::from_secs(2);
        cl.etcd.endpoints = vec![ETCD.into()];
        cl.etcd.prefix = format!("/{}", self.name);
        cl.etcd.lease_ttl = Duration::from_secs(2);
        cl.etcd.report_interval = Duration::from_millis(300);
        cl.kafka.brokers = self.kafka.clone();
        cl.kafka.group_id = format!("group-{}", self.name);
        cl.kafka.push_topic = self.push_topic();
        // Each test's topics are new: read them from the start, however soon the test produces.
        cl.kafka.start_from = "earliest".into();
        cl.kafka.presence_topic = self.presence_topic();
    }

    /// A node builder in this scope.
    pub fn node(&self, id: &str) -> Builder {
        let scope = self.clone();
        let id = id.to_owned();
        TestNode::builder().config(move |c| scope.apply(c, &id))
    }

    /// A connection to this scope's Redis (one, or a Redis Cluster when it lists several).
    pub fn redis_conn(&self) -> wsgw::cluster::directory::Redis {
        let urls: Vec<String> = self.redis.split(',').map(String::from).collect();
        let cluster = urls.len() > 1;
        wsgw::cluster::directory::Redis::open(&urls, cluster).expect("redis")
    }

    /// Creates this scope's topics (one partition each).
    pub async fn create_topics(&self) {
        create_topics(&self.kafka, &[&self.push_topic(), &self.presence_topic()]).await;
    }
}

pub async fn create_topics(brokers: &str, topics: &[&str]) {
    create_topics_with(kafka_client(brokers), topics).await
}

/// Settings of a Kafka client of `brokers`.
pub fn kafka_client(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers).set("log_level", "3");
    c
}

/// Creates `topics` (one partition each) with the client settings `config`.
pub async fn create_topics_with(config: ClientConfig, topics: &[&str]) {
    let admin: AdminClient<DefaultClientContext> = config.create().expect("admin client");
    let new: Vec<NewTopic> =
        topics.iter().map(|t| NewTopic::new(t, 1, TopicReplication::Fixed(1))).collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin.create_topics(&new, &options).await.expect("create topics");
    for r in results {
        if let Err((topic, e)) = r {
            assert!(
                e == rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists,
                "create topic {topic}: {e}"
            );
        }
    }
}

/// A Kafka producer that retries for a long time (through broker restarts).
pub fn producer(brokers: &str) -> FutureProducer {
    producer_with(kafka_client(brokers))
}

/// [`producer`] with the client settings `config`.
pub fn producer_with(mut config: ClientConfig) -> FutureProducer {
    config
        .set("message.timeout.ms", "60000")
        .set("reconnect.backoff.max.ms", "500")
        .create()
        .expect("producer")
}

/// Produces one push record (the original gateway's JSON) and waits for the broker's ack.
pub async fn produce_push(
    p: &FutureProducer,
    topic: &str,
    key: &str,
    biz: i64,
    user: i64,
    body: &[u8],
) {
    use base64::Engine as _;
    let json = serde_json::json!({
        "key": key, "biz_id": biz, "receiver_id": user,
        "body": base64::engine::general_purpose::STANDARD.encode(body),
    })
    .to_string();
    let record = FutureRecord::to(topic).key(key).payload(&json);
    p.send(record, Duration::from_secs(60)).await.map_err(|(e, _)| e).expect("produced");
}

/// A reader of partition 0 of `topic` from its beginning (no group: no rebalance to wait for).
pub fn consumer(brokers: &str, topic: &str) -> StreamConsumer {
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "unused")
        .set("enable.auto.commit", "false")
        .set("log_level", "3")
        .create()
        .expect("consumer");
    let mut partitions = TopicPartitionList::new();
    partitions.add_partition_offset(topic, 0, Offset::Beginning).expect("partition");
    c.assign(&partitions).expect("assign");
    c
}

/// The next record's payload as JSON, within `wait`.
pub async fn next_json(c: &StreamConsumer, wait: Duration) -> Option<serde_json::Value> {
    let m = tokio::time::timeout(wait, c.recv()).await.ok()?.ok()?;
    serde_json::from_slice(m.payload()?).ok()
}

/// A service process this test owns (a private Redis or broker it may stop and restart).
pub struct Private {
    pub port: u16,
    child: Option<Child>,
    command: Vec<String>,
    /// The process's working directory (its data), when not the test's.
    dir: Option<PathBuf>,
}

fn tansu() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/tools/bin/tansu")
}

/// tansu built with its SQLite storage, the one that keeps SCRAM users (`scripts/kafka-sasl.sh`).
fn tansu_sql() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/tools/bin/tansu-sql")
}

impl Private {
    pub fn redis() -> Private {
        let port = free_port();
        let args = [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ];
        Private::start(port, args.iter().map(|s| s.to_string()).collect())
    }

    /// A Redis that speaks TLS only (the test CA's server certificate; clients must present a
    /// certificate of the same CA) and lets in only the ACL user `wsgw` with `password`.
    pub fn redis_tls(pki: &super::Pki, password: &str) -> Private {
        let port = free_port();
        let acl = ["--user", "wsgw", "on", &format!(">{password}"), "~*", "&*", "+@all"];
        let args = [
            ["redis-server", "--bind", "127.0.0.1", "--port", "0", "--save", ""].as_slice(),
            &["--tls-port", &port.to_string(), "--tls-auth-clients", "yes"],
            &["--tls-cert-file", &pki.arg("server.pem"), "--tls-key-file", &pki.arg("server.key")],
            &["--tls-ca-cert-file", &pki.arg("ca.pem")],
            &acl,
            &["--user", "default", "off"],
        ];
        Private::start(port, args.concat().iter().map(|s| s.to_string()).collect())
    }

    /// An etcd that serves its clients over TLS only (the test CA's server certificate) and
    /// requires client certificates of the same CA; its data in `pki`'s directory.
    pub fn etcd_tls(pki: &super::Pki) -> Private {
        let (port, peer) = (free_port(), free_port());
        let client_url = format!("https://127.0.0.1:{port}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let (data, cert, key, ca) =
            (pki.arg("etcd-data"), pki.arg("server.pem"), pki.arg("server.key"), pki.arg("ca.pem"));
        let cluster = format!("tls={peer_url}");
        let args = [
            &["etcd", "--name", "tls", "--data-dir", data.as_str()][..],
            &["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url],
            &["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url],
            &["--initial-cluster", &cluster],
            &["--cert-file", &cert, "--key-file", &key],
            &["--client-cert-auth", "--trusted-ca-file", &ca],
        ];
        Private::start(port, args.concat().iter().map(|s| s.to_string()).collect())
    }

    /// A tansu broker that advertises loopback port `advertised` (a [`Cut`] in front of it)
    /// instead of its own.
    pub fn kafka(advertised: u16) -> Private {
        Private::kafka_at("127.0.0.1", advertised)
    }

    /// A tansu broker that advertises `host:advertised` (a [`Cut`] in front of it).
    pub fn kafka_at(host: &str, advertised: u16) -> Private {
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let public = format!("tcp://{host}:{advertised}");
        let bin = tansu().display().to_string();
        let args = [
            bin.as_str(),
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &public,
            "--storage-engine",
            "memory://tansu/",
        ];
        Private::start(port, args.iter().map(|s| s.to_string()).collect())
    }

    /// A tansu broker that requires SASL/SCRAM-SHA-512 of every client and knows one user,
    /// `user` with `password`, created while authentication was still off (its data in `dir`).
    /// It advertises `host:advertised` (a [`Cut`] in front of it).
    pub fn kafka_scram(
        dir: &Path,
        host: &str,
        advertised: u16,
        user: &str,
        password: &str,
    ) -> Private {
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let public = format!("tcp://{host}:{advertised}");
        let bin = tansu_sql().display().to_string();
        let args = [&bin, "broker", "--listener-url", &url, "--advertised-listener-url", &public];
        let mut command: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        command.extend(["--storage-engine".into(), "sqlite://tansu.db".into()]);
        let mut broker = Private { port, child: None, command, dir: Some(dir.to_owned()) };
        broker.restart();
        let created = Command::new(&bin)
            .args(["user", "create", "--broker", &url, "--mechanism", "scram512", user, password])
            .stdout(Stdio::null())
            .status()
            .expect("tansu user create");
        assert!(created.success(), "tansu user create: {created}");
        broker.command.push("--authentication".into());
        broker.restart();
        broker
    }

    fn start(port: u16, command: Vec<String>) -> Private {
        let mut p = Private { port, child: None, command, dir: None };
        p.restart();
        p
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Kills the process (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the process (again) and waits until its port accepts connections.
    pub fn restart(&mut self) {
        self.kill();
        let mut command = Command::new(&self.command[0]);
        if let Some(dir) = &self.dir {
            command.current_dir(dir);
        }
        let child = command
            .args(&self.command[1..])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("start {}: {e} (scripts/services.sh tools installs it)", self.command[0])
            });
        self.child = Some(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(self.addr()).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{} did not start on port {}", self.command[0], self.port);
    }
}

impl Drop for Private {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP forwarder whose path can be cut: every connection through it is dropped and new ones
/// are refused until it is restored. To clients this is a broker restart that keeps its data.
pub struct Cut {
    pub port: u16,
    open: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl Cut {
    /// Forwards loopback `port` to `target`.
    pub async fn start(port: u16, target: SocketAddr) -> Cut {
        Cut::start_with(port, target, None).await
    }

    /// Forwards loopback `port` to `target`, ending TLS first when `tls` is given: a plain
    /// service behind a TLS listener.
    pub async fn start_with(
        port: u16,
        target: SocketAddr,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Cut {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
        let open = std::sync::Arc::new(tokio::sync::watch::Sender::new(true));
        let state = open.clone();
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if !*state.borrow() {
                    continue; // refused: dropped at once
                }
                let (mut closed, tls) = (state.subscribe(), tls.clone());
                tokio::spawn(async move {
                    let mut inbound = inbound;
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let copied = async {
                        match tls {
                            None => {
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await
                            }
                            Some(tls) => {
                                let mut secured = tls.accept(inbound).await?;
                                tokio::io::copy_bidirectional(&mut secured, &mut outbound).await
                            }
                        }
                    };
                    tokio::select! {
                        _ = copied => {}
                        _ = closed.wait_for(|open| !*open) => {}
                    }
                });
            }
        });
        Cut { port, open, task }
    }

    pub fn cut(&self) {
        self.open.send_replace(false);
    }

    pub fn restore(&self) {
        self.open.send_replace(true);
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        self.task.abort();
    }
}
