//! When the store fails. An I/O error (a full disk, most often) puts the writer in a
//! failure episode: every write from then on is refused with `STORAGE`, without touching
//! the store, and the writer tries to get the store back every [`RETRY_EVERY`] — once
//! there is room on its filesystem again, it reopens the store (sled refuses every write
//! after an I/O error until it is closed and opened again) and reloads topic state from
//! what is on disk. Reads go on being served from the store as it was meanwhile. The
//! episode is logged when it begins and when it ends, not per refused request.
//!
//! What is kept: everything acknowledged under fsync `always` was on disk before the
//! error, so a reopen loses none of it. Under `interval` and `never`, acknowledged
//! messages the store had not flushed yet are lost, as in a crash; sequence numbers are
//! not reused for them (the next message continues after the last one acknowledged), and
//! the loss is logged with the seqs it covers.

use std::time::{Duration, Instant};

use super::Writer;
use crate::store::StoreError;

/// How often a failed store is tried again.
pub(super) const RETRY_EVERY: Duration = Duration::from_millis(500);
/// Free bytes the store's filesystem must have before a reopen is tried: the reopen
/// closes the store, whose reads are served until then, and a store that cannot be
/// opened again serves none.
const MIN_FREE: u64 = 8 * 1024 * 1024;

/// One failure episode.
#[derive(Debug)]
pub(super) struct Episode {
    since: Instant,
    error: String,
    /// Requests refused since.
    refused: u64,
    next_try: Instant,
}

impl<O> Writer<O> {
    /// The store failed with `e`: writes are refused until it is back. Logged once per
    /// episode.
    pub(super) fn store_failed(&mut self, e: &StoreError) {
        if self.failed.is_some() {
            return;
        }
        tracing::error!(error = %e, "the store failed; refusing writes until it can be reopened (tried every {RETRY_EVERY:?} once the disk has room)");
        let now = Instant::now();
        self.failed = Some(Episode {
            since: now,
            error: e.to_string(),
            refused: 0,
            next_try: now + RETRY_EVERY,
        });
    }

    /// When a failed store is to be tried again; `None` without an episode.
    pub(super) fn retry_due(&self) -> Option<Instant> {
        self.failed.as_ref().map(|e| e.next_try)
    }

    /// Whether the store can be written: no episode, or one that a reopen just ended.
    pub(super) fn store_usable(&mut self) -> bool {
        match &self.failed {
            None => true,
            Some(e) if Instant::now() < e.next_try => false,
            Some(_) => self.try_recover(),
        }
    }

    /// Why `requests` requests met while the store is failed are refused.
    pub(super) fn unavailable(&mut self, requests: usize) -> StoreError {
        let error = match &mut self.failed {
            Some(e) => {
                e.refused += requests as u64;
                e.error.clone()
            }
            None => "an I/O error".into(),
        };
        StoreError::Io(format!(
            "the store failed ({error}) and is not back yet; retry later (with the same msg_id)"
        ))
    }

    fn try_recover(&mut self) -> bool {
        if let Some(e) = &mut self.failed {
            e.next_try = Instant::now() + RETRY_EVERY;
        }
        if self
            .storage
            .free_space()
            .is_some_and(|free| free < MIN_FREE)
        {
            return false;
        }
        let reopened = self.storage.reopen().and_then(|()| self.reload());
        if let Err(e) = reopened {
            tracing::debug!(error = %e, "the store could not be reopened yet");
            return false;
        }
        if let Some(e) = self.failed.take() {
            tracing::warn!(
                after = ?e.since.elapsed(),
                refused = e.refused,
                "the store is back: writes are accepted again"
            );
        }
        true
    }

    /// Reloads topic state from the reopened store, which is the authority on what is
    /// stored; sequence numbers never go back below what was acknowledged.
    fn reload(&mut self) -> Result<(), StoreError> {
        let stored = self.storage.load_topics()?;
        let next_id = self.storage.next_topic_id()?;
        let before = std::mem::take(&mut self.topics);
        if let Err(e) = self.recover(stored) {
            self.topics = before;
            return Err(e);
        }
        self.next_id = self.next_id.max(next_id);
        for (name, old) in before {
            let Some(log) = self.topics.get_mut(&name) else {
                continue;
            };
            if log.stats.last_seq < old.stats.last_seq {
                tracing::error!(
                    topic = %name,
                    lost_from = log.stats.last_seq + 1,
                    lost_to = old.stats.last_seq,
                    "acknowledged messages the store had not flushed were lost with it (fsync never or interval); their seqs are not reused"
                );
                log.stats.last_seq = old.stats.last_seq;
                log.stats.last_ts_ms = log.stats.last_ts_ms.max(old.stats.last_ts_ms);
            }
            // Written again at the next pass that touches the topic, or by the timer.
            log.stats_stale = true;
            self.catalog.set(&name, log.id, log.view());
        }
        Ok(())
    }
}
