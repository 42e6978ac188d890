//! The in-memory dedup index of one topic (see the storage thread's docs): message ID →
//! (seq, timestamp) for the topic's dedup window, rebuilt from the log on start.
//!
//! The storage thread hashes an append's ID once ([`Dedup::hash`]) and uses that hash to
//! look it up and then to insert it. Each entry keeps its hash, so growing the table
//! does not hash the IDs again (rehashing showed in the storage thread's profile with
//! many publishes in flight). Hashed with foldhash (randomly seeded per process), not
//! std's SipHash.

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::hash_table::{Entry, HashTable};

/// One ID in the index.
#[derive(Debug)]
struct Slot {
    hash: u64,
    id: Arc<str>,
    seq: u64,
    ts: i64,
}

/// Dedup entries of one topic: message ID → (seq, ts), plus arrival order for expiry.
#[derive(Debug, Default)]
pub(super) struct Dedup {
    ids: HashTable<Slot>,
    /// (ts, seq, id, hash), oldest first.
    order: VecDeque<(i64, u64, Arc<str>, u64)>,
    hasher: foldhash::fast::RandomState,
}

impl Dedup {
    /// The hash of `id`, for [`Dedup::lookup`] and [`Dedup::insert`].
    pub(super) fn hash(&self, id: &str) -> u64 {
        self.hasher.hash_one(id)
    }

    /// Records `id` (whose [`Dedup::hash`] is `hash`) as stored at `seq`, `ts`.
    pub(super) fn insert(&mut self, hash: u64, id: &str, seq: u64, ts: i64) {
        let id: Arc<str> = id.into();
        let slot = Slot {
            hash,
            id: id.clone(),
            seq,
            ts,
        };
        match self.ids.entry(hash, |s| s.id == id, |s| s.hash) {
            // Stored again after its entry fell out of the window (not yet expired).
            Entry::Occupied(mut e) => *e.get_mut() = slot,
            Entry::Vacant(e) => {
                e.insert(slot);
            }
        }
        self.order.push_back((ts, seq, id, hash));
    }

    /// The original seq if `id` (hashed to `hash`) was stored at or after `since`.
    pub(super) fn lookup(&self, hash: u64, id: &str, since: i64) -> Option<u64> {
        match self.ids.find(hash, |s| &*s.id == id) {
            Some(s) if s.ts >= since => Some(s.seq),
            _ => None,
        }
    }

    /// Forgets entries stored before `before`.
    pub(super) fn expire(&mut self, before: i64) {
        while let Some((ts, ..)) = self.order.front() {
            if *ts >= before {
                break;
            }
            let (_, seq, id, hash) = self.order.pop_front().expect("front exists");
            // Only if it was not stored again since (then the later entry stays).
            if let Ok(e) = self.ids.find_entry(hash, |s| s.id == id && s.seq == seq) {
                e.remove();
            }
        }
    }

    /// Undoes the newest insert of `id` (a failed write).
    pub(super) fn remove_newest(&mut self, id: &str) {
        if let Some(pos) = self.order.iter().rposition(|(_, _, i, _)| &**i == id) {
            self.order.remove(pos);
        }
        let hash = self.hash(id);
        if let Ok(e) = self.ids.find_entry(hash, |s| &*s.id == id) {
            e.remove();
        }
    }

    /// IDs indexed.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.ids.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insert(d: &mut Dedup, id: &str, seq: u64, ts: i64) {
        let h = d.hash(id);
        d.insert(h, id, seq, ts);
    }

    fn lookup(d: &Dedup, id: &str, since: i64) -> Option<u64> {
        d.lookup(d.hash(id), id, since)
    }

    #[test]
    fn ids_are_found_within_the_window_and_forgotten_after_it() {
        let mut d = Dedup::default();
        // Enough to grow the table several times: entries must survive the moves.
        for i in 0..10_000u64 {
            insert(&mut d, &format!("id-{i}"), i + 1, i as i64);
        }
        assert_eq!(lookup(&d, "id-0", 0), Some(1));
        assert_eq!(lookup(&d, "id-9999", 0), Some(10_000));
        assert_eq!(lookup(&d, "id-10000", 0), None, "never stored");
        assert_eq!(lookup(&d, "id-10", 11), None, "stored before the window");
        d.expire(5_000);
        assert_eq!(d.len(), 5_000);
        assert_eq!(lookup(&d, "id-4999", 0), None);
        assert_eq!(lookup(&d, "id-5000", 0), Some(5_001));
    }

    #[test]
    fn an_id_stored_again_keeps_its_newest_entry_through_expiry() {
        let mut d = Dedup::default();
        insert(&mut d, "a", 1, 10);
        // Outside the window at ts 100 (window 50), so the log stores it again.
        assert_eq!(lookup(&d, "a", 50), None);
        insert(&mut d, "a", 7, 100);
        assert_eq!(lookup(&d, "a", 50), Some(7));
        // Expiring the first entry must not drop the second.
        d.expire(60);
        assert_eq!(lookup(&d, "a", 50), Some(7));
        d.expire(101);
        assert_eq!(lookup(&d, "a", 0), None);
        assert_eq!(d.len(), 0);
    }

    #[test]
    fn removing_the_newest_insert_forgets_the_id() {
        let mut d = Dedup::default();
        insert(&mut d, "a", 1, 10);
        insert(&mut d, "b", 2, 10);
        d.remove_newest("b");
        assert_eq!(lookup(&d, "b", 0), None);
        assert_eq!(lookup(&d, "a", 0), Some(1));
        d.expire(11);
        assert_eq!(d.len(), 0, "no entry left behind for the removed id");
    }
}
