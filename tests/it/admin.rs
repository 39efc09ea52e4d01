//! The admin API and the operator subcommands (`sessions`, `kick`, `alert-webhook`) against
//! running nodes: the real binary for the CLI, real gRPC and HTTP for the rest.

use std::time::Duration;

use tokio_stream::StreamExt as _;
use wsgw::{
    admin::{
        client::{self, Target},
        webhook::{self, WebhookConfig},
    },
    protocol::{
        CommandType, Serializer,
        admin_pb::{DrainRequest, InfoRequest, RedirectRequest, WatchStatsRequest},
        pb::NodeList,
    },
};

use crate::support::{OPERATOR_TOKEN, TestNode, cluster::Scope, code, run_wsgw};

const JSON: Serializer = Serializer::Json;

fn users(json: &str) -> Vec<(String, String)> {
    let v: serde_json::Value = serde_json::from_str(json).expect("--json output parses");
    let mut users: Vec<(String, String)> = v["sessions"]
        .as_array()
        .expect("sessions array")
        .iter()
        .map(|s| {
            (s["bizId"].as_str().unwrap_or("").into(), s["userId"].as_str().unwrap_or("").into())
        })
        .collect();
    users.sort();
    users
}

#[tokio::test]
async fn sessions_lists_exactly_the_connected_users() {
    let node = TestNode::spawn().await;
    let _a = node.connect(1, 9).await;
    let _b = node.connect(2, 9).await;
    let _c = node.connect(3, 8).await;
    let addr = node.grpc_addr.to_string();
    crate::assert_eventually!(node.handle.connections() == 3, "three connected");

    let (rc, out, err) = run_wsgw(&["sessions", "--addr", &addr, "--json"]).await;
    assert_eq!(rc, 0, "{err}");
    let expected = [("8", "3"), ("9", "1"), ("9", "2")].map(|(b, u)| (b.to_owned(), u.to_owned()));
    assert_eq!(users(&out), expected);

    let (_, out, _) =
        run_wsgw(&["sessions", "--addr", &addr, "--json", "--biz", "9", "--user", "2"]).await;
    assert_eq!(users(&out), [("9".to_owned(), "2".to_owned())]);
    let (rc, table, _) = run_wsgw(&["sessions", "--addr", &addr]).await;
    assert_eq!(rc, 0);
    assert!(table.starts_with("NODE") && table.contains("3 connection(s), 3 user(s)"), "{table}");
}

#[tokio::test]
async fn kick_closes_every_connection_of_the_user_on_every_node_with_the_reason() {
    let scope = Scope::new("kick");
    let a = scope.node("a").spawn().await;
    let b = scope.node("b").spawn().await;
    let mut on_a = a.connect(7, 9).await;
    let mut on_b = b.connect(7, 9).await;
    let mut other = a.connect(8, 9).await;
    let prefix = format!("/{}", scope.name);
    crate::assert_within!(
        10,
        client::registered(&shared_etcd(), &prefix).await.map(|n| n.len()).unwrap_or(0) == 2,
        "both registered"
    );
    let etcd = ["--etcd", crate::support::cluster::ETCD, "--etcd-prefix", &prefix];

    let (rc, out, err) = run_wsgw(&[&["sessions", "--json"], &etcd[..]].concat()).await;
    assert_eq!(rc, 0, "{err}");
    assert_eq!(users(&out).len(), 3, "every node answered: {out}");

    let args =
        [&["kick", "--user", "7", "--biz", "9", "--reason", "maintenance", "--json"], &etcd[..]]
            .concat();
    let (rc, out, err) = run_wsgw(&args).await;
    assert_eq!(rc, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["closed"], 2);
    for client in [&mut on_a, &mut on_b] {
        assert_eq!(code(&client.closed().await), (1008, "maintenance".to_owned()));
    }
    other.listen_for(Duration::from_millis(200)).await;
    let (rc, out, _) =
        run_wsgw(&[&["kick", "--user", "7", "--biz", "9"], &etcd[..]].concat()).await;
    assert_eq!(rc, 1, "nobody left to kick: {out}");
}

#[tokio::test]
async fn wrong_or_missing_tokens_are_refused() {
    let node = TestNode::builder().config(|c| c.server.grpc.token = "s3cret".into()).spawn().await;
    let addr = node.grpc_addr.to_string();
    for token in ["wrong", ""] {
        let (rc, _, err) = run_wsgw(&["sessions", "--addr", &addr, "--token", token]).await;
        assert_eq!(rc, 2);
        assert!(err.contains("Unauthenticated"), "{err}");
        let (rc, _, _) =
            run_wsgw(&["kick", "--addr", &addr, "--token", token, "--user", "1", "--biz", "1"])
                .await;
        assert_eq!(rc, 2);
    }
    let (rc, out, err) =
        run_wsgw(&["sessions", "--addr", &addr, "--token", "s3cret", "--json"]).await;
    assert_eq!((rc, users(&out).len()), (0, 0), "{err}");
}

#[tokio::test]
async fn each_role_token_opens_its_own_service_only() {
    let node = TestNode::builder()
        .config(|c| {
            c.server.grpc.tokens.backend = "role-backend".into();
            c.server.grpc.tokens.peer = "role-peer".into();
            c.server.grpc.tokens.operator = "role-operator".into();
        })
        .spawn()
        .await;
    let _user = node.connect(5, 9).await;
    let addr = node.grpc_addr.to_string();
    let push = |token: &'static str| {
        let addr = addr.clone();
        async move {
            let args = ["push", "--addr", &addr, "--token", token, "--user", "5", "--biz", "9"];
            run_wsgw(&[&args[..], &["hi"]].concat()).await
        }
    };
    for other in ["role-operator", "role-peer"] {
        let (rc, _, err) = push(other).await;
        assert_eq!(rc, 2, "a push with the {other} token: {err}");
        assert!(err.contains("Unauthenticated"), "{err}");
    }
    assert_eq!(push("role-backend").await.0, 0, "the backend token pushes");
    for other in ["role-backend", "role-peer"] {
        let (rc, _, err) = run_wsgw(&["sessions", "--addr", &addr, "--token", other]).await;
        assert_eq!(rc, 2, "sessions with the {other} token: {err}");
    }
    let backend = client::node("n", &addr, "role-backend", &Default::default()).expect("client");
    let drain = backend.client.clone().drain(backend.request(DrainRequest {})).await;
    assert_eq!(drain.expect_err("a push token cannot drain").code(), tonic::Code::Unauthenticated);
    // No secret on the command line: the operator token from a file (or its variable).
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("operator-token");
    std::fs::write(&file, "role-operator\n").expect("write");
    let file = file.to_string_lossy();
    let (rc, out, err) = run_wsgw(&["sessions", "--addr", &addr, "--token-file", &file]).await;
    assert_eq!(rc, 0, "{err}");
    assert!(out.contains('5'), "{out}");
    assert_eq!(node.handle.connections(), 1, "still serving");
}

#[tokio::test]
async fn stats_and_the_stats_feed_report_the_node() {
    let node = TestNode::spawn().await;
    let _c = node.connect(1, 9).await;
    let n = client::node("n", &node.grpc_addr.to_string(), OPERATOR_TOKEN, &Default::default())
        .expect("client");
    let mut admin = n.client.clone();
    crate::assert_within!(
        5,
        admin.info(InfoRequest {}).await.expect("info").into_inner().connections == 1,
        "info counts the connection"
    );
    let info = admin.info(InfoRequest {}).await.expect("info").into_inner();
    assert_eq!(
        (info.node_id.as_str(), info.phase.as_str(), info.ready),
        ("test-node", "running", true)
    );
    let mut feed =
        admin.watch_stats(WatchStatsRequest { interval_ms: 100 }).await.expect("feed").into_inner();
    for _ in 0..3 {
        let s = tokio::time::timeout(Duration::from_secs(5), feed.next()).await.expect("in time");
        assert_eq!(s.expect("item").expect("ok").users, 1);
    }
}

/// Two registered cluster nodes `a` and `b`, with four clients on `a`.
struct Pair {
    a: TestNode,
    b: TestNode,
    clients: Vec<crate::support::Client>,
    etcd: wsgw::cluster::registry::EtcdAccess,
    prefix: String,
}

async fn pair(test: &str) -> Pair {
    let scope = Scope::new(test);
    let a = scope.node("a").spawn().await;
    let b = scope.node("b").spawn().await;
    let prefix = format!("/{}", scope.name);
    let etcd = shared_etcd();
    crate::assert_within!(
        10,
        client::registered(&etcd, &prefix).await.map(|n| n.len()).unwrap_or(0) == 2,
        "registered"
    );
    let mut clients = Vec::new();
    for user in 1..=4 {
        clients.push(a.connect(user, 9).await);
    }
    Pair { a, b, clients, etcd, prefix }
}

#[tokio::test]
async fn redirect_moves_the_asked_share_of_clients_to_a_live_peer() {
    let Pair { a, b, mut clients, .. } = pair("admin-redirect").await;
    let n = client::node("a", &a.grpc_addr.to_string(), OPERATOR_TOKEN, &Default::default())
        .expect("client");
    let r = n
        .client
        .clone()
        .redirect(n.request(RedirectRequest { fraction: 0.5, count: 0 }))
        .await
        .expect("redirect");
    let r = r.into_inner();
    assert_eq!(r.redirected, 2);
    assert_eq!(r.targets.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), ["b"]);
    assert_eq!(r.targets[0].port, i32::from(b.ws_addr.port()));
    let mut moved = 0;
    for c in &mut clients {
        if let Some(m) = c.recv_msg_within(JSON, Duration::from_millis(500)).await {
            assert_eq!(m.cmd, i32::from(CommandType::Redirect));
            let shown = &JSON.decode::<NodeList>(&m.body).expect("NodeList").nodes[0];
            assert_eq!(shown.id, "b");
            assert!(!shown.labels.iter().any(|l| l.starts_with("grpc=")), "{:?}", shown.labels);
            assert_eq!(code(&c.closed().await), (1001, "redirected".to_owned()));
            moved += 1;
        }
    }
    assert_eq!(moved, 2);
    crate::assert_eventually!(a.handle.connections() == 2, "half stay");
}

async fn webhook_on(target: Target) -> String {
    let config = WebhookConfig {
        target,
        admin_token: OPERATOR_TOKEN.into(),
        token: "hook-token".into(),
        basic_auth: "grafana:pw".into(),
        fraction: 0.5,
        label: String::new(),
        cooldown: Duration::from_secs(300),
        tls: Default::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, webhook::router(config)).await });
    format!("http://{addr}/webhook/v1")
}

fn alert(status: &str, instance: &str) -> serde_json::Value {
    serde_json::json!({
        "receiver": "wsgw", "status": status, "orgId": 1,
        "alerts": [{
            "status": status, "fingerprint": "f00d",
            "labels": {"alertname": "GatewayOverloaded", "instance": instance},
            "annotations": {}, "startsAt": "2026-11-29T00:00:00Z"
        }]
    })
}

async fn post(url: &str, auth: Option<&str>, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let mut req = crate::support::http()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let resp = req.send().await.expect("POST");
    let status = resp.status().as_u16();
    (status, serde_json::from_str(&resp.text().await.expect("body")).unwrap_or_default())
}

#[tokio::test]
async fn the_webhook_rebalances_the_alerting_node_once_and_ignores_resolved_alerts() {
    let Pair { a, b: _b, mut clients, etcd, prefix } = pair("webhook").await;
    let url = webhook_on(Target::Etcd(etcd, prefix)).await;
    // Prometheus' instance label is the scraped governor address.
    let firing = alert("firing", &a.governor_addr.to_string());

    assert_eq!(post(&url, None, &firing).await.0, 401);
    assert_eq!(post(&url, Some("Bearer nope"), &firing).await.0, 401);
    assert_eq!(post(&url, Some("Basic Z3JhZmFuYTp3cm9uZw=="), &firing).await.0, 401);
    assert_eq!(a.handle.connections(), 4, "nothing happened without credentials");

    let (status, answer) = post(&url, Some("Bearer hook-token"), &firing).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["actions"][0]["action"], "redirected", "{answer}");
    assert_eq!(
        (answer["actions"][0]["node"].as_str(), answer["actions"][0]["redirected"].as_u64()),
        (Some("a"), Some(2))
    );
    let mut moved = 0;
    for c in &mut clients {
        if c.recv_msg_within(JSON, Duration::from_millis(300)).await.is_some() {
            assert_eq!(code(&c.closed().await), (1001, "redirected".to_owned()));
            moved += 1;
        }
    }
    assert_eq!(moved, 2);
    crate::assert_eventually!(a.handle.connections() == 2, "half of a's clients left");

    // Grafana repeats the notification: nothing more happens.
    let basic = format!("Basic {}", base64_of("grafana:pw"));
    let (_, again) = post(&url, Some(&basic), &firing).await;
    assert_eq!(again["actions"][0]["action"], "skipped_cooldown", "{again}");
    let (_, resolved) =
        post(&url, Some("Bearer hook-token"), &alert("resolved", &a.governor_addr.to_string()))
            .await;
    assert_eq!(resolved["actions"][0]["action"], "ignored_resolved");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(a.handle.connections(), 2, "the repeat and the resolved alert moved nobody");
    let (_, unknown) =
        post(&url, Some("Bearer hook-token"), &alert("firing", "10.9.9.9:9003")).await;
    assert_eq!(unknown["actions"][0]["action"], "unknown_node");
}

fn base64_of(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test]
async fn drain_through_the_admin_api_stops_the_node() {
    let mut node = TestNode::spawn().await;
    let n = client::node("n", &node.grpc_addr.to_string(), OPERATOR_TOKEN, &Default::default())
        .expect("client");
    let drain = n.request(DrainRequest {});
    n.client.clone().drain(drain).await.expect("drain");
    let task = node.task();
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("stopped in time").expect("ok");
}

#[test]
fn the_grafana_files_parse_and_point_the_alert_at_the_webhook() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/grafana");
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).expect("file");
    let alerting: serde_json::Value =
        serde_yaml_ng::from_str(&read("alerting.yaml")).expect("yaml");
    let rule = &alerting["groups"][0]["rules"][0];
    assert_eq!(
        rule["data"][0]["model"]["expr"],
        "sum(websocket_gateway_online_users) by (instance)"
    );
    assert_eq!(alerting["contactPoints"][0]["receivers"][0]["type"], "webhook");
    assert_eq!(alerting["policies"][0]["receiver"], alerting["contactPoints"][0]["name"]);
    let prometheus: serde_json::Value =
        serde_yaml_ng::from_str(&read("prometheus.yml")).expect("yaml");
    assert_eq!(prometheus["scrape_configs"][0]["metrics_path"], "/metrics");
    let dashboard: serde_json::Value = serde_json::from_str(&read("dashboard.json")).expect("json");
    let exprs: Vec<&str> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str())
        .collect();
    assert!(exprs.contains(&"sum(websocket_gateway_online_users) by (instance)"), "{exprs:?}");
}

/// The shared etcd of scripts/services.sh (plain, no user).
fn shared_etcd() -> wsgw::cluster::registry::EtcdAccess {
    let endpoints = vec![crate::support::cluster::ETCD.to_owned()];
    wsgw::cluster::registry::EtcdAccess { endpoints, ..Default::default() }
}
