//! Duplicate detection for upstream messages, per user and key, within a time window.
//!
//! A key already acknowledged is answered with the same ACK body again (the original gateway
//! sent nothing, so a client whose ACK was lost could never succeed). A key still in flight
//! adds the asking connection as a waiter for the one backend call. Failed calls are forgotten
//! so that the client can retry.
//!
//! The remembered ACKs are bounded twice: at most `capacity` of them and at most `max_bytes`.
//! Each weighs its key and body plus [`OVERHEAD`], and at least `max_bytes / capacity`, so one
//! bound on the total weight keeps both.

use std::{
    sync::{Arc, Weak},
    time::Duration,
};

use bytes::Bytes;
use dashmap::{DashMap, mapref::entry::Entry};

use crate::{auth::Identity, links::Link};

pub(super) type Key = (Identity, String);

/// Waiters kept per in-flight key; more duplicates than this are simply dropped.
const MAX_WAITERS: usize = 8;
/// What one remembered ACK costs beyond its key and body (the entry, its identity, the cache's
/// bookkeeping), in bytes.
const OVERHEAD: u64 = 64;

pub(super) struct Dedup {
    acks: moka::sync::Cache<Key, Bytes>,
    in_flight: DashMap<Key, Vec<Weak<Link>>>,
}

/// What to do with an upstream message.
#[derive(Debug, PartialEq)]
pub(super) enum Begin {
    /// Already acknowledged: send this ACK body again.
    Acked(Bytes),
    /// The same key is in flight: the asking link will get its answer.
    Joined,
    /// New: call the backend, then [`Dedup::finish`].
    New,
}

impl Dedup {
    /// At most `capacity` ACKs and `max_bytes` of them, each for `window`.
    pub(super) fn new(window: Duration, capacity: u64, max_bytes: u64) -> Self {
        let least = max_bytes.div_ceil(capacity.max(1)).max(1);
        let weigh = move |key: &Key, ack: &Bytes| {
            let bytes = (key.1.len() + ack.len()) as u64 + OVERHEAD;
            u32::try_from(bytes.max(least)).unwrap_or(u32::MAX)
        };
        let acks = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(weigh)
            .time_to_live(window)
            .build();
        Self { acks, in_flight: DashMap::new() }
    }

    pub(super) fn begin(&self, key: &Key, link: &Arc<Link>) -> Begin {
        if let Some(ack) = self.acks.get(key) {
            return Begin::Acked(ack);
        }
        match self.in_flight.entry(key.clone()) {
            Entry::Occupied(mut waiting) => {
                if waiting.get().len() < MAX_WAITERS {
                    waiting.get_mut().push(Arc::downgrade(link));
                }
                Begin::Joined
            }
            Entry::Vacant(slot) => {
                slot.insert(Vec::new());
                // A call may have finished between the lookup above and this insert.
                if let Some(ack) = self.acks.get(key) {
                    self.in_flight.remove(key);
                    return Begin::Acked(ack);
                }
                Begin::New
            }
        }
    }

    /// Ends the call for `key`: remembers its ACK (when it succeeded) and returns the waiters.
    pub(super) fn finish(&self, key: &Key, ack: Option<&Bytes>) -> Vec<Arc<Link>> {
        if let Some(ack) = ack {
            self.acks.insert(key.clone(), ack.clone());
        }
        let waiters = self.in_flight.remove(key).map(|(_, w)| w).unwrap_or_default();
        waiters.iter().filter_map(Weak::upgrade).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::links::LinkRegistry;

    fn key(k: &str) -> Key {
        (Identity { biz_id: 1, user_id: 2 }, k.to_owned())
    }

    #[test]
    fn acknowledged_keys_are_answered_again_and_in_flight_keys_are_joined() {
        let links = LinkRegistry::new(10);
        let (a, _) = links.insert(key("").0, "127.0.0.1:1".parse().expect("addr"), 1024);
        let (b, _) = links.insert(key("").0, "127.0.0.1:2".parse().expect("addr"), 1024);
        let d = Dedup::new(Duration::from_secs(60), 100, 1 << 20);
        assert_eq!(d.begin(&key("k"), &a), Begin::New);
        assert_eq!(d.begin(&key("k"), &b), Begin::Joined);
        let waiters = d.finish(&key("k"), Some(&Bytes::from_static(b"ack")));
        assert_eq!(waiters.len(), 1);
        assert_eq!(waiters[0].id, b.id);
        assert_eq!(d.begin(&key("k"), &a), Begin::Acked(Bytes::from_static(b"ack")));
        assert_eq!(d.begin(&key("other"), &a), Begin::New);
    }

    #[test]
    fn remembered_acks_are_bounded_in_count_and_in_bytes() {
        let links = LinkRegistry::new(10);
        let (a, _) = links.insert(key("").0, "127.0.0.1:1".parse().expect("addr"), 1024);
        let remember = |d: &Dedup, n: usize, body: usize| {
            for i in 0..n {
                let k = key(&format!("k{i}"));
                assert_eq!(d.begin(&k, &a), Begin::New);
                d.finish(&k, Some(&Bytes::from(vec![b'a'; body])));
            }
            d.acks.run_pending_tasks();
        };
        // Small ACKs: the count binds (10,000 bytes / 100 = at least 100 bytes each).
        let d = Dedup::new(Duration::from_secs(60), 100, 10_000);
        remember(&d, 1_000, 1);
        assert!(d.acks.entry_count() <= 100, "{}", d.acks.entry_count());
        assert!(d.acks.entry_count() >= 50, "still remembers: {}", d.acks.entry_count());
        // Large ACKs: the bytes bind (each weighs ~1 KiB, so ~10 fit, not 100).
        let d = Dedup::new(Duration::from_secs(60), 100, 10_000);
        remember(&d, 1_000, 1_000);
        assert!(d.acks.weighted_size() <= 10_000, "{}", d.acks.weighted_size());
        assert!(d.acks.entry_count() <= 10, "{}", d.acks.entry_count());
    }

    #[test]
    fn failures_are_forgotten() {
        let links = LinkRegistry::new(10);
        let (a, _) = links.insert(key("").0, "127.0.0.1:1".parse().expect("addr"), 1024);
        let d = Dedup::new(Duration::from_secs(60), 100, 1 << 20);
        assert_eq!(d.begin(&key("k"), &a), Begin::New);
        assert!(d.finish(&key("k"), None).is_empty());
        assert_eq!(d.begin(&key("k"), &a), Begin::New, "the client may retry");
    }
}
