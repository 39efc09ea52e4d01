//! The `wsgw` binary itself: token minting, config checking, and serve with signals.

use std::{
    net::TcpListener,
    process::{Command, Stdio},
    time::Duration,
};

use wsgw::{auth::TokenVerifier, config::JwtConfig};

use crate::support::{Client, code};

fn wsgw() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wsgw"));
    cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    cmd
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

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

#[tokio::test]
async fn serve_with_embedded_defaults_drains_on_sigterm_and_exits_zero() {
    let (ws, gov) = (free_port(), free_port());
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_wsgw"))
        .arg("serve")
        .env("WSGW_SERVER__WEBSOCKET__LISTEN", format!("127.0.0.1:{ws}"))
        .env("WSGW_SERVER__GOVERNOR__LISTEN", format!("127.0.0.1:{gov}"))
        .env("WSGW_AUTH__JWT__SECRET", "child-secret")
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let token = String::from_utf8(
        wsgw()
            .args(["token", "--user", "5", "--biz", "6", "--secret", "child-secret"])
            .output()
            .expect("token")
            .stdout,
    )
    .expect("utf8");
    let url = format!("ws://127.0.0.1:{ws}/?token={}", token.trim());
    let mut client = None;
    for _ in 0..100 {
        if let Ok(c) = Client::connect(&url).await {
            client = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut client = client.expect("the node came up");
    let pid = child.id().expect("pid").to_string();
    let kill = Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
    assert!(kill.success());
    assert_eq!(code(&client.closed().await), (1001, "going away".into()));
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits")
        .expect("wait");
    assert_eq!(status.code(), Some(0));
}
