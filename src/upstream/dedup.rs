//! Duplicate detection for upstream messages, per user and key, within a time window.
//!
//! A key already acknowledged is answered with the same ACK body again (the original gateway
//! sent nothing, so a client whose ACK was lost could never succeed). A key still in flight
//! adds the asking connection as a waiter for the one backend call. Failed calls are forgotten
//! so that the client can retry.

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
    pub(super) fn new(window: Duration, capacity: u64) -> Self {
        let acks = moka::sync::Cache::builder().max_capacity(capacity).time_to_live(window).build();
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
        let d = Dedup::new(Duration::from_secs(60), 100);
        assert_eq!(d.begin(&key("k"), &a), Begin::New);
        assert_eq!(d.begin(&key("k"), &b), Begin::Joined);
        let waiters = d.finish(&key("k"), Some(&Bytes::from_static(b"ack")));
        assert_eq!(waiters.len(), 1);
        assert_eq!(waiters[0].id, b.id);
        assert_eq!(d.begin(&key("k"), &a), Begin::Acked(Bytes::from_static(b"ack")));
        assert_eq!(d.begin(&key("other"), &a), Begin::New);
    }

    #[test]
    fn failures_are_forgotten() {
        let links = LinkRegistry::new(10);
        let (a, _) = links.insert(key("").0, "127.0.0.1:1".parse().expect("addr"), 1024);
        let d = Dedup::new(Duration::from_secs(60), 100);
        assert_eq!(d.begin(&key("k"), &a), Begin::New);
        assert!(d.finish(&key("k"), None).is_empty());
        assert_eq!(d.begin(&key("k"), &a), Begin::New, "the client may retry");
    }
}
