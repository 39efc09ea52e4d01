//! Kafka: consuming pushes (`push_message_event`) and producing presence events
//! (`gateway_users_action`), with the original gateway's JSON (SPEC §3).
//!
//! Pushes: every node consumes the topic as one consumer group, so each push is read once,
//! by one node, and routed to the node(s) holding its receiver (never "every node reads
//! everything"). The records the consumer already holds are routed together (up to [`BATCH`]:
//! one directory round trip records and looks up all of them); a push that fails there is
//! retried on its own. Up to `concurrency` pushes are routed at once; offsets are stored per
//! partition, in order, and only after the push was recorded in its user's inbox (cluster mode)
//! (`Offsets`: a stuck record holds back its own partition's offsets, never the others'), then committed by
//! librdkafka's auto-commit: at-least-once, with the push key for dedup. A push that cannot be
//! routed (directory down and receiver not here, node overloaded) is retried with back-off and
//! holds back later offsets; after `route_timeout` it is kept in its user's offline inbox (and
//! its offset stored), so one stuck push stops holding back the rest. Only when the inbox cannot
//! be written either (Redis down) does it keep waiting: nothing else would keep it. Undecodable records are counted and skipped.
//!
//! Presence: events are queued without waiting (bounded by `presence_buffer`, drops counted) and
//! produced in the background; librdkafka buffers and retries them for up to five minutes while
//! brokers are down, so a brief outage loses nothing. Must never block a connection.

mod closing;
mod group;

use std::{sync::Arc, time::Duration};

use base64::Engine as _;
use std::collections::{BTreeMap, HashMap};

use futures_util::{FutureExt as _, StreamExt, future::BoxFuture, stream::FuturesUnordered};
use rdkafka::{
    ClientConfig, Message as _,
    consumer::Consumer,
    producer::{FutureProducer, FutureRecord, Producer as _},
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    auth::Identity,
    config::KafkaConfig,
    protocol::pb::PushMessage,
    push::{DeadLetter, PushError, PushSink, RouteError, Routed},
    telemetry::{ClusterEvent, Dependency, Metrics, Untrusted},
};

/// A record of the push topic.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct KafkaPush {
    pub key: String,
    pub biz_id: i64,
    pub receiver_id: i64,
    /// Standard base64.
    pub body: String,
}

impl KafkaPush {
    fn into_push(self) -> Option<PushMessage> {
        let body = base64::engine::general_purpose::STANDARD.decode(self.body.as_bytes()).ok()?;
        Some(PushMessage {
            key: self.key,
            biz_id: self.biz_id,
            receiver_id: self.receiver_id,
            body: body.into(),
        })
    }
}

/// A presence change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum PresenceAction {
    Online,
    Offline,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PresenceRecord {
    biz_id: i64,
    user_id: i64,
    action: PresenceAction,
}

fn client_config(config: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers)
        .set("reconnect.backoff.ms", "100")
        .set("reconnect.backoff.max.ms", "2000")
        .set("socket.timeout.ms", "10000")
        .set("log_level", "3");
    c
}

/// The operator's own librdkafka properties (`cluster.kafka.properties`) over wsgw's.
fn with_properties<'a>(c: &'a mut ClientConfig, config: &KafkaConfig) -> &'a mut ClientConfig {
    for (k, v) in &config.properties {
        c.set(k, v);
    }
    c
}

/// Longest one routing attempt of a Kafka push may take before it is retried.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Consumes the push topic and hands every push to a sink.
pub struct PushConsumer<S> {
    config: KafkaConfig,
    sink: Arc<S>,
    metrics: Arc<Metrics>,
}

impl<S: PushSink> PushConsumer<S> {
    pub fn new(config: &KafkaConfig, sink: Arc<S>, metrics: Arc<Metrics>) -> Self {
        Self { config: config.clone(), sink, metrics }
    }

    pub async fn run(self, stop: CancellationToken) {
        let observer =
            group::GroupObserver::new(self.metrics.clone(), self.config.push_topic.clone());
        let consumer = match with_properties(
            client_config(&self.config)
                .set("group.id", &self.config.group_id)
                .set("enable.auto.commit", "true")
                .set("auto.commit.interval.ms", "1000")
                .set("enable.auto.offset.store", "false")
                .set("auto.offset.reset", &self.config.start_from)
                .set("session.timeout.ms", "10000")
                .set("max.poll.interval.ms", "30000")
                .set("fetch.wait.max.ms", "50")
                .set("statistics.interval.ms", group::STATS_INTERVAL_MS),
            &self.config,
        )
        .create_with_context(observer)
        {
            Ok(c) => closing::Closing::new(c),
            Err(e) => {
                return warn!(error = %e, "cannot create the Kafka consumer; pushes from Kafka are off");
            }
        };
        if let Err(e) = consumer.get().subscribe(&[self.config.push_topic.as_str()]) {
            return warn!(error = %e, "cannot subscribe to the push topic; pushes from Kafka are off");
        }
        info!(topic = %self.config.push_topic, group = %self.config.group_id, "consuming pushes");
        let mut inflight = FuturesUnordered::<BoxFuture<'static, Finished>>::new();
        let (mut offsets, mut open) = (Offsets::default(), 0usize);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                Some(finished) = inflight.next(), if !inflight.is_empty() => {
                    for (partition, offset, outcome) in finished {
                        match outcome {
                            Outcome::Done => {
                                open -= 1;
                                if let Some(upto) = offsets.finish(partition, offset) {
                                    let _ = consumer.get().store_offset(&self.config.push_topic, partition, upto);
                                }
                            }
                            Outcome::Retry(msg, started) => {
                                let retry = self.retry(msg, started, stop.clone());
                                inflight.push(Box::pin(async move { vec![(partition, offset, retry.await)] }));
                            }
                            Outcome::Stopped => open -= 1,
                        }
                    }
                }
                received = consumer.get().recv(), if open < self.config.concurrency => match received {
                    Ok(m) => {
                        self.metrics.dependency(Dependency::Kafka, true);
                        let mut batch = vec![self.record(&m)];
                        // What else the consumer already holds goes along: one directory round
                        // trip for the batch.
                        while batch.len() < BATCH && open + batch.len() < self.config.concurrency {
                            match consumer.get().recv().now_or_never() {
                                Some(Ok(m)) => batch.push(self.record(&m)),
                                Some(Err(e)) => {
                                    self.consume_error(&e);
                                    break;
                                }
                                None => break,
                            }
                        }
                        open += batch.len();
                        for r in &batch {
                            offsets.begin(r.partition, r.offset);
                        }
                        inflight.push(Box::pin(self.route(batch)));
                    }
                    Err(e) => {
                        self.consume_error(&e);
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                },
            }
        }
        // Unfinished pushes are not stored: the group hands them out again.
        drop(inflight);
        consumer.close().await;
        self.metrics.kafka_partitions.set(0);
        self.metrics.kafka_lag.reset();
    }

    /// Reads a record; one that is not a valid push is counted and logged here.
    fn record(&self, m: &rdkafka::message::BorrowedMessage<'_>) -> Record {
        let payload = m.payload().unwrap_or_default();
        let push = serde_json::from_slice::<KafkaPush>(payload).ok().and_then(KafkaPush::into_push);
        if push.is_none() {
            self.metrics.cluster_event(ClusterEvent::PushInvalid);
            warn!(record = %Untrusted(payload), "skipping a push record that is not valid JSON");
        }
        Record { partition: m.partition(), offset: m.offset(), push }
    }

    fn consume_error(&self, e: &rdkafka::error::KafkaError) {
        self.metrics.dependency(Dependency::Kafka, false);
        self.metrics.cluster_event(ClusterEvent::ConsumeError);
        warn!(error = %e, "Kafka consumer error");
    }

    /// Routes a batch of records together (one attempt); what failed but may succeed later
    /// comes back as [`Outcome::Retry`].
    fn route(&self, batch: Vec<Record>) -> impl Future<Output = Finished> + Send + 'static {
        let (sink, metrics) = (self.sink.clone(), self.metrics.clone());
        async move {
            let started = tokio::time::Instant::now();
            let mut out = Vec::with_capacity(batch.len());
            let mut valid = Vec::with_capacity(batch.len());
            for r in batch {
                match r.push {
                    Some(msg) => valid.push((r.partition, r.offset, msg)),
                    None => out.push((r.partition, r.offset, Outcome::Done)),
                }
            }
            if valid.is_empty() {
                return out;
            }
            metrics.cluster_event(ClusterEvent::RouteBatch);
            let msgs = valid.iter().map(|(_, _, msg)| msg.clone()).collect::<Vec<_>>();
            let n = msgs.len();
            let results = tokio::time::timeout(ATTEMPT_TIMEOUT, sink.push_many(msgs))
                .await
                .unwrap_or_else(|_| vec![Err(late()); n]);
            for ((partition, offset, msg), routed) in valid.into_iter().zip(results) {
                let outcome = match judge(&metrics, &msg, routed) {
                    true => Outcome::Done,
                    false => Outcome::Retry(msg, started),
                };
                out.push((partition, offset, outcome));
            }
            out
        }
    }

    /// Routes one push again and again (with back-off) until it is routed, refused for good, or
    /// (after `route_timeout` since `started`) kept in its receiver's inbox.
    fn retry(
        &self,
        msg: PushMessage,
        started: tokio::time::Instant,
        stop: CancellationToken,
    ) -> impl Future<Output = Outcome> + Send + 'static {
        let (sink, metrics) = (self.sink.clone(), self.metrics.clone());
        let route_timeout = self.config.route_timeout;
        async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                // Held back long enough: keep it for the user's next connection, so that it
                // stops holding back the records behind it.
                if started.elapsed() >= route_timeout {
                    match sink.keep(msg.clone()).await {
                        Ok(()) => {
                            metrics.cluster_event(ClusterEvent::PushKept);
                            warn!(key = %Untrusted::text(&msg.key), "push from Kafka not routable in time; kept in the inbox");
                            return Outcome::Done;
                        }
                        Err(e) => {
                            warn!(error = %e, key = %Untrusted::text(&msg.key), "push from Kafka can be neither routed nor kept yet")
                        }
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => return Outcome::Stopped,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                // One attempt never waits longer than this: a hung dependency must not hold a
                // slot of the in-flight window (and its partition's offsets) forever.
                let attempt = tokio::time::timeout(ATTEMPT_TIMEOUT, sink.push(msg.clone()));
                if judge(&metrics, &msg, attempt.await.unwrap_or_else(|_| Err(late()))) {
                    return Outcome::Done;
                }
            }
        }
    }
}

/// The most records routed together (one directory round trip).
const BATCH: usize = 128;

/// A record as read: where it is and its push (`None`: not a valid push, counted and skipped).
struct Record {
    partition: i32,
    offset: i64,
    push: Option<PushMessage>,
}

/// What became of a record in flight.
enum Outcome {
    /// Routed, refused for good or kept: its offset may be stored.
    Done,
    /// Not routed yet; routing started at the instant given.
    Retry(PushMessage, tokio::time::Instant),
    /// Not routed, and the node is stopping: its offset is not stored.
    Stopped,
}

/// Records in flight that finished an attempt: (partition, offset, outcome).
type Finished = Vec<(i32, i64, Outcome)>;

fn late() -> RouteError {
    RouteError::Unavailable("routing did not finish in time".into())
}

/// Counts what became of one routing attempt of `msg`; true when it is done (routed, or
/// refused for good), false when it is worth another attempt.
fn judge(metrics: &Metrics, msg: &PushMessage, routed: Result<Routed, RouteError>) -> bool {
    match routed {
        Ok(r) => {
            metrics.cluster_event(match r.stored {
                true => ClusterEvent::PushStored,
                false => ClusterEvent::PushRouted,
            });
            true
        }
        Err(RouteError::Push(e @ PushError::TooLarge { .. })) => {
            metrics.cluster_event(ClusterEvent::PushTooLarge);
            warn!(error = %e, key = %Untrusted::text(&msg.key), "skipping a push record that is too large");
            true
        }
        Err(e) if !e.is_retriable() => {
            metrics.cluster_event(ClusterEvent::PushUndeliverable);
            true
        }
        Err(e) => {
            metrics.cluster_event(ClusterEvent::PushRetried);
            warn!(error = %e, key = %Untrusted::text(&msg.key), "push from Kafka not routed yet");
            false
        }
    }
}

/// Offsets of the records in flight, per partition. Records finish in any order; an offset is
/// stored only when it and every earlier record of its partition are done, so the group never
/// skips a record, and a record still being routed holds back its own partition only.
#[derive(Debug, Default)]
struct Offsets {
    open: HashMap<i32, BTreeMap<i64, bool>>,
}

impl Offsets {
    fn begin(&mut self, partition: i32, offset: i64) {
        self.open.entry(partition).or_default().insert(offset, false);
    }

    /// `offset` of `partition` is done: the offset to store now, if the partition advanced.
    fn finish(&mut self, partition: i32, offset: i64) -> Option<i64> {
        let open = self.open.get_mut(&partition)?;
        *open.get_mut(&offset)? = true;
        let mut upto = None;
        while let Some((&first, &true)) = open.first_key_value() {
            open.pop_first();
            upto = Some(first);
        }
        upto
    }
}

/// A record a producer task writes: its key and JSON payload, and what its producer counts.
pub trait ToRecord: Send + 'static {
    const COUNTS: Counts;

    fn to_record(&self) -> (String, Vec<u8>);
}

impl ToRecord for (Identity, PresenceAction) {
    const COUNTS: Counts = Counts {
        produced: ClusterEvent::PresenceProduced,
        failed: ClusterEvent::PresenceFailed,
        dropped: ClusterEvent::PresenceDropped,
    };

    fn to_record(&self) -> (String, Vec<u8>) {
        let (who, action) = *self;
        let record = PresenceRecord { biz_id: who.biz_id, user_id: who.user_id, action };
        let key = format!("{}-{}", who.biz_id, who.user_id);
        (key, serde_json::to_vec(&record).unwrap_or_default())
    }
}

/// The push topic's JSON plus the reason, so a dead letter can be replayed as it is.
#[derive(Serialize)]
struct DeadLetterRecord<'a> {
    #[serde(flatten)]
    push: KafkaPush,
    reason: &'a str,
}

impl ToRecord for DeadLetter {
    const COUNTS: Counts = Counts {
        produced: ClusterEvent::DeadLetterProduced,
        failed: ClusterEvent::DeadLetterFailed,
        dropped: ClusterEvent::DeadLetterDropped,
    };

    fn to_record(&self) -> (String, Vec<u8>) {
        let m = &self.msg;
        let push = KafkaPush {
            key: m.key.clone(),
            biz_id: m.biz_id,
            receiver_id: m.receiver_id,
            body: base64::engine::general_purpose::STANDARD.encode(&m.body),
        };
        let key = format!("{}-{}", m.biz_id, m.receiver_id);
        (
            key,
            serde_json::to_vec(&DeadLetterRecord { push, reason: self.reason }).unwrap_or_default(),
        )
    }
}

/// What a producer task counts.
pub struct Counts {
    produced: ClusterEvent,
    failed: ClusterEvent,
    dropped: ClusterEvent,
}

/// The presence producer: the queue events go into (bounded by `presence_buffer`; a full queue
/// is the caller's to count) and the task that produces them until `stop`, then flushes what is
/// buffered (briefly).
pub fn presence_producer(
    config: &KafkaConfig,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> (mpsc::Sender<(Identity, PresenceAction)>, impl Future<Output = ()> + Send + 'static) {
    producer(config, config.presence_topic.clone(), metrics, stop)
}

/// The dead-letter producer (`dead_letter_topic`): given-up pushes with their reason.
pub fn dead_letter_producer(
    config: &KafkaConfig,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> (mpsc::Sender<DeadLetter>, impl Future<Output = ()> + Send + 'static) {
    producer(config, config.dead_letter_topic.clone(), metrics, stop)
}

/// A producer's queue (bounded by `presence_buffer`) and its task.
fn producer<T: ToRecord>(
    config: &KafkaConfig,
    topic: String,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> (mpsc::Sender<T>, impl Future<Output = ()> + Send + 'static) {
    let (tx, rx) = mpsc::channel(config.presence_buffer);
    (tx, produce(config.clone(), topic, rx, metrics, stop))
}

/// Produces what arrives on `records` to `topic` until `stop`, then flushes (briefly).
/// librdkafka buffers and retries for up to five minutes while brokers are down.
async fn produce<T: ToRecord>(
    config: KafkaConfig,
    topic: String,
    mut records: mpsc::Receiver<T>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let counts = T::COUNTS;
    let producer: FutureProducer = match with_properties(
        client_config(&config)
            .set("message.timeout.ms", "300000")
            .set("queue.buffering.max.messages", config.presence_buffer.to_string())
            .set("linger.ms", "5"),
        &config,
    )
    .create()
    {
        Ok(p) => p,
        Err(e) => return warn!(error = %e, topic, "cannot create a Kafka producer; not producing"),
    };
    let mut deliveries = FuturesUnordered::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            Some(done) = deliveries.next(), if !deliveries.is_empty() => {
                let ok = matches!(done, Ok(Ok(_)));
                metrics.cluster_event(if ok { counts.produced } else { counts.failed });
            }
            record = records.recv() => {
                let Some(record) = record else { break };
                let (key, payload) = record.to_record();
                match producer.send_result(FutureRecord::to(&topic).key(&key).payload(&payload)) {
                    Ok(delivery) => deliveries.push(delivery),
                    Err((e, _)) => {
                        metrics.cluster_event(counts.dropped);
                        warn!(error = %e, topic, "record dropped");
                    }
                }
            }
        }
    }
    let flush = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(5)));
    let _ = flush.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_advance_per_partition_over_finished_prefixes_only() {
        let mut o = Offsets::default();
        for (p, off) in [(0, 10), (0, 11), (0, 12), (1, 5), (1, 6)] {
            o.begin(p, off);
        }
        assert_eq!(o.finish(0, 11), None, "10 is still being routed");
        assert_eq!(o.finish(1, 5), Some(5), "partition 1 does not wait for partition 0");
        assert_eq!(o.finish(1, 6), Some(6));
        assert_eq!(o.finish(0, 10), Some(11), "10 and 11 are done: store up to 11");
        assert_eq!(o.finish(0, 12), Some(12));
        assert_eq!(o.finish(0, 12), None, "finished twice: nothing new");
        assert_eq!(o.finish(7, 1), None, "unknown partition");
        o.begin(0, 13);
        assert_eq!(o.finish(0, 99), None, "an offset never begun changes nothing");
        assert_eq!(o.finish(0, 13), Some(13));
    }
}
