//! The local log engine: one storage thread over a [`Storage`], with group commit. It
//! implements the engine seam ([`crate::engine`]) as [`LocalEngine`].
//!
//! - [`local`]: [`LocalEngine`], the engine's face: requests to the storage thread,
//!   inline appends, reads on blocking threads (tracked, so shutdown waits for them).
//! - [`writer`]: the storage thread and its writer, the only writer of the store and the
//!   owner of topic state: sequence numbers, dedup (`dedup`), stats, retention.
//! - [`catalog`]: the topics as everyone may read them, published by the writer.
//! - [`convert`]: copying a sled store into a new segment store (`rtc-broker
//!   convert-store`).
//! - [`segments`]: the default [`Storage`]: each topic's messages in append-only segment
//!   files, everything else (the keys below other than `m`) in a sled database of its own.
//! - [`sled_store`]: the [`Storage`] trait's sled implementation, keeping messages in
//!   [`chunk`]s and each topic's newest appends in an open chunk until sealed; the store
//!   of data directories made before the segment files, and the segment store's
//!   metadata.
//!
//! Data flow of a durable publish: the session hands the append to [`LocalEngine`],
//! which sends it over a crossbeam channel to the storage thread (or, for a lone publish
//! while the thread is idle, processes it on the session's thread); the thread takes
//! every request waiting, assigns sequence numbers, checks message IDs against the dedup
//! window, writes them all in one pass and flushes once per the fsync policy (group
//! commit); then it reports the pass's outcomes to the [`CommitSink`] it was given
//! (delivery: fan-out, then answers) and publishes the touched topics to the
//! [`catalog::Catalog`]. Replays read the storage directly from blocking tasks; they
//! never go through the storage thread.
//!
//! [`CommitSink`]: crate::engine::CommitSink
//!
//! # Key layout
//! One sled tree holds everything (with the segment store, everything but the `m` keys). A pass of appends only may be held in memory, in each
//! topic's open chunk, until the chunk is sealed into sled (`sled_store/open_chunks.rs`:
//! when full, before any other write, on flush, within 50 ms). A pass that also updates
//! stats and consumer state is written in order, held messages and its messages first,
//! and a crash keeps a prefix of it; opening the store counts back in messages stored
//! beyond their topic's recorded stats. A pass that creates topics or removes messages is one atomic sled batch. Numbers are big-endian so that keys sort in numeric
//! order and range scans run in sequence order.
//!
//! | key | value |
//! |---|---|
//! | `b"v"` | format version, `u32` ([`FORMAT_VERSION`]) |
//! | `b"n"` | next topic id to assign, `u32` |
//! | `b"t" ++ name` | topic metadata: `id: u32 ++ flags: u8 ++ rtc.v1.TopicSettings` (protobuf); flag bit 0: created explicitly (`topic create`) |
//! | `b"s" ++ id: u32` | topic stats: `first_seq, last_seq, messages, bytes: u64` and `last_ts_ms: i64` ([`TopicStats::encode`]) |
//! | `b"m" ++ id: u32 ++ first_seq: u64` | a chunk of consecutive messages from `first_seq` on, each `ts_ms: i64 ++ len: u32 ++ rtc.v1.Message` (protobuf, as delivered; see [`chunk`]) |
//! | `b"c" ++ id: u32 ++ name` | a durable consumer's state ([`ConsumerRecord::encode`]) |
//!
//! Deleting a topic removes its `t`, `s`, `m` and `c` keys in one atomic batch. Its id is
//! never handed out again, so the id is also the topic's *epoch* (`Message.epoch`): a
//! topic created again under the same name gets a new id, and positions of the old log
//! cannot be mistaken for positions in the new one.
//!
//! A chunk holds each `Message` exactly as it goes on the wire, so a replay sends the
//! stored bytes without re-encoding or copying them. `last_seq` in the stats survives the
//! removal of every message by retention, so sequence numbers are never reused; on
//! start the writer also checks the highest stored seq, and the larger wins.

pub mod catalog;
pub mod chunk;
pub mod convert;
mod dedup;
pub mod local;
pub mod segments;
pub mod sled_store;
pub mod writer;

use std::ops::ControlFlow;

use bytes::Bytes;

pub use crate::engine::{ConsumerRecord, LogEntry, StoreError, TopicStats};
pub use local::LocalEngine;
pub use writer::WriterConfig;

/// Version of the key layout above. A data dir written with another version is refused.
/// Version 2 stores messages in chunks (version 1 had one key per message).
pub const FORMAT_VERSION: u32 = 2;

/// Compact numeric id of a topic, used in keys instead of its name.
pub type TopicId = u32;

impl TopicStats {
    /// Size of the encoded form.
    pub const ENCODED_LEN: usize = 40;

    /// Fixed-size big-endian encoding.
    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        out[0..8].copy_from_slice(&self.first_seq.to_be_bytes());
        out[8..16].copy_from_slice(&self.last_seq.to_be_bytes());
        out[16..24].copy_from_slice(&self.messages.to_be_bytes());
        out[24..32].copy_from_slice(&self.bytes.to_be_bytes());
        out[32..40].copy_from_slice(&self.last_ts_ms.to_be_bytes());
        out
    }

    /// Inverse of [`TopicStats::encode`].
    pub fn decode(b: &[u8]) -> Option<TopicStats> {
        if b.len() != Self::ENCODED_LEN {
            return None;
        }
        let u = |i: usize| u64::from_be_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        Some(TopicStats {
            first_seq: u(0),
            last_seq: u(8),
            messages: u(16),
            bytes: u(24),
            last_ts_ms: u(32) as i64,
        })
    }
}

/// A topic as stored: its name, id (0 for ephemeral topics, which have no log), settings
/// and stats.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTopic {
    /// Topic name.
    pub name: String,
    /// Id used in keys; 0 when the topic has no log.
    pub id: TopicId,
    /// Its settings.
    pub settings: rtc_proto::v1::TopicSettings,
    /// Created with `topic create` (keeps its settings) rather than by a first publish
    /// (follows the config's `[[topic]]` rules).
    pub explicit: bool,
    /// Its counters.
    pub stats: TopicStats,
}

impl ConsumerRecord {
    /// `ack_floor, next_seq, redelivered, dead_lettered: u64`, `n: u32`, then n times
    /// `seq: u64, delivery_count: u32`; all big-endian.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(36 + self.pending.len() * 12);
        for x in [
            self.ack_floor,
            self.next_seq,
            self.redelivered,
            self.dead_lettered,
        ] {
            v.extend_from_slice(&x.to_be_bytes());
        }
        v.extend_from_slice(&(self.pending.len() as u32).to_be_bytes());
        for (seq, count) in &self.pending {
            v.extend_from_slice(&seq.to_be_bytes());
            v.extend_from_slice(&count.to_be_bytes());
        }
        v
    }

    /// Inverse of [`ConsumerRecord::encode`]; `None` if malformed.
    pub fn decode(b: &[u8]) -> Option<ConsumerRecord> {
        let u64_at = |i: usize| {
            b.get(i..i + 8)
                .map(|s| u64::from_be_bytes(s.try_into().expect("8 bytes")))
        };
        let u32_at = |i: usize| {
            b.get(i..i + 4)
                .map(|s| u32::from_be_bytes(s.try_into().expect("4 bytes")))
        };
        let n = u32_at(32)? as usize;
        if b.len() != 36 + n * 12 {
            return None;
        }
        let pending = (0..n)
            .map(|i| Some((u64_at(36 + i * 12)?, u32_at(44 + i * 12)?)))
            .collect::<Option<Vec<_>>>()?;
        Some(ConsumerRecord {
            ack_floor: u64_at(0)?,
            next_seq: u64_at(8)?,
            redelivered: u64_at(16)?,
            dead_lettered: u64_at(24)?,
            pending,
        })
    }
}

/// One change in a write ([`Storage::write`]).
#[derive(Debug, Clone)]
pub enum WriteOp {
    /// Create or update a topic's metadata.
    PutTopic {
        /// Topic name.
        name: String,
        /// Its id (0 for ephemeral).
        id: TopicId,
        /// Its settings.
        settings: rtc_proto::v1::TopicSettings,
        /// See [`StoredTopic::explicit`].
        explicit: bool,
    },
    /// Set the next topic id to hand out.
    PutNextTopicId(TopicId),
    /// Replace a topic's stats.
    PutStats(TopicId, TopicStats),
    /// Store one message.
    Append {
        /// Topic id.
        id: TopicId,
        /// Its sequence number.
        seq: u64,
        /// Broker timestamp.
        ts_ms: i64,
        /// The encoded `rtc.v1.Message`.
        message: Bytes,
    },
    /// Replace a durable consumer's state.
    PutConsumer {
        /// Topic id.
        id: TopicId,
        /// Consumer name.
        name: String,
        /// Its state.
        record: ConsumerRecord,
    },
    /// Remove a topic whole: its metadata, stats, every message and every consumer.
    DeleteTopic {
        /// Topic name.
        name: String,
        /// Its id (0 for an ephemeral topic: metadata only).
        id: TopicId,
    },
    /// Remove a durable consumer's state.
    DeleteConsumer {
        /// Topic id.
        id: TopicId,
        /// Consumer name.
        name: String,
    },
    /// Remove the messages with `from <= seq < to` (retention).
    RemoveRange {
        /// Topic id.
        id: TopicId,
        /// First seq removed.
        from: u64,
        /// One past the last seq removed.
        to: u64,
    },
}

impl WriteOp {
    /// Whether a crash may keep this op without the ops written after it in the same
    /// write: true for appends, stats and consumer state (recovery reconciles them),
    /// false for topic metadata and removals, which are written all-or-nothing.
    pub fn is_in_order_safe(&self) -> bool {
        matches!(
            self,
            WriteOp::Append { .. } | WriteOp::PutStats(..) | WriteOp::PutConsumer { .. }
        )
    }

    /// About how many bytes this op adds to the store (for the disk reserve's checks):
    /// an append's message, a fixed guess for the small records.
    pub fn size(&self) -> u64 {
        match self {
            WriteOp::Append { message, .. } => message.len() as u64 + 32,
            _ => 128,
        }
    }
}

/// What [`Storage::scan`] calls for each message: `(seq, ts_ms, message)`, to go on,
/// stop, or fail the scan.
pub type ScanFn<'a> = dyn FnMut(u64, i64, &[u8]) -> Result<ControlFlow<()>, StoreError> + 'a;

/// How far a [`Storage::scan`] goes: one message (a lookup) or many (a scan).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// A lookup: the engine reads as little as it can.
    One,
    /// A scan: the engine reads in large blocks.
    Many,
}

/// What the local engine needs from the storage under it (sled, or a test's wrapper that
/// injects faults). Implementations are internally synchronised: the storage thread
/// writes, blocking tasks read concurrently.
pub trait Storage: Send + Sync + std::fmt::Debug + 'static {
    /// Every topic with stored metadata, with stats reconciled against the log.
    fn load_topics(&self) -> Result<Vec<StoredTopic>, StoreError>;
    /// The next topic id to assign (1 for a new store).
    fn next_topic_id(&self) -> Result<TopicId, StoreError>;
    /// Applies `ops`; on failure, none of them. After a crash, a prefix of them is
    /// present: none, some or all — all or none when any op creates a topic or removes
    /// messages ([`WriteOp::is_in_order_safe`] is false for one of them).
    /// [`Storage::load_topics`] counts messages whose stats were cut off.
    ///
    /// The store may hold a write of appends only in memory (readable at once) and hand
    /// it to the engine later: at [`Storage::seal_due`] at the latest, on every flush,
    /// and before any write that is not appends only. A crash loses what is held; it
    /// still keeps a prefix of each topic's messages, and never stats or consumer state
    /// without the messages written before them.
    fn write(&self, ops: Vec<WriteOp>) -> Result<(), StoreError>;
    /// Makes everything written so far durable on disk (held appends included).
    fn flush(&self) -> Result<(), StoreError>;
    /// When appends held in memory are due to be handed to the engine
    /// ([`Storage::seal`]); `None` while none are held.
    fn seal_due(&self) -> Option<std::time::Instant>;
    /// Hands every held append to the engine, without flushing it.
    fn seal(&self) -> Result<(), StoreError>;
    /// Up to `max_msgs` messages (and about `max_bytes`, at least one) of topic `id` with
    /// `seq >= from`, in order.
    fn read(
        &self,
        id: TopicId,
        from: u64,
        max_msgs: usize,
        max_bytes: usize,
    ) -> Result<Vec<LogEntry>, StoreError>;
    /// Calls `each(seq, ts_ms, message)` for the stored messages of topic `id` with
    /// `seq >= from`, in order, until it breaks or fails (its error is returned). `reach`
    /// says whether the walk is a lookup of one message or a scan, for how much the
    /// engine reads at a time.
    fn scan(
        &self,
        id: TopicId,
        from: u64,
        reach: Reach,
        each: &mut ScanFn<'_>,
    ) -> Result<(), StoreError>;
    /// The timestamp of message `seq`, if stored.
    fn timestamp(&self, id: TopicId, seq: u64) -> Result<Option<i64>, StoreError> {
        let mut ts = None;
        self.scan(id, seq, Reach::One, &mut |at, t, _| {
            if at == seq {
                ts = Some(t);
            }
            Ok(ControlFlow::Break(()))
        })?;
        Ok(ts)
    }
    /// Calls `each(msg_id, seq, ts_ms)` for the messages of topic `id` with `seq >= from`
    /// (msg_id "" for one without), in order, until it breaks — used to rebuild the dedup window,
    /// so it lends each ID rather than allocating millions of them.
    fn for_each_message_id(
        &self,
        id: TopicId,
        from: u64,
        each: &mut dyn FnMut(&str, u64, i64) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        self.scan(id, from, Reach::Many, &mut |seq, ts, m| {
            let msg_id = rtc_proto::codec::message_msg_id(m)
                .map_err(|e| StoreError::Corrupt(format!("stored message {seq}: {e}")))?;
            Ok(each(&msg_id, seq, ts))
        })
    }
    /// Every durable consumer's state: `(topic id, name, record)`.
    fn load_consumers(&self) -> Result<Vec<(TopicId, String, ConsumerRecord)>, StoreError>;
    /// `(seq, encoded size)` of the messages with `from <= seq < to`, for byte-based
    /// retention.
    fn sizes(&self, id: TopicId, from: u64, to: u64) -> Result<Vec<(u64, u64)>, StoreError> {
        let mut out = Vec::new();
        if from >= to {
            return Ok(out);
        }
        self.scan(id, from, Reach::Many, &mut |seq, _, m| {
            if seq >= to {
                return Ok(ControlFlow::Break(()));
            }
            out.push((seq, m.len() as u64));
            Ok(ControlFlow::Continue(()))
        })?;
        Ok(out)
    }
    /// Forgets the held appends of topic `id` from seq `from` on (a write whose flush
    /// failed is refused whole, and must not be read or counted).
    fn drop_held(&self, id: TopicId, from: u64);
    /// Closes the engine and opens it again from what is on disk, keeping the appends
    /// held in memory (they are written when next sealed). After an I/O error sled
    /// refuses every write until this is done; what it had not flushed is gone, as after
    /// a crash.
    fn reopen(&self) -> Result<(), StoreError>;
    /// Bytes free for the store on its filesystem, if the engine can tell: a reopen is
    /// tried only once there is room again.
    fn free_space(&self) -> Option<u64>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_record_round_trip() {
        let r = ConsumerRecord {
            ack_floor: 5,
            next_seq: 9,
            redelivered: 2,
            dead_lettered: 1,
            pending: vec![(6, 1), (8, 3)],
        };
        assert_eq!(ConsumerRecord::decode(&r.encode()), Some(r.clone()));
        assert_eq!(ConsumerRecord::decode(&r.encode()[..40]), None);
        assert_eq!(ConsumerRecord::decode(&[]), None);
    }
}
