//! Open chunks: each topic's newest appends, held in memory as the chunk they will
//! become and written to sled as one insert ("sealed") once the chunk is full, before
//! any write that is not an append, on every flush, and at most [`HOLD`] after the
//! oldest of them was written. With one publish per storage pass, as with a publisher
//! that waits for each acknowledgement, this turns one sled insert per message (the
//! largest part of the broker's CPU per publish) into one per chunk.
//!
//! Readers see held messages. [`OpenChunks::snapshot`] hands out a topic's held
//! messages from a seq on (their `Bytes` shared, not copied). A chunk is inserted into
//! sled before it leaves the map, and readers walk sled under the same lock (shared,
//! see `SledStorage`), so a reader that takes the snapshot and walks sled up to its
//! first message misses nothing and reads nothing twice.
//!
//! What a crash keeps: held messages are lost with the process, like a write sled has
//! not flushed yet. Each topic's chunks are sealed in seq order, and every write of
//! another kind (stats, consumer state, topics, removals) seals all of them first, so a
//! crash still keeps a prefix of each topic's messages, and no stats or consumer state
//! that came after a message without the message.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{engine, msg_key, DbSlot, FailPoint};
use crate::store::chunk::{self, ChunkBuilder};
use crate::store::{LogEntry, StoreError, TopicId};

/// Longest a message is held before it is sealed into sled. Well inside the loss
/// window of every fsync policy that lets it be held: `never` (sled's own flush, about
/// a second) and `interval:MS`, whose flush seals first.
pub const HOLD: Duration = Duration::from_millis(50);

/// The open chunk of every topic with held messages.
pub(super) struct OpenChunks {
    db: Arc<DbSlot>,
    fail: Arc<FailPoint>,
    tails: HashMap<TopicId, Tail, foldhash::fast::RandomState>,
    /// When the oldest held message was written, or the last seal failed: sealing is
    /// due [`HOLD`] later.
    since: Option<Instant>,
}

/// One topic's open chunk: its messages, in seq order without gaps (never empty), and
/// the bytes their records will take. The chunk's value is built when it is sealed.
struct Tail {
    entries: Vec<LogEntry>,
    len: usize,
}

impl std::fmt::Debug for OpenChunks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenChunks")
            .field("topics", &self.tails.len())
            .field("since", &self.since)
            .finish_non_exhaustive()
    }
}

impl OpenChunks {
    /// No chunk open; sealed chunks go into `db`.
    pub(super) fn new(db: Arc<DbSlot>, fail: Arc<FailPoint>) -> Self {
        OpenChunks {
            db,
            fail,
            tails: HashMap::default(),
            since: None,
        }
    }

    /// Whether topic `id`'s open chunk (or a new one, if it has none) takes the `count`
    /// consecutive messages from `seq` on, of `len` bytes in all.
    pub(super) fn takes(&self, id: TopicId, seq: u64, count: usize, len: usize) -> bool {
        match self.tails.get(&id) {
            Some(tail) => {
                let next = tail.entries.last().map_or(seq, |e| e.seq + 1);
                seq == next && chunk::run_fits(tail.entries.len(), tail.len, count, len)
            }
            None => chunk::run_fits(0, 0, count, len),
        }
    }

    /// Holds message `seq` of topic `id`; the caller checked [`OpenChunks::takes`].
    pub(super) fn hold(&mut self, id: TopicId, seq: u64, ts_ms: i64, message: Bytes) {
        let tail = self.tails.entry(id).or_insert_with(|| Tail {
            entries: Vec::new(),
            len: 0,
        });
        debug_assert!(tail.entries.last().is_none_or(|e| e.seq + 1 == seq));
        tail.len += chunk::record_len(message.len());
        tail.entries.push(LogEntry {
            seq,
            ts_ms,
            message,
        });
        self.since.get_or_insert_with(Instant::now);
    }

    /// Writes topic `id`'s open chunk, if any, to sled. On failure it stays held.
    pub(super) fn seal(&mut self, id: TopicId) -> Result<(), StoreError> {
        let Some(tail) = self.tails.get(&id) else {
            return Ok(());
        };
        let first = tail.entries.first().map_or(0, |e| e.seq);
        let mut builder = ChunkBuilder::with_capacity(first, tail.len);
        for e in &tail.entries {
            builder.push(e.ts_ms, &e.message);
        }
        let (first, value) = builder.finish();
        let inserted = self.db.get().and_then(|db| {
            self.fail
                .check()
                .and_then(|()| db.insert(msg_key(id, first), value))
                .map_err(engine)
        });
        if let Err(e) = inserted {
            // Try again a whole HOLD later, not at once.
            self.since = Some(Instant::now());
            return Err(e);
        }
        self.tails.remove(&id);
        if self.tails.is_empty() {
            self.since = None;
        }
        Ok(())
    }

    /// Writes every open chunk to sled; stops at the first failure.
    pub(super) fn seal_all(&mut self) -> Result<(), StoreError> {
        let ids: Vec<TopicId> = self.tails.keys().copied().collect();
        for id in ids {
            self.seal(id)?;
        }
        Ok(())
    }

    /// Forgets topic `id`'s held messages from seq `from` on: they belong to a pass that
    /// was refused after its write (its flush failed).
    pub(super) fn forget(&mut self, id: TopicId, from: u64) {
        if let Some(tail) = self.tails.get_mut(&id) {
            let keep = tail.entries.partition_point(|e| e.seq < from);
            for e in tail.entries.drain(keep..) {
                tail.len -= chunk::record_len(e.message.len());
            }
            if tail.entries.is_empty() {
                self.tails.remove(&id);
            }
        }
        if self.tails.is_empty() {
            self.since = None;
        }
    }

    /// When the open chunks are due to be sealed; `None` while none is open.
    pub(super) fn due(&self) -> Option<Instant> {
        self.since.map(|t| t + HOLD)
    }

    /// The held messages of topic `id` with `seq >= from`, in order. Every stored
    /// message before the first of them is in sled.
    pub(super) fn snapshot(&self, id: TopicId, from: u64) -> Vec<LogEntry> {
        match self.tails.get(&id) {
            Some(tail) => {
                let skip = tail.entries.partition_point(|e| e.seq < from);
                tail.entries[skip..].to_vec()
            }
            None => Vec::new(),
        }
    }
}

impl Drop for OpenChunks {
    /// The store is closing without a last flush (the storage thread flushes, which
    /// seals, before it stops): keep what is held all the same.
    fn drop(&mut self) {
        if self.tails.is_empty() {
            return;
        }
        if let Err(e) = self.seal_all().and_then(|()| {
            let db = self.db.get()?;
            db.flush().map(|_| ()).map_err(engine)
        }) {
            tracing::error!(error = %e, "sealing held messages on close failed");
        }
    }
}
