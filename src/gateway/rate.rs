//! The per-connection message rate (`limits.message_rate`, `limits.message_burst`): a token
//! bucket over every data message a client sends — heartbeats, acks and unknown commands
//! included. A message beyond it is answered `COMMAND_TYPE_RATE_LIMIT_EXCEEDED` (its key, no
//! body) and not processed. Refusals draw from a second bucket of the same rate and size, so a
//! client that keeps sending at more than twice the allowed rate (for longer than about
//! `burst / rate` seconds) is closed with 1008 `rate limit`. No I/O; the connection task acts on
//! the verdict.

use tokio::time::Instant;

/// What to do with one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Within the rate: process it.
    Pass,
    /// Over the rate: answer RATE_LIMIT_EXCEEDED, do not process it.
    Refuse,
    /// Over the rate for too long: close the connection.
    Close,
}

/// One connection's buckets (16 bytes of state plus the last refill time).
#[derive(Debug)]
pub(super) struct RateLimit {
    tokens: f32,
    excess: f32,
    last: Instant,
}

impl RateLimit {
    /// Full buckets of `burst` messages at `now`.
    pub(super) fn new(burst: f32, now: Instant) -> Self {
        Self { tokens: burst, excess: burst, last: now }
    }

    /// The verdict for one message arriving at `now`, refilling `rate` per second up to `burst`.
    pub(super) fn check(&mut self, now: Instant, rate: f32, burst: f32) -> Verdict {
        let refill = now.saturating_duration_since(self.last).as_secs_f32() * rate;
        self.last = now;
        self.tokens = (self.tokens + refill).min(burst);
        self.excess = (self.excess + refill).min(burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Verdict::Pass
        } else if self.excess >= 1.0 {
            self.excess -= 1.0;
            Verdict::Refuse
        } else {
            Verdict::Close
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_passes_then_refusals_then_a_close_unless_the_client_slows_down() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(3.0, t0);
        let verdicts: Vec<Verdict> = (0..7).map(|_| r.check(t0, 10.0, 3.0)).collect();
        use Verdict::*;
        assert_eq!(verdicts, [Pass, Pass, Pass, Refuse, Refuse, Refuse, Close]);

        let mut r = RateLimit::new(3.0, t0);
        for _ in 0..3 {
            assert_eq!(r.check(t0, 10.0, 3.0), Pass);
        }
        assert_eq!(r.check(t0, 10.0, 3.0), Refuse);
        // At the allowed rate (one per 100 ms) a client is never refused again.
        for i in 1..=50 {
            assert_eq!(r.check(t0 + Duration::from_millis(100 * i), 10.0, 3.0), Pass, "{i}");
        }
    }

    #[test]
    fn twice_the_rate_is_refused_half_the_time_and_more_is_closed() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(10.0, t0);
        let at = |i: u64| t0 + Duration::from_millis(50 * i); // 20/s against 10/s
        let closed = (0..400).map(|i| r.check(at(i), 10.0, 10.0)).any(|v| v == Verdict::Close);
        assert!(!closed, "exactly twice the rate: refused, never closed");
        let mut r = RateLimit::new(10.0, t0);
        let fast = |i: u64| t0 + Duration::from_millis(25 * i); // 40/s
        let close_at = (0..400).position(|i| r.check(fast(i), 10.0, 10.0) == Verdict::Close);
        assert!(close_at.is_some_and(|i| i < 60), "{close_at:?}");
    }
}
