//! The message log inside [`SledStorage`]: how appends become chunks ([`chunk`]) and
//! removals rewrite them, and how stored messages are walked in seq order (reads,
//! timestamps, sizes, and counting in messages a crash left beyond their stats) — first
//! those in sled, then those still held in their topic's open chunk.

use std::collections::HashMap;
use std::ops::ControlFlow;

use bytes::Bytes;

use super::{
    consumer_key, encode_single, engine, msg_key, seq_of, stats_key, topic_key, SledStorage,
    CONSUMER_PREFIX, MSG_PREFIX,
};
use crate::store::chunk::{self, ChunkBuilder, Record};
use crate::store::{LogEntry, StoreError, TopicId, TopicStats, WriteOp};

/// What a write turns into in sled, in order.
pub(super) enum Entry {
    Put(Vec<u8>, Vec<u8>),
    Remove(Vec<u8>),
}

/// How a walk of the log stands against writes (see `SledStorage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Walk {
    /// The open chunks' lock is held shared for the whole walk: no write runs meanwhile.
    Shared,
    /// The lock is held only to copy the held messages; writes may run while sled is
    /// scanned, and the scan may then miss or repeat a chunk, so the caller must check
    /// what it got and walk again [`Walk::Shared`] if it is not whole.
    Optimistic,
}

/// A chunk read from the log.
pub(super) struct Chunk {
    pub(super) first_seq: u64,
    pub(super) value: sled::IVec,
}

/// A stored message met by [`SledStorage::for_each_record`].
#[derive(Clone, Copy)]
pub(super) enum At<'a> {
    /// In a chunk in sled.
    Chunk(&'a Chunk, Record),
    /// Held in its topic's open chunk.
    Held(&'a LogEntry),
}

impl At<'_> {
    pub(super) fn seq(&self) -> u64 {
        match self {
            At::Chunk(_, r) => r.seq,
            At::Held(e) => e.seq,
        }
    }

    pub(super) fn ts_ms(&self) -> i64 {
        match self {
            At::Chunk(_, r) => r.ts_ms,
            At::Held(e) => e.ts_ms,
        }
    }

    /// The encoded `rtc.v1.Message`.
    pub(super) fn message(&self) -> &[u8] {
        match self {
            At::Chunk(c, r) => &c.value[r.start..r.start + r.len],
            At::Held(e) => &e.message,
        }
    }
}

/// The appends of one topic in a write of appends only.
pub(super) struct Run {
    pub(super) id: TopicId,
    /// Seq of its first message.
    pub(super) first: u64,
    /// How many messages.
    pub(super) count: usize,
    /// Their bytes in all.
    pub(super) len: usize,
    /// Whether their seqs count up without a gap.
    pub(super) contiguous: bool,
}

/// Each topic's run of appends in `ops`, in order of first appearance; `None` if `ops`
/// holds anything but appends.
pub(super) fn append_runs(ops: &[WriteOp]) -> Option<Vec<Run>> {
    let mut runs: Vec<Run> = Vec::new();
    for op in ops {
        let WriteOp::Append {
            id, seq, message, ..
        } = op
        else {
            return None;
        };
        // Writes touch few topics: a scan beats a map.
        match runs.iter_mut().find(|r| r.id == *id) {
            Some(run) => {
                run.contiguous &= *seq == run.first + run.count as u64;
                run.count += 1;
                run.len += message.len();
            }
            None => runs.push(Run {
                id: *id,
                first: *seq,
                count: 1,
                len: message.len(),
                contiguous: true,
            }),
        }
    }
    Some(runs)
}

/// The chunk `builder` as an entry.
fn chunk_entry(id: TopicId, builder: ChunkBuilder) -> Entry {
    let (first, value) = builder.finish();
    Entry::Put(msg_key(id, first).to_vec(), value)
}

impl SledStorage {
    /// Adds to `stats` the messages stored after the last recorded one: the appends of a
    /// pass whose stats a crash cut off (see `write`). They must follow on without a gap.
    pub(super) fn count_unrecorded(
        &self,
        name: &str,
        id: TopicId,
        stats: &mut TopicStats,
    ) -> Result<(), StoreError> {
        self.for_each_record(id, stats.last_seq + 1, |at| {
            if at.seq() != stats.last_seq + 1 {
                return Err(StoreError::Corrupt(format!(
                    "topic {name:?}: message {} is stored after {} with a gap",
                    at.seq(),
                    stats.last_seq
                )));
            }
            if stats.messages == 0 {
                stats.first_seq = at.seq();
            }
            stats.last_seq = at.seq();
            stats.messages += 1;
            stats.bytes += at.message().len() as u64;
            stats.last_ts_ms = stats.last_ts_ms.max(at.ts_ms());
            Ok(ControlFlow::Continue(()))
        })
    }

    /// Where a scan of topic `id` from seq `from` starts: the key of the chunk holding
    /// `from` (the last one starting at or before it), else `from`'s own key.
    ///
    /// Found by a forward scan of the keys a chunk holding `from` can have (it starts at
    /// most [`chunk::MAX_MESSAGES`] - 1 before it). sled 0.34's reverse scan
    /// (`next_back`), used here before, was seen coming back empty with chunks in range
    /// while another thread inserted, and the read then started a chunk late. Reads no
    /// longer overlap writes (see `SledStorage`), but the forward scan costs little and
    /// does not depend on that.
    fn first_chunk_key(&self, id: TopicId, from: u64) -> Result<Vec<u8>, StoreError> {
        let lowest = from.saturating_sub(chunk::MAX_MESSAGES as u64 - 1);
        let mut start = None;
        for item in self.db()?.range(msg_key(id, lowest)..=msg_key(id, from)) {
            start = Some(item.map_err(engine)?.0);
        }
        Ok(start.map_or_else(|| msg_key(id, from).to_vec(), |k| k.to_vec()))
    }

    /// Up to `max_msgs` messages (and about `max_bytes`) of topic `id` from `from` on,
    /// walked as `how` says; each shares its chunk's buffer.
    pub(super) fn read_walk(
        &self,
        id: TopicId,
        from: u64,
        max_msgs: usize,
        max_bytes: usize,
        how: Walk,
    ) -> Result<Vec<LogEntry>, StoreError> {
        let mut out = Vec::new();

        let mut bytes = 0;
        // Messages share their chunk's buffer: no copy.
        let mut shared: Option<(u64, Bytes)> = None;
        self.walk(id, from, how, |at| {
            let message = match at {
                At::Chunk(chunk, r) => {
                    let whole = match &shared {
                        Some((first, b)) if *first == chunk.first_seq => b.clone(),
                        _ => {
                            let b = Bytes::from_owner(chunk.value.clone());
                            shared = Some((chunk.first_seq, b.clone()));
                            b
                        }
                    };
                    whole.slice(r.start..r.start + r.len)
                }
                At::Held(e) => e.message.clone(),
            };
            bytes += message.len();
            out.push(LogEntry {
                seq: at.seq(),
                ts_ms: at.ts_ms(),
                message,
            });
            Ok(if out.len() >= max_msgs || bytes >= max_bytes {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            })
        })?;
        Ok(out)
    }


    /// Calls `f` with each stored message of topic `id` from seq `from` on, in order,
    /// until `f` breaks: those in sled, then those held in the topic's open chunk. No
    /// write runs meanwhile.
    pub(super) fn for_each_record(
        &self,
        id: TopicId,
        from: u64,
        f: impl FnMut(At<'_>) -> Result<ControlFlow<()>, StoreError>,
    ) -> Result<(), StoreError> {
        self.walk(id, from, Walk::Shared, f)
    }

    /// [`SledStorage::for_each_record`], holding writes off as `how` says.
    pub(super) fn walk(
        &self,
        id: TopicId,
        from: u64,
        how: Walk,
        mut f: impl FnMut(At<'_>) -> Result<ControlFlow<()>, StoreError>,
    ) -> Result<(), StoreError> {
        // Held messages are read from the snapshot; everything stored before the first
        // of them is in sled (or, if they are sealed meanwhile, at or after it).
        let shared = self.open_chunks_shared();
        let held = shared.snapshot(id, from);
        let sealed_below = held.first().map_or(u64::MAX, |e| e.seq);
        let shared = match how {
            Walk::Shared => Some(shared),
            Walk::Optimistic => {
                drop(shared);
                None
            }
        };
        let start = self.first_chunk_key(id, from)?;
        let db = self.db()?;
        'sled: for item in db.range(start..=msg_key(id, u64::MAX).to_vec()) {
            let (k, v) = item.map_err(engine)?;
            let chunk = Chunk {
                first_seq: seq_of(&k)?,
                value: v,
            };
            for r in chunk::records(chunk.first_seq, &chunk.value) {
                let r = r?;
                if r.seq < from {
                    continue;
                }
                if r.seq >= sealed_below {
                    break 'sled;
                }
                if f(At::Chunk(&chunk, r))?.is_break() {
                    return Ok(());
                }
            }
        }
        drop(shared);
        for e in &held {
            if f(At::Held(e))?.is_break() {
                break;
            }
        }
        Ok(())
    }

    /// The sled entries for `ops`, in order. Runs of consecutive appends to one topic
    /// become chunks; a removal rewrites the chunks it cuts through.
    pub(super) fn entries(&self, ops: Vec<WriteOp>) -> Result<Vec<Entry>, StoreError> {
        let mut out = Vec::with_capacity(ops.len());
        let mut open: HashMap<TopicId, ChunkBuilder> = HashMap::new();
        for op in ops {
            match op {
                WriteOp::Append {
                    id,
                    seq,
                    ts_ms,
                    message,
                } => {
                    let builder = open.entry(id).or_insert_with(|| ChunkBuilder::new(seq));
                    if !builder.takes(seq, message.len()) {
                        let full = std::mem::replace(builder, ChunkBuilder::new(seq));
                        out.push(chunk_entry(id, full));
                    }
                    builder.push(ts_ms, &message);
                }
                other => {
                    // Messages go before the stats and state that follow them.
                    for (id, builder) in open.drain() {
                        out.push(chunk_entry(id, builder));
                    }
                    match other {
                        WriteOp::RemoveRange { id, from, to } => {
                            self.remove_entries(id, from, to, &mut out)?
                        }
                        WriteOp::DeleteTopic { name, id } => {
                            self.delete_entries(&name, id, &mut out)?
                        }
                        WriteOp::DeleteConsumer { id, name } => {
                            out.push(Entry::Remove(consumer_key(id, &name)))
                        }
                        single => {
                            let (k, v) = encode_single(single);
                            out.push(Entry::Put(k, v));
                        }
                    }
                }
            }
        }
        for (id, builder) in open.drain() {
            out.push(chunk_entry(id, builder));
        }
        Ok(out)
    }

    /// Entries removing topic `name` (id `id`) whole: its metadata and stats, and every
    /// key of its messages and consumers.
    fn delete_entries(
        &self,
        name: &str,
        id: TopicId,
        out: &mut Vec<Entry>,
    ) -> Result<(), StoreError> {
        out.push(Entry::Remove(topic_key(name)));
        if id == 0 {
            return Ok(());
        }
        out.push(Entry::Remove(stats_key(id).to_vec()));
        let db = self.db()?;
        for prefix in [MSG_PREFIX, CONSUMER_PREFIX] {
            let mut p = vec![prefix];
            p.extend_from_slice(&id.to_be_bytes());
            for item in db.scan_prefix(p) {
                let (k, _) = item.map_err(engine)?;
                out.push(Entry::Remove(k.to_vec()));
            }
        }
        Ok(())
    }

    /// Entries removing messages `from..to` of topic `id`: whole chunks go, and a chunk
    /// cut through keeps its other messages under the key of the first one kept.
    pub(super) fn remove_entries(
        &self,
        id: TopicId,
        from: u64,
        to: u64,
        out: &mut Vec<Entry>,
    ) -> Result<(), StoreError> {
        if from >= to {
            return Ok(());
        }
        let start = self.first_chunk_key(id, from)?;
        for item in self.db()?.range(start..msg_key(id, to).to_vec()) {
            let (k, v) = item.map_err(engine)?;
            out.push(Entry::Remove(k.to_vec()));
            let mut before: Option<ChunkBuilder> = None;
            let mut after: Option<ChunkBuilder> = None;
            for r in chunk::records(seq_of(&k)?, &v) {
                let r = r?;
                let keep = if r.seq < from {
                    &mut before
                } else if r.seq >= to {
                    &mut after
                } else {
                    continue;
                };
                keep.get_or_insert_with(|| ChunkBuilder::new(r.seq))
                    .push(r.ts_ms, &v[r.start..r.start + r.len]);
            }
            out.extend(before.into_iter().chain(after).map(|b| chunk_entry(id, b)));
        }
        Ok(())
    }
}
