//! Duplicate detection for upstream messages, per user and key, within a time window.
//!
//! A key already acknowledged is answered with the same ACK body again (the original gateway
//! sent nothing, so a client whose ACK was lost could never succeed). A key still in flight
//! adds the asking connection as a waiter for the one backend call. Failed calls are forgotten
//! so that the client can retry.
//!
//! The remembered ACKs are bounded twice: at most `capacity` of them and at most `max_bytes`.
//! Each weighs its key (twice: the map and the expiry queue hold it) and body plus
//! [`OVERHEAD`], and at least `max_bytes / capacity`, so one bound on the total weight keeps
//! both. When a bound binds, the **oldest** ACKs are forgotten first: a client resends a key
//! seconds after a lost ACK, never minutes, so the newest ACKs are the ones worth keeping.
//! (The general-purpose cache this module used before, moka, admits a new entry into a full
//! cache by comparing how often keys were seen: with 10,000 ACKs through room for 2,000, it
//! had forgotten 56 of the last 1,000 while keeping older ones. Its CPU per message was no
//! different: `docs/benchmarks.md`.)
//!
//! Every entry lives for the same window, so insertion order is expiry order: each shard keeps
//! its ACKs in a queue, oldest first, and drops from its front what is expired or over the
//! shard's share of the bounds. One shard lock per step; the shard's map holds both the
//! in-flight keys and the remembered ACKs. Keys are hashed with the standard library's
//! randomly seeded SipHash (they come from clients), once per step: the hash picks the shard
//! (from its upper half) and the map's bucket (the map is a `hashbrown::HashTable` that keeps
//! each key's hash beside it), and the expiry queue keeps it for the removal. Hashing the key
//! for the shard and again for each map call cost ~10 SipHash passes per message.
//!
//! Must never hold a shard's lock across an await or while sending to a link.

use std::{
    collections::{VecDeque, hash_map::RandomState},
    hash::BuildHasher,
    sync::{Arc, Mutex, MutexGuard, Weak},
    time::{Duration, Instant},
};

use bytes::Bytes;
use hashbrown::{HashTable, hash_table::Entry};

use crate::{auth::Identity, links::Link};

pub(super) type Key = (Identity, String);

/// Waiters kept per in-flight key; more duplicates than this are simply dropped.
const MAX_WAITERS: usize = 8;
/// What one remembered ACK costs beyond its key and body (the map's and the queue's entries,
/// the identity, the allocations' headers), in bytes.
const OVERHEAD: u64 = 96;
/// Most shards (fewer for small bounds, so that one ACK always fits a shard's share).
const MAX_SHARDS: u64 = 16;
/// ACKs of the least weight a shard must hold at least, when there are several.
const MIN_PER_SHARD: u64 = 1024;

pub(super) struct Dedup {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    window: Duration,
    /// The least weight of one ACK: `max_bytes / capacity`.
    least: u64,
    /// Each shard's share of `max_bytes`.
    shard_bytes: u64,
}

#[derive(Default)]
struct Shard {
    slots: HashTable<Kept>,
    /// Remembered ACKs, oldest first (also the order they expire in).
    order: VecDeque<Remembered>,
    /// Total weight of `order`.
    weight: u64,
}

/// A key, its hash and what is known of it.
struct Kept {
    hash: u64,
    key: Key,
    slot: Slot,
}

enum Slot {
    InFlight(Vec<Weak<Link>>),
    Acked { ack: Bytes, at: Instant },
}

struct Remembered {
    hash: u64,
    key: Key,
    at: Instant,
    weight: u64,
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
        let capacity = capacity.max(1);
        let shards = (capacity / MIN_PER_SHARD).clamp(1, MAX_SHARDS);
        Self {
            shards: (0..shards).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            window,
            least: max_bytes.div_ceil(capacity).max(1),
            shard_bytes: max_bytes / shards,
        }
    }

    pub(super) fn begin(&self, key: &Key, link: &Arc<Link>) -> Begin {
        let now = Instant::now();
        let hash = self.hasher.hash_one(key);
        let mut shard = self.shard(hash);
        match shard.slots.entry(hash, |k| k.key == *key, |k| k.hash) {
            Entry::Occupied(mut kept) => match &mut kept.get_mut().slot {
                Slot::Acked { ack, at } if now.duration_since(*at) < self.window => {
                    return Begin::Acked(ack.clone());
                }
                Slot::InFlight(waiters) => {
                    if waiters.len() < MAX_WAITERS {
                        waiters.push(Arc::downgrade(link));
                    }
                    return Begin::Joined;
                }
                // Expired: called again (its queue entry no longer matches and is dropped).
                slot => *slot = Slot::InFlight(Vec::new()),
            },
            Entry::Vacant(place) => {
                let slot = Slot::InFlight(Vec::new());
                place.insert(Kept { hash, key: key.clone(), slot });
            }
        }
        shard.forget(now, self.window, self.shard_bytes);
        Begin::New
    }

    /// Ends the call for `key`: remembers its ACK (when it succeeded) and returns the waiters.
    pub(super) fn finish(&self, key: &Key, ack: Option<&Bytes>) -> Vec<Arc<Link>> {
        let now = Instant::now();
        let hash = self.hasher.hash_one(key);
        let mut shard = self.shard(hash);
        let waiters = match shard.slots.find_entry(hash, |k| k.key == *key) {
            // Not this call's key any more (cannot happen through `Upstream`): keep it.
            Ok(kept) if matches!(kept.get().slot, Slot::Acked { .. }) => return Vec::new(),
            Ok(kept) => match kept.remove().0.slot {
                Slot::InFlight(waiters) => waiters,
                Slot::Acked { .. } => Vec::new(),
            },
            Err(_) => Vec::new(),
        };
        if let Some(ack) = ack {
            let weight = ((2 * key.1.len() + ack.len()) as u64 + OVERHEAD).max(self.least);
            let slot = Slot::Acked { ack: ack.clone(), at: now };
            shard.slots.insert_unique(hash, Kept { hash, key: key.clone(), slot }, |k| k.hash);
            shard.order.push_back(Remembered { hash, key: key.clone(), at: now, weight });
            shard.weight += weight;
            shard.forget(now, self.window, self.shard_bytes);
        }
        drop(shard);
        waiters.iter().filter_map(Weak::upgrade).collect()
    }

    /// The shard of a key hashed to `hash`: chosen by the hash's upper half, as the map's
    /// buckets are by its lower bits (a shard chosen by the same bits would use a fraction of
    /// its map's buckets).
    fn shard(&self, hash: u64) -> MutexGuard<'_, Shard> {
        let i = (hash >> 32) % self.shards.len() as u64;
        // No code panics while holding a shard, but a poisoned one is still consistent.
        self.shards[i as usize].lock().unwrap_or_else(|e| e.into_inner())
    }

    #[cfg(test)]
    fn remembered(&self) -> (u64, u64) {
        self.shards.iter().fold((0, 0), |(n, w), s| {
            let s = s.lock().expect("shard");
            (n + s.order.len() as u64, w + s.weight)
        })
    }
}

impl Shard {
    /// Forgets, oldest first, the ACKs that expired and those beyond `max_bytes`.
    fn forget(&mut self, now: Instant, window: Duration, max_bytes: u64) {
        while let Some(oldest) = self.order.front() {
            if self.weight <= max_bytes && now.duration_since(oldest.at) < window {
                break;
            }
            let Some(old) = self.order.pop_front() else { break };
            self.weight -= old.weight;
            // The key may have been sent again and answered since: only its own ACK goes.
            if let Ok(kept) = self.slots.find_entry(old.hash, |k| k.key == old.key)
                && matches!(kept.get().slot, Slot::Acked { at, .. } if at == old.at)
            {
                kept.remove();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::links::LinkRegistry;

    fn key(k: &str) -> Key {
        (Identity { biz_id: 1, user_id: 2 }, k.to_owned())
    }

    fn link() -> Arc<Link> {
        let links = LinkRegistry::new(10);
        links.insert(key("").0, "127.0.0.1:1".parse().expect("addr"), 1024).0
    }

    /// Acknowledges `n` keys `k0`, `k1`, … with bodies of `body` bytes.
    fn remember(d: &Dedup, a: &Arc<Link>, n: usize, body: usize) {
        for i in 0..n {
            let k = key(&format!("k{i}"));
            assert_eq!(d.begin(&k, a), Begin::New, "{i}");
            d.finish(&k, Some(&Bytes::from(vec![b'a'; body])));
        }
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
        let a = link();
        // Small ACKs: the count binds (100,000 bytes / 100 = at least 1,000 bytes each).
        let d = Dedup::new(Duration::from_secs(60), 100, 100_000);
        remember(&d, &a, 1_000, 1);
        let (count, weight) = d.remembered();
        assert_eq!(count, 100, "weight {weight}");
        // Large ACKs: the bytes bind (each weighs ~1 KiB, so 9 fit, not 100).
        let d = Dedup::new(Duration::from_secs(60), 100, 10_000);
        remember(&d, &a, 1_000, 1_000);
        let (count, weight) = d.remembered();
        assert!(weight <= 10_000, "{weight}");
        assert_eq!(count, 9, "weight {weight}");
        // Many shards: the bounds still hold in total.
        let d = Dedup::new(Duration::from_secs(60), 20_000, 2_000_000);
        remember(&d, &a, 50_000, 1);
        let (count, weight) = d.remembered();
        assert!((15_000..=20_000).contains(&count), "{count}");
        assert!(weight <= 2_000_000, "{weight}");
    }

    /// Regression: the cache this replaced kept 944 of the last 1,000 here (its admission
    /// compares how often keys were seen, and every key is seen about equally often).
    #[test]
    fn the_newest_acks_are_kept_and_the_oldest_forgotten() {
        let a = link();
        let d = Dedup::new(Duration::from_secs(60), 2_000, 200_000);
        remember(&d, &a, 10_000, 8);
        let newest = (9_000..10_000).filter(|i| d.begin(&key(&format!("k{i}")), &a) != Begin::New);
        assert_eq!(newest.count(), 1_000, "the last 1,000 ACKs are all remembered");
        assert_eq!(d.begin(&key("k0"), &a), Begin::New, "the oldest is forgotten");
    }

    #[test]
    fn acks_expire_after_the_window() {
        let a = link();
        let d = Dedup::new(Duration::from_millis(50), 100, 1 << 20);
        remember(&d, &a, 10, 1);
        assert_eq!(d.begin(&key("k3"), &a), Begin::Acked(Bytes::from_static(b"a")));
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(d.begin(&key("k3"), &a), Begin::New, "expired: forwarded again");
        d.finish(&key("k3"), Some(&Bytes::from_static(b"b")));
        assert_eq!(d.remembered().0, 1, "expired ACKs are dropped, not only ignored");
        assert_eq!(d.begin(&key("k3"), &a), Begin::Acked(Bytes::from_static(b"b")));
    }

    #[test]
    fn failures_are_forgotten() {
        let a = link();
        let d = Dedup::new(Duration::from_secs(60), 100, 1 << 20);
        assert_eq!(d.begin(&key("k"), &a), Begin::New);
        assert!(d.finish(&key("k"), None).is_empty());
        assert_eq!(d.begin(&key("k"), &a), Begin::New, "the client may retry");
    }
}
