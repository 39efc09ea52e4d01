//! Kafka: pushes consumed and routed to whichever node holds the user, kept for offline users,
//! not lost across a broker outage; presence events produced.

use super::*;

/// Node `a` consumes the push topic and holds nobody; node `b` holds user 7 of biz 9 (`client`)
/// and consumes nothing.
async fn consumer_and_holder(test: &str) -> (Scope, TestNode, TestNode, Client) {
    let scope = Scope::new(test);
    scope.create_topics().await;
    let consumer_node = scope.node("a").spawn().await;
    let holder = scope.node("b").config(|c| c.cluster.kafka.push_topic.clear()).spawn().await;
    let client = holder.connect(7, 9).await;
    await_sessions(&consumer_node, 7, 9, 1).await;
    (scope, consumer_node, holder, client)
}

#[tokio::test]
async fn a_push_from_kafka_reaches_a_user_on_another_node() {
    let (scope, consumer_node, holder, mut client) = consumer_and_holder("kafka-other-node").await;

    let producer = cluster::producer(&scope.kafka);
    cluster::produce_push(&producer, &scope.push_topic(), "k-1", 9, 7, b"from kafka").await;
    let m = client.recv_msg_within(JSON, KAFKA_WAIT).await.expect("the push arrives");
    assert!(is_push(&m, "k-1", b"from kafka"), "{m:?}");
    assert_eq!(consumer_node.handle.connections(), 0, "the consuming node holds nobody");
    // The group as operators see it: the consumer holds the topic's one partition, the other
    // node none, and the partition's lag (from librdkafka's statistics) drops to 0.
    let held = "websocket_gateway_kafka_partitions_assigned";
    assert_eq!(consumer_node.metric(held).await, 1.0);
    assert_eq!(holder.metric(held).await, 0.0);
    let caught_up = "websocket_gateway_kafka_consumer_lag{partition=\"0\"} 0\n";
    crate::assert_within!(
        20,
        consumer_node.get("/metrics").await.1.contains(caught_up),
        "no lag series for partition 0 at 0"
    );
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

/// A Kafka outage mid-stream: the network path to the broker is cut (every connection
/// dropped, new ones refused) and restored. The tansu broker here keeps data only in memory, and
/// librdkafka 2.12.1 crashes on the metadata an emptied, restarted tansu returns, so the outage is
/// made in front of the broker: to the gateway this is a broker restart with durable storage.
#[tokio::test]
async fn a_kafka_outage_mid_stream_loses_no_push() {
    let port = free_port();
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

/// A burst of records is routed in batches (one directory round trip for many records): each
/// push reaches its user once wherever they are (on the consuming node, on another node, offline
/// and connecting later), and there are fewer batches than records.
#[tokio::test]
async fn a_burst_of_kafka_pushes_is_routed_in_batches_to_every_kind_of_receiver() {
    let scope = Scope::new("kafka-batches");
    scope.create_topics().await;
    let a = scope.node("a").spawn().await;
    let b = scope.node("b").config(|c| c.cluster.kafka.push_topic.clear()).spawn().await;
    let (mut here, mut there) = (a.connect(21, 9).await, b.connect(22, 9).await);
    await_sessions(&a, 22, 9, 1).await;

    const EACH: usize = 60;
    let producer = cluster::producer(&scope.kafka);
    let topic = scope.push_topic();
    let keys: Vec<(String, i64)> =
        (0..3 * EACH).map(|i| (format!("b-{i}"), 21 + (i % 3) as i64)).collect();
    let sends = keys
        .iter()
        .map(|(key, user)| cluster::produce_push(&producer, &topic, key, 9, *user, key.as_bytes()));
    futures_util::future::join_all(sends).await;

    let (mut got_here, mut got_there) = (HashSet::new(), HashSet::new());
    collect(&mut here, &mut got_here, EACH).await;
    collect(&mut there, &mut got_there, EACH).await;
    let event = |e: &str| {
        format!("websocket_gateway_cluster_events_total{{event=\"{e}\",service=\"kafka\"}}")
    };
    crate::assert_within!(
        30,
        a.metric(&event("push_stored")).await == EACH as f64,
        "offline pushes stored"
    );
    assert_eq!(a.metric(&event("push_routed")).await, (2 * EACH) as f64);
    let batches = a.metric(&event("route_batch")).await;
    assert!(
        batches >= 1.0 && batches < (3 * EACH) as f64,
        "{batches} batches for {} records",
        3 * EACH
    );

    let mut later = b.connect(23, 9).await;
    let mut got_later = HashSet::new();
    collect(&mut later, &mut got_later, EACH).await;
    for (got, user) in [(got_here, 21), (got_there, 22), (got_later, 23)] {
        let want: HashSet<String> =
            keys.iter().filter(|(_, u)| *u == user).map(|(k, _)| k.clone()).collect();
        assert_eq!(got, want, "user {user} got exactly their pushes");
    }
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
async fn an_oversized_kafka_push_is_counted_and_skipped_and_closes_nobody() {
    let (scope, consumer_node, holder, mut client) = consumer_and_holder("kafka-oversized").await;

    let producer = cluster::producer(&scope.kafka);
    let huge = vec![b'x'; 300 * 1024];
    cluster::produce_push(&producer, &scope.push_topic(), "huge", 9, 7, &huge).await;
    cluster::produce_push(&producer, &scope.push_topic(), "small", 9, 7, b"fine").await;
    let m = client.recv_msg_within(JSON, KAFKA_WAIT).await.expect("the small push arrives");
    assert!(is_push(&m, "small", b"fine"), "{m:?}");
    let too_large =
        "websocket_gateway_cluster_events_total{event=\"push_too_large\",service=\"kafka\"}";
    assert_eq!(consumer_node.metric(too_large).await, 1.0);
    assert_eq!(holder.handle.connections(), 1, "the client is still connected");
}

#[tokio::test]
async fn a_kafka_push_that_cannot_be_routed_is_kept_and_stops_holding_back_the_rest() {
    let scope = Scope::new("kafka-stuck");
    scope.create_topics().await;
    // b's only pending slot is taken: it refuses every delivery from its peers.
    let b = scope
        .node("b")
        .config(|c| {
            c.cluster.kafka.push_topic.clear();
            c.downstream.max_pending = 1;
            c.downstream.retry_interval = Duration::from_secs(60);
        })
        .spawn()
        .await;
    let a = scope
        .node("a")
        .config(|c| {
            c.cluster.kafka.concurrency = 1; // records strictly one after the other
            c.cluster.kafka.route_timeout = Duration::from_secs(1);
        })
        .spawn()
        .await;
    let mut holder = b.connect(50, 9).await;
    let stuck_user = b.connect(51, 9).await;
    let mut on_a = a.connect(60, 9).await;
    await_sessions(&a, 50, 9, 1).await;
    await_sessions(&a, 51, 9, 1).await;
    assert_eq!(b.push(50, 9, "hold", b"x").await.expect("delivered"), 1);
    assert!(is_push(&holder.recv_msg(JSON).await, "hold", b"x"));

    let producer = cluster::producer(&scope.kafka);
    cluster::produce_push(&producer, &scope.push_topic(), "stuck", 9, 51, b"later").await;
    cluster::produce_push(&producer, &scope.push_topic(), "next", 9, 60, b"now").await;
    let m = on_a.recv_msg_within(JSON, KAFKA_WAIT).await.expect("not held back for good");
    assert!(is_push(&m, "next", b"now"), "{m:?}");
    let kept = "websocket_gateway_cluster_events_total{event=\"push_kept\",service=\"kafka\"}";
    assert_eq!(a.metric(kept).await, 1.0);

    // Kept, not lost: once b has room, the user's next connection gets it.
    holder.ack("hold", JSON).await;
    drop(stuck_user);
    await_sessions(&a, 51, 9, 0).await;
    crate::assert_eventually!(b.handle.pending_pushes() == 0, "b has room again");
    let mut again = b.connect(51, 9).await;
    let m = again.recv_msg_within(JSON, Duration::from_secs(10)).await.expect("from the inbox");
    assert!(is_push(&m, "stuck", b"later"), "{m:?}");
}

/// The consuming node dies (SIGKILL) mid-stream: whatever it had read but not yet recorded is
/// read again by the node that takes over its partitions, so every push arrives (some twice).
#[tokio::test]
async fn kill_9_of_the_kafka_consuming_node_mid_stream_loses_no_push() {
    let scope = Scope::new("kafka-kill9");
    scope.create_topics().await;
    let holder = scope.node("b").config(|c| c.cluster.kafka.push_topic.clear()).spawn().await;
    let mut client = holder.connect(7, 9).await;
    let mut consumer = scope.node("a").spawn_process().await;
    await_sessions(&holder, 7, 9, 1).await;
    let producer = cluster::producer(&scope.kafka);
    let topic = scope.push_topic();
    let batch = |from: usize| {
        let (p, topic) = (producer.clone(), topic.clone());
        async move {
            let sends = (from..from + 100).map(|i| {
                let (p, topic) = (p.clone(), topic.clone());
                async move { cluster::produce_push(&p, &topic, &format!("k-{i}"), 9, 7, b"x").await }
            });
            futures_util::future::join_all(sends).await;
        }
    };

    batch(0).await;
    let mut seen = HashSet::new();
    collect(&mut client, &mut seen, 30).await;
    consumer.kill9().await;
    batch(100).await;
    let _successor = scope.node("c").spawn().await;
    collect(&mut client, &mut seen, 200).await;
    assert!((0..200).all(|i| seen.contains(&format!("k-{i}"))), "no push lost");
}

/// Stopping nodes never waits on Kafka without bound: two nodes leave their group while it
/// is still forming (the second node has just joined). With the tansu test broker such a group
/// can keep naming a departed member as its leader and never settle, so leaving it never
/// completes; each node still finishes its shutdown (the departure is waited for up to 10 s,
/// then left behind on its own thread — a consumer closed on a runtime thread had hung the
/// whole process).
#[tokio::test]
async fn nodes_stop_in_bounded_time_while_their_group_rebalances() {
    let scope = Scope::new("kafka-stop");
    scope.create_topics().await;
    let mut a = scope.node("a").spawn().await;
    let held = "websocket_gateway_kafka_partitions_assigned";
    crate::assert_within!(30, a.metric(held).await == 1.0, "the first node joined its group");
    let mut b = scope.node("b").spawn().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let both = async { (a.begin_shutdown().await, b.begin_shutdown().await) };
    let stopped = tokio::time::timeout(Duration::from_secs(30), both).await;
    assert!(stopped.is_ok(), "the nodes did not stop within 30 s");
}

/// Settings of a Kafka client of `brokers` with `properties` on top.
fn kafka_client_with(brokers: &str, properties: &[(&str, &str)]) -> rdkafka::ClientConfig {
    let mut c = cluster::kafka_client(brokers);
    for (k, v) in properties {
        c.set(*k, *v);
    }
    c
}

/// Node `a` of `scope` with `properties` as its `cluster.kafka.properties`.
async fn node_with_kafka_properties(scope: &Scope, properties: &[(&str, &str)]) -> TestNode {
    let properties: std::collections::BTreeMap<String, String> =
        properties.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    scope.node("a").config(move |c| c.cluster.kafka.properties = properties).spawn().await
}

/// A node whose Kafka clients use `properties` (`cluster.kafka.properties`) consumes a push
/// from `brokers` and produces its presence event there; this test's clients use the same.
async fn pushes_and_presence_flow(test: &str, brokers: &str, properties: &[(&str, &str)]) {
    let client = || kafka_client_with(brokers, properties);
    let mut scope = Scope::new(test);
    scope.kafka = brokers.to_owned();
    let (push_topic, presence_topic) = (scope.push_topic(), scope.presence_topic());
    cluster::create_topics_with(client(), &[&push_topic, &presence_topic]).await;
    let node = node_with_kafka_properties(&scope, properties).await;
    let mut ws = node.connect(21, 9).await;
    await_sessions(&node, 21, 9, 1).await;

    let producer = cluster::producer_with(client());
    cluster::produce_push(&producer, &push_topic, "k-1", 9, 21, b"secured").await;
    let m = ws.recv_msg_within(JSON, KAFKA_WAIT).await.expect("the push arrives");
    assert!(is_push(&m, "k-1", b"secured"), "{m:?}");

    let mut reader = client();
    reader.set("group.id", "unused").set("enable.auto.commit", "false");
    let reader: rdkafka::consumer::StreamConsumer = reader.create().expect("consumer");
    let mut partitions = rdkafka::TopicPartitionList::new();
    let start = rdkafka::Offset::Beginning;
    partitions.add_partition_offset(&presence_topic, 0, start).expect("partition");
    rdkafka::consumer::Consumer::assign(&reader, &partitions).expect("assign");
    let event = cluster::next_json(&reader, KAFKA_WAIT).await.expect("a presence event");
    assert_eq!((event["userId"].as_i64(), event["action"].as_str()), (Some(21), Some("ONLINE")));
}

/// Kafka over TLS: tansu cannot serve TLS itself, so a TLS listener (the test CA's server
/// certificate) forwards to it and it advertises that listener; every client of it — the node's
/// push consumer and presence producer, and this test's — speaks TLS (librdkafka `ssl`).
#[tokio::test]
async fn pushes_and_presence_flow_over_tls() {
    let pki = crate::support::Pki::new();
    let port = free_port();
    let broker = Private::kafka_at("localhost", port);
    let _tls = cluster::Cut::start_with(port, broker.addr(), Some(pki.acceptor())).await;
    let ca = pki.arg("ca.pem");
    let tls = [("security.protocol", "ssl"), ("ssl.ca.location", ca.as_str())];
    pushes_and_presence_flow("kafka-tls", &format!("localhost:{port}"), &tls).await;
}

/// Kafka with SASL/SCRAM-SHA-512 over TLS (`security.protocol: sasl_ssl`, the README's setup),
/// against a tansu that requires SCRAM of every client, behind a TLS listener as above. The
/// broker refuses a wrong password (so the test proves the login, not an open door); a node with
/// a wrong password shows Kafka as down and keeps serving its clients.
///
/// Needs tansu's SQLite build, the one that keeps SCRAM users (the default build stores none):
/// `scripts/kafka-sasl.sh` (a step of the test command) builds it once and runs this test.
#[tokio::test]
#[ignore = "needs target/tools/bin/tansu-sql: scripts/kafka-sasl.sh builds it and runs this"]
async fn pushes_and_presence_flow_over_sasl_scram_and_tls() {
    const PASSWORD: &str = "kafka-sasl-test-password-0123456789";
    let pki = crate::support::Pki::new();
    let data = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let broker = Private::kafka_scram(data.path(), "localhost", port, "wsgw", PASSWORD);
    let _tls = cluster::Cut::start_with(port, broker.addr(), Some(pki.acceptor())).await;
    let brokers = format!("localhost:{port}");
    let ca = pki.arg("ca.pem");
    let sasl = |password| {
        [
            ("security.protocol", "sasl_ssl"),
            ("ssl.ca.location", ca.as_str()),
            ("sasl.mechanisms", "SCRAM-SHA-512"),
            ("sasl.username", "wsgw"),
            ("sasl.password", password),
        ]
    };

    let mut wrong = kafka_client_with(&brokers, &sasl("not-the-password"));
    let wrong: rdkafka::producer::FutureProducer =
        wrong.set("message.timeout.ms", "3000").create().expect("producer");
    let record = rdkafka::producer::FutureRecord::to("sasl-refused").key("k").payload("x");
    let refused = wrong.send(record, Duration::from_secs(5)).await;
    assert!(refused.is_err(), "the broker took a record from a wrong password");

    pushes_and_presence_flow("kafka-sasl", &brokers, &sasl(PASSWORD)).await;

    // Its topics exist: the only thing wrong is the password. (The series appears only once
    // the consumer has seen Kafka up or down.)
    let (mut scope, bad) = (Scope::new("kafka-sasl-wrong"), sasl("not-the-password"));
    scope.kafka = brokers.clone();
    let topics = [scope.push_topic(), scope.presence_topic()];
    let good = kafka_client_with(&brokers, &sasl(PASSWORD));
    cluster::create_topics_with(good, &[&topics[0], &topics[1]]).await;
    let node = node_with_kafka_properties(&scope, &bad).await;
    let down = "websocket_gateway_dependency_up{service=\"kafka\"} 0\n";
    crate::assert_within!(30, node.get("/metrics").await.1.contains(down), "Kafka not shown down");
    let mut ws = node.connect(22, 9).await;
    let hb = wsgw::protocol::Message {
        cmd: CommandType::Heartbeat.into(),
        key: "h".into(),
        body: Default::default(),
    };
    ws.send(&hb, JSON).await;
    assert_eq!(ws.recv_msg(JSON).await, hb, "the node still answers its clients");
}
