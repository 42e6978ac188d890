//! Queue groups: subscriptions with the same pattern and group name, on any connection,
//! that share what the pattern matches, each message or request going to one member.
//!
//! A group is one entry in the trie, and a [`Subscriber`] itself: the router and a
//! publisher's match cache hold the group, not its members, so a publish costs the same
//! walk whatever the group's size, and members joining or leaving do not make cached
//! matches stale. [`Group::deliver`] takes members in turn (round-robin), passing over
//! one whose queue refuses the message, so a slow member does not lose what another can
//! take.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use super::{Flushes, Live, Subscriber};

/// One member: its owner (a connection id), the owner's id for it, and its queue.
#[derive(Debug, Clone)]
pub struct Member {
    pub owner: u64,
    pub sub_id: u64,
    pub sub: Arc<dyn Subscriber>,
}

/// A queue group at one pattern.
#[derive(Debug)]
pub struct Group {
    name: Box<str>,
    members: RwLock<Vec<Member>>,
    /// Where the next turn starts.
    next: AtomicUsize,
}

impl Group {
    pub(super) fn new(name: &str, first: Member) -> Arc<Group> {
        Arc::new(Group {
            name: name.into(),
            members: RwLock::new(vec![first]),
            next: AtomicUsize::new(0),
        })
    }

    pub(super) fn name(&self) -> &str {
        &self.name
    }

    fn members(&self) -> std::sync::RwLockReadGuard<'_, Vec<Member>> {
        self.members.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn join(&self, member: Member) {
        self.members
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(member);
    }

    /// Removes member `(owner, sub_id)`; whether it was one, and whether the group is
    /// now empty.
    pub(super) fn leave(&self, owner: u64, sub_id: u64) -> (bool, bool) {
        let mut members = self.members.write().unwrap_or_else(|p| p.into_inner());
        let found = match members
            .iter()
            .position(|m| m.owner == owner && m.sub_id == sub_id)
        {
            Some(i) => {
                members.swap_remove(i);
                true
            }
            None => false,
        };
        (found, members.is_empty())
    }

    /// The member whose turn it is (for a request, which is encoded per recipient).
    pub fn pick(&self) -> Option<Member> {
        let members = self.members();
        let n = members.len();
        (n > 0).then(|| members[self.next.fetch_add(1, Ordering::Relaxed) % n].clone())
    }
}

impl Subscriber for Group {
    fn deliver(&self, live: &Live<'_>, later: &mut Flushes) -> bool {
        let members = self.members();
        let n = members.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n).any(|i| members[(start + i) % n].sub.deliver(live, later))
    }

    fn is_backlogged(&self) -> bool {
        let members = self.members();
        !members.is_empty() && members.iter().all(|m| m.sub.is_backlogged())
    }
}
