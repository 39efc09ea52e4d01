//! The live links in connection order, for walks over all of them (broadcasts).
//!
//! A broadcast to every connection spends its time on cache misses: each connection's link,
//! gate and socket are separate allocations, cold by the time a walk comes back to them.
//! Walking them in the order they were made keeps the kernel's side of the walk in order
//! (docs/benchmarks.md, "Fan-out in connection order"). Reading them from one array, instead
//! of looking each id up in the registry's hash map, takes the map's buckets off the walk and
//! lets it ask for the next connections' lines while it writes to this one ([`prefetch`]).
//!
//! Owns: the array (ids ascending; a closed link leaves a hole until the holes are half of
//! it). Must never hold its lock across an await; a walk holds it for one chunk of
//! [`CHUNK`] links at a time, so connects and closes wait at most that long.

use std::{
    ops::Range,
    sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard},
};

use super::{ConnId, Link};

/// Links a walk visits per hold of the read lock.
const CHUNK: usize = 64;
/// How many links ahead a walk asks for the link's lines (the gate's: one less).
const AHEAD: usize = 2;
/// Holes kept at least before the array is compacted.
const MIN_HOLES: usize = 64;

#[derive(Default)]
pub(super) struct Order {
    inner: RwLock<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: Vec<Entry>,
    holes: usize,
}

struct Entry {
    id: ConnId,
    link: Option<Arc<Link>>,
}

impl Order {
    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        // Ids and pointers only: a panic elsewhere leaves nothing half-done here.
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a new link in its place by id (at the end, unless a later id was added first).
    pub(super) fn insert(&self, link: Arc<Link>) {
        let mut inner = self.write();
        let id = link.id;
        match inner.entries.last() {
            Some(last) if last.id > id => {
                let at = inner.entries.partition_point(|e| e.id < id);
                inner.entries.insert(at, Entry { id, link: Some(link) });
            }
            _ => inner.entries.push(Entry { id, link: Some(link) }),
        }
    }

    /// Leaves a hole where link `id` was; compacts once the holes are half of the array.
    pub(super) fn remove(&self, id: ConnId) {
        let mut inner = self.write();
        let Ok(at) = inner.entries.binary_search_by_key(&id, |e| e.id) else { return };
        let gone = inner.entries[at].link.take();
        if gone.is_some() {
            inner.holes += 1;
        }
        if inner.holes >= MIN_HOLES && inner.holes * 2 >= inner.entries.len() {
            inner.entries.retain(|e| e.link.is_some());
            inner.holes = 0;
        }
        drop(inner);
        drop(gone);
    }

    /// Calls `f` with every live link whose id is in `ids`, oldest first. Links added or
    /// removed meanwhile may or may not be visited.
    pub(super) fn walk(&self, ids: Range<ConnId>, mut f: impl FnMut(&Link)) {
        let mut next = ids.start;
        while next < ids.end {
            let inner = self.read();
            let start = inner.entries.partition_point(|e| e.id < next);
            let rest = &inner.entries[start..];
            let chunk = &rest[..rest.iter().take(CHUNK).take_while(|e| e.id < ids.end).count()];
            let Some(last) = chunk.last() else { return };
            next = last.id + 1;
            for (i, entry) in chunk.iter().enumerate() {
                if let Some(link) = rest.get(i + AHEAD).and_then(|e| e.link.as_deref()) {
                    prefetch_lines(link, 3);
                }
                let next = rest.get(i + AHEAD - 1).and_then(|e| e.link.as_deref());
                if let Some(gate) = next.and_then(|l| l.gate.as_ref()) {
                    prefetch(std::sync::Weak::as_ptr(gate));
                }
                if let Some(link) = &entry.link {
                    f(link);
                }
            }
        }
    }

    /// Id ranges that split the live links into `parts` runs of about the same length, in
    /// order, together covering every id.
    pub(super) fn split(&self, parts: usize) -> Vec<Range<ConnId>> {
        let inner = self.read();
        let live = inner.entries.len() - inner.holes;
        let parts = parts.clamp(1, live.max(1));
        // The id of every (live / parts)-th live link starts a run.
        let mut bounds = Vec::with_capacity(parts - 1);
        let open = inner.entries.iter().filter(|e| e.link.is_some());
        for (seen, entry) in open.enumerate() {
            if seen > 0 && seen == (bounds.len() + 1) * live / parts {
                bounds.push(entry.id);
            }
        }
        let starts = std::iter::once(0).chain(bounds.iter().copied());
        let ends = bounds.iter().copied().chain(std::iter::once(ConnId::MAX));
        starts.zip(ends).map(|(start, end)| start..end).collect()
    }
}

/// Asks the CPU for the `n` cache lines from `value` on, without waiting for them.
fn prefetch_lines<T>(value: &T, n: usize) {
    let p: *const T = value;
    for line in 0..n {
        prefetch(p.cast::<u8>().wrapping_add(line * 64));
    }
}

/// Asks the CPU to start loading the cache line holding `p`, without waiting for it (a no-op
/// where no prefetch instruction is wrapped).
#[inline(always)]
#[allow(unsafe_code)]
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint to the cache: it never faults and reads nothing the
    // program observes, whatever the address (the one `unsafe` of the project: the safe
    // wrapper, `core::hint::prefetch_read`, is not stable yet).
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::links::LinkRegistry;

    #[test]
    fn links_are_walked_oldest_first_without_the_closed_ones() {
        let registry = LinkRegistry::new(1000);
        let order = Order::default();
        let identity = crate::auth::Identity { biz_id: 1, user_id: 7 };
        let addr = "127.0.0.1:1".parse().expect("addr");
        let links: Vec<_> = (0..300).map(|_| registry.insert(identity, addr, 1024).0).collect();
        // Added out of order (a later id first), as two handshakes may finish.
        for pair in links.chunks(2) {
            for link in pair.iter().rev() {
                order.insert(link.clone());
            }
        }
        let walked = |range: Range<ConnId>| {
            let mut ids = Vec::new();
            order.walk(range, |l| ids.push(l.id));
            ids
        };
        let all: Vec<ConnId> = links.iter().map(|l| l.id).collect();
        assert_eq!(walked(0..ConnId::MAX), all);

        // Every third closed: holes at first, then (past half) a compaction; same walk.
        for link in links.iter().step_by(3) {
            order.remove(link.id);
        }
        let open: Vec<ConnId> =
            all.iter().copied().filter(|id| !(id - all[0]).is_multiple_of(3)).collect();
        assert_eq!(walked(0..ConnId::MAX), open);
        for link in links.iter().skip(1).step_by(3) {
            order.remove(link.id);
        }
        assert!(order.read().holes < MIN_HOLES, "compacted");
        let open: Vec<ConnId> = all.iter().copied().filter(|id| (id - all[0]) % 3 == 2).collect();
        assert_eq!(walked(0..ConnId::MAX), open);

        // Split into runs: each id once, in order, runs of about the same length.
        for parts in [1, 2, 3, 7, 500] {
            let runs = order.split(parts);
            assert!(runs.len() <= parts.min(open.len()));
            let joined: Vec<ConnId> = runs.iter().flat_map(|r| walked(r.clone())).collect();
            assert_eq!(joined, open, "{parts} parts");
            let longest = runs.iter().map(|r| walked(r.clone()).len()).max().unwrap_or(0);
            assert!(longest <= open.len().div_ceil(runs.len()) + 1, "{parts} parts");
        }
        assert_eq!(Order::default().split(4), vec![0..ConnId::MAX]);
    }
}
