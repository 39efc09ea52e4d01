//! Live counters of a load test and the final report.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;

use super::Plan;

/// Latencies are recorded in microseconds, up to one minute.
const MAX_MICROS: u64 = 60_000_000;

fn histogram() -> Mutex<Histogram<u64>> {
    Mutex::new(Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("valid histogram bounds"))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Counters shared by every simulated client and driver.
pub struct Stats {
    t0: Instant,
    pub opened: AtomicU64,
    pub closed: AtomicU64,
    connect_failures: Mutex<BTreeMap<String, u64>>,
    server_closes: Mutex<BTreeMap<String, u64>>,
    connect_latency: Mutex<Histogram<u64>>,
    pub up_sent: AtomicU64,
    pub up_acked: AtomicU64,
    pub up_rate_limited: AtomicU64,
    up_errors: Mutex<BTreeMap<String, u64>>,
    up_latency: Mutex<Histogram<u64>>,
    pub push_sent: AtomicU64,
    pub push_received: AtomicU64,
    push_failures: Mutex<BTreeMap<String, u64>>,
    push_latency: Mutex<Histogram<u64>>,
    pub broadcast_sent: AtomicU64,
    pub broadcast_received: AtomicU64,
    broadcast_latency: Mutex<Histogram<u64>>,
    /// Per broadcast: (deliveries, latest delivery in µs).
    fanout: Mutex<HashMap<u64, (u64, u64)>>,
    pub churned: AtomicU64,
    churn_failures: AtomicU64,
    measure_start: Mutex<Option<Instant>>,
    ramp: Mutex<Duration>,
    counted: Mutex<(u64, u64, u64)>,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    pub fn new() -> Self {
        Self {
            t0: Instant::now(),
            opened: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            connect_failures: Mutex::default(),
            server_closes: Mutex::default(),
            connect_latency: histogram(),
            up_sent: AtomicU64::new(0),
            up_acked: AtomicU64::new(0),
            up_rate_limited: AtomicU64::new(0),
            up_errors: Mutex::default(),
            up_latency: histogram(),
            push_sent: AtomicU64::new(0),
            push_received: AtomicU64::new(0),
            push_failures: Mutex::default(),
            push_latency: histogram(),
            broadcast_sent: AtomicU64::new(0),
            broadcast_received: AtomicU64::new(0),
            broadcast_latency: histogram(),
            fanout: Mutex::default(),
            churned: AtomicU64::new(0),
            churn_failures: AtomicU64::new(0),
            measure_start: Mutex::new(None),
            ramp: Mutex::new(Duration::ZERO),
            counted: Mutex::new((0, 0, 0)),
        }
    }

    /// A message key that carries its send time: `{kind}{seq}.{nanoseconds since start}`.
    pub fn key(&self, kind: char, seq: u64) -> String {
        format!("{kind}{seq}.{}", self.t0.elapsed().as_nanos())
    }

    /// The time since a key was made, in microseconds.
    fn age_micros(&self, key: &str) -> Option<u64> {
        let sent: u128 = key.rsplit_once('.')?.1.parse().ok()?;
        let now = self.t0.elapsed().as_nanos();
        Some((now.saturating_sub(sent) / 1000).clamp(1, u128::from(MAX_MICROS)) as u64)
    }

    fn seq(key: &str) -> Option<u64> {
        key.get(1..)?.split_once('.')?.0.parse().ok()
    }

    pub(super) fn connected(&self, took: Duration) {
        self.opened.fetch_add(1, Ordering::Relaxed);
        let micros = (took.as_micros() as u64).clamp(1, MAX_MICROS);
        let _ = lock(&self.connect_latency).record(micros);
    }

    pub(super) fn connect_failed(&self, reason: String) {
        *lock(&self.connect_failures).entry(reason).or_default() += 1;
    }

    pub(super) fn server_closed(&self, reason: String) {
        self.closed.fetch_add(1, Ordering::Relaxed);
        *lock(&self.server_closes).entry(reason).or_default() += 1;
    }

    pub(super) fn upstream_acked(&self, key: &str) {
        self.up_acked.fetch_add(1, Ordering::Relaxed);
        if let Some(age) = self.age_micros(key) {
            let _ = lock(&self.up_latency).record(age);
        }
    }

    pub(super) fn upstream_error(&self, what: String) {
        *lock(&self.up_errors).entry(what).or_default() += 1;
    }

    pub(super) fn push_received(&self, key: &str) {
        self.push_received.fetch_add(1, Ordering::Relaxed);
        if let Some(age) = self.age_micros(key) {
            let _ = lock(&self.push_latency).record(age);
        }
    }

    pub(super) fn push_failed(&self, reason: String) {
        *lock(&self.push_failures).entry(reason).or_default() += 1;
    }

    pub(super) fn broadcast_received(&self, key: &str) {
        self.broadcast_received.fetch_add(1, Ordering::Relaxed);
        let (Some(age), Some(seq)) = (self.age_micros(key), Self::seq(key)) else { return };
        let _ = lock(&self.broadcast_latency).record(age);
        let mut fanout = lock(&self.fanout);
        let entry = fanout.entry(seq).or_default();
        entry.0 += 1;
        entry.1 = entry.1.max(age);
    }

    pub(super) fn churn(&self, ok: bool) {
        let counter = if ok { &self.churned } else { &self.churn_failures };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Connections that finished their handshake, successfully or not.
    pub(super) fn settled(&self) -> usize {
        let failed: u64 = lock(&self.connect_failures).values().sum();
        (self.opened.load(Ordering::Relaxed) + failed) as usize
    }

    pub(super) fn ramp_took(&self, took: Duration) {
        *lock(&self.ramp) = took;
    }

    /// Starts the measured phase: counts from here on are the throughput figures.
    pub(super) fn begin_measurement(&self) {
        *lock(&self.measure_start) = Some(Instant::now());
        *lock(&self.counted) = (
            self.up_acked.load(Ordering::Relaxed),
            self.push_received.load(Ordering::Relaxed),
            self.broadcast_received.load(Ordering::Relaxed),
        );
    }

    /// Whether every counted scenario has all its answers.
    pub(super) fn finished(&self, plan: &Plan) -> bool {
        let mut any = false;
        if let Some(count) = plan.upstream_count {
            any = true;
            let answered = self.up_acked.load(Ordering::Relaxed)
                + self.up_rate_limited.load(Ordering::Relaxed)
                + lock(&self.up_errors).values().sum::<u64>();
            if answered < count * self.opened.load(Ordering::Relaxed) {
                return false;
            }
        }
        if let Some(count) = plan.push.as_ref().and_then(|p| p.count) {
            any = true;
            let failed: u64 = lock(&self.push_failures).values().sum();
            if self.push_received.load(Ordering::Relaxed) + failed < count {
                return false;
            }
        }
        if let Some(b) = &plan.broadcast {
            any = true;
            let expected = b.count * self.opened.load(Ordering::Relaxed);
            if self.broadcast_received.load(Ordering::Relaxed) < expected {
                return false;
            }
        }
        any
    }

    /// The final report.
    pub(super) fn report(&self, plan: &Plan, measured: Duration, rss: [Option<u64>; 3]) -> Report {
        let secs = measured.as_secs_f64().max(1e-9);
        let (up0, push0, b0) = *lock(&self.counted);
        let opened = self.opened.load(Ordering::Relaxed);
        let ramp = *lock(&self.ramp);
        let fanouts: Vec<u64> = lock(&self.fanout).values().map(|(_, max)| *max).collect();
        let mut fanout = Histogram::<u64>::new_with_bounds(1, MAX_MICROS, 3).expect("bounds");
        fanouts.iter().for_each(|v| {
            let _ = fanout.record(*v);
        });
        Report {
            measured_seconds: secs,
            connections: ConnectionReport {
                target: plan.connections as u64,
                opened,
                failed: lock(&self.connect_failures).clone(),
                closed_by_server: lock(&self.server_closes).clone(),
                setup_per_second: opened as f64 / ramp.as_secs_f64().max(1e-9),
                setup_latency_ms: Latency::of(&lock(&self.connect_latency)),
            },
            upstream: Flow {
                sent: self.up_sent.load(Ordering::Relaxed),
                answered: self.up_acked.load(Ordering::Relaxed),
                rate_limited: self.up_rate_limited.load(Ordering::Relaxed),
                errors: lock(&self.up_errors).clone(),
                per_second: (self.up_acked.load(Ordering::Relaxed) - up0) as f64 / secs,
                latency_ms: Latency::of(&lock(&self.up_latency)),
            },
            push: Flow {
                sent: self.push_sent.load(Ordering::Relaxed),
                answered: self.push_received.load(Ordering::Relaxed),
                rate_limited: 0,
                errors: lock(&self.push_failures).clone(),
                per_second: (self.push_received.load(Ordering::Relaxed) - push0) as f64 / secs,
                latency_ms: Latency::of(&lock(&self.push_latency)),
            },
            broadcast: BroadcastReport {
                sent: self.broadcast_sent.load(Ordering::Relaxed),
                deliveries: self.broadcast_received.load(Ordering::Relaxed),
                deliveries_per_second: (self.broadcast_received.load(Ordering::Relaxed) - b0)
                    as f64
                    / secs,
                latency_ms: Latency::of(&lock(&self.broadcast_latency)),
                fanout_ms: Latency::of(&fanout),
            },
            churn: ChurnReport {
                cycles: self.churned.load(Ordering::Relaxed),
                failures: self.churn_failures.load(Ordering::Relaxed),
            },
            server: ServerReport {
                rss_before_bytes: rss[0],
                rss_after_ramp_bytes: rss[1],
                rss_end_bytes: rss[2],
                rss_per_connection_bytes: match (rss[0], rss[1]) {
                    (Some(a), Some(b)) if opened > 0 => {
                        Some(b.saturating_sub(a) as f64 / opened as f64)
                    }
                    _ => None,
                },
            },
            load_generator: LoadGenReport::now(opened),
        }
    }
}

/// The resident set size of a process, in bytes (from /proc).
pub fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// CPU seconds a process has used so far (user + system), from /proc.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name (which may hold spaces) start at the last ')'.
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0) // USER_HZ is 100 on Linux
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Self {
        let ms = |v: u64| v as f64 / 1000.0;
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

impl fmt::Display for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {:.3} ms, p90 {:.3}, p99 {:.3}, p99.9 {:.3}, max {:.3} ({} samples)",
            self.p50, self.p90, self.p99, self.p999, self.max, self.count
        )
    }
}

/// The machine-readable result of a run (`--json`). Field names are stable.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub measured_seconds: f64,
    pub connections: ConnectionReport,
    pub upstream: Flow,
    pub push: Flow,
    pub broadcast: BroadcastReport,
    pub churn: ChurnReport,
    pub server: ServerReport,
    pub load_generator: LoadGenReport,
}

#[derive(Clone, Debug, Serialize)]
pub struct ConnectionReport {
    pub target: u64,
    pub opened: u64,
    /// Connection failures by reason.
    pub failed: BTreeMap<String, u64>,
    /// Connections the server closed, by close code and reason.
    pub closed_by_server: BTreeMap<String, u64>,
    pub setup_per_second: f64,
    pub setup_latency_ms: Latency,
}

/// Upstream (sent → ACK) or push (sent → received) traffic.
#[derive(Clone, Debug, Serialize)]
pub struct Flow {
    pub sent: u64,
    /// ACKs received (upstream) or pushes received by clients (push).
    pub answered: u64,
    pub rate_limited: u64,
    pub errors: BTreeMap<String, u64>,
    /// Answers per second during the measured phase.
    pub per_second: f64,
    pub latency_ms: Latency,
}

#[derive(Clone, Debug, Serialize)]
pub struct BroadcastReport {
    pub sent: u64,
    pub deliveries: u64,
    pub deliveries_per_second: f64,
    pub latency_ms: Latency,
    /// Per broadcast: time until the last connection had it.
    pub fanout_ms: Latency,
}

#[derive(Clone, Debug, Serialize)]
pub struct ChurnReport {
    pub cycles: u64,
    pub failures: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ServerReport {
    pub rss_before_bytes: Option<u64>,
    pub rss_after_ramp_bytes: Option<u64>,
    pub rss_end_bytes: Option<u64>,
    pub rss_per_connection_bytes: Option<f64>,
}

/// The load generator's own cost.
#[derive(Clone, Debug, Serialize)]
pub struct LoadGenReport {
    pub cpu_seconds: Option<f64>,
    pub rss_bytes: Option<u64>,
    pub rss_per_connection_bytes: Option<f64>,
}

impl LoadGenReport {
    fn now(connections: u64) -> Self {
        let rss = rss_of(std::process::id());
        Self {
            cpu_seconds: cpu_seconds(std::process::id()),
            rss_bytes: rss,
            rss_per_connection_bytes: rss
                .filter(|_| connections > 0)
                .map(|r| r as f64 / connections as f64),
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.connections;
        writeln!(
            f,
            "connections: {}/{} opened, {:.0}/s, setup {}",
            c.opened, c.target, c.setup_per_second, c.setup_latency_ms
        )?;
        for (reason, n) in &c.failed {
            writeln!(f, "  failed: {n} × {reason}")?;
        }
        for (reason, n) in &c.closed_by_server {
            writeln!(f, "  closed by server: {n} × {reason}")?;
        }
        for (name, flow) in [("upstream", &self.upstream), ("push", &self.push)] {
            if flow.sent > 0 {
                writeln!(
                    f,
                    "{name}: {} sent, {} answered, {} rate-limited, {:.0}/s",
                    flow.sent, flow.answered, flow.rate_limited, flow.per_second
                )?;
                writeln!(f, "  latency {}", flow.latency_ms)?;
                for (e, n) in &flow.errors {
                    writeln!(f, "  error: {n} × {e}")?;
                }
            }
        }
        let b = &self.broadcast;
        if b.sent > 0 {
            writeln!(
                f,
                "broadcast: {} sent, {} deliveries, {:.0} deliveries/s",
                b.sent, b.deliveries, b.deliveries_per_second
            )?;
            writeln!(f, "  delivery latency {}", b.latency_ms)?;
            writeln!(f, "  fan-out (last recipient) {}", b.fanout_ms)?;
        }
        if self.churn.cycles + self.churn.failures > 0 {
            writeln!(
                f,
                "churn: {} connect/close cycles, {} failures",
                self.churn.cycles, self.churn.failures
            )?;
        }
        if let Some(per) = self.server.rss_per_connection_bytes {
            writeln!(f, "server RSS: {:.2} KiB per connection", per / 1024.0)?;
        }
        let g = &self.load_generator;
        if let (Some(cpu), Some(rss)) = (g.cpu_seconds, g.rss_bytes) {
            writeln!(f, "load generator: {cpu:.1} CPU s, RSS {:.1} MiB", rss as f64 / 1048576.0)?;
        }
        write!(f, "measured for {:.1} s", self.measured_seconds)
    }
}
