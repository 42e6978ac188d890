//! When the store fails or its disk runs short. Either puts the writer in a failure
//! episode: every write from then on is refused with `STORAGE`, without touching the
//! store, and the writer tries to get the store back every [`RETRY_EVERY`]. Reads go on
//! being served from the store as it is meanwhile. The episode is logged when it begins
//! and when it ends, not per refused request.
//!
//! The disk reserve (`Config::store_reserve`) keeps sled from ever meeting a full disk:
//! once the store's filesystem has less free than the reserve, writes are refused before
//! they reach sled, and taken again once there is room. This matters because sled, after
//! an I/O error, refuses every later write, and also every read that would reorganize a
//! tree node on the way (a split), until it is closed and opened again. The free space is
//! checked at most every [`CHECK_EVERY`], and sooner after a quarter of the reserve has
//! been written, so a burst cannot run through the reserve between two checks.
//!
//! An I/O error all the same (the reserve off, or another program filling the disk)
//! ends in a reopen: once the filesystem has [`MIN_FREE`] again, the store is closed and
//! opened again and topic state reloaded from what is on disk.
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
/// Longest time between two checks of the free space while writing.
const CHECK_EVERY: Duration = Duration::from_millis(100);

/// One failure episode.
#[derive(Debug)]
pub(super) struct Episode {
    since: Instant,
    error: String,
    /// Requests refused since.
    refused: u64,
    next_try: Instant,
    /// The store met an I/O error and must be reopened; otherwise it only ran short of
    /// its reserve and was never failed.
    reopen: bool,
    /// Why the last reopen failed, for the refusals.
    reopen_error: Option<String>,
}

/// The disk reserve and when the free space was last checked.
#[derive(Debug)]
pub(super) struct Reserve {
    /// Bytes the store's filesystem must keep free; 0 turns the check off.
    bytes: u64,
    checked: Instant,
    /// Bytes written to the store since.
    written: u64,
}

impl Reserve {
    pub(super) fn new(bytes: u64) -> Self {
        Reserve {
            bytes,
            checked: Instant::now(),
            written: 0,
        }
    }

    /// Counts `bytes` written to the store.
    pub(super) fn wrote(&mut self, bytes: u64) {
        self.written = self.written.saturating_add(bytes);
    }

    fn check_due(&self) -> bool {
        self.bytes > 0 && (self.written >= self.bytes / 4 || self.checked.elapsed() >= CHECK_EVERY)
    }
}

impl<O> Writer<O> {
    /// The store failed with `e`: writes are refused until it is back. Logged once per
    /// episode.
    pub(super) fn store_failed(&mut self, e: &StoreError) {
        match &mut self.failed {
            // A write that went through and failed in an episode of a short reserve.
            Some(episode) => episode.reopen = true,
            None => {
                tracing::error!(error = %e, "the store failed; refusing writes until it can be reopened (tried every {RETRY_EVERY:?} once the disk has room)");
                self.begin_episode(e.to_string(), true);
            }
        }
    }

    fn begin_episode(&mut self, error: String, reopen: bool) {
        let now = Instant::now();
        if let Some(observer) = &self.observer {
            observer.failed(&error);
        }
        self.failed = Some(Episode {
            since: now,
            error,
            refused: 0,
            next_try: now + RETRY_EVERY,
            reopen,
            reopen_error: None,
        });
    }

    /// Whether the store's filesystem has less free than the reserve (checked when due).
    fn short_of_reserve(&mut self) -> Option<u64> {
        if !self.reserve.check_due() {
            return None;
        }
        self.reserve.checked = Instant::now();
        self.reserve.written = 0;
        self.storage
            .free_space()
            .filter(|free| *free < self.reserve.bytes)
    }

    /// Whether the store met an I/O error and has not been reopened since.
    pub(super) fn store_failed_io(&self) -> bool {
        self.failed.as_ref().is_some_and(|e| e.reopen)
    }

    /// When a failed store is to be tried again; `None` without an episode.
    pub(super) fn retry_due(&self) -> Option<Instant> {
        self.failed.as_ref().map(|e| e.next_try)
    }

    /// Whether the store can be written: no episode, or one that a reopen just ended.
    pub(super) fn store_usable(&mut self) -> bool {
        match &self.failed {
            None => match self.short_of_reserve() {
                None => true,
                Some(free) => {
                    let reserve = self.reserve.bytes;
                    let error = format!(
                        "No space left on device for the store: {free} bytes free, below the reserve of {reserve} (store_reserve)"
                    );
                    tracing::error!(free, reserve, "the store's disk is short of its reserve; refusing writes until it has room (checked every {RETRY_EVERY:?})");
                    self.begin_episode(error, false);
                    false
                }
            },
            Some(e) if Instant::now() < e.next_try => false,
            Some(_) => self.try_recover(),
        }
    }

    /// Why `requests` requests met while the store is failed are refused.
    pub(super) fn unavailable(&mut self, requests: usize) -> StoreError {
        let (error, reopen) = match &mut self.failed {
            Some(e) => {
                e.refused += requests as u64;
                let reopen = match &e.reopen_error {
                    Some(r) => format!("; reopening it failed: {r}"),
                    None => String::new(),
                };
                (e.error.clone(), reopen)
            }
            None => ("an I/O error".into(), String::new()),
        };
        StoreError::Io(format!(
            "{error}; writes are refused until the store is back{reopen}; retry later with the same msg_id"
        ))
    }

    fn try_recover(&mut self) -> bool {
        let Some(episode) = &mut self.failed else {
            return true;
        };
        episode.next_try = Instant::now() + RETRY_EVERY;
        let reopen = episode.reopen;
        let needed = if reopen {
            MIN_FREE.max(self.reserve.bytes)
        } else {
            self.reserve.bytes
        };
        if self
            .storage
            .free_space()
            .is_some_and(|free| free < needed)
        {
            return false;
        }
        if reopen {
            let reopened = self.storage.reopen().and_then(|()| self.reload());
            if let Err(e) = reopened {
                tracing::debug!(error = %e, "the store could not be reopened yet");
                if let Some(episode) = &mut self.failed {
                    episode.reopen_error = Some(e.to_string());
                }
                return false;
            }
        }
        self.reserve = Reserve::new(self.reserve.bytes);
        if let Some(e) = self.failed.take() {
            tracing::warn!(
                after = ?e.since.elapsed(),
                refused = e.refused,
                "the store is back: writes are accepted again"
            );
            if let Some(observer) = &self.observer {
                observer.recovered();
            }
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
            self.rebuilding = (self.topics.iter())
                .filter(|(_, log)| log.dedup_from.is_some())
                .map(|(name, _)| name.clone())
                .collect();
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
