//! Memory per idle authenticated connection (SPEC §7: ≤ 3 KiB at 10k connections), measured
//! against a baseline in the same run: a bare tokio-tungstenite server (one task per
//! connection, read loop only, 1 KiB read buffer, no write buffer) — the SPEC's 3.5 KB anchor.
//!
//!   cargo bench --bench idle_rss -- [--conns 10000] [--wsgw target/release/wsgw]
//!
//! Each server runs as its own process (pinned to CPU 0 when `taskset` exists); this process is
//! the load (pinned to CPU 1). RSS is read from /proc/PID/status before and after N clients
//! connect and sit idle; the figure is (after − before) / N. Also prints the connection setup
//! rate (including JWT verification for wsgw). A third run measures wsgw with `wss://` (a
//! certificate generated for the run; TLS 1.3 handshakes included in the rate). A benchmark:
//! nothing fails on a number.

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tokio_rustls::{
    TlsConnector,
    rustls::{self, ClientConfig, RootCertStore, pki_types::ServerName},
};
use wsgw::auth::{self, Identity, TokenSpec};

const SECRET: &str = "bench-secret-0123456789abcdef0123456789";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--bare-server") {
        let port: u16 = args.get(i + 1).and_then(|p| p.parse().ok()).expect("--bare-server PORT");
        return runtime().block_on(bare_server(port));
    }
    let conns = flag(&args, "--conns").and_then(|v| v.parse().ok()).unwrap_or(10_000usize);
    let wsgw = flag(&args, "--wsgw").unwrap_or_else(|| "target/release/wsgw".into());
    let me = std::env::current_exe().expect("own path");
    runtime().block_on(async {
        let bare = measure("bare tokio-tungstenite", conns, 19402, None, |port| {
            pinned(&me.to_string_lossy()).args(["--bare-server", &port.to_string()]).spawn()
        })
        .await;
        let serve = |port: u16, tls: &[(&str, String)]| {
            pinned(&wsgw)
                .arg("serve")
                .env("WSGW_SERVER__WEBSOCKET__LISTEN", format!("127.0.0.1:{port}"))
                .env("WSGW_SERVER__GOVERNOR__LISTEN", format!("127.0.0.1:{}", port + 1))
                .env("WSGW_SERVER__GRPC__LISTEN", "127.0.0.1:0")
                .env("WSGW_AUTH__JWT__SECRET", SECRET)
                .env("WSGW_LOG__LEVEL", "warn")
                .envs(tls.iter().map(|(k, v)| (k, v)))
                .spawn()
        };
        let ours = measure("wsgw serve", conns, 19412, None, |port| serve(port, &[])).await;
        let (dir, client) = certificate();
        let files = [
            ("WSGW_SERVER__WEBSOCKET__TLS__CERT", dir.path().join("cert.pem")),
            ("WSGW_SERVER__WEBSOCKET__TLS__KEY", dir.path().join("key.pem")),
        ]
        .map(|(k, v)| (k, v.to_string_lossy().into_owned()));
        let tls =
            measure("wsgw serve, wss://", conns, 19422, Some(client), |port| serve(port, &files))
                .await;
        println!();
        println!("| server | RSS per idle connection | connects/s |");
        println!("|---|---|---|");
        for r in [&bare, &ours, &tls] {
            println!("| {} | {:.2} KiB | {:.0} |", r.name, r.per_conn / 1024.0, r.rate);
        }
        println!(
            "\nwsgw / bare: memory {:.2}x, connect rate {:.2}x ({conns} connections)",
            ours.per_conn / bare.per_conn,
            ours.rate / bare.rate
        );
        println!(
            "wsgw wss:// / ws://: memory {:.2}x (+{:.2} KiB per connection), connect rate {:.2}x",
            tls.per_conn / ours.per_conn,
            (tls.per_conn - ours.per_conn) / 1024.0,
            tls.rate / ours.rate
        );
    });
}

struct Result {
    name: &'static str,
    per_conn: f64,
    rate: f64,
}

/// A self-signed certificate for localhost in a temporary directory (cert.pem, key.pem), and a
/// client configuration that trusts it.
fn certificate() -> (tempfile::TempDir, Arc<ClientConfig>) {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("rcgen");
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("cert.pem"), c.cert.pem()).expect("cert");
    std::fs::write(dir.path().join("key.pem"), c.signing_key.serialize_pem()).expect("key");
    let mut roots = RootCertStore::empty();
    roots.add(c.cert.der().clone()).expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    (dir, Arc::new(config))
}

/// A client WebSocket over plain TCP or TLS; kept open until dropped.
type Held = Box<dyn Send>;

async fn open(url: String, tls: Option<Arc<ClientConfig>>) -> std::result::Result<Held, String> {
    let Some(tls) = tls else {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.map_err(|e| e.to_string())?;
        return Ok(Box::new(ws));
    };
    let port = url.split(':').nth(2).and_then(|p| p.split('/').next()).unwrap_or_default();
    let tcp = TcpStream::connect(format!("127.0.0.1:{port}")).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").expect("name");
    let stream = TlsConnector::from(tls).connect(name, tcp).await.map_err(|e| e.to_string())?;
    let (ws, _) = tokio_tungstenite::client_async(url.replacen("ws://", "wss://", 1), stream)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Box::new(ws))
}

async fn measure(
    name: &'static str,
    conns: usize,
    port: u16,
    tls: Option<Arc<ClientConfig>>,
    spawn: impl FnOnce(u16) -> std::io::Result<Child>,
) -> Result {
    let mut child = Guard(spawn(port).expect("start server"));
    let url = |user: usize| {
        let who = Identity { biz_id: 9999, user_id: user as i64 + 1 };
        let spec = TokenSpec::hs256(who, Duration::from_secs(3600));
        let token = auth::mint(&spec, SECRET.as_bytes()).expect("mint");
        format!("ws://127.0.0.1:{port}/?token={token}")
    };
    // Warm up: one connection in and out, so lazily built state is not counted per connection.
    let mut warm = None;
    for _ in 0..200 {
        if let Ok(ws) = open(url(0), tls.clone()).await {
            warm = Some(ws);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(warm.expect("server came up"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = child.0.id();
    let before = rss(pid);
    let urls: Vec<String> = (1..=conns).map(url).collect();
    let gate = Arc::new(Semaphore::new(64));
    let started = Instant::now();
    let tasks: Vec<_> = urls
        .into_iter()
        .map(|u| {
            let (gate, tls) = (gate.clone(), tls.clone());
            tokio::spawn(async move {
                let _permit = gate.acquire_owned().await.expect("semaphore");
                open(u, tls).await.expect("connect")
            })
        })
        .collect();
    let mut held = Vec::with_capacity(conns);
    for t in tasks {
        held.push(t.await.expect("connect task"));
    }
    let rate = conns as f64 / started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss(pid);
    let per_conn = (after - before) as f64 / conns as f64;
    println!(
        "{name}: RSS {:.1} MiB -> {:.1} MiB with {conns} idle connections: {:.2} KiB each, {rate:.0} connects/s",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        per_conn / 1024.0
    );
    drop(held);
    child.stop();
    Result { name, per_conn, rate }
}

/// Resident set size of `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    wsgw::loadtest::rss_of(pid).expect("the server's /proc status")
}

/// The baseline: accept, upgrade, read until closed — nothing else.
async fn bare_server(port: u16) {
    use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await.expect("bind");
    let config = WebSocketConfig::default().read_buffer_size(1024).write_buffer_size(0);
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        tokio::spawn(async move {
            if let Ok(mut ws) =
                tokio_tungstenite::accept_async_with_config(stream, Some(config)).await
            {
                while let Some(Ok(_)) = ws.next().await {}
            }
        });
    }
}

fn pinned(program: &str) -> Command {
    let mut cmd = if Command::new("taskset").arg("-V").output().is_ok() {
        let mut c = Command::new("taskset");
        c.args(["-c", "0", program]);
        c
    } else {
        Command::new(program)
    };
    cmd.stdout(Stdio::null()).stderr(Stdio::inherit());
    cmd
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

struct Guard(Child);

impl Guard {
    fn stop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let _ = self.0.wait();
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
