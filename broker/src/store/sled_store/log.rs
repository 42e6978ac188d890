//! The message log inside [`SledStorage`]: how appends become chunks ([`chunk`]) and
//! removals rewrite them, and how stored messages are walked in seq order (reads,
//! timestamps, sizes, and counting in messages a crash left beyond their stats).

use std::collections::HashMap;
use std::ops::ControlFlow;

use super::{encode_single, engine, msg_key, seq_of, SledStorage};
use crate::store::chunk::{self, ChunkBuilder, Record};
use crate::store::{StoreError, TopicId, TopicStats, WriteOp};

/// What a write turns into in sled, in order.
pub(super) enum Entry {
    Put(Vec<u8>, Vec<u8>),
    Remove(Vec<u8>),
}

/// A chunk read from the log.
pub(super) struct Chunk {
    pub(super) first_seq: u64,
    pub(super) value: sled::IVec,
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
        self.for_each_record(id, stats.last_seq + 1, |_, r| {
            if r.seq != stats.last_seq + 1 {
                return Err(StoreError::Corrupt(format!(
                    "topic {name:?}: message {} is stored after {} with a gap",
                    r.seq, stats.last_seq
                )));
            }
            if stats.messages == 0 {
                stats.first_seq = r.seq;
            }
            stats.last_seq = r.seq;
            stats.messages += 1;
            stats.bytes += r.len as u64;
            stats.last_ts_ms = stats.last_ts_ms.max(r.ts_ms);
            Ok(ControlFlow::Continue(()))
        })
    }

    /// The highest stored seq of topic `id`.
    pub(super) fn last_key_seq(&self, id: TopicId) -> Result<Option<u64>, StoreError> {
        let lo = msg_key(id, 0);
        let hi = msg_key(id, u64::MAX);
        let Some(last) = self.db.range(lo..=hi).next_back() else {
            return Ok(None);
        };
        let (k, v) = last.map_err(engine)?;
        let mut seq = None;
        for r in chunk::records(seq_of(&k)?, &v) {
            seq = Some(r?.seq);
        }
        Ok(seq)
    }

    /// Where a scan of topic `id` from seq `from` starts: the key of the chunk holding
    /// `from` (the last one starting at or before it), else `from`'s own key.
    fn first_chunk_key(&self, id: TopicId, from: u64) -> Result<Vec<u8>, StoreError> {
        match self
            .db
            .range(msg_key(id, 0)..=msg_key(id, from))
            .next_back()
        {
            Some(item) => Ok(item.map_err(engine)?.0.to_vec()),
            None => Ok(msg_key(id, from).to_vec()),
        }
    }

    /// Calls `f` with each stored message of topic `id` from seq `from` on, in order, with
    /// the chunk it is in, until `f` breaks.
    pub(super) fn for_each_record(
        &self,
        id: TopicId,
        from: u64,
        mut f: impl FnMut(&Chunk, Record) -> Result<ControlFlow<()>, StoreError>,
    ) -> Result<(), StoreError> {
        let start = self.first_chunk_key(id, from)?;
        for item in self.db.range(start..=msg_key(id, u64::MAX).to_vec()) {
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
                if f(&chunk, r)?.is_break() {
                    return Ok(());
                }
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
        for item in self.db.range(start..msg_key(id, to).to_vec()) {
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
