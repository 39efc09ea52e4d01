//! Telemetry: the node's Prometheus metrics and the process's log set-up.
//!
//! Owns: every metric name (defined once, in [`metrics`]), every event label value (typed, in
//! [`events`]) and the tracing subscriber. Must never
//! hold per-connection state or expose configuration values (secrets) through a metric or log.

pub mod events;
pub mod logging;
pub mod metrics;
pub mod process;
pub mod untrusted;

pub use events::{ClusterEvent, Dependency, PushEvent};
pub use metrics::{BizMetrics, Direction, Metrics, Totals};
pub use untrusted::Untrusted;
