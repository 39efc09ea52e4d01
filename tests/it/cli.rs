//! The `wsgw` binary itself: token minting, config checking, and serve with signals.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use wsgw::{auth::TokenVerifier, config::JwtConfig};

use crate::support::{Client, OPERATOR_TOKEN, code, free_port, wsgw};

/// A JWT secret long enough for a node to accept it.
const CHILD_SECRET: &str = "child-process-secret-0123456789abcdef";

#[test]
fn token_prints_a_jwt_the_node_accepts() {
    let out = wsgw()
        .args(["token", "--user", "42", "--biz", "9999", "--ttl", "10m", "--secret", "s3cret"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).expect("utf8");
    let verifier = TokenVerifier::new(&JwtConfig::default(), b"s3cret").expect("verifier");
    let id = verifier.verify(token.trim()).expect("valid token");
    assert_eq!((id.user_id, id.biz_id), (42, 9999));
}

#[test]
fn token_without_a_secret_explains_what_to_do() {
    let out = wsgw().args(["token", "--user", "1", "--biz", "2"]).output().expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no secret"));
}

#[test]
fn serve_check_validates_and_names_every_bad_key() {
    let ok = wsgw().args(["serve", "--check"]).output().expect("run");
    assert_eq!(ok.status.code(), Some(0));
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, "limits:\n  ping_interval: often\nbogus: 1\n").expect("write");
    let bad = wsgw()
        .args(["serve", "--check", "--config"])
        .arg(&path)
        .env("WSGW_SERVER__WEBSOCKET__LISTEN", "nowhere")
        .output()
        .expect("run");
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    for key in ["limits.ping_interval", "bogus", "server.websocket.listen"] {
        assert!(err.contains(key), "{key} not named in:\n{err}");
    }
}

#[test]
fn serve_refuses_missing_role_tokens_placeholders_and_weak_secrets() {
    let check = |envs: &[(&str, &str)]| {
        let mut cmd = wsgw();
        cmd.args(["serve", "--check"]).envs(envs.iter().copied());
        for role in ["BACKEND", "PEER", "OPERATOR"] {
            cmd.env_remove(format!("WSGW_SERVER__GRPC__TOKENS__{role}"));
        }
        let out = cmd.output().expect("run");
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (rc, err) = check(&[
        ("WSGW_CLUSTER__REDIS__URL", "redis://127.0.0.1:6379"),
        ("WSGW_AUTH__JWT__SECRET", "too-short"),
        ("WSGW_SERVER__GRPC__TOKEN", "change-me-cluster-token"),
    ]);
    assert_eq!(rc, Some(2), "{err}");
    for key in [
        "server.grpc.tokens.backend",
        "server.grpc.tokens.peer",
        "server.grpc.tokens.operator",
        "server.grpc.token: is a placeholder",
        "auth.jwt.secret: is 9 bytes",
    ] {
        assert!(err.contains(key), "{key} not named in:\n{err}");
    }
    // The ephemeral development secret stays behind a loopback listener.
    let (rc, err) = check(&[("WSGW_SERVER__WEBSOCKET__LISTEN", "0.0.0.0:9002")]);
    assert_eq!(rc, Some(2), "{err}");
    assert!(err.contains("auth.jwt.secret: is required"), "{err}");
    assert_eq!(check(&[]).0, Some(0), "no config at all: a loopback development node");
}

/// A `wsgw serve` child process on free loopback ports.
struct Served {
    child: tokio::process::Child,
    ws: u16,
    gov: u16,
}

impl Served {
    fn spawn(envs: &[(&str, &str)], stderr: Stdio) -> Served {
        let (ws, gov) = (free_port(), free_port());
        let child = tokio::process::Command::from(wsgw())
            .arg("serve")
            .env("WSGW_SERVER__WEBSOCKET__LISTEN", format!("127.0.0.1:{ws}"))
            .env("WSGW_SERVER__GOVERNOR__LISTEN", format!("127.0.0.1:{gov}"))
            .env("WSGW_SERVER__GRPC__LISTEN", "127.0.0.1:0")
            .envs(envs.iter().copied())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn");
        Served { child, ws, gov }
    }

    /// Connects with `token`, retrying while the node starts.
    async fn connect(&self, token: &str) -> Client {
        let url = format!("ws://127.0.0.1:{}/?token={}", self.ws, token.trim());
        for _ in 0..100 {
            if let Ok(c) = Client::connect(&url).await {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the node did not come up");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.id().expect("running").to_string();
        assert!(Command::new("kill").args([sig, &pid]).status().expect("kill").success());
    }

    async fn ready_status(&self) -> u16 {
        let url = format!("http://127.0.0.1:{}/ready", self.gov);
        crate::support::http_get(url).await.map(|r| r.status().as_u16()).unwrap_or(0)
    }

    async fn exit_code(&mut self) -> Option<i32> {
        let wait = tokio::time::timeout(Duration::from_secs(10), self.child.wait());
        wait.await.expect("exits in time").expect("wait").code()
    }
}

fn mint(secret: &str) -> String {
    let out = wsgw()
        .args(["token", "--user", "5", "--biz", "6", "--secret", secret])
        .output()
        .expect("token");
    String::from_utf8(out.stdout).expect("utf8")
}

#[tokio::test]
async fn serve_with_embedded_defaults_drains_on_sigterm_and_exits_zero() {
    let mut node = Served::spawn(&[("WSGW_AUTH__JWT__SECRET", CHILD_SECRET)], Stdio::null());
    let mut client = node.connect(&mint(CHILD_SECRET)).await;
    node.signal("-TERM");
    assert_eq!(code(&client.closed().await), (1001, "going away".into()));
    assert_eq!(node.exit_code().await, Some(0));
}

#[tokio::test]
async fn a_second_signal_exits_at_once() {
    let envs = [
        ("WSGW_AUTH__JWT__SECRET", CHILD_SECRET),
        ("WSGW_SHUTDOWN__DRAIN_TIMEOUT", "60s"),
        ("WSGW_LIMITS__PONG_TIMEOUT", "60s"),
    ];
    let mut node = Served::spawn(&envs, Stdio::null());
    let _deaf = node.connect(&mint(CHILD_SECRET)).await; // never answers the close
    node.signal("-TERM");
    for _ in 0..100 {
        if node.ready_status().await == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(node.ready_status().await, 503, "draining");
    node.signal("-INT");
    assert_eq!(node.exit_code().await, Some(130));
}

#[tokio::test]
async fn without_a_secret_serve_prints_a_token_command_that_works() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut node = Served::spawn(&[], Stdio::piped());
    let mut lines = BufReader::new(node.child.stderr.take().expect("stderr")).lines();
    let mut command = None;
    while let Ok(Some(line)) =
        tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await.expect("log line")
    {
        if let Some((_, cmd)) = line.split_once("mint a token with: ") {
            command = Some(cmd.to_owned());
            break;
        }
    }
    let command = command.expect("the node prints a token command");
    assert!(command.contains("token --user 42 --biz 9999 --secret "), "{command}");
    let mut parts = command.split_whitespace();
    let out = Command::new(parts.next().expect("program")).args(parts).output().expect("run it");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).expect("utf8");
    let mut client = node.connect(&token).await;
    client.send_text(r#"{"cmd":"COMMAND_TYPE_HEARTBEAT","key":"k1"}"#).await;
    assert_eq!(client.recv_msg(wsgw::protocol::Serializer::Json).await.key, "k1");
    drop(lines);
    node.signal("-TERM");
}

#[test]
fn loadtest_help_documents_every_scenario() {
    let out = wsgw().args(["loadtest", "--help"]).output().expect("run");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for scenario in ["idle", "upstream", "push", "broadcast", "churn"] {
        assert!(help.contains(&format!("  {scenario} ")), "{scenario} missing from:\n{help}");
    }
}

#[test]
fn generated_docs_are_current() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = wsgw().arg("generate-docs").arg(dir.path()).output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for sub in ["completions", "man"] {
        let mut fresh: Vec<_> = std::fs::read_dir(dir.path().join(sub))
            .expect("generated")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        fresh.sort();
        let mut committed: Vec<_> = std::fs::read_dir(repo.join(sub))
            .expect("committed")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        committed.sort();
        assert_eq!(fresh, committed, "{sub}/ is stale: run scripts/gen-docs.sh");
        for name in fresh {
            let a = std::fs::read(dir.path().join(sub).join(&name)).expect("read");
            let b = std::fs::read(repo.join(sub).join(&name)).expect("read");
            assert!(a == b, "{sub}/{} is stale: run scripts/gen-docs.sh", name.to_string_lossy());
        }
    }
}

#[tokio::test]
async fn sighup_reloads_the_tls_certificate() {
    let dir = tempfile::tempdir().expect("tmp");
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("rcgen");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, c.cert.pem()).expect("cert");
    std::fs::write(&key, c.signing_key.serialize_pem()).expect("key");
    let envs = [
        ("WSGW_AUTH__JWT__SECRET", CHILD_SECRET),
        ("WSGW_SERVER__WEBSOCKET__TLS__CERT", &*cert.to_string_lossy()),
        ("WSGW_SERVER__WEBSOCKET__TLS__KEY", &*key.to_string_lossy()),
        ("WSGW_SERVER__WEBSOCKET__TLS__RELOAD_CHECK", "1h"),
    ];
    let mut node = Served::spawn(&envs, Stdio::null());
    let reloads = || async {
        let url = format!("http://127.0.0.1:{}/metrics", node.gov);
        let text = crate::support::http_get(url).await.ok()?.text().await.ok()?;
        Some(text.contains("websocket_gateway_tls_reloads_total{outcome=\"ok\"} 1"))
    };
    for _ in 0..100 {
        if node.ready_status().await == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(reloads().await, Some(false), "nothing reloaded before the signal");
    node.signal("-HUP");
    crate::assert_eventually!(reloads().await == Some(true), "SIGHUP reloaded the files");
    assert_eq!(node.ready_status().await, 200, "still serving");
    node.signal("-TERM");
    assert_eq!(node.exit_code().await, Some(0));
}

#[tokio::test]
async fn tokens_signed_with_a_rotated_kid_secret_are_accepted() {
    let (current, retired) =
        ("rotation-secret-2026-12-0123456789ab", "rotation-secret-2026-11-0123456789ab");
    let node = crate::support::TestNode::builder()
        .config(move |c| {
            c.auth.jwt.secrets.insert("2026-12".into(), current.into());
        })
        .spawn()
        .await;
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("wsgw.yaml");
    let yaml = format!("auth:\n  jwt:\n    secrets:\n      \"2026-12\": {current}\n");
    std::fs::write(&config, yaml).expect("config");
    let mint = |args: &[&str]| {
        let out = wsgw().args(["token", "--user", "5", "--biz", "6"]).args(args).output();
        String::from_utf8(out.expect("token").stdout).expect("utf8").trim().to_owned()
    };
    let from_config = mint(&["--kid", "2026-12", "--config", &config.to_string_lossy()]);
    let url = |t: &str| node.url(&format!("?token={t}"));
    Client::connect(&url(&from_config)).await.expect("signed with the kid's secret");
    let retired_kid = mint(&["--kid", "2026-11", "--secret", retired]);
    assert!(Client::connect(&url(&retired_kid)).await.is_err(), "a kid no longer listed");
    let wrong = mint(&["--kid", "2026-12", "--secret", retired]);
    assert!(Client::connect(&url(&wrong)).await.is_err(), "the kid's secret, not another");
}

#[tokio::test]
async fn every_operator_action_leaves_an_audit_line() {
    let grpc = format!("127.0.0.1:{}", free_port());
    let envs = [("WSGW_AUTH__JWT__SECRET", CHILD_SECRET), ("WSGW_SERVER__GRPC__LISTEN", &*grpc)];
    let mut node = Served::spawn(&envs, Stdio::piped());
    let mut client = node.connect(&mint(CHILD_SECRET)).await;
    let out = wsgw()
        .args(["kick", "--addr", &grpc, "--user", "5", "--biz", "6", "--reason", "audit me"])
        .output()
        .expect("kick");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(code(&client.closed().await), (1008, "audit me".into()));
    node.signal("-TERM");
    assert_eq!(node.exit_code().await, Some(0));
    let mut log = String::new();
    let stderr = node.child.stderr.as_mut().expect("piped");
    tokio::io::AsyncReadExt::read_to_string(stderr, &mut log).await.expect("read log");
    let line = log.lines().find(|l| l.contains("wsgw::audit")).expect("an audit line");
    // which token: its config key and fingerprint, never the token itself
    let digest = <sha2::Sha256 as sha2::Digest>::digest(OPERATOR_TOKEN.as_bytes());
    let fingerprint: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    let credential = format!("credential=server.grpc.tokens.operator sha256:{fingerprint}");
    let parts = ["operator action", "action=\"kick\"", "caller=127.0.0.1:", "user=5", "closed=1"];
    for part in parts.into_iter().chain([credential.as_str()]) {
        assert!(line.contains(part), "{part} missing in {line}");
    }
    assert!(!log.contains(OPERATOR_TOKEN), "the token is never logged");
}
