//! The Redis session directory: routing to every node of a user, surviving a Redis restart,
//! refusing pushes it cannot record while Redis is unreachable, the inbox of unacknowledged
//! pushes.

use super::*;

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
    // A push that cannot be recorded is not accepted, even for a user on this node: the
    // producer hears UNAVAILABLE and retries.
    for node in [&b, &a] {
        let err = node.push(6, 9, "unrecorded", b"x").await.expect_err("cannot record it");
        assert_eq!(err.code(), tonic::Code::Unavailable);
    }
    // Existing connections keep working.
    client
        .send(
            &wsgw::protocol::Message { cmd: CommandType::Heartbeat.into(), ..Default::default() },
            JSON,
        )
        .await;
    assert_eq!(client.recv_msg(JSON).await.cmd, CommandType::Heartbeat as i32);

    redis.restart(); // empty: Redis keeps nothing here
    crate::assert_within!(15, b.get("/ready").await.0 == 200, "ready again");
    await_sessions(&a, 6, 9, 1).await;
    assert_eq!(a.push(6, 9, "rebuilt", b"found").await.expect("routed"), 1);
    assert!(is_push(&client.recv_msg(JSON).await, "rebuilt", b"found"));
}

#[tokio::test]
async fn an_unreachable_redis_at_start_keeps_clients_and_refuses_unrecordable_pushes() {
    let mut scope = Scope::new("no-redis");
    scope.redis = format!("redis://127.0.0.1:{}", free_port());
    let node = scope.node("a").spawn().await;
    let _client = node.connect(1, 9).await;
    crate::assert_within!(10, node.get("/ready").await.0 == 503, "not ready");
    assert_eq!(node.get("/health").await.0, 200);
    let err = node.push(1, 9, "k", b"local").await.expect_err("not recorded, not accepted");
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert_eq!(node.handle.pending_pushes(), 0, "and not delivered either");
}

#[tokio::test]
async fn an_inbox_push_that_could_not_be_handed_on_waits_for_the_next_connection() {
    let scope = Scope::new("inbox-kept");
    let b = scope
        .node("b")
        .config(|c| {
            c.downstream.max_pending = 1;
            c.downstream.retry_interval = Duration::from_secs(60);
        })
        .spawn()
        .await;
    // User 50 holds the node's only pending slot.
    let mut holder = b.connect(50, 9).await;
    await_sessions(&b, 50, 9, 1).await;
    assert_eq!(b.push(50, 9, "p0", b"hold").await.expect("delivered"), 1);
    assert!(is_push(&holder.recv_msg(JSON).await, "p0", b"hold"));
    // User 51 is offline: the push is stored in their inbox.
    assert_eq!(b.push(51, 9, "p1", b"kept").await.expect("stored"), 0);
    // 51 connects, but the node refuses the hand-off (no pending slot): the push must stay.
    let user = b.connect(51, 9).await;
    let refused = "websocket_gateway_pushes_total{event=\"refused\"}";
    crate::assert_within!(10, b.metric(refused).await >= 1.0, "the hand-off was refused");
    drop(user);
    await_sessions(&b, 51, 9, 0).await;
    holder.ack("p0", JSON).await;
    crate::assert_eventually!(b.handle.pending_pushes() == 0, "the slot is free again");

    let mut user = b.connect(51, 9).await;
    let m = user.recv_msg_within(JSON, Duration::from_secs(10)).await.expect("still in the inbox");
    assert!(is_push(&m, "p1", b"kept"), "{m:?}");
}

#[tokio::test]
async fn a_rebuild_hands_on_the_inbox_of_a_user_whose_connect_update_was_lost() {
    let mut redis = Private::redis();
    let mut scope = Scope::new("rebuild-inbox");
    scope.redis = format!("redis://{}", redis.addr());
    let b = scope
        .node("b")
        // Refreshes 3 s apart: the push below is stored long before the node rebuilds.
        .config(|c| c.cluster.redis.session_ttl = Duration::from_secs(9))
        .spawn()
        .await;
    crate::assert_within!(15, b.get("/ready").await.0 == 200, "ready");
    redis.kill();
    let mut client = b.connect(6, 9).await; // its connect update cannot be written
    crate::assert_within!(15, b.get("/ready").await.0 == 503, "the directory is down");

    redis.restart(); // empty
    // Meanwhile another node accepted a push for the user, whom the directory does not list.
    let a = scope.node("a").spawn().await;
    crate::assert_within!(15, a.get("/ready").await.0 == 200, "a ready");
    assert_eq!(a.push(6, 9, "while-lost", b"found").await.expect("kept in the inbox"), 0);

    let m = client.recv_msg_within(JSON, Duration::from_secs(20)).await.expect("the rebuild");
    assert!(is_push(&m, "while-lost", b"found"), "{m:?}");
    client.ack("while-lost", JSON).await;
    let mut conn = scope.redis_conn();
    let inbox = format!("{}:inbox:{{9:6}}", scope.name);
    crate::assert_eventually!(
        redis::AsyncCommands::hlen::<_, usize>(&mut conn, &inbox).await.expect("hlen") == 0,
        "acknowledged, then removed"
    );
}

#[tokio::test]
async fn a_message_resent_to_another_node_reaches_the_backend_once_with_the_original_ack() {
    let scope = Scope::new("dedup");
    let backend = TestBackend::spawn(9, Behaviour::default()).await;
    let addr = wsgw::grpc::GrpcAddr::parse(&backend.addr.to_string()).expect("address");
    let with_backend = move |c: &mut wsgw::config::Config| {
        let endpoints = vec![addr.clone()];
        c.backends =
            vec![wsgw::config::BackendConfig { biz_id: 9, endpoints, ..Default::default() }];
    };
    let a = scope.node("a").config(with_backend.clone()).spawn().await;
    let b = scope.node("b").config(with_backend).spawn().await;
    let msg = wsgw::protocol::Message {
        cmd: CommandType::UpstreamMessage.into(),
        key: "sent-once".into(),
        body: b"hello".to_vec().into(),
    };
    let mut on_a = a.connect(3, 9).await;
    on_a.send(&msg, JSON).await;
    let first = on_a.recv_msg(JSON).await;
    assert_eq!(first.cmd, CommandType::UpstreamAck as i32, "{first:?}");
    drop(on_a);

    // Redirected (or reconnected) elsewhere, the client resends what it has no ACK for.
    let mut on_b = b.connect(3, 9).await;
    on_b.send(&msg, JSON).await;
    let again = on_b.recv_msg(JSON).await;
    assert_eq!((again.cmd, &again.key, &again.body), (first.cmd, &first.key, &first.body));
    assert_eq!(backend.calls(), 1, "the backend saw the message once");
}

#[tokio::test]
async fn a_push_unacknowledged_on_a_draining_node_reaches_the_user_on_another_node() {
    let scope = Scope::new("drain-handover");
    let quick_drain = |c: &mut wsgw::config::Config| {
        long_retry(c);
        c.shutdown.ack_wait = Duration::from_millis(500);
    };
    let mut a = scope.node("a").config(quick_drain).spawn().await;
    let b = scope.node("b").config(quick_drain).spawn().await;
    let mut on_a = a.connect(4, 9).await;
    await_sessions(&b, 4, 9, 1).await;
    assert_eq!(a.push(4, 9, "unacked", b"keep me").await.expect("delivered"), 1);
    assert!(is_push(&on_a.recv_msg(JSON).await, "unacked", b"keep me"));
    assert_eq!(a.handle.pending_pushes(), 1, "never acknowledged");

    a.begin_shutdown().await.expect("drained");
    drop(on_a);
    // The client follows the REDIRECT to b and gets what a could not settle.
    let mut on_b = b.connect(4, 9).await;
    let m = on_b.recv_msg_within(JSON, Duration::from_secs(10)).await.expect("handed over");
    assert!(is_push(&m, "unacked", b"keep me"), "{m:?}");
}

#[tokio::test]
async fn a_given_up_push_is_kept_in_the_inbox_and_dead_lettered() {
    let scope = Scope::new("given-up");
    let dead = format!("dead-{}", scope.name);
    cluster::create_topics(&scope.kafka, &[&dead]).await;
    let letters = cluster::consumer(&scope.kafka, &dead);
    let topic = dead.clone();
    let a = scope
        .node("a")
        .config(move |c| {
            c.downstream.retry_interval = Duration::from_millis(100);
            c.downstream.max_retries = 1;
            c.cluster.kafka.dead_letter_topic = topic;
        })
        .spawn()
        .await;
    let mut client = a.connect(8, 9).await;
    await_sessions(&a, 8, 9, 1).await;
    a.push(8, 9, "ignored", b"again").await.expect("delivered");
    for _ in 0..2 {
        assert!(is_push(&client.recv_msg(JSON).await, "ignored", b"again"), "sent, then resent");
    }
    let kept = "websocket_gateway_pushes_total{event=\"kept_in_inbox\"}";
    crate::assert_eventually!(a.metric(kept).await == 1.0, "given up and kept");
    let letter = cluster::next_json(&letters, KAFKA_WAIT).await.expect("a dead letter");
    let want = serde_json::json!({"key": "ignored", "biz_id": 9, "receiver_id": 8,
        "body": "YWdhaW4=", "reason": "given_up"});
    assert_eq!(letter, want);
    drop(client);
    await_sessions(&a, 8, 9, 0).await;

    let mut client = a.connect(8, 9).await;
    let m = client.recv_msg_within(JSON, Duration::from_secs(10)).await.expect("from the inbox");
    assert!(is_push(&m, "ignored", b"again"), "{m:?}");
    client.ack("ignored", JSON).await;
}

#[tokio::test]
async fn a_full_inbox_drops_its_oldest_pushes_and_counts_them() {
    let scope = Scope::new("inbox-bounds");
    let a = scope
        .node("a")
        .config(|c| {
            c.cluster.redis.inbox_max = 2;
            c.cluster.redis.inbox_max_bytes = bytesize::ByteSize::kib(1);
        })
        .spawn()
        .await;
    for key in ["old", "middle", "new"] {
        assert_eq!(a.push(8, 9, key, b"small").await.expect("stored"), 0);
    }
    // One large push: alone it fits the byte bound, with the others it does not.
    let large = vec![b'x'; 700];
    assert_eq!(a.push(9, 9, "first", b"small").await.expect("stored"), 0);
    assert_eq!(a.push(9, 9, "large", &large).await.expect("stored"), 0);
    let overflow =
        "websocket_gateway_cluster_events_total{event=\"inbox_overflow\",service=\"redis\"}";
    assert_eq!(a.metric(overflow).await, 2.0, "one by count, one by bytes");

    let mut eight = a.connect(8, 9).await;
    for key in ["middle", "new"] {
        let m = eight.recv_msg_within(JSON, Duration::from_secs(10)).await.expect("kept");
        assert!(is_push(&m, key, b"small"), "{m:?}");
    }
    let mut nine = a.connect(9, 9).await;
    let m = nine.recv_msg_within(JSON, Duration::from_secs(10)).await.expect("kept");
    assert!(is_push(&m, "large", &large), "only the newest fits: {m:?}");
}

#[tokio::test]
async fn a_push_never_acked_on_one_node_reaches_the_user_on_another_and_one_ack_clears_it() {
    let scope = Scope::new("inbox-anywhere");
    let a = scope.node("a").config(long_retry).spawn().await;
    let b = scope.node("b").config(long_retry).spawn().await;
    let mut on_a = a.connect(5, 9).await;
    await_sessions(&b, 5, 9, 1).await;
    for key in ["first", "second"] {
        assert_eq!(b.push(5, 9, key, key.as_bytes()).await.expect("delivered"), 1);
        assert!(is_push(&on_a.recv_msg(JSON).await, key, key.as_bytes()));
    }
    drop(on_a); // gone without an ACK, while a is still up
    await_sessions(&b, 5, 9, 0).await;

    let mut on_b = b.connect(5, 9).await;
    for key in ["first", "second"] {
        let m = on_b.recv_msg_within(JSON, Duration::from_secs(10)).await.expect("redelivered");
        assert!(is_push(&m, key, key.as_bytes()), "in order of acceptance: {m:?}");
    }
    on_b.ack("first", JSON).await;
    on_b.ack("second", JSON).await;
    let mut conn = scope.redis_conn();
    let inbox = format!("{}:inbox:{{9:5}}", scope.name);
    crate::assert_eventually!(
        redis::AsyncCommands::hlen::<_, usize>(&mut conn, &inbox).await.expect("hlen") == 0,
        "the acks on b clear the inbox"
    );
    drop(on_b);
    await_sessions(&a, 5, 9, 0).await;
    let mut again = a.connect(5, 9).await;
    let nothing = again.recv_msg_within(JSON, Duration::from_millis(500)).await;
    assert!(nothing.is_none(), "acknowledged pushes are not delivered again: {nothing:?}");
}

#[tokio::test]
async fn a_push_unacknowledged_on_a_node_killed_with_sigkill_reaches_the_user_on_another() {
    let scope = Scope::new("sigkill");
    let mut a = scope.node("a").config(long_retry).spawn_process().await;
    let b = scope.node("b").config(long_retry).spawn().await;
    let mut on_a = a.connect(4, 9).await;
    await_sessions(&b, 4, 9, 1).await;
    assert_eq!(b.push(4, 9, "unacked", b"survives").await.expect("delivered"), 1);
    assert!(is_push(&on_a.recv_msg(JSON).await, "unacked", b"survives"));

    a.kill9().await; // no drain, no hand-over: only the inbox knows
    drop(on_a);
    let mut on_b = b.connect(4, 9).await;
    let m = on_b.recv_msg_within(JSON, Duration::from_secs(10)).await;
    let m = m.unwrap_or_else(|| panic!("not redelivered; a logged:\n{}", a.log()));
    assert!(is_push(&m, "unacked", b"survives"), "{m:?}");
}

#[tokio::test]
async fn an_inbox_keeps_one_entry_per_key_and_forgets_expired_and_acknowledged_pushes() {
    let scope = Scope::new("inbox-life");
    let a = scope
        .node("a")
        .config(|c| c.cluster.redis.inbox_ttl = Duration::from_secs(1))
        .spawn()
        .await;
    assert_eq!(a.push(3, 9, "old", b"stale").await.expect("stored"), 0);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..2 {
        assert_eq!(a.push(3, 9, "new", b"fresh").await.expect("stored"), 0);
    }
    let expired =
        "websocket_gateway_cluster_events_total{event=\"inbox_expired\",service=\"redis\"}";
    assert_eq!(a.metric(expired).await, 1.0, "the old one expired");
    let mut conn = scope.redis_conn();
    let key = |k: &str| format!("{}:{k}:{{9:3}}", scope.name);
    let (len, size): (usize, usize) = redis::pipe()
        .hlen(key("inbox"))
        .cmd("HSTRLEN")
        .arg(key("inbox"))
        .arg("new")
        .query_async(&mut conn)
        .await
        .expect("read");
    let bytes: usize =
        redis::AsyncCommands::hget(&mut conn, key("inbox-meta"), "bytes").await.expect("bytes");
    assert_eq!((len, bytes), (1, size), "one entry per key, and its size is what is counted");

    let mut client = a.connect(3, 9).await;
    let m = client.recv_msg_within(JSON, Duration::from_secs(10)).await.expect("delivered");
    assert!(is_push(&m, "new", b"fresh"), "{m:?}");
    assert!(client.recv_msg_within(JSON, Duration::from_millis(300)).await.is_none(), "once");
    client.ack("new", JSON).await;
    crate::assert_eventually!(
        redis::AsyncCommands::hget::<_, _, usize>(&mut conn, key("inbox-meta"), "bytes")
            .await
            .expect("bytes")
            == 0,
        "acknowledged: gone, and its bytes with it"
    );
}

/// Retransmissions a minute apart: within a test, a push is delivered once per connection.
fn long_retry(c: &mut wsgw::config::Config) {
    c.downstream.retry_interval = Duration::from_secs(60);
}

#[tokio::test]
async fn presence_counts_a_users_connections_on_every_node() {
    let scope = Scope::new("presence");
    let a = scope.node("a").spawn().await;
    let b = scope.node("b").spawn().await;
    let _on_a = a.connect(21, 9).await;
    let on_b = b.connect(21, 9).await;
    let _again_on_b = b.connect(21, 9).await;
    await_sessions(&a, 21, 9, 3).await;
    assert_eq!(a.presence(21, 9).await.expect("presence"), (true, 3, 2), "asked node a");
    assert_eq!(b.presence(21, 9).await.expect("presence"), (true, 3, 2), "asked node b");
    assert_eq!(a.presence(22, 9).await.expect("presence"), (false, 0, 0), "never connected");
    drop(on_b);
    crate::assert_within!(
        10,
        a.presence(21, 9).await.expect("presence") == (true, 2, 2),
        "a connection went away"
    );
    let refused = a.presence(0, 9).await.expect_err("not a user");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn the_directory_works_over_tls_with_an_acl_user_and_refuses_a_wrong_password() {
    let pki = crate::support::Pki::new();
    let redis = Private::redis_tls(&pki, "directory-pw");
    let mut scope = Scope::new("redis-tls");
    scope.redis = format!("rediss://localhost:{}", redis.port);
    let over_tls = |password: &'static str| {
        let (ca, cert, key) = (pki.path("ca.pem"), pki.path("client.pem"), pki.path("client.key"));
        move |c: &mut wsgw::config::Config| {
            let r = &mut c.cluster.redis;
            (r.username, r.password) = ("wsgw".into(), password.into());
            (r.tls.ca, r.tls.cert, r.tls.key) = (Some(ca), Some(cert), Some(key));
        }
    };
    let a = scope.node("a").config(over_tls("directory-pw")).spawn().await;
    let b = scope.node("b").config(over_tls("directory-pw")).spawn().await;
    let mut on_a = a.connect(8, 9).await;
    await_sessions(&b, 8, 9, 1).await;
    assert_eq!(b.push(8, 9, "tls", b"through b").await.expect("routed"), 1);
    assert!(is_push(&on_a.recv_msg(JSON).await, "tls", b"through b"));
    crate::assert_within!(10, a.get("/ready").await.0 == 200, "ready");

    // The refusal is Redis's: the wrong password, not the TLS link.
    let ping = |password: &str| {
        let auth = wsgw::cluster::directory::RedisAuth {
            tls: wsgw::grpc::ClientTlsFiles {
                ca: Some(pki.path("ca.pem")),
                cert: Some(pki.path("client.pem")),
                key: Some(pki.path("client.key")),
            },
            username: "wsgw".into(),
            password: password.into(),
        };
        let redis =
            wsgw::cluster::directory::Redis::open_with(&[scope.redis.clone()], false, &auth);
        async move { redis::cmd("PING").query_async::<String>(&mut redis.expect("open")).await }
    };
    assert_eq!(ping("directory-pw").await.expect("PONG"), "PONG");
    let refused = ping("not-the-password").await.expect_err("refused").to_string();
    assert!(refused.contains("AuthenticationFailed"), "{refused}");

    let wrong = scope.node("c").config(over_tls("not-the-password")).spawn().await;
    crate::assert_within!(
        10,
        wrong.get("/ready").await.0 == 503,
        "no directory without the password"
    );
    let up = r#"websocket_gateway_dependency_up{dependency="redis"}"#;
    assert_eq!(wrong.metric(up).await, 0.0);
    assert!(wrong.push(8, 9, "refused", b"x").await.is_err(), "cannot record it");
}

#[tokio::test]
async fn pushes_to_another_node_ride_one_stream_that_outlives_the_call_timeout() {
    let scope = Scope::new("peer-stream");
    // A short per-call limit on b's gRPC port: the stream from a must outlive it.
    let a = scope.node("a").spawn().await;
    let short = Duration::from_millis(300);
    let b = scope.node("b").config(|c| c.server.grpc.request_timeout = short).spawn().await;
    let mut on_b = b.connect(8, 9).await;
    await_sessions(&a, 8, 9, 1).await;

    for i in 0..4 {
        let key = format!("s{i}");
        assert_eq!(a.push(8, 9, &key, b"x").await.expect("pushed through a"), 1);
        assert!(is_push(&on_b.recv_msg(JSON).await, &key, b"x"));
        on_b.ack(&key, JSON).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let opened = r#"websocket_gateway_cluster_events_total{event="stream_opened",service="peer"}"#;
    assert_eq!(a.metric(opened).await, 1.0, "one stream for every push, past b's call limit");
    let delivered = r#"websocket_gateway_cluster_events_total{event="delivered",service="peer"}"#;
    assert_eq!(a.metric(delivered).await, 4.0);
}
