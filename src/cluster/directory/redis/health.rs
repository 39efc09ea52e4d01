//! Whether the directory counts as reachable for readiness (`/ready`, `wsgw top`), debounced:
//! one failed round trip (a blip, a slow script) must not take every node of the fleet out of
//! its load balancer at once. Down only after [`FAILURES`] failures in a row spanning at least
//! [`PERSISTENCE`] with no success between; up again at the first success. Before the first
//! success the directory is not ready. The raw state is the `dependency_up{service="redis"}`
//! metric (set by the caller on every change). Owns only that rule.

use std::{
    sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    time::{Duration, Instant},
};

/// Failures in a row before the directory counts as down...
pub(super) const FAILURES: u32 = 3;
/// ...and for at least this long.
pub(super) const PERSISTENCE: Duration = Duration::from_secs(2);

pub(super) struct Health {
    base: Instant,
    reached: AtomicBool,
    failures: AtomicU32,
    /// First failure of the current run, in ms after `base`.
    failing_since: AtomicU64,
}

impl Health {
    pub(super) fn new() -> Self {
        Self {
            base: Instant::now(),
            reached: AtomicBool::new(false),
            failures: AtomicU32::new(0),
            failing_since: AtomicU64::new(0),
        }
    }

    /// Records one round trip's outcome at `now`.
    pub(super) fn record(&self, ok: bool, now: Instant) {
        if ok {
            self.reached.store(true, Ordering::Relaxed);
            self.failures.store(0, Ordering::Relaxed);
        } else if self.failures.fetch_add(1, Ordering::Relaxed) == 0 {
            self.failing_since.store(self.ms(now), Ordering::Relaxed);
        }
    }

    /// Ready at `now`: reached once, and not failing persistently.
    pub(super) fn ready(&self, now: Instant) -> bool {
        if !self.reached.load(Ordering::Relaxed) {
            return false;
        }
        let failures = self.failures.load(Ordering::Relaxed);
        let since = self.failing_since.load(Ordering::Relaxed);
        failures < FAILURES || self.ms(now).saturating_sub(since) < PERSISTENCE.as_millis() as u64
    }

    fn ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.base).as_millis() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_only_after_failures_that_persist_and_up_at_the_first_success() {
        let h = Health::new();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert!(!h.ready(t0), "never reached yet");
        h.record(true, at(0));
        assert!(h.ready(at(0)));
        h.record(false, at(10));
        assert!(h.ready(at(5000)), "one failure is a blip, however long ago");
        h.record(false, at(20));
        h.record(false, at(30));
        assert!(h.ready(at(1000)), "three failures, but within {PERSISTENCE:?}");
        assert!(!h.ready(at(2010)), "failing for {PERSISTENCE:?}: down");
        h.record(true, at(2100));
        assert!(h.ready(at(2100)), "up at the first success");
        h.record(false, at(9000));
        h.record(false, at(9001));
        h.record(false, at(9002));
        assert!(h.ready(at(10_000)), "a new run of failures counts from its own first one");
        assert!(!h.ready(at(11_001)));
    }
}
