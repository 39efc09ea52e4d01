//! Upstream round trips (client → wsgw → tonic backend → UPSTREAM_ACK), against two baselines
//! measured in the same run: the same backend called directly over gRPC (no gateway), and a
//! floor server (`upstream/floor.rs`: the least a Rust server on the same crates does for the
//! same round trip) driven by the same clients, pinned to the same core.
//!
//!   cargo build --release
//!   taskset -c 1 cargo bench --bench upstream -- [--conns 1000] [--rates 10000,25000,50000] [--batch] [--runs 3]
//!   scripts/bench/upstream.sh [--batch] [--rates …]      # the same, built and pinned
//!
//! wsgw (and, before it, the floor) runs as its own process pinned to CPU 0; this process (load generator and the fast
//! in-process backend) should run on CPU 1. For each offered rate (messages/s in total, open
//! loop: every client sends on its own clock) it prints the achieved ACK rate, the latency
//! percentiles and each server process's CPU time per acknowledged message (utime + stime from
//! `/proc/<pid>/stat`, minus what the same run costs with no messages: connecting and holding
//! the clients). `--runs` (default 3) repeats floor-then-wsgw; a summary gives the median and
//! range of each figure and of wsgw's CPU ratio to the floor within each run. A benchmark:
//! nothing fails on a number.

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};
#[path = "upstream/floor.rs"]
mod floor;

use wsgw::{
    loadtest::{self, Plan, Stats, Tokens},
    protocol::{
        Serializer,
        pb::{
            BatchOnReceiveRequest, BatchOnReceiveResponse, OnReceiveRequest, OnReceiveResponse,
            backend_service_client::BackendServiceClient,
            backend_service_server::{BackendService, BackendServiceServer},
            batch_backend_service_server::{BatchBackendService, BatchBackendServiceServer},
        },
    },
};

const SECRET: &str = "bench-secret-0123456789abcdef0123456789";
const BIZ: i64 = 9999;

struct Fast;

#[tonic::async_trait]
impl BackendService for Fast {
    async fn on_receive(
        &self,
        r: Request<OnReceiveRequest>,
    ) -> Result<Response<OnReceiveResponse>, Status> {
        let msg_id = r.into_inner().key.len() as i64;
        Ok(Response::new(OnReceiveResponse { msg_id, biz_id: BIZ }))
    }
}

#[tonic::async_trait]
impl BatchBackendService for Fast {
    async fn batch_on_receive(
        &self,
        r: Request<BatchOnReceiveRequest>,
    ) -> Result<Response<BatchOnReceiveResponse>, Status> {
        let res = r
            .into_inner()
            .reqs
            .iter()
            .map(|q| OnReceiveResponse { msg_id: q.key.len() as i64, biz_id: BIZ })
            .collect();
        Ok(Response::new(BatchOnReceiveResponse { res }))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag =
        |name: &str| args.iter().rposition(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    if let (Some(listen), Some(backend)) = (flag("--serve-floor"), args.last()) {
        return floor::serve(&listen, backend);
    }
    let conns: usize = flag("--conns").and_then(|v| v.parse().ok()).unwrap_or(1000);
    let rates: Vec<f64> = flag("--rates")
        .unwrap_or_else(|| "2000,5000,8000,12000".into())
        .split(',')
        .filter_map(|r| r.parse().ok())
        .collect();
    let wsgw = flag("--wsgw").unwrap_or_else(|| "target/release/wsgw".into());
    let batch = args.iter().any(|a| a == "--batch");
    let runs: usize = flag("--runs").and_then(|v| v.parse().ok()).unwrap_or(3).max(1);
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        print_machine(&wsgw);
        let backend = start_backend().await;
        println!("baseline: direct gRPC to the backend, 64 callers, closed loop, 5 s");
        let (rate, lat) = direct(backend, 64, Duration::from_secs(5)).await;
        println!("  {rate:.0} calls/s, p50 {:.3} ms, p99 {:.3} ms", lat.0, lat.1);
        println!("floor: {}", floor::ABOUT);
        let mode = if batch { "BatchOnReceive (batch.enabled)" } else { "OnReceive, one call per message" };
        println!("wsgw → backend: {mode}");
        println!("{runs} runs, each the floor then wsgw, {conns} clients, 5 s per rate\n");
        println!("| run | offered msg/s | server | ACKs/s | p50 ms | p90 ms | p99 ms | p99.9 ms | errors | p99 vs direct gRPC | CPU µs/msg | CPU vs floor |");
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
        let mut all = Vec::new();
        for run in 1..=runs {
            let floor = measure(start_floor(backend), FLOOR_WS, conns, &rates).await;
            let gateway = measure(start_wsgw(&wsgw, backend, batch), WSGW_WS, conns, &rates).await;
            print_run(run, &floor, &gateway, lat.1);
            all.push((floor, gateway));
        }
        summary(&all, lat.1);
    });
}

/// One run's rows, floor and wsgw side by side per rate, and any errors.
fn print_run(run: usize, floor: &[Row], gateway: &[Row], direct_p99: f64) {
    for (f, g) in floor.iter().zip(gateway) {
        for (name, row) in [("floor", f), ("wsgw", g)] {
            let u = &row.report.upstream;
            let l = &u.latency_ms;
            println!(
                "| {run} | {:.0} | {name} | {:.0} | {:.3} | {:.3} | {:.3} | {:.3} | {} | +{:.3} ms | {:.1} | {:.2}x |",
                row.offered,
                u.per_second,
                l.p50,
                l.p90,
                l.p99,
                l.p999,
                row.errors(),
                l.p99 - direct_p99,
                row.cpu_us,
                row.cpu_us / f.cpu_us
            );
        }
    }
    for row in floor.iter().chain(gateway).filter(|r| r.errors() > 0) {
        let u = &row.report.upstream;
        println!(
            "errors at {:.0} msg/s: {:?}, rate-limited {}",
            row.offered, u.errors, u.rate_limited
        );
    }
}

/// Medians and ranges over the runs, per offered rate.
fn summary(runs: &[(Vec<Row>, Vec<Row>)], direct_p99: f64) {
    println!("\nSummary: median (min–max) over {} runs\n", runs.len());
    println!(
        "| offered msg/s | floor µs/msg | wsgw µs/msg | **wsgw / floor** | wsgw ACKs/s | wsgw p99 vs direct gRPC |"
    );
    println!("|---|---|---|---|---|---|");
    let Some((first, _)) = runs.first() else { return };
    for (i, offered) in first.iter().map(|r| r.offered).enumerate() {
        // "median (min–max)" of one figure over the runs, with `digits` decimals.
        let pick = |digits: usize, unit: &str, f: &dyn Fn(&Row, &Row) -> f64| -> String {
            let mut v: Vec<f64> = runs.iter().map(|(fl, gw)| f(&fl[i], &gw[i])).collect();
            v.sort_by(f64::total_cmp);
            let n = v.len();
            let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
            format!("{median:.digits$}{unit} ({:.digits$}–{:.digits$})", v[0], v[n - 1])
        };
        println!(
            "| {offered:.0} | {} | {} | **{}** | {} | +{} |",
            pick(1, "", &|f, _| f.cpu_us),
            pick(1, "", &|_, g| g.cpu_us),
            pick(2, "x", &|f, g| g.cpu_us / f.cpu_us),
            pick(0, "", &|_, g| g.report.upstream.per_second),
            pick(2, " ms", &|_, g| g.report.upstream.latency_ms.p99 - direct_p99),
        );
    }
}

/// The machine and versions the numbers come from.
fn print_machine(wsgw: &str) {
    let output = |program: &str, arg: &str| {
        Command::new(program)
            .arg(arg)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_else(|_| "?".into())
    };
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo.lines().find_map(|l| l.strip_prefix("model name")).unwrap_or("?");
    let model = model.trim_start_matches(|c: char| c == ':' || c.is_whitespace());
    let cpus = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("machine: {model}, {cpus} CPUs, kernel {}", kernel.trim());
    println!("wsgw: {} ({wsgw}); {}", output(wsgw, "--version"), output("rustc", "-V"));
}

const WSGW_WS: &str = "127.0.0.1:19602";
const FLOOR_WS: &str = "127.0.0.1:19605";

/// One offered rate against one server.
struct Row {
    offered: f64,
    report: loadtest::Report,
    /// The server process's CPU per acknowledged message, in µs.
    cpu_us: f64,
}

impl Row {
    fn errors(&self) -> u64 {
        let u = &self.report.upstream;
        u.errors.values().sum::<u64>() + u.rate_limited
    }
}

/// Runs every rate against the server in `child` (listening on `ws`), then stops it.
async fn measure(mut child: Child, ws: &str, conns: usize, rates: &[f64]) -> Vec<Row> {
    let pid = child.id();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = cpu_seconds(pid);
    gateway(ws, conns, 0.0).await;
    let idle = cpu_seconds(pid) - before;
    let mut rows = Vec::new();
    for &offered in rates {
        let before = cpu_seconds(pid);
        let report = gateway(ws, conns, offered).await;
        let cpu = cpu_seconds(pid) - before - idle;
        let cpu_us = cpu * 1e6 / report.upstream.answered.max(1) as f64;
        rows.push(Row { offered, report, cpu_us });
    }
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
    let _ = child.wait();
    rows
}

async fn start_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(BackendServiceServer::new(Fast))
            .add_service(BatchBackendServiceServer::new(Fast))
            .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true))),
    );
    addr
}

/// Closed-loop direct calls: (calls/s, (p50 ms, p99 ms)).
async fn direct(backend: SocketAddr, callers: usize, period: Duration) -> (f64, (f64, f64)) {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{backend}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let hist = Arc::new(std::sync::Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("h"),
    ));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..callers {
        let (mut client, hist) = (BackendServiceClient::new(channel.clone()), hist.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while started.elapsed() < period {
                let t = Instant::now();
                let req = OnReceiveRequest { key: "k".into(), body: vec![b'x'; 64].into() };
                if client.on_receive(req).await.is_ok() {
                    n += 1;
                    let _ =
                        hist.lock().expect("lock").record(t.elapsed().as_micros().max(1) as u64);
                }
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("caller");
    }
    let h = hist.lock().expect("lock");
    let ms = |q| h.value_at_quantile(q) as f64 / 1000.0;
    (total as f64 / started.elapsed().as_secs_f64(), (ms(0.5), ms(0.99)))
}

/// CPU time (user + system) the process has used so far, in seconds (0 when unreadable).
fn cpu_seconds(pid: u32) -> f64 {
    wsgw::loadtest::cpu_seconds(pid).unwrap_or_default()
}

/// `program` pinned to CPU 0 when `taskset` is there.
fn pinned(program: &str) -> Command {
    if Command::new("taskset").arg("-V").output().is_ok() {
        let mut c = Command::new("taskset");
        c.args(["-c", "0", program]);
        c
    } else {
        Command::new(program)
    }
}

/// This benchmark's own binary as the floor server.
fn start_floor(backend: SocketAddr) -> Child {
    let me = std::env::current_exe().expect("own path");
    pinned(&me.to_string_lossy())
        .args(["--serve-floor", FLOOR_WS, &backend.to_string()])
        .spawn()
        .expect("start the floor server")
}

fn start_wsgw(program: &str, backend: SocketAddr, batch: bool) -> Child {
    pinned(program)
        .arg("serve")
        .env("WSGW_SERVER__WEBSOCKET__LISTEN", WSGW_WS)
        .env("WSGW_SERVER__GOVERNOR__LISTEN", "127.0.0.1:19603")
        .env("WSGW_SERVER__GRPC__LISTEN", "127.0.0.1:19604")
        .env("WSGW_AUTH__JWT__SECRET", SECRET)
        .env("WSGW_LOG__LEVEL", "error")
        .env(
            "WSGW_BACKENDS",
            format!("[{{biz_id: {BIZ}, endpoints: [\"{backend}\"], batch: {{enabled: {batch}}}}}]"),
        )
        .stdout(Stdio::null())
        .spawn()
        .expect("start wsgw")
}

async fn gateway(ws: &str, conns: usize, offered: f64) -> loadtest::Report {
    let plan = Plan {
        urls: vec![format!("ws://{ws}/")],
        connections: conns,
        ramp: 5000.0,
        tokens: Tokens::Secret(SECRET.into()),
        biz_id: BIZ,
        first_user: 1,
        sources: Vec::new(),
        serializer: Serializer::Json,
        duration: Duration::from_secs(5),
        upstream_rate: offered / conns as f64,
        upstream_count: None,
        body_size: 64,
        push: None,
        broadcast: None,
        churn_rate: 0.0,
        server_pid: None,
    };
    loadtest::run(plan, Arc::new(Stats::new())).await.expect("loadtest")
}
