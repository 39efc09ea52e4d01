//! What the push consumer's group membership looks like from this node: the partitions it
//! holds (`websocket_gateway_kafka_partitions_assigned`, logged at every rebalance) and each
//! one's lag (`websocket_gateway_kafka_consumer_lag`, from librdkafka's statistics). Operators
//! alert on the cluster-wide sum of assigned partitions: a group that stays without an
//! assignment (a broker that never completes a rebalance) consumes nothing while every node is
//! healthy otherwise. Observes only: never commits, assigns or pauses anything.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
};

use rdkafka::{
    ClientContext, Statistics,
    consumer::{BaseConsumer, ConsumerContext, Rebalance},
};
use tracing::{info, warn};

use crate::telemetry::Metrics;

/// How often librdkafka reports statistics (the lag gauge's resolution).
pub(super) const STATS_INTERVAL_MS: &str = "5000";

/// The consumer's context: counts the assignment and the lag.
pub(super) struct GroupObserver {
    metrics: Arc<Metrics>,
    topic: String,
    /// Partitions of the push topic this consumer holds.
    held: Mutex<BTreeSet<i32>>,
}

impl GroupObserver {
    pub(super) fn new(metrics: Arc<Metrics>, topic: String) -> Self {
        Self { metrics, topic, held: Mutex::default() }
    }
}

impl ClientContext for GroupObserver {
    fn stats(&self, statistics: Statistics) {
        self.metrics.kafka_lag.reset();
        let Some(topic) = statistics.topics.get(&self.topic) else { return };
        for p in topic.partitions.values().filter(|p| p.partition >= 0) {
            if let Some(lag) = lag(p.consumer_lag_stored, p.consumer_lag) {
                self.metrics.kafka_lag.with_label_values(&[&p.partition.to_string()]).set(lag);
            }
        }
    }
}

/// Behind the stored (done) offset when one is stored, else the committed one; none for a
/// partition this consumer does not fetch (librdkafka reports -1).
fn lag(stored: i64, committed: i64) -> Option<i64> {
    [stored, committed].into_iter().find(|&l| l >= 0)
}

impl ConsumerContext for GroupObserver {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        // Never ask the consumer for its assignment here: `assignment()` waits on the group's
        // queue, which this callback is serving — a deadlock (seen in CI). The partitions come
        // with the event: eager rebalances revoke everything and assign everything, cooperative
        // ones only the change; a set handles both.
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        match rebalance {
            Rebalance::Assign(tpl) => held.extend(tpl.elements().iter().map(|e| e.partition())),
            Rebalance::Revoke(tpl) => {
                for e in tpl.elements() {
                    held.remove(&e.partition());
                }
            }
            Rebalance::Error(e) => {
                return warn!(error = %e, "Kafka consumer group rebalance failed");
            }
        }
        self.metrics.kafka_partitions.set(i64::try_from(held.len()).unwrap_or(i64::MAX));
        if matches!(rebalance, Rebalance::Assign(_)) {
            info!(partitions = held.len(), topic = %self.topic, "Kafka partitions assigned");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::lag;

    #[test]
    fn lag_prefers_the_stored_offset_and_skips_partitions_not_fetched() {
        assert_eq!(lag(3, 10), Some(3));
        assert_eq!(lag(-1, 10), Some(10), "nothing stored yet: behind the committed offset");
        assert_eq!(lag(-1, -1), None, "not fetched here");
    }
}
