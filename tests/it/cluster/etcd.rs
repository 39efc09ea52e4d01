//! etcd: the node registry (load, drain, a killed node), backend discovery, `wsgw push --etcd`,
//! an unreachable etcd, and an etcd over mutual TLS with authentication.

use wsgw::{
    admin::client,
    cluster::registry::{self, EtcdAccess},
};

use super::*;

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
    assert_eq!(entry.weight, 1, "as the original wrote it (its tools read 0 as draining)");
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
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock");
    let sent_ms: u128 = m.key.parse().expect("the key is the time in Unix ms, as the original's");
    assert!(now_ms.as_millis().abs_diff(sent_ms) < 60_000, "{sent_ms} vs {now_ms:?}");
    let nodes = JSON.decode::<NodeList>(&m.body).expect("a NodeList body").nodes;
    assert_eq!(nodes.len(), 1, "only the live peer");
    assert_eq!((nodes[0].id.as_str(), nodes[0].port), ("b", i32::from(b.ws_addr.port())));
    let internal =
        nodes[0].labels.iter().find(|l| l.starts_with("grpc=") || l.starts_with("governor="));
    assert_eq!(internal, None, "clients never learn internal addresses: {:?}", nodes[0].labels);
    assert_eq!(code(&client.closed().await).0, 1001);
    stop.await.expect("drained");
}

#[tokio::test]
async fn a_killed_node_leaves_the_registry_and_the_directory_after_its_ttl() {
    let scope = Scope::new("killed");
    scope.create_topics().await;
    let presence = cluster::consumer(&scope.kafka, &scope.presence_topic());
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

    let mut redis = scope.redis_conn();
    let user_key = format!("{}:user:{{9:5}}", scope.name);
    let fields = redis::AsyncCommands::hlen::<_, usize>(&mut redis, &user_key).await;
    assert_eq!(fields.expect("hlen"), 1, "the victim's session is in the directory");

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
    crate::assert_within!(
        15,
        redis::AsyncCommands::hlen::<_, usize>(&mut redis, &user_key).await.expect("hlen") == 0,
        "the dead node's session was swept"
    );
    // Its user is gone everywhere: the sweeper says so, since the dead node cannot.
    let offline = cluster::next_json(&presence, KAFKA_WAIT).await.expect("OFFLINE from the sweep");
    assert_eq!(offline, serde_json::json!({"bizId": 9, "userId": 5, "action": "OFFLINE"}));
}

struct ChildNode {
    child: tokio::process::Child,
    ws_port: u16,
}

async fn spawn_binary(scope: &Scope, id: &str) -> ChildNode {
    let ws_port = free_port();
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
    let child = tokio::process::Command::from(crate::support::wsgw())
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
    // A mangled or deleted service list keeps the last good map (and is counted).
    let errors =
        "websocket_gateway_cluster_events_total{event=\"discovery_error\",service=\"etcd\"}";
    etcd.put(services.as_str(), "not json", None).await.expect("put");
    crate::assert_within!(10, node.metric(errors).await >= 1.0, "the bad list is noticed");
    assert!(upstream_ok(&mut client, "kept").await, "the last good map stays");
    etcd.delete(services.as_str(), None).await.expect("delete");
    crate::assert_within!(10, node.metric(errors).await >= 2.0, "the missing list is noticed");
    assert!(upstream_ok(&mut client, "kept").await, "the last good map stays");
    etcd.put(services.as_str(), r#"[{"bizId":9,"name":"mockServer"}]"#, None).await.expect("put");
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
async fn wsgw_push_with_etcd_reaches_the_user_wherever_they_are() {
    let scope = Scope::new("push-etcd");
    let _a = scope.node("a").spawn().await;
    let b = scope.node("b").spawn().await;
    crate::assert_within!(10, registered(&scope).await.len() == 2, "both registered");
    let mut client = b.connect(12, 9).await;
    await_sessions(&b, 12, 9, 1).await;
    let prefix = format!("/{}", scope.name);
    let out = tokio::process::Command::from(crate::support::wsgw())
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
    scope.kafka = format!("127.0.0.1:{}", free_port());
    let dead_etcd = format!("127.0.0.1:{}", free_port());
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

#[tokio::test]
async fn the_registry_and_the_tools_reach_an_etcd_over_mutual_tls_with_a_user() {
    let pki = crate::support::Pki::new();
    let etcd_server = Private::etcd_tls(&pki);
    let endpoint = format!("https://localhost:{}", etcd_server.port);
    let access = |user: &str, password: &str| EtcdAccess {
        endpoints: vec![endpoint.clone()],
        tls: wsgw::grpc::ClientTlsFiles {
            ca: Some(pki.path("ca.pem")),
            cert: Some(pki.path("client.pem")),
            key: Some(pki.path("client.key")),
        },
        username: user.into(),
        password: password.into(),
    };
    let mut admin = registry::connect(&access("", "")).await.expect("etcd over mutual TLS");
    admin.user_add("root", "etcd-pw", None).await.expect("user");
    admin.user_grant_role("root", "root").await.expect("role");
    admin.auth_enable().await.expect("authentication on");

    let scope = Scope::new("etcd-tls");
    let prefix = format!("/{}", scope.name);
    let etcd = access("root", "etcd-pw");
    let node = scope
        .node("a")
        .config(|c| {
            let e = &mut c.cluster.etcd;
            (e.endpoints, e.tls) = (etcd.endpoints.clone(), etcd.tls.clone());
            (e.username, e.password) = ("root".into(), "etcd-pw".into());
        })
        .spawn()
        .await;
    crate::assert_within!(
        10,
        client::registered(&etcd, &prefix).await.is_ok_and(|n| n.iter().any(|n| n.id == "a")),
        "registered over TLS as the etcd user"
    );
    let refused = client::registered(&access("root", "wrong"), &prefix).await;
    assert!(refused.is_err(), "a wrong password is refused");

    // The operator tools: --etcd-ca/--etcd-cert/--etcd-key, --etcd-user and the password from
    // the environment.
    let mut user = node.connect(13, 9).await;
    await_sessions(&node, 13, 9, 1).await;
    let out = tokio::process::Command::from(crate::support::wsgw())
        .args(["push", "--etcd", &endpoint, "--etcd-prefix", &prefix, "--etcd-user", "root"])
        .args(["--etcd-ca", &pki.arg("ca.pem"), "--etcd-cert", &pki.arg("client.pem")])
        .args(["--etcd-key", &pki.arg("client.key")])
        .args(["--user", "13", "--biz", "9", "--key", "via-tls-etcd", "hello"])
        .env("WSGW_CLUSTER__ETCD__PASSWORD", "etcd-pw")
        .output()
        .await
        .expect("run wsgw push");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert!(is_push(&user.recv_msg(JSON).await, "via-tls-etcd", b"hello"));
}
