//! When a topic's stats record is written. The log is the authority on what is stored
//! (on start, `load_topics` counts in every message stored after the last stats
//! written), so the stats need not be written with every pass: a pass writes those of
//! the topics it appended to whose stats were last written a second or more before, and
//! the retention timer and shutdown write any left stale ([`Writer::save_stale_stats`]).
//! At one publish per pass this halved the sled inserts per message.

use super::Writer;
use crate::clock::now_ms;
use crate::store::WriteOp;

/// How often (ms) a topic's stats are written while it is appended to.
const STATS_EVERY_MS: i64 = 1000;

impl<O> Writer<O> {
    /// Marks the topics `appended` (by the pass at `now`) stale, and queues in `ops` the
    /// stats of those due; returns the names queued, for [`Writer::stats_written`] once
    /// the pass's write succeeded.
    pub(super) fn stats_due<'a>(
        &mut self,
        appended: impl Iterator<Item = &'a String>,
        now: i64,
        ops: &mut Vec<WriteOp>,
    ) -> Vec<String> {
        let mut due = Vec::new();
        for name in appended {
            let Some(log) = self.topics.get_mut(name) else {
                continue;
            };
            log.stats_stale = true;
            if now - log.stats_saved_ms >= STATS_EVERY_MS {
                ops.push(WriteOp::PutStats(log.id, log.stats));
                due.push(name.clone());
            }
        }
        due
    }

    /// Notes that the stats of topics `written` were stored by the pass at `now`.
    pub(super) fn stats_written(&mut self, written: Vec<String>, now: i64) {
        for name in written {
            if let Some(log) = self.topics.get_mut(&name) {
                log.stats_saved_ms = now;
                log.stats_stale = false;
            }
        }
    }

    /// Writes the stats of topics appended to since theirs were last written (by the
    /// retention timer, and before the last flush on shutdown).
    pub(super) fn save_stale_stats(&mut self) {
        if !self.store_usable() {
            return;
        }
        let now = now_ms();
        let stale: Vec<String> = self
            .topics
            .iter()
            .filter(|(_, log)| log.stats_stale)
            .map(|(name, _)| name.clone())
            .collect();
        if stale.is_empty() {
            return;
        }
        let ops = stale
            .iter()
            .map(|name| {
                let log = &self.topics[name];
                WriteOp::PutStats(log.id, log.stats)
            })
            .collect();
        match self.storage.write(ops) {
            Ok(()) => {
                self.dirty = true;
                self.stats_written(stale, now);
            }
            Err(e) => self.store_failed(&e),
        }
    }
}
