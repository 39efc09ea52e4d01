//! The test harness: `TestNode::builder()…spawn()` and a WebSocket test client.

mod backend;
mod client;
pub mod cluster;
mod node;
mod pki;
mod process;

pub use backend::{Behaviour, TestBackend, dead_addr};
pub use client::{Client, code};
pub use node::{BACKEND_TOKEN, OPERATOR_TOKEN, PEER_TOKEN, SECRET, TestNode};
pub use pki::Pki;

/// An HTTP client. reqwest is built with rustls but without a crypto provider (the node uses
/// ring; see `auth::JwksSource`), so the process default is installed first.
pub fn http() -> reqwest::Client {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// `GET url` with [`http`].
pub async fn http_get(url: impl reqwest::IntoUrl) -> reqwest::Result<reqwest::Response> {
    http().get(url).send().await
}

/// A raw WebSocket upgrade request with `token` in the query and `extra` header lines
/// (each ending in `\r\n`), for tests that write their own bytes.
pub fn upgrade_request(token: &str, extra: &str) -> String {
    format!(
        "GET /?token={token} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// The `wsgw` binary under test, with a clean environment (only `PATH`), so that no `WSGW_*`
/// variable of the developer's shell changes what a test sees. For async tests:
/// `tokio::process::Command::from(wsgw())`.
pub fn wsgw() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_wsgw"));
    cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    // The role tokens of cluster-scope nodes, as an operator's shell would hold them (child
    // `serve` processes take them as config); a `--token` flag wins over them.
    cmd.env("WSGW_SERVER__GRPC__TOKENS__BACKEND", BACKEND_TOKEN)
        .env("WSGW_SERVER__GRPC__TOKENS__PEER", PEER_TOKEN)
        .env("WSGW_SERVER__GRPC__TOKENS__OPERATOR", OPERATOR_TOKEN);
    cmd
}

/// Runs `wsgw ARGS…` to completion: (exit code, stdout, stderr).
pub async fn run_wsgw(args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::from(wsgw()).args(args).output().await.expect("run wsgw");
    let text = |b: Vec<u8>| String::from_utf8(b).expect("utf-8");
    (out.status.code().unwrap_or(-1), text(out.stdout), text(out.stderr))
}

/// Asserts that `cond` becomes true within a few seconds (polling).
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr, $($msg:tt)+) => {
        $crate::assert_within!(5, $cond, $($msg)+)
    };
}

/// Asserts that `cond` becomes true within `secs` seconds (polling).
#[macro_export]
macro_rules! assert_within {
    ($secs:expr, $cond:expr, $($msg:tt)+) => {{
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs($secs);
        loop {
            if $cond {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                panic!($($msg)+);
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }};
}
