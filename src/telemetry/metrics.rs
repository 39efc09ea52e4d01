//! The node's metrics, in one registry per node (several nodes may share a test process).
//!
//! The three names of the original gateway are kept as they were (SPEC §3):
//! `websocket_gateway_online_users{biz_id}`, `websocket_gateway_messages_total{direction,biz_id}`
//! and `websocket_gateway_message_size_bytes_total{direction,biz_id}`. Per-business series are
//! resolved once per business and shared by its connections ([`BizMetrics`]), so the per-message
//! path never hashes label values.

use std::sync::Arc;

use dashmap::DashMap;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder, core::Collector,
};

use super::events::{ClusterEvent, Dependency, PushEvent};
use super::process::ProcessGauges;
use crate::protocol::CommandType;

pub(super) const PREFIX: &str = "websocket_gateway";

/// Latency buckets, in seconds: 250 µs to 10 s.
const LATENCY_BUCKETS: [f64; 14] =
    [0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// Which way a message travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Client → gateway.
    In = 0,
    /// Gateway → client.
    Out = 1,
}

impl Direction {
    fn label(self) -> &'static str {
        match self {
            Self::In => "upstream",
            Self::Out => "downstream",
        }
    }
}

/// Counter totals of one node at one moment (see [`Metrics::totals`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Totals {
    pub messages_in: u64,
    pub messages_out: u64,
    pub push_retries: u64,
    pub outbound_dropped: u64,
    /// Upstream latency histogram: (upper bound in seconds, cumulative count).
    pub upstream_buckets: Vec<(f64, u64)>,
    pub upstream_count: u64,
}

impl Totals {
    /// The `q` quantile (seconds) of the upstream latencies recorded between `earlier` and
    /// `self`, interpolated within its bucket; 0 without samples.
    pub fn upstream_quantile(&self, earlier: &Totals, q: f64) -> f64 {
        let n = self.upstream_count.saturating_sub(earlier.upstream_count);
        if n == 0 {
            return 0.0;
        }
        let target = q * n as f64;
        let mut lower = 0.0;
        let mut below = 0u64;
        for (i, (bound, cum)) in self.upstream_buckets.iter().enumerate() {
            let before = earlier.upstream_buckets.get(i).map_or(0, |b| b.1);
            let count = cum.saturating_sub(before);
            if count as f64 >= target {
                let inside = (count - below) as f64;
                let frac = if inside > 0.0 { (target - below as f64) / inside } else { 1.0 };
                return lower + (bound - lower) * frac.clamp(0.0, 1.0);
            }
            lower = *bound;
            below = count;
        }
        lower
    }
}

/// All metrics of one node.
pub struct Metrics {
    registry: Registry,
    online_users: IntGaugeVec,
    online_connections: IntGaugeVec,
    messages: IntCounterVec,
    message_bytes: IntCounterVec,
    /// Per command, indexed by `[direction][command number]`; resolved once.
    commands: [Vec<IntCounter>; 2],
    /// Open WebSocket connections.
    pub connections_open: IntGauge,
    handshakes: IntCounterVec,
    hook_events: IntCounterVec,
    closes: IntCounterVec,
    /// Messages refused because a connection's outbound queue was full.
    pub outbound_dropped: IntCounter,
    /// Messages from clients that could not be decoded.
    pub decode_errors: IntCounter,
    /// Upstream messages answered from the dedup window instead of calling a backend.
    pub dedup_hits: IntCounter,
    /// Client messages refused by the per-connection rate (`limits.message_rate`).
    pub rate_limited: IntCounter,
    /// Times a client's socket reads waited for its byte rate (`limits.read_rate`).
    pub read_throttled: IntCounter,
    /// Pushes awaiting a DOWNSTREAM_ACK.
    pub pushes_pending: IntGauge,
    upstream_latency: HistogramVec,
    backend_errors: IntCounterVec,
    pushes: IntCounterVec,
    cluster_events: IntCounterVec,
    dependency_up: IntGaugeVec,
    /// Partitions of the push topic this node's Kafka consumer holds.
    pub kafka_partitions: IntGauge,
    /// Records of each held partition not yet done (high watermark minus stored offset).
    pub kafka_lag: IntGaugeVec,
    tls_reloads: IntCounterVec,
    jwks_refreshes: IntCounterVec,
    process: ProcessGauges,
    biz: DashMap<i64, Arc<BizMetrics>>,
}

/// The series of one business, shared by its connections.
pub struct BizMetrics {
    pub online_users: IntGauge,
    /// Open connections of the business: what the original's `online_users` counted (it kept
    /// one connection per user per node).
    pub online_connections: IntGauge,
    messages_in: IntCounter,
    messages_out: IntCounter,
    bytes_in: IntCounter,
    bytes_out: IntCounter,
}

impl BizMetrics {
    /// Counts one message of `len` bytes.
    pub fn message(&self, direction: Direction, len: usize) {
        self.messages(direction, 1, len as u64);
    }

    /// Counts `count` messages of `bytes` bytes in all.
    pub fn messages(&self, direction: Direction, count: u64, bytes: u64) {
        let (c, b) = match direction {
            Direction::In => (&self.messages_in, &self.bytes_in),
            Direction::Out => (&self.messages_out, &self.bytes_out),
        };
        c.inc_by(count);
        b.inc_by(bytes);
    }
}

/// Registers a metric; our definitions are static, so failing here is a programming error.
fn registered<M>(registry: &Registry, metric: prometheus::Result<M>) -> M
where
    M: prometheus::core::Collector + Clone + 'static,
{
    let metric = metric.expect("metric definitions are valid");
    registry.register(Box::new(metric.clone())).expect("metric names are unique");
    metric
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    registered(registry, IntCounter::new(format!("{PREFIX}_{name}"), help))
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    registered(registry, IntGauge::new(format!("{PREFIX}_{name}"), help))
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    registered(registry, IntCounterVec::new(Opts::new(format!("{PREFIX}_{name}"), help), labels))
}

/// `commands_total{direction,cmd}` for every known command, in command-number order.
fn command_series(registry: &Registry) -> [Vec<IntCounter>; 2] {
    let vec =
        counter_vec(registry, "commands_total", "Messages by command.", &["direction", "cmd"]);
    let all: Vec<CommandType> = (0..).map_while(|n| CommandType::try_from(n).ok()).collect();
    [Direction::In, Direction::Out].map(|d| {
        all.iter().map(|cmd| vec.with_label_values(&[d.label(), cmd.as_str_name()])).collect()
    })
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let online_users = registered(
            &r,
            IntGaugeVec::new(
                Opts::new(
                    format!("{PREFIX}_online_users"),
                    "Users with at least one open connection.",
                ),
                &["biz_id"],
            ),
        );
        let online_connections = registered(
            &r,
            IntGaugeVec::new(
                Opts::new(
                    format!("{PREFIX}_online_connections"),
                    "Open connections, by business (the original's online_users semantics).",
                ),
                &["biz_id"],
            ),
        );
        let latency = HistogramOpts::new(
            format!("{PREFIX}_upstream_latency_seconds"),
            "Upstream message to backend answer, by business and outcome.",
        )
        .buckets(LATENCY_BUCKETS.to_vec());
        let upstream_latency = registered(&r, HistogramVec::new(latency, &["biz_id", "outcome"]));
        let connections_open = gauge(&r, "connections_open", "Open WebSocket connections.");
        let outbound_dropped = counter(
            &r,
            "outbound_dropped_total",
            "Messages refused because a connection's outbound queue was full.",
        );
        let decode_errors =
            counter(&r, "decode_errors_total", "Client messages that could not be decoded.");
        let dedup_hits = counter(
            &r,
            "upstream_dedup_hits_total",
            "Upstream messages answered from the dedup window.",
        );
        let pushes_pending = gauge(&r, "pushes_pending", "Pushes awaiting acknowledgement.");
        let rate_limited = counter(
            &r,
            "rate_limited_total",
            "Client messages refused by the per-connection message rate.",
        );
        let read_throttled = counter(
            &r,
            "read_throttled_total",
            "Times a client's socket reads waited for its byte rate (limits.read_rate).",
        );
        Self {
            dedup_hits,
            rate_limited,
            read_throttled,
            pushes_pending,
            upstream_latency,
            backend_errors: counter_vec(
                &r,
                "backend_errors_total",
                "Failed backend calls by business and kind.",
                &["biz_id", "kind"],
            ),
            pushes: counter_vec(
                &r,
                "pushes_total",
                "Push events: delivered, not_connected, refused, retried, acked, given_up.",
                &["event"],
            ),
            messages: counter_vec(
                &r,
                "messages_total",
                "Messages by direction.",
                &["direction", "biz_id"],
            ),
            message_bytes: counter_vec(
                &r,
                "message_size_bytes_total",
                "Message bytes by direction.",
                &["direction", "biz_id"],
            ),
            cluster_events: counter_vec(
                &r,
                "cluster_events_total",
                "Cluster events by service (redis, etcd, kafka, peer) and event.",
                &["service", "event"],
            ),
            dependency_up: registered(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        format!("{PREFIX}_dependency_up"),
                        "1 while a configured service (redis, etcd, kafka) answers.",
                    ),
                    &["service"],
                ),
            ),
            kafka_partitions: gauge(
                &r,
                "kafka_partitions_assigned",
                "Partitions of the push topic assigned to this node's consumer.",
            ),
            kafka_lag: registered(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        format!("{PREFIX}_kafka_consumer_lag"),
                        "Push records per assigned partition not yet routed and stored.",
                    ),
                    &["partition"],
                ),
            ),
            tls_reloads: counter_vec(
                &r,
                "tls_reloads_total",
                "Reloads of the client TLS certificate, by outcome (ok, failed).",
                &["outcome"],
            ),
            jwks_refreshes: counter_vec(
                &r,
                "jwks_refreshes_total",
                "Fetches of the JWKS (auth.jwt.jwks.url), by outcome (ok, failed).",
                &["outcome"],
            ),
            commands: command_series(&r),
            handshakes: counter_vec(&r, "handshakes_total", "Handshakes by outcome.", &["outcome"]),
            hook_events: counter_vec(
                &r,
                "hook_events_total",
                "Connection hook events by outcome (sent, failed, dropped).",
                &["outcome"],
            ),
            closes: counter_vec(&r, "closes_total", "Closed connections.", &["code", "reason"]),
            online_users,
            online_connections,
            connections_open,
            outbound_dropped,
            decode_errors,
            process: ProcessGauges::new(&r),
            biz: DashMap::new(),
            registry: r,
        }
    }

    /// The shared series of one business.
    pub fn biz(&self, biz_id: i64) -> Arc<BizMetrics> {
        if let Some(m) = self.biz.get(&biz_id) {
            return m.clone();
        }
        let id = biz_id.to_string();
        let series = |v: &IntCounterVec, d: Direction| v.with_label_values(&[d.label(), &id]);
        let m = Arc::new(BizMetrics {
            online_users: self.online_users.with_label_values(&[&id]),
            online_connections: self.online_connections.with_label_values(&[&id]),
            messages_in: series(&self.messages, Direction::In),
            messages_out: series(&self.messages, Direction::Out),
            bytes_in: series(&self.message_bytes, Direction::In),
            bytes_out: series(&self.message_bytes, Direction::Out),
        });
        self.biz.entry(biz_id).or_insert(m).clone()
    }

    /// Counts one message by command.
    pub fn command(&self, direction: Direction, cmd: CommandType) {
        self.commands(direction, cmd, 1);
    }

    /// Counts `n` messages of one command.
    pub fn commands(&self, direction: Direction, cmd: CommandType, n: u64) {
        if let Some(c) = self.commands[direction as usize].get(cmd as usize) {
            c.inc_by(n);
        }
    }

    /// Counts one handshake outcome (`ok`, `bad_token`, `capacity`, ...).
    /// A reload of the client TLS certificate: applied, or failed (the old one stays).
    pub fn tls_reload(&self, ok: bool) {
        self.tls_reloads.with_label_values(&[if ok { "ok" } else { "failed" }]).inc();
    }

    /// A fetch of the JWKS: keys replaced, or failed (the last good keys stay).
    pub fn jwks_refresh(&self, ok: bool) {
        self.jwks_refreshes.with_label_values(&[if ok { "ok" } else { "failed" }]).inc();
    }

    pub fn handshake(&self, outcome: &str) {
        self.handshakes.with_label_values(&[outcome]).inc();
    }

    /// Counts `n` connection hook events that were sent, failed or dropped.
    pub fn hook_events(&self, outcome: &str, n: usize) {
        self.hook_events.with_label_values(&[outcome]).inc_by(n as u64);
    }

    /// Counts one closed connection.
    pub fn closed(&self, code: u16, reason: &str) {
        self.closes.with_label_values(&[&code.to_string(), reason]).inc();
    }

    /// Records one upstream message's outcome (`ok`, `rejected`, `unavailable`, ...).
    pub fn upstream_done(&self, biz_id: i64, outcome: &str, took: std::time::Duration) {
        let biz = biz_id.to_string();
        self.upstream_latency
            .with_label_values(&[biz.as_str(), outcome])
            .observe(took.as_secs_f64());
    }

    /// Counts one failed backend call (`timeout`, `unavailable`, `circuit_open`).
    pub fn backend_error(&self, biz_id: i64, kind: &str) {
        self.backend_errors.with_label_values(&[biz_id.to_string().as_str(), kind]).inc();
    }

    /// Counts one push event.
    pub fn push_event(&self, event: PushEvent) {
        self.push_events(event, 1);
    }

    /// Counts `n` push events.
    pub fn push_events(&self, event: PushEvent, n: u64) {
        self.pushes.with_label_values(&[event.label()]).inc_by(n);
    }

    /// Counts one cluster event.
    pub fn cluster_event(&self, event: ClusterEvent) {
        self.cluster_events(event, 1);
    }

    /// Counts `n` cluster events.
    pub fn cluster_events(&self, event: ClusterEvent, n: u64) {
        let (service, event) = event.labels();
        self.cluster_events.with_label_values(&[service, event]).inc_by(n);
    }

    /// Records whether `service` answers.
    pub fn dependency(&self, service: Dependency, up: bool) {
        self.dependency_up.with_label_values(&[service.label()]).set(i64::from(up));
    }

    /// Totals for dashboards (the admin API): summed over every label.
    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for family in self.messages.collect() {
            for m in family.get_metric() {
                let dir = m.get_label().iter().find(|l| l.name() == "direction");
                let v = m.get_counter().get_value() as u64;
                match dir.map(|l| l.value()) {
                    Some("upstream") => t.messages_in += v,
                    Some("downstream") => t.messages_out += v,
                    _ => {}
                }
            }
        }
        t.push_retries = self.pushes.with_label_values(&["retried"]).get();
        t.outbound_dropped = self.outbound_dropped.get();
        let mut buckets: Vec<(f64, u64)> = LATENCY_BUCKETS.iter().map(|b| (*b, 0)).collect();
        for family in self.upstream_latency.collect() {
            for m in family.get_metric() {
                let h = m.get_histogram();
                for (i, b) in h.get_bucket().iter().enumerate() {
                    if let Some(slot) = buckets.get_mut(i) {
                        slot.1 += b.cumulative_count();
                    }
                }
                t.upstream_count += h.get_sample_count();
            }
        }
        t.upstream_buckets = buckets;
        t
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.process.update();
        let mut out = Vec::new();
        // Encoding into a Vec only fails on invalid metric families, which we never register.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_quantiles_come_from_the_latencies_between_two_samples() {
        let m = Metrics::new();
        let before = m.totals();
        for _ in 0..98 {
            m.upstream_done(1, "ok", std::time::Duration::from_millis(3));
        }
        for _ in 0..2 {
            m.upstream_done(1, "ok", std::time::Duration::from_millis(800));
        }
        let after = m.totals();
        let p50 = after.upstream_quantile(&before, 0.5);
        let p99 = after.upstream_quantile(&before, 0.99);
        assert!(p50 > 0.0 && p50 <= 0.005, "p50 {p50} lies in the 3 ms bucket");
        assert!(p99 > 0.5 && p99 <= 1.0, "p99 {p99} lies in the 800 ms bucket");
        assert_eq!(after.upstream_quantile(&after, 0.99), 0.0, "no samples in between");
        assert_eq!(after.upstream_count - before.upstream_count, 100);
    }

    #[test]
    fn totals_sum_messages_over_businesses() {
        let m = Metrics::new();
        m.biz(1).message(Direction::In, 10);
        m.biz(2).message(Direction::In, 10);
        m.biz(2).message(Direction::Out, 10);
        let t = m.totals();
        assert_eq!((t.messages_in, t.messages_out), (2, 1));
    }
}
