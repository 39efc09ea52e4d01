//! The Prometheus side of a node, with the real Prometheus (Debian's `prometheus` package,
//! installed by `scripts/services.sh`): `promtool` checks the scrape config, the alert rules and
//! their unit tests in `scripts/grafana/`, and lints a live node's `/metrics`; a real Prometheus
//! scrapes a real node and answers the alert's query.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use crate::support::{TestNode, free_port};

fn grafana_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/grafana")
}

fn tool(name: &str) -> Command {
    let found = Command::new(name).arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(found, "{name} is missing: scripts/services.sh tools installs Debian's prometheus");
    Command::new(name)
}

/// Runs promtool with `args` (and `stdin`); panics with its output unless it succeeds.
fn promtool(args: &[&str], stdin: Option<&str>) {
    let mut child = tool("promtool")
        .args(args)
        .current_dir(grafana_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.unwrap_or_default().as_bytes()).expect("write");
    drop(input);
    let out = child.wait_with_output().expect("promtool");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
}

#[test]
fn promtool_accepts_the_scrape_config_and_the_alert_rules_and_their_tests_pass() {
    promtool(&["check", "config", "prometheus.yml"], None);
    promtool(&["check", "rules", "rules.yml"], None);
    promtool(&["test", "rules", "rules.test.yml"], None);
}

#[tokio::test]
async fn a_live_nodes_metrics_pass_promtools_lint() {
    let node = TestNode::spawn().await;
    let _client = node.connect(7, 9999).await;
    crate::assert_eventually!(
        node.metric("websocket_gateway_online_users{biz_id=\"9999\"}").await == 1.0,
        "the client is counted"
    );
    let (_, metrics) = node.get("/metrics").await;
    promtool(&["check", "metrics"], Some(&metrics));
}

/// A Prometheus server on a free loopback port with `config`; killed when dropped.
struct Prometheus {
    url: String,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(scrape: &str) -> Self {
        let dir = tempfile::tempdir().expect("tmp");
        let rules = grafana_dir().join("rules.yml");
        let config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             rule_files: [{rules:?}]\n\
             scrape_configs:\n  - job_name: wsgw\n    static_configs: [{{targets: [\"{scrape}\"]}}]\n"
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).expect("config");
        let listen = format!("127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
        let child = tool("prometheus")
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={listen}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus");
        Self { url: format!("http://{listen}"), child, _dir: dir }
    }

    /// `GET /api/v1/<path>`'s `data`, or None while Prometheus is not answering yet.
    async fn api(&self, path: &str) -> Option<serde_json::Value> {
        let resp = crate::support::http_get(format!("{}/api/v1/{path}", self.url)).await.ok()?;
        let body: serde_json::Value = serde_json::from_str(&resp.text().await.ok()?).ok()?;
        (body["status"] == "success").then(|| body["data"].clone())
    }

    /// Polls `/api/v1/<path>` until its `data` passes `done` (at most `secs`).
    async fn wait_for(
        &self,
        path: &str,
        secs: u64,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            let data = self.api(path).await;
            match data {
                Some(data) if done(&data) => return data,
                _ if tokio::time::Instant::now() > deadline => {
                    panic!("Prometheus: {path} gave {data:?}\n{}", self.log())
                }
                _ => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_real_prometheus_scrapes_a_node_and_answers_the_alerts_query() {
    let node = TestNode::spawn().await;
    let _clients =
        [node.connect(1, 9999).await, node.connect(2, 9999).await, node.connect(2, 9999).await];
    let instance = node.governor_addr.to_string();
    let prometheus = Prometheus::start(&instance);

    // The alert's query, as Grafana and rules.yml ask it: users per node.
    let query = "query?query=sum(websocket_gateway_online_users)%20by%20(instance)";
    let answer = prometheus.wait_for(query, 30, |d| d["result"][0].is_object()).await;
    let result = &answer["result"][0];
    assert_eq!(result["metric"]["instance"], instance.as_str(), "{result}");
    assert_eq!(result["value"][1], "2", "two users: {result}");

    // The connections per node, what the original's `online_users` counted.
    let conns = prometheus.api("query?query=sum(websocket_gateway_online_connections)").await;
    assert_eq!(conns.expect("answered")["result"][0]["value"][1], "3");

    // The alert rules loaded and evaluate without errors against real series.
    let evaluated = |g: &serde_json::Value| {
        g["groups"][0]["rules"].as_array().is_some_and(|rules| {
            rules.iter().all(|r| r["lastEvaluation"] != "0001-01-01T00:00:00Z")
        })
    };
    let groups = prometheus.wait_for("rules", 10, evaluated).await;
    let rules = groups["groups"][0]["rules"].as_array().expect("rules");
    let names: Vec<_> = rules.iter().map(|r| r["name"].clone()).collect();
    assert_eq!(names, ["GatewayNodeOverloaded", "GatewayDependencyDown", "GatewayPushesGivenUp"]);
    for rule in rules {
        assert_eq!(rule["health"], "ok", "{rule}");
        assert_eq!(rule["state"], "inactive", "two users are no overload: {rule}");
    }
}
