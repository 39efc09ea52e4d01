//! A connection's liveness: ping, pong, idle and token-expiry deadlines. Pure: driven by the
//! instants it is given, so the rules are unit-tested without a socket or a clock.
//!
//! Owns: when to ping and when to close for silence. Must never touch the socket; the
//! connection's task acts on its [`Tick`]s.

use std::time::Duration;

use tokio::time::Instant;

use super::CloseReason;
use crate::config::LimitsConfig;

/// What the connection's timer asks for.
#[derive(Debug, PartialEq)]
pub(super) enum Tick {
    Ping,
    Close(CloseReason),
    Wait,
}

/// Ping, pong and idle deadlines of one connection. Pure: driven by the instants it is given.
pub(super) struct Liveness {
    last_heard: Instant,
    last_message: Instant,
    ping_sent: Option<Instant>,
    ping_interval: Duration,
    pong_timeout: Duration,
    idle_timeout: Option<Duration>,
    /// When the token expires (plus leeway): the connection is closed then.
    pub(super) expires: Option<Instant>,
}

/// The instant `exp` (Unix seconds) plus `leeway` falls on.
pub(super) fn expiry_instant(exp: u64, leeway: Duration) -> Instant {
    let at = std::time::UNIX_EPOCH + Duration::from_secs(exp) + leeway;
    let left = at.duration_since(std::time::SystemTime::now()).unwrap_or_default();
    Instant::now() + left
}

impl Liveness {
    pub(super) fn new(now: Instant, limits: &LimitsConfig, idle: bool) -> Self {
        Self {
            last_heard: now,
            last_message: now,
            ping_sent: None,
            ping_interval: limits.ping_interval,
            pong_timeout: limits.pong_timeout,
            idle_timeout: idle.then_some(limits.idle_timeout),
            expires: None,
        }
    }

    /// Any frame from the client proves it is alive.
    pub(super) fn heard(&mut self, now: Instant) {
        self.last_heard = now;
        self.ping_sent = None;
    }

    /// A data message (not a control frame) arrived.
    pub(super) fn application_message(&mut self, now: Instant) {
        self.last_message = now;
    }

    pub(super) fn deadline(&self) -> Instant {
        let liveness = match self.ping_sent {
            Some(sent) => sent + self.pong_timeout,
            None => self.last_heard + self.ping_interval,
        };
        let deadline = match self.idle_timeout {
            Some(idle) => liveness.min(self.last_message + idle),
            None => liveness,
        };
        self.expires.map_or(deadline, |e| deadline.min(e))
    }

    pub(super) fn on_timer(&mut self, now: Instant) -> Tick {
        if self.expires.is_some_and(|e| now >= e) {
            return Tick::Close(CloseReason::TokenExpired);
        }
        if self.idle_timeout.is_some_and(|idle| now >= self.last_message + idle) {
            return Tick::Close(CloseReason::IdleTimeout);
        }
        match self.ping_sent {
            Some(sent) if now >= sent + self.pong_timeout => Tick::Close(CloseReason::PongTimeout),
            None if now >= self.last_heard + self.ping_interval => {
                self.ping_sent = Some(now);
                Tick::Ping
            }
            _ => Tick::Wait,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> LimitsConfig {
        LimitsConfig {
            ping_interval: Duration::from_secs(30),
            pong_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(100),
            ..LimitsConfig::default()
        }
    }

    #[test]
    fn an_expiring_token_closes_at_its_expiry_before_any_other_deadline() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, &limits(), false);
        l.expires = Some(t0 + Duration::from_secs(5));
        assert_eq!(l.deadline(), t0 + Duration::from_secs(5));
        assert_eq!(l.on_timer(t0 + Duration::from_secs(4)), Tick::Wait);
        let expired = l.on_timer(t0 + Duration::from_secs(5));
        assert_eq!(expired, Tick::Close(CloseReason::TokenExpired));
        assert_eq!(CloseReason::TokenExpired.code(), Some(4001));
    }

    #[test]
    fn pings_after_silence_and_closes_without_pong() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, &limits(), false);
        assert_eq!(l.deadline(), t0 + Duration::from_secs(30));
        assert_eq!(l.on_timer(t0 + Duration::from_secs(29)), Tick::Wait);
        assert_eq!(l.on_timer(t0 + Duration::from_secs(30)), Tick::Ping);
        assert_eq!(l.deadline(), t0 + Duration::from_secs(40));
        assert_eq!(l.on_timer(t0 + Duration::from_secs(40)), Tick::Close(CloseReason::PongTimeout));
    }

    #[test]
    fn any_frame_answers_a_ping() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, &limits(), false);
        assert_eq!(l.on_timer(t0 + Duration::from_secs(30)), Tick::Ping);
        l.heard(t0 + Duration::from_secs(31));
        assert_eq!(l.on_timer(t0 + Duration::from_secs(40)), Tick::Wait);
        assert_eq!(l.deadline(), t0 + Duration::from_secs(61));
    }

    #[test]
    fn idle_counts_only_application_messages() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, &limits(), true);
        l.heard(t0 + Duration::from_secs(90));
        l.application_message(t0 + Duration::from_secs(50));
        assert_eq!(l.deadline(), t0 + Duration::from_secs(120));
        assert_eq!(
            l.on_timer(t0 + Duration::from_secs(150)),
            Tick::Close(CloseReason::IdleTimeout)
        );
        let mut off = Liveness::new(t0, &limits(), false);
        off.heard(t0 + Duration::from_secs(200));
        assert_eq!(off.on_timer(t0 + Duration::from_secs(200)), Tick::Wait);
    }
}
