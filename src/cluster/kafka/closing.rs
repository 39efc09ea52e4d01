//! Owns the push consumer so that closing it never blocks a runtime thread, nor a shutdown
//! for longer than [`CLOSE_TIMEOUT`].
//!
//! Closing a group consumer (rust-rdkafka's `Drop`) leaves the group and polls until librdkafka
//! says the close is complete, with no deadline: normally a few seconds, forever when the group
//! never settles (seen with the tansu test broker, whose group can stay in a rebalance that
//! never completes). Dropped on a runtime thread — a cancelled task, a runtime tearing down —
//! that hangs the runtime. So the final commit and the close always run on a thread of their
//! own; a graceful stop waits for them up to [`CLOSE_TIMEOUT`], then leaves them behind (the
//! process is exiting; the group notices the departure when the session times out, and the
//! offsets committed before are kept). Must never drop the consumer on the caller's thread.

use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use tracing::{info, warn};

use super::group::GroupObserver;

/// Longest a graceful stop waits for the final commit and the group departure.
pub(super) const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) type PushStream = StreamConsumer<GroupObserver>;

/// The push consumer; closed off the runtime, on [`Closing::close`] or when dropped.
pub(super) struct Closing(Option<PushStream>);

impl Closing {
    pub(super) fn new(consumer: PushStream) -> Self {
        Self(Some(consumer))
    }

    pub(super) fn get(&self) -> &PushStream {
        self.0.as_ref().expect("present until closed or dropped")
    }

    /// Commits the stored offsets and leaves the group; true when both finished in time.
    pub(super) async fn close(mut self) -> bool {
        let Some(consumer) = self.0.take() else { return true };
        let (done, finished) = tokio::sync::oneshot::channel();
        spawn_closer(move || {
            if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                warn!(error = %e, "final Kafka offset commit failed (the group re-reads from the last committed offsets)");
            }
            drop(consumer);
            let _ = done.send(());
        });
        match tokio::time::timeout(CLOSE_TIMEOUT, finished).await {
            Ok(_) => {
                info!("Kafka consumer left its group");
                true
            }
            Err(_) => {
                warn!(timeout = ?CLOSE_TIMEOUT, "the Kafka consumer did not leave its group in time; not waiting any longer");
                false
            }
        }
    }
}

impl Drop for Closing {
    fn drop(&mut self) {
        if let Some(consumer) = self.0.take() {
            spawn_closer(move || drop(consumer));
        }
    }
}

/// Runs `close` on a detached thread (it may never end; nothing joins it).
fn spawn_closer(close: impl FnOnce() + Send + 'static) {
    if let Err(e) = std::thread::Builder::new().name("kafka-close".into()).spawn(close) {
        // The closure (and the consumer in it) is dropped here, on this thread: the only
        // alternative would be leaking the consumer's connections.
        warn!(error = %e, "cannot start a thread to close the Kafka consumer; closing it here");
    }
}
