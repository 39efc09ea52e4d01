//! The governor's and the webhook's HTTP server (`wsgw::http`) cannot be held by a client: a
//! slowloris is cut off at the header timeout, connections beyond the cap are closed at once,
//! and normal requests keep working.

use std::time::Duration;

use axum::{Router, routing::get};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;
use wsgw::http::{self, HttpLimits};

/// Reads until the server closes (or 3 s pass): what it sent.
async fn until_closed(s: &mut TcpStream) -> Option<String> {
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
    read.ok().map(|_| String::from_utf8_lossy(&out).into_owned())
}

async fn get_health(addr: std::net::SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n").await.ok()?;
    until_closed(&mut s).await
}

#[tokio::test]
async fn slow_or_surplus_clients_are_cut_off_and_requests_keep_working() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let router = Router::new().route("/health", get(|| async { "ok\n" }));
    let limits = HttpLimits {
        max_connections: 2,
        header_timeout: Duration::from_millis(300),
        request_timeout: Duration::from_secs(2),
    };
    let stop = CancellationToken::new();
    let server = tokio::spawn(http::serve(listener, router, limits, stop.clone()));

    let answer = get_health(addr).await.expect("answered");
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok\n"), "{answer}");

    // Two slowloris clients take both places; a third client is closed at once.
    let mut slow = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n").await.expect("partial headers");
        slow.push(s);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(get_health(addr).await.as_deref(), Some(""), "beyond the cap: closed unanswered");
    // The header timeout frees them...
    for s in &mut slow {
        let started = tokio::time::Instant::now();
        assert!(until_closed(s).await.is_some(), "cut off");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    // ...and requests are served again.
    let answer = get_health(addr).await.expect("answered");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    stop.cancel();
    server.await.expect("server task").expect("server");
}

#[tokio::test]
async fn over_tls_only_https_is_served_and_a_silent_handshake_is_cut_off() {
    let dir = tempfile::tempdir().expect("tmp");
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, c.cert.pem()).expect("write");
    std::fs::write(&key, c.signing_key.serialize_pem()).expect("write");
    let config = wsgw::config::TlsConfig {
        cert: cert.display().to_string(),
        key: key.display().to_string(),
        reload_check: Duration::from_secs(60),
    };
    let acceptor = wsgw::gateway::Tls::load(&config).expect("tls").acceptor();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let router = Router::new().route("/health", get(|| async { "ok\n" }));
    let limits = HttpLimits { header_timeout: Duration::from_millis(300), ..HttpLimits::default() };
    let stop = CancellationToken::new();
    let server = tokio::spawn(http::serve_tls(listener, router, limits, acceptor, stop.clone()));

    let _ = crate::support::http(); // installs the crypto provider
    let ca = reqwest::Certificate::from_pem(c.cert.pem().as_bytes()).expect("ca");
    let client = reqwest::Client::builder().add_root_certificate(ca).build().expect("client");
    let url = format!("https://localhost:{}/health", addr.port());
    let resp = client.get(&url).send().await.expect("https");
    assert_eq!(resp.text().await.expect("body"), "ok\n");
    let plain = get_health(addr).await.unwrap_or_default();
    assert!(!plain.starts_with("HTTP/"), "plain HTTP gets a TLS alert, not an answer: {plain:?}");
    let mut silent = TcpStream::connect(addr).await.expect("tcp");
    let started = tokio::time::Instant::now();
    assert!(until_closed(&mut silent).await.is_some(), "a silent TLS client is cut off");
    assert!(started.elapsed() < Duration::from_secs(2));
    stop.cancel();
    server.await.expect("server task").expect("server");
}
