//! Retention, run by the storage thread when its timer asks: the oldest messages past a
//! topic's `max_msgs`, `max_age` or `max_bytes` are removed, a chunk per write, and dedup
//! entries older than their window are forgotten. Also the binary search by time that
//! retention and replays share.

use super::Writer;
use crate::clock::now_ms;
use crate::store::{Storage, StoreError, TopicId, WriteOp};

/// Most messages removed in one retention write.
const RETENTION_CHUNK: u64 = 10_000;

impl<O> Writer<O> {
    pub(super) fn enforce_retention(&mut self) {
        if !self.store_usable() {
            return;
        }
        let now = now_ms();
        let names: Vec<String> = self.topics.keys().cloned().collect();
        for name in names {
            let log = self.topics.get_mut(&name).expect("listed");
            log.dedup.expire(now - log.settings.dedup_window_ms as i64);
            if log.id == 0 || log.stats.messages == 0 {
                continue;
            }
            match self.retention_cut(&name, now) {
                Ok(Some(to)) => {
                    if let Err(e) = self.remove_before(&name, to) {
                        self.store_failed(&e);
                    }
                }
                Ok(None) => {}
                Err(e) => self.store_failed(&e),
            }
        }
    }

    /// The first seq to keep, if retention wants to remove anything.
    fn retention_cut(&self, name: &str, now: i64) -> Result<Option<u64>, StoreError> {
        let log = &self.topics[name];
        let (s, set) = (&log.stats, &log.settings);
        let mut keep_from = s.first_seq;
        if set.max_msgs > 0 && s.messages > set.max_msgs {
            keep_from = keep_from.max(s.last_seq + 1 - set.max_msgs);
        }
        if set.max_age_ms > 0 {
            let cutoff = now - set.max_age_ms as i64;
            let first_young =
                first_at_or_after(&*self.storage, log.id, keep_from, s.last_seq, cutoff)?;
            keep_from = keep_from.max(first_young);
        }
        if set.max_bytes > 0 && s.bytes > set.max_bytes {
            let mut excess = s.bytes - set.max_bytes;
            let mut from = keep_from;
            while excess > 0 && from <= s.last_seq {
                let sizes = self.storage.sizes(
                    log.id,
                    from,
                    (from + RETENTION_CHUNK).min(s.last_seq + 1),
                )?;
                if sizes.is_empty() {
                    break;
                }
                for (seq, size) in sizes {
                    if excess == 0 {
                        break;
                    }
                    excess = excess.saturating_sub(size);
                    from = seq + 1;
                }
            }
            keep_from = keep_from.max(from);
        }
        Ok((keep_from > s.first_seq).then_some(keep_from))
    }

    /// Removes every message before `to`, a chunk per write.
    pub(super) fn remove_before(&mut self, name: &str, to: u64) -> Result<(), StoreError> {
        // The IDs of the messages removed stay in the window.
        self.complete_dedup(name)?;
        loop {
            let log = &self.topics[name];
            let from = log.stats.first_seq;
            if from >= to || log.stats.messages == 0 {
                return Ok(());
            }
            let end = to.min(from + RETENTION_CHUNK);
            let removed: Vec<(u64, u64)> = self.storage.sizes(log.id, from, end)?;
            let mut stats = log.stats;
            stats.messages -= removed.len() as u64;
            stats.bytes -= removed.iter().map(|(_, b)| b).sum::<u64>();
            stats.first_seq = if stats.messages == 0 { 0 } else { end };
            self.storage.write(vec![
                WriteOp::RemoveRange {
                    id: log.id,
                    from,
                    to: end,
                },
                WriteOp::PutStats(log.id, stats),
            ])?;
            self.dirty = true;
            let log = self.topics.get_mut(name).expect("exists");
            log.stats = stats;
            self.catalog.set(name, log.id, log.view());
            if stats.messages == 0 {
                return Ok(());
            }
        }
    }
}

/// The first seq in `lo..=hi` of topic `id` whose timestamp is `>= ts` (timestamps never
/// decrease within a topic), or `hi + 1` if none. A binary search over the log.
pub fn first_at_or_after(
    storage: &dyn Storage,
    id: TopicId,
    lo: u64,
    hi: u64,
    ts: i64,
) -> Result<u64, StoreError> {
    let (mut lo, mut hi) = (lo, hi + 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        // A message removed meanwhile is older than anything kept.
        let older = storage.timestamp(id, mid)?.is_none_or(|t| t < ts);
        if older {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}
