//! The in-memory dedup index of one topic (see the storage thread's docs): message ID →
//! (seq, timestamp) for the topic's dedup window, rebuilt from the log on start.
//!
//! The index keeps a 128-bit fingerprint of each ID, not the ID: a keyed SipHash-1-3
//! ([`Fingerprint`]), with a key drawn at random once per process, so an ID costs about
//! 70 bytes here whatever its length (the IDs themselves, each in its own allocation, made
//! it about 180 bytes: 10 million IDs in a 2-minute window took 1.8 GB, and the allocations
//! slowed the storage thread; docs/benchmarks.md, "Long logs"). Two different IDs are
//! taken for one only if their fingerprints are equal: with a random key, the chance is
//! about n / 2^128 per lookup against n indexed IDs, and a client cannot aim for it
//! without the key, which never leaves the process.
//!
//! The storage thread fingerprints an append's ID once ([`Dedup::fingerprint`]) and uses
//! it to look the ID up and then to insert it.

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;

use hashbrown::hash_table::{Entry, HashTable};
use siphasher::sip128::{Hasher128, SipHasher13};

/// A message ID's keyed 128-bit SipHash-1-3; the first half also places it in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Fingerprint([u64; 2]);

/// One ID in the index.
#[derive(Debug)]
struct Slot {
    fp: Fingerprint,
    seq: u64,
    ts: i64,
}

/// Dedup entries of one topic: fingerprint → (seq, ts), plus arrival order for expiry.
/// Tables an index is split over, by fingerprint. A table grows by moving every entry to
/// one twice its size at once: at 7.3 million slots that took 0.3 s here (25 ms at
/// 0.46 million), a pause of the storage thread that every publisher waits through.
/// Split, each growth moves a sixteenth (about 20 ms at that size).
const SHARDS: usize = 16;

/// The shard of an ID hashed to `hash`: bits that hashbrown uses neither for the bucket
/// (the low bits) nor for its control byte (the top seven).
fn shard(hash: u64) -> usize {
    (hash >> 40) as usize % SHARDS
}

#[derive(Debug, Default)]
pub(super) struct Dedup {
    ids: [HashTable<Slot>; SHARDS],
    /// (seq, first half of the fingerprint) of each insert, oldest first. An entry whose
    /// ID was stored again since is stale: its slot now has the later seq.
    order: VecDeque<(u64, u64)>,
}

/// The process's SipHash key, drawn once from std's random source.
fn sip_key() -> &'static (u64, u64) {
    static KEY: OnceLock<(u64, u64)> = OnceLock::new();
    KEY.get_or_init(|| {
        let random = std::collections::hash_map::RandomState::new();
        (random.hash_one(0u8), random.hash_one(1u8))
    })
}

impl Dedup {
    /// The fingerprint of `id`, for [`Dedup::lookup`] and [`Dedup::insert`].
    pub(super) fn fingerprint(id: &str) -> Fingerprint {
        let (k0, k1) = *sip_key();
        let mut h = SipHasher13::new_with_keys(k0, k1);
        h.write(id.as_bytes());
        let h = h.finish128();
        Fingerprint([h.h1, h.h2])
    }

    /// Makes room for `more` IDs, so a rebuild of millions of them does not grow the
    /// table step by step (moving every entry at each step was a third of the restart).
    pub(super) fn reserve(&mut self, more: usize) {
        for table in &mut self.ids {
            // Fingerprints spread evenly; a little spare for the unlucky shard.
            table.reserve(more / SHARDS + more / (SHARDS * 16), |s| s.fp.0[0]);
        }
        self.order.reserve(more);
    }

    /// Records the ID fingerprinted as `fp` as stored at `seq`, `ts`.
    pub(super) fn insert(&mut self, fp: Fingerprint, seq: u64, ts: i64) {
        let slot = Slot { fp, seq, ts };
        match self.ids[shard(fp.0[0])].entry(fp.0[0], |s| s.fp == fp, |s| s.fp.0[0]) {
            // Stored again after its entry fell out of the window (not yet expired).
            Entry::Occupied(mut e) => *e.get_mut() = slot,
            Entry::Vacant(e) => {
                e.insert(slot);
            }
        }
        self.order.push_back((seq, fp.0[0]));
    }

    /// The original seq if the ID fingerprinted as `fp` was stored at or after `since`.
    pub(super) fn lookup(&self, fp: Fingerprint, since: i64) -> Option<u64> {
        match self.ids[shard(fp.0[0])].find(fp.0[0], |s| s.fp == fp) {
            Some(s) if s.ts >= since => Some(s.seq),
            _ => None,
        }
    }

    /// Forgets entries stored before `before`.
    pub(super) fn expire(&mut self, before: i64) {
        while let Some(&(seq, hash)) = self.order.front() {
            // Seqs are unique in a topic, so (hash, seq) names one slot, or none if the
            // ID was stored again since (then the later entry stays).
            if let Ok(e) =
                self.ids[shard(hash)].find_entry(hash, |s| s.fp.0[0] == hash && s.seq == seq)
            {
                if e.get().ts >= before {
                    break;
                }
                e.remove();
            }
            self.order.pop_front();
        }
    }

    /// Undoes the newest insert of `id` (a failed write).
    pub(super) fn remove_newest(&mut self, id: &str) {
        let fp = Self::fingerprint(id);
        if let Ok(e) = self.ids[shard(fp.0[0])].find_entry(fp.0[0], |s| s.fp == fp) {
            let (slot, _) = e.remove();
            if let Some(pos) = self
                .order
                .iter()
                .rposition(|&(seq, hash)| seq == slot.seq && hash == fp.0[0])
            {
                self.order.remove(pos);
            }
        }
    }

    /// IDs indexed.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.ids.iter().map(HashTable::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insert(d: &mut Dedup, id: &str, seq: u64, ts: i64) {
        d.insert(Dedup::fingerprint(id), seq, ts);
    }

    fn lookup(d: &Dedup, id: &str, since: i64) -> Option<u64> {
        d.lookup(Dedup::fingerprint(id), since)
    }

    #[test]
    fn an_id_takes_48_bytes_before_the_tables_spare_room() {
        let queue_entry = std::mem::size_of::<(u64, u64)>();
        assert_eq!(std::mem::size_of::<Slot>() + queue_entry, 48);
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
