//! Handshakes per second per client address (`limits.handshake_rate_per_ip`, burst
//! `limits.handshake_burst_per_ip`): a token bucket per address, checked before the token is
//! verified, so one address cannot spend the node's CPU on a flood of handshakes (refused 429
//! with Retry-After). The address is the client's as `client_ip` found it (trusted proxies
//! resolved). Memory is bounded: at most [`MAX_TRACKED`] addresses are remembered; beyond,
//! addresses whose bucket has refilled are forgotten (a forgotten address starts full, which is
//! what it would have been), and if a flood from that many distinct addresses is still in
//! progress the table starts over — `server.websocket.max_handshakes` bounds that case. No I/O.

use std::net::IpAddr;

use dashmap::DashMap;
use tokio::time::Instant;

/// Addresses remembered at most.
pub(super) const MAX_TRACKED: usize = 100_000;

pub struct AddressRates {
    rate: f32,
    burst: f32,
    buckets: DashMap<IpAddr, (f32, Instant)>,
}

impl AddressRates {
    /// `rate` handshakes per second per address, `burst` at once; `None` when `rate` is 0 (off).
    pub fn new(rate: f32, burst: u32) -> Option<Self> {
        (rate > 0.0).then(|| Self { rate, burst: burst.max(1) as f32, buckets: DashMap::new() })
    }

    /// Whether `ip` may start a handshake at `now` (takes a token when it may).
    pub(super) fn admit(&self, ip: IpAddr, now: Instant) -> bool {
        if self.buckets.len() >= MAX_TRACKED && !self.buckets.contains_key(&ip) {
            self.forget_refilled(now);
        }
        let mut bucket = self.buckets.entry(ip).or_insert((self.burst, now));
        let (tokens, last) = *bucket;
        let tokens = (tokens + now.saturating_duration_since(last).as_secs_f32() * self.rate)
            .min(self.burst);
        let admitted = tokens >= 1.0;
        *bucket = (if admitted { tokens - 1.0 } else { tokens }, now);
        admitted
    }

    fn forget_refilled(&self, now: Instant) {
        let (rate, burst) = (self.rate, self.burst);
        self.buckets.retain(|_, (tokens, last)| {
            *tokens + now.saturating_duration_since(*last).as_secs_f32() * rate < burst
        });
        if self.buckets.len() >= MAX_TRACKED {
            self.buckets.clear();
        }
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn each_address_gets_its_burst_then_its_rate() {
        let r = AddressRates::new(2.0, 3).expect("on");
        let (a, b): (IpAddr, IpAddr) =
            ("10.0.0.1".parse().expect("ip"), "10.0.0.2".parse().expect("ip"));
        let t0 = Instant::now();
        assert_eq!((0..4).map(|_| r.admit(a, t0)).collect::<Vec<_>>(), [true, true, true, false]);
        assert!(r.admit(b, t0), "another address has its own bucket");
        assert!(!r.admit(a, t0 + Duration::from_millis(400)), "0.8 of a token");
        assert!(r.admit(a, t0 + Duration::from_millis(500)), "one token per 1/rate");
        assert!(AddressRates::new(0.0, 10).is_none(), "0: off");
    }

    #[test]
    fn the_table_stays_bounded_and_forgets_refilled_addresses_first() {
        let r = AddressRates::new(1.0, 1).expect("on");
        let t0 = Instant::now();
        for i in 0..MAX_TRACKED as u32 {
            assert!(r.admit(IpAddr::from(i.to_be_bytes()), t0));
        }
        let later = t0 + Duration::from_secs(2);
        assert!(r.admit("192.0.2.1".parse().expect("ip"), later));
        assert_eq!(r.tracked(), 1, "every refilled bucket was forgotten");
        let flood = t0 + Duration::from_millis(10);
        let r = AddressRates::new(1.0, 1).expect("on");
        for i in 0..MAX_TRACKED as u32 {
            r.admit(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert!(r.admit("192.0.2.1".parse().expect("ip"), flood));
        assert!(
            r.tracked() <= MAX_TRACKED,
            "a flood from distinct addresses starts the table over"
        );
    }
}
