//! Cluster mode against the real services (scripts/services.sh): Redis session directory and
//! inbox, etcd registry and discovery, Kafka pushes and presence, node-to-node routing, faults.

use std::{collections::HashSet, time::Duration};

use etcd_client::{Client as Etcd, GetOptions};
use wsgw::{
    auth::Identity,
    cluster::{NodeEntry, SessionQuery},
    protocol::{CommandType, Serializer, pb::NodeList},
};

use crate::support::{
    Behaviour, Client, TestBackend, TestNode,
    cluster::{self, Private, Scope},
    code,
};

const JSON: Serializer = Serializer::Json;
const KAFKA_WAIT: Duration = Duration::from_secs(30);

async fn etcd() -> Etcd {
    Etcd::connect([cluster::ETCD], None).await.expect("etcd")
}

async fn registered(scope: &Scope) -> Vec<NodeEntry> {
    let prefix = format!("/{}/services/gateway/node/", scope.name);
    let resp = etcd().await.get(prefix, Some(GetOptions::new().with_prefix())).await.expect("get");
    resp.kvs().iter().map(|kv| serde_json::from_slice(kv.value()).expect("Node JSON")).collect()
}

/// Waits until `node`'s directory lists `n` live connections of (user, biz).
async fn await_sessions(node: &TestNode, user: i64, biz: i64, n: usize) {
    let dir = node.handle.directory().clone();
    let who = Identity { biz_id: biz, user_id: user };
    crate::assert_within!(
        10,
        dir.sessions(SessionQuery::User(who)).await.map(|s| s.len()).unwrap_or(usize::MAX) == n,
        "directory never listed {n} sessions of {user}"
    );
}

fn is_push(m: &wsgw::protocol::Message, key: &str, body: &[u8]) -> bool {
    m.cmd == i32::from(CommandType::DownstreamMessage) && m.key == key && m.body.as_ref() == body
}

#[tokio::test]
async fn a_push_from_kafka_reaches_a_user_on_another_node() {
    let scope = Scope::new("kafka-other-node");
    scope.create_topics().await;
    let consumer_node = scope.node("a").spawn().await;
    let holder = scope.node("b").config(|c| c.cluster.kafka.push_topic.clear()).spawn().await;
    let mut client = holder.connect(7, 9).await;
    await_sessions(&consumer_node, 7, 9, 1).await;

    let producer = cluster::producer(&scope.kafka);
    cluster::produce_push(&producer, &scope.push_topic(), "k-1", 9, 7, b"from kafka").await;
    let m = client.recv_msg_within(JSON, KAFKA_WAIT).await.expect("the push arrives");
    assert!(is_push(&m, "k-1", b"from kafka"), "{m:?}");
    assert_eq!(consumer_node.handle.connections(), 0, "the consuming node holds nobody");
}

#[tokio::test]
async fn a_user_on_two_nodes_gets_a_push_on_both_and_one_ack_settles_it() {
    let scope = Scope::new("two-nodes");
    let a = scope.node("a").spawn().await;
    let b = scope.node("b").spawn().await;
    let mut on_a = a.connect(7, 9).await;
    let mut on_b = b.connect(7, 9).await;
    await_sessions(&a, 7, 9, 2).await;

    let n = a.push(7, 9, "both", b"hello").await.expect("pushed");
    assert_eq!(n, 2, "one connection on each node");
    let (ma, mb) = (on_a.recv_msg(JSON).await, on_b.recv_msg(JSON).await);
    assert!(is_push(&ma, "both", b"hello") && is_push(&mb, "both", b"hello"));
    on_b.ack("both", JSON).await;
    crate::assert_eventually!(b.handle.pending_pushes() == 0, "the ack on b settles b's copy");
}

#[tokio::test]
async fn an_offline_user_gets_a_kafka_push_after_connecting() {
    let scope = Scope::new("offline");
    scope.create_topics().await;
    let a = scope.node("a").spawn().await;
    let producer = cluster::producer(&scope.kafka);
    cluster::produce_push(&producer, &scope.push_topic(), "later", 9, 8, b"kept").await;
    let stored = "websocket_gateway_cluster_events_total{event=\"push_stored\",service=\"kafka\"}";
    crate::assert_within!(30, a.metric(stored).await == 1.0, "the push was stored in the inbox");

    let b = scope.node("b").spawn().await;
    let mut client = b.connect(8, 9).await;
    let m = client.recv_msg_within(JSON, Duration::from_secs(10)).await.expect("inbox delivered");
    assert!(is_push(&m, "later", b"kept"), "{m:?}");
    // A push through gRPC to an offline user is stored too, and says so.
    let mut push = a.push_client().await;
    let msg = wsgw::protocol::pb::PushMessage {
        key: "k2".into(),
        biz_id: 9,
        receiver_id: 99,
        body: b"x".to_vec().into(),
    };
    let r = push.push(wsgw::protocol::pb::PushRequest { msg: Some(msg) }).await.expect("ok");
    assert!(r.get_ref().stored && r.get_ref().connections == 0);
}

#[tokio::test]
async fn nodes_register_with_their_load_and_leave_on_shutdown() {
    let scope = Scope::new("registry");
    let mut a = scope.node("a").spawn().await;
    let client = a.connect(1, 9).await;
    crate::assert_within!(
        10,
        registered(&scope).await.iter().any(|n| n.id == "a" && n.load == 1),
        "node a registered with load 1"
    );
    let entry = registered(&scope).await.remove(0);
    assert_eq!((entry.ip.as_str(), entry.port), ("127.0.0.1", i32::from(a.ws_addr.port())));
    assert_eq!(entry.grpc_addr(), Some(a.grpc_addr.to_string().as_str()));
    drop(client);
    a.begin_shutdown().await.expect("drained");
    assert!(registered(&scope).await.is_empty(), "deregistered on shutdown");
}

#[tokio::test]
async fn a_drained_node_redirects_its_clients_to_a_live_peer() {
    let scope = Scope::new("redirect");
    let mut a = scope.node("a").spawn().await;
    let b = scope.node("b").spawn().await;
    crate::assert_within!(10, registered(&scope).await.len() == 2, "both registered");
    let mut client = a.connect(3, 9).await;
    let stop = a.begin_shutdown();
    let m = client.recv_msg(JSON).await;
    assert_eq!(m.cmd, i32::from(CommandType::Redirect));
    let nodes = JSON.decode::<NodeList>(&m.body).expect("a NodeList body").nodes;
    assert_eq!(nodes.len(), 1, "only the live peer");
    assert_eq!((nodes[0].id.as_str(), nodes[0].port), ("b", i32::from(b.ws_addr.port())));
    assert_eq!(code(&client.closed().await).0, 1001);
    stop.await.expect("drained");
}

#[tokio::test]
async fn a_killed_node_leaves_the_registry_and_the_directory_after_its_ttl() {
    let scope = Scope::new("killed");
    let survivor = scope.node("survivor").spawn().await;
    let mut victim = spawn_binary(&scope, "victim").await;
    let mut client = Client::connect(&format!(
        "ws://127.0.0.1:{}/?token={}",
        victim.ws_port,
        TestNode::token(5, 9)
    ))
    .await
    .expect("connect to the child node");
    await_sessions(&survivor, 5, 9, 1).await;
    crate::assert_within!(
        10,
        registered(&scope).await.iter().any(|n| n.id == "victim"),
        "the child node registered"
    );

    victim.child.kill().await.expect("SIGKILL");
    drop(client.closed().await);
    crate::assert_within!(
        10,
        !registered(&scope).await.iter().any(|n| n.id == "victim"),
        "lease expired"
    );
    await_sessions(&survivor, 5, 9, 0).await;
    // The push now goes to the inbox instead of a dead node.
    let r = survivor.push(5, 9, "after-death", b"x").await.expect("stored");
    assert_eq!(r, 0);
    // The survivor's sweep removes the dead node's entries for good.
    let mut redis = redis::Client::open(cluster::REDIS)
        .expect("redis")
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let user_key = format!("{}:user:9:5", scope.name);
    crate::assert_within!(
        15,
        redis::AsyncCommands::hlen::<_, usize>(&mut redis, &user_key).await.expect("hlen") == 0,
        "the dead node's session was swept"
    );
}

struct ChildNode {
    child: tokio::process::Child,
    ws_port: u16,
}

async fn spawn_binary(scope: &Scope, id: &str) -> ChildNode {
    let ws_port = cluster::free_port();
    let mut c = wsgw::config::Config::default();
    scope.apply(&mut c, id);
    let envs = [
        ("WSGW_NODE__ID", id.to_owned()),
        ("WSGW_SERVER__WEBSOCKET__LISTEN", format!("127.0.0.1:{ws_port}")),
        ("WSGW_SERVER__GOVERNOR__LISTEN", "127.0.0.1:0".into()),
        ("WSGW_SERVER__GRPC__LISTEN", "127.0.0.1:0".into()),
        ("WSGW_AUTH__JWT__SECRET", crate::support::SECRET.into()),
        ("WSGW_CLUSTER__REDIS__URL", c.cluster.redis.url.clone()),
        ("WSGW_CLUSTER__REDIS__PREFIX", c.cluster.redis.prefix.clone()),
        ("WSGW_CLUSTER__REDIS__SESSION_TTL", "2s".into()),
        ("WSGW_CLUSTER__ETCD__ENDPOINTS", cluster::ETCD.into()),
        ("WSGW_CLUSTER__ETCD__PREFIX", c.cluster.etcd.prefix.clone()),
        ("WSGW_CLUSTER__ETCD__LEASE_TTL", "2s".into()),
        ("WSGW_LOG__LEVEL", "warn".into()),
    ];
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_wsgw"))
        .arg("serve")
        .envs(envs)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn wsgw serve");
    crate::assert_within!(
        10,
        tokio::net::TcpStream::connect(("127.0.0.1", ws_port)).await.is_ok(),
        "child node listens"
    );
    ChildNode { child, ws_port }
}

/// A Kafka outage mid-stream: the network path to the broker is cut (every connection
/// dropped, new ones refused) and restored. The tansu broker here keeps data only in memory, and
/// librdkafka 2.12.1 crashes on the metadata an emptied, restarted tansu returns, so the outage is
/// made in front of the broker: to the gateway this is a broker restart with durable storage.
#[tokio::test]
async fn a_kafka_outage_mid_stream_loses_no_push() {
    let port = cluster::free_port();
    let broker = Private::kafka(port);
    let path = cluster::Cut::start(port, broker.addr()).await;
    let brokers = format!("127.0.0.1:{}", path.port);
    let mut scope = Scope::new("kafka-outage");
    scope.kafka = brokers.clone();
    scope.create_topics().await;
    let node = scope.node("a").spawn().await;
    let mut client = node.connect(4, 9).await;
    await_sessions(&node, 4, 9, 1).await;
    let producer = cluster::producer(&brokers);
    let topic = scope.push_topic();

    let mut seen = HashSet::new();
    for i in 0..20 {
        cluster::produce_push(&producer, &topic, &format!("before-{i}"), 9, 4, b"x").await;
    }
    collect(&mut client, &mut seen, 20).await;

    // Cut the broker off; keep producing while it is unreachable (the producer buffers).
    path.cut();
    // A user arriving during the outage: their ONLINE event waits in the producer's buffer.
    let during = node.connect(5, 9).await;
    let sends: Vec<_> = (0..20)
        .map(|i| {
            let p = producer.clone();
            let topic = topic.clone();
            tokio::spawn(async move {
                cluster::produce_push(&p, &topic, &format!("during-{i}"), 9, 4, b"y").await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    path.restore();
    for s in sends {
        s.await.expect("every push was produced after the outage");
    }
    collect(&mut client, &mut seen, 40).await;
    assert!((0..20).all(|i| seen.contains(&format!("during-{i}"))), "no push lost");
    let presence = cluster::consumer(&brokers, &scope.presence_topic());
    let mut online = Vec::new();
    while online.len() < 2 {
        let event = cluster::next_json(&presence, KAFKA_WAIT).await.expect("presence events");
        if event["action"] == "ONLINE" {
            online.push(event["userId"].as_i64().expect("userId"));
        }
    }
    assert_eq!(online, [4, 5], "the ONLINE produced during the outage arrived too");
    drop(during);
    // Stop the node while its broker is still there (the consumer leaves its group).
    drop(client);
    let mut node = node;
    node.begin_shutdown().await.expect("drained");
}

/// Receives pushes (acknowledging each) until `seen` holds `n` distinct keys.
async fn collect(client: &mut Client, seen: &mut HashSet<String>, n: usize) {
    while seen.len() < n {
        let m = client
            .recv_msg_within(JSON, KAFKA_WAIT)
            .await
            .unwrap_or_else(|| panic!("only {} of {n} pushes arrived", seen.len()));
        client.ack(&m.key, JSON).await;
        seen.insert(m.key);
    }
}

#[tokio::test]
async fn a_redis_restart_is_survived_and_the_directory_rebuilt() {
    let mut redis = Private::redis();
    let mut scope = Scope::new("redis-restart");
    scope.redis = format!("redis://{}", redis.addr());
    let a = scope.node("a").spawn().await;
    let b = scope.node("b").spawn().await;
    let mut client = b.connect(6, 9).await;
    await_sessions(&a, 6, 9, 1).await;
    crate::assert_within!(10, a.get("/ready").await.0 == 200, "a ready");

    redis.kill();
    crate::assert_within!(10, b.get("/ready").await.0 == 503, "not ready without the directory");
    assert!(b.get("/ready").await.1.contains("session directory"));
    // Existing connections and local pushes keep working.
    assert_eq!(b.push(6, 9, "local", b"still here").await.expect("local push"), 1);
    assert!(is_push(&client.recv_msg(JSON).await, "local", b"still here"));
    let err = a.push(6, 9, "remote", b"x").await.expect_err("a cannot find the user");
    assert_eq!(err.code(), tonic::Code::Unavailable);

    redis.restart(); // empty: Redis keeps nothing here
    crate::assert_within!(15, b.get("/ready").await.0 == 200, "ready again");
    await_sessions(&a, 6, 9, 1).await;
    assert_eq!(a.push(6, 9, "rebuilt", b"found").await.expect("routed"), 1);
    assert!(is_push(&client.recv_msg(JSON).await, "rebuilt", b"found"));
}

#[tokio::test]
async fn backends_are_discovered_from_etcd_and_follow_changes() {
    let scope = Scope::new("discovery");
    let backend = TestBackend::spawn(9, Behaviour::default()).await;
    let node =
        scope.node("a").config(|c| c.upstream.timeout = Duration::from_millis(500)).spawn().await;
    let mut etcd = etcd().await;
    let services = format!("/{}gateway.backend.services", scope.name);
    etcd.put(services.as_str(), r#"[{"bizId":9,"name":"mockServer"}]"#, None).await.expect("put");
    let provider = format!("/{}/ego/mockServer/providers/grpc://{}", scope.name, backend.addr);
    etcd.put(provider.as_str(), "{}", None).await.expect("put");

    let mut client = node.connect(2, 9).await;
    crate::assert_within!(10, upstream_ok(&mut client, "u1").await, "discovered backend answers");
    etcd.delete(provider.as_str(), None).await.expect("delete");
    crate::assert_within!(10, !upstream_ok(&mut client, "u2").await, "removed backend is gone");
}

/// Sends an upstream message; true when it was acknowledged.
async fn upstream_ok(client: &mut Client, prefix: &str) -> bool {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let key = format!("{prefix}-{}", N.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    let cmd = CommandType::UpstreamMessage.into();
    client.send(&wsgw::protocol::Message { cmd, key, body: b"hi".to_vec().into() }, JSON).await;
    client.recv_msg(JSON).await.cmd == i32::from(CommandType::UpstreamAck)
}

#[tokio::test]
async fn presence_events_go_to_kafka() {
    let scope = Scope::new("presence");
    scope.create_topics().await;
    let node = scope.node("a").spawn().await;
    let consumer = cluster::consumer(&scope.kafka, &scope.presence_topic());
    let first = node.connect(11, 9).await;
    let second = node.connect(11, 9).await;
    drop(first);
    drop(second);
    let online = cluster::next_json(&consumer, KAFKA_WAIT).await.expect("ONLINE");
    assert_eq!(online, serde_json::json!({"bizId": 9, "userId": 11, "action": "ONLINE"}));
    let offline = cluster::next_json(&consumer, KAFKA_WAIT).await.expect("OFFLINE");
    assert_eq!(offline["action"], "OFFLINE", "one OFFLINE after the last connection: {offline}");
}

#[tokio::test]
async fn an_unreachable_redis_at_start_leaves_the_node_serving_locally() {
    let mut scope = Scope::new("no-redis");
    scope.redis = format!("redis://127.0.0.1:{}", cluster::free_port());
    let node = scope.node("a").spawn().await;
    let mut client = node.connect(1, 9).await;
    crate::assert_within!(10, node.get("/ready").await.0 == 503, "not ready");
    assert_eq!(node.get("/health").await.0, 200);
    assert_eq!(node.push(1, 9, "k", b"local").await.expect("local push works"), 1);
    assert!(is_push(&client.recv_msg(JSON).await, "k", b"local"));
}

#[tokio::test]
async fn wsgw_push_with_etcd_reaches_the_user_wherever_they_are() {
    let scope = Scope::new("push-etcd");
    let _a = scope.node("a").spawn().await;
    let b = scope.node("b").spawn().await;
    crate::assert_within!(10, registered(&scope).await.len() == 2, "both registered");
    let mut client = b.connect(12, 9).await;
    await_sessions(&b, 12, 9, 1).await;
    let prefix = format!("/{}", scope.name);
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_wsgw"))
        .args(["push", "--etcd", cluster::ETCD, "--etcd-prefix", &prefix])
        .args(["--user", "12", "--biz", "9", "--key", "via-etcd", "hello"])
        .output()
        .await
        .expect("run wsgw push");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("delivered to 1 connection(s)"), "{stdout}");
    assert!(is_push(&client.recv_msg(JSON).await, "via-etcd", b"hello"));
}

#[tokio::test]
async fn unreachable_etcd_and_kafka_leave_the_node_serving() {
    let mut scope = Scope::new("no-etcd-kafka");
    scope.kafka = format!("127.0.0.1:{}", cluster::free_port());
    let dead_etcd = format!("127.0.0.1:{}", cluster::free_port());
    let node =
        scope.node("a").config(move |c| c.cluster.etcd.endpoints = vec![dead_etcd]).spawn().await;
    let mut client = node.connect(1, 9).await;
    crate::assert_within!(10, node.get("/ready").await.0 == 200, "ready: Redis is up");
    let etcd_down = "websocket_gateway_dependency_up{service=\"etcd\"}";
    crate::assert_within!(
        10,
        node.metric("websocket_gateway_cluster_events_total{event=\"error\",service=\"etcd\"}")
            .await
            >= 1.0,
        "etcd errors are counted"
    );
    assert_eq!(node.metric(etcd_down).await, 0.0);
    assert_eq!(node.push(1, 9, "k", b"still works").await.expect("push"), 1);
    assert!(is_push(&client.recv_msg(JSON).await, "k", b"still works"));
}
