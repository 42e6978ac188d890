//! The in-memory dedup index of one topic (see the storage thread's docs): message ID →
//! (seq, timestamp) for the topic's dedup window, rebuilt from the log on start.
//!
//! Hashed with foldhash (randomly seeded per process), not std's SipHash: an insert per
//! stored message with an ID, and SipHash with the table's rehashing took ~12 % of the
//! storage thread.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Dedup entries of one topic: message ID → (seq, ts), plus arrival order for expiry.
#[derive(Debug, Default)]
pub(super) struct Dedup {
    ids: HashMap<Arc<str>, (u64, i64), foldhash::fast::RandomState>,
    order: VecDeque<(i64, u64, Arc<str>)>,
}

impl Dedup {
    pub(super) fn insert(&mut self, id: &str, seq: u64, ts: i64) {
        let id: Arc<str> = id.into();
        self.ids.insert(id.clone(), (seq, ts));
        self.order.push_back((ts, seq, id));
    }

    /// The original seq if `id` was stored at or after `since`.
    pub(super) fn lookup(&self, id: &str, since: i64) -> Option<u64> {
        match self.ids.get(id) {
            Some(&(seq, ts)) if ts >= since => Some(seq),
            _ => None,
        }
    }

    /// Forgets entries stored before `before`.
    pub(super) fn expire(&mut self, before: i64) {
        while let Some((ts, seq, _)) = self.order.front() {
            if *ts >= before {
                break;
            }
            let seq = *seq;
            let (_, _, id) = self.order.pop_front().expect("front exists");
            if self.ids.get(&id).is_some_and(|&(s, _)| s == seq) {
                self.ids.remove(&id);
            }
        }
    }

    /// Undoes the newest insert of `id` (a failed write).
    pub(super) fn remove_newest(&mut self, id: &str) {
        if let Some(pos) = self.order.iter().rposition(|(_, _, i)| &**i == id) {
            self.order.remove(pos);
        }
        self.ids.remove(id);
    }
}
