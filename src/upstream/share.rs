//! Each user's share of the node's backend calls: at most `upstream.max_in_flight_per_user`
//! messages of one user wait for a backend at once, across all of the user's connections on
//! this node, so that one user (many connections, each at its own in-flight limit) cannot take
//! a business's endpoint capacity from everyone else.
//!
//! Owns: the per-user counters. Must never wait: a user at the limit is refused at once.

use std::sync::Arc;

use dashmap::DashMap;

use crate::auth::Identity;

/// In-flight upstream messages per user.
pub struct UserShare {
    limit: u32,
    in_flight: DashMap<Identity, u32>,
}

/// One message's place in its user's share, given back when dropped.
pub struct ShareGuard {
    share: Arc<UserShare>,
    who: Identity,
}

impl UserShare {
    pub fn new(limit: u32) -> Arc<Self> {
        Arc::new(Self { limit, in_flight: DashMap::new() })
    }

    /// A place for one more of `who`'s messages, or `None` when the user is at the limit.
    pub fn try_begin(self: &Arc<Self>, who: Identity) -> Option<ShareGuard> {
        let mut n = self.in_flight.entry(who).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(ShareGuard { share: self.clone(), who })
    }

    /// Users with messages in flight (the map never outlives their messages).
    #[cfg(test)]
    fn users(&self) -> usize {
        self.in_flight.len()
    }
}

impl Drop for ShareGuard {
    fn drop(&mut self) {
        if let Some(mut n) = self.share.in_flight.get_mut(&self.who) {
            *n = n.saturating_sub(1);
        }
        self.share.in_flight.remove_if(&self.who, |_, n| *n == 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: i64) -> Identity {
        Identity { user_id: id, biz_id: 7 }
    }

    #[test]
    fn a_user_beyond_its_share_is_refused_and_others_are_not() {
        let share = UserShare::new(2);
        let a1 = share.try_begin(user(1)).expect("first");
        let _a2 = share.try_begin(user(1)).expect("second");
        assert!(share.try_begin(user(1)).is_none(), "a third is over the share");
        assert!(share.try_begin(user(2)).is_some(), "another user is not affected");
        drop(a1);
        assert!(share.try_begin(user(1)).is_some(), "a finished message gives its place back");
    }

    #[test]
    fn users_without_messages_in_flight_are_forgotten() {
        let share = UserShare::new(4);
        let guards: Vec<_> = (0..3).filter_map(|i| share.try_begin(user(i))).collect();
        assert_eq!(share.users(), 3);
        drop(guards);
        assert_eq!(share.users(), 0);
    }
}
