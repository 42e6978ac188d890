//! The log engine seam: what the layers above — delivery, sessions, replays, durable
//! consumers — need from durable storage, and nothing of how it is done.
//!
//! An engine offers:
//! - **appends** with sequence numbers and dedup ([`Appender`]): each publish to a
//!   durable topic is handed over with an *origin* (who to answer, opaque to the engine)
//!   and comes back, once committed per the fsync policy, as a [`Committed`] outcome
//!   through the [`CommitSink`] the engine was built with: stored with its seq and
//!   encoded message, a duplicate of an earlier seq, or refused. The engine defines that
//!   sink and calls up through it; delivery (`crate::delivery`) implements it: fan-out
//!   to live subscribers, then the answers to publishers. The engine knows nothing of
//!   routing or connections;
//! - **reads** of a topic's log from a seq ([`Log::read`], [`Log::first_at_or_after`]),
//!   and a **watch** of its last seq ([`Log::watch`]) for followers such as durable
//!   consumers;
//! - **topic metadata**: the settings in force for any name, explicit topics and the
//!   config's rules together ([`Log::settings`]), and each topic's stats;
//! - **consumer state**: the persisted position of every durable consumer.
//!
//! The local engine (`crate::store`: one storage thread, sled, group commit) is the first
//! implementation. The interface is shaped for a second one on Redis too: an append there
//! is one atomic script (dedup check, next seq, `XADD`, publish to other nodes) whose
//! reply becomes the [`Committed`] outcome; messages other nodes stored arrive by pub/sub
//! and are reported as [`Committed`] with no origin, so delivery fans them out the same
//! way; reads are `XRANGE`, the watch follows the pub/sub feed, and consumer state and
//! topic settings live in hashes. Every method that may need a network round trip is
//! asynchronous ([`BoxFuture`]) for that reason; the synchronous ones answer from state
//! the engine keeps current in memory.

use std::collections::BTreeMap;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use rtc_proto::v1::{self, start_position::Position, TopicSettings};
use tokio::sync::{oneshot, watch};

use crate::clock::now_ms;
use crate::refusal::Refusal;

/// A publish to a durable topic on its way into the log. `O` is its origin: whatever the
/// layer above needs to answer it, carried through the engine untouched.
#[derive(Debug)]
pub struct Append<O> {
    /// Topic name (validated, durable).
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// Headers (validated).
    pub headers: BTreeMap<String, String>,
    /// Message ID for dedup ("" for none).
    pub msg_id: String,
    /// Who is told the outcome.
    pub origin: O,
}

impl<O> Append<O> {
    /// The same append with its origin mapped (an engine wraps it in its own bookkeeping).
    pub fn map_origin<P>(self, f: impl FnOnce(O) -> P) -> Append<P> {
        let Append {
            topic,
            payload,
            headers,
            msg_id,
            origin,
        } = self;
        Append {
            topic,
            payload,
            headers,
            msg_id,
            origin: f(origin),
        }
    }
}

/// How an append went.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Stored at `seq`; `message` is the `rtc.v1.Message` as stored and delivered.
    Stored {
        /// Its position in the topic's log.
        seq: u64,
        /// The encoded message, shared by every delivery of it.
        message: Bytes,
    },
    /// The message ID was seen within the dedup window: stored before at `seq`.
    Duplicate {
        /// The original's seq.
        seq: u64,
    },
    /// Stored at `seq`, and fanned out some other way: the engine reports the message
    /// itself separately, as a commit with no origin (cluster mode: the feed from Redis
    /// brings every node each stored message, this one's own included, in seq order).
    /// Only the publisher is answered.
    Accepted {
        /// Its position in the topic's log.
        seq: u64,
    },
    /// Not stored.
    Refused(Refusal),
}

/// One outcome of a committed pass, reported to the [`CommitSink`].
#[derive(Debug)]
pub struct Committed<O> {
    /// The topic appended to.
    pub topic: String,
    /// What happened.
    pub outcome: Outcome,
    /// Who to answer: `None` for the broker's own appends (dead letters) and, in a
    /// cluster, for messages another node stored.
    pub origin: Option<O>,
}

/// Where an engine reports what it committed. Defined here, by the engine, and
/// implemented above it (`crate::delivery`), so that the engine calls up without
/// knowing what is above.
pub trait CommitSink<O>: Send + Sync {
    /// One pass, in the order the appends were taken (so the stored messages of each
    /// topic are in seq order), after the pass is as durable as the fsync policy asks.
    /// Called on the engine's own thread, or on a session's for an inline append: it
    /// must not wait.
    fn committed(&self, pass: Vec<Committed<O>>);
}

/// What an engine reports of its own work, for the metrics. Defined here and
/// implemented above (`crate::metrics::Metrics`), like [`CommitSink`]. Called on the
/// engine's thread: it must not wait.
pub trait StorageObserver: Send + Sync + std::fmt::Debug {
    /// A pass stored `appends` appends; `commit` is the time from its start until it was
    /// as durable as the fsync policy asks (write and flush).
    fn pass(&self, appends: usize, commit: std::time::Duration);
    /// One flush to disk took `took`.
    fn fsync(&self, took: std::time::Duration);
    /// The store failed (an I/O error, or the disk below its reserve): writes are
    /// refused until it is back.
    fn failed(&self, error: &str);
    /// The store is back after a failure.
    fn recovered(&self);
}

/// Takes appends whose outcomes go to a [`CommitSink`] with origins of type `O`.
pub trait Appender<O>: Send + Sync + std::fmt::Debug {
    /// Hands `append` to the engine. With `lone` (the only frame its read brought), an
    /// engine may store it on the calling thread when it is idle, sparing a hand-over
    /// to its own thread; the outcome still goes to the sink. Fails only once the engine
    /// has stopped.
    fn append(&self, append: Append<O>, lone: bool) -> Result<(), Stopped>;
}

/// The engine has stopped (broker shutting down, or its thread failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the log engine has stopped")]
pub struct Stopped;

impl From<Stopped> for Refusal {
    fn from(_: Stopped) -> Self {
        Refusal::Storage("the storage thread has stopped".to_string())
    }
}

/// Counters kept for each durable topic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TopicStats {
    /// Oldest stored sequence number (0 when nothing is stored).
    pub first_seq: u64,
    /// Newest sequence number ever assigned (0 before the first message).
    pub last_seq: u64,
    /// Messages stored now.
    pub messages: u64,
    /// Bytes of the stored messages (their encoded size: payload, headers, topic, …).
    pub bytes: u64,
    /// Broker timestamp of the newest message; timestamps never go backwards in a topic.
    pub last_ts_ms: i64,
}

/// What anyone may read about a topic without asking the engine to do work.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicView {
    /// Settings in force.
    pub settings: TopicSettings,
    /// Counters as of the last committed pass.
    pub stats: TopicStats,
    /// The incarnation of its log (`Message.epoch`): an engine gives a topic created
    /// again after a delete another one. 0 for an ephemeral topic.
    pub epoch: u64,
}

impl TopicView {
    /// Whether the topic has a log (else it is ephemeral: live fan-out only).
    pub fn is_durable(&self) -> bool {
        crate::topic::is_durable(&self.settings)
    }

    /// The `TopicInfo` frame body for this topic.
    pub fn info(&self, req_id: u64, name: &str) -> v1::TopicInfo {
        v1::TopicInfo {
            req_id,
            name: name.to_string(),
            settings: Some(self.settings),
            first_seq: self.stats.first_seq,
            last_seq: self.stats.last_seq,
            messages: self.stats.messages,
            bytes: self.stats.bytes,
            epoch: self.epoch,
        }
    }
}

/// One stored message as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Its sequence number.
    pub seq: u64,
    /// Broker timestamp.
    pub ts_ms: i64,
    /// The encoded `rtc.v1.Message`, ready to send.
    pub message: Bytes,
}

/// The persisted state of a durable consumer: its position and what it has delivered
/// but not yet had acknowledged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsumerRecord {
    /// Every seq at or below it is settled.
    pub ack_floor: u64,
    /// Next seq to deliver for the first time.
    pub next_seq: u64,
    /// Redeliveries made so far.
    pub redelivered: u64,
    /// Messages moved to the dead-letter topic so far.
    pub dead_lettered: u64,
    /// `(seq, delivery_count)` of the delivered, unacknowledged messages, in seq order.
    pub pending: Vec<(u64, u32)>,
}

/// A durable consumer as stored: its topic, name and state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredConsumer {
    /// The topic it reads.
    pub topic: String,
    /// Its name.
    pub name: String,
    /// Its state.
    pub record: ConsumerRecord,
}

/// A storage failure. The request that hit it was not carried out.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// An I/O error (disk full, permissions, …).
    #[error("storage I/O error: {0}")]
    Io(String),
    /// The data on disk is damaged or not what this version expects.
    #[error("storage data is corrupt: {0}")]
    Corrupt(String),
    /// Another failure inside the storage engine.
    #[error("storage failure: {0}")]
    Engine(String),
    /// The engine's store cannot be reached (cluster mode: Redis).
    #[error("{0}")]
    Unavailable(String),
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(msg) => Refusal::Unavailable(msg),
            e => Refusal::Storage(e.to_string()),
        }
    }
}

/// Everything an engine offers besides appends with an origin (see the module docs).
pub trait Log: Send + Sync + std::fmt::Debug {
    /// The settings in force for topic `name`: its own if it exists, else the config's
    /// rules or the defaults.
    fn settings(&self, name: &str) -> TopicSettings;
    /// Changes whenever [`Log::settings`] may answer differently for some name: settings
    /// remembered at an older generation are stale.
    fn settings_generation(&self) -> u64;
    /// One topic, if it exists.
    fn topic(&self, name: &str) -> Option<TopicView>;
    /// One topic with its counters as the engine has them now: [`Log::topic`] for an
    /// engine whose counters are always current, a round trip for one shared with other
    /// nodes (cluster mode: the copy a node keeps of a topic it does not follow may be
    /// a second old).
    fn topic_now(&self, name: &str) -> BoxFuture<'static, Option<TopicView>> {
        Box::pin(std::future::ready(self.topic(name)))
    }
    /// Every topic, sorted by name.
    fn topics(&self) -> Vec<(String, TopicView)>;
    /// The durable topics whose names match `pattern`.
    fn durable_matching(&self, pattern: &str) -> Vec<(String, TopicView)>;
    /// Creates a topic with `settings`, or changes an existing one's.
    fn create_topic(
        &self,
        name: String,
        settings: TopicSettings,
    ) -> BoxFuture<'static, Result<TopicView, Refusal>>;
    /// Creates topic `name` with its configured settings unless it exists.
    fn ensure_topic(&self, name: String) -> BoxFuture<'static, Result<TopicView, Refusal>>;
    /// Deletes topic `name` with its log, dedup entries and stored consumers (the caller
    /// stops the consumers first). Answered once that is on disk. A topic created again
    /// under the name gets another epoch. `NOT_FOUND` if it does not exist.
    fn delete_topic(&self, name: String) -> BoxFuture<'static, Result<(), Refusal>>;
    /// Removes topic `name`'s stored messages but the newest `keep`; its dedup window
    /// and its seq numbers stay (the next message is still `last_seq + 1`). Answered with
    /// the topic as it is after.
    fn purge_topic(&self, name: String, keep: u64)
        -> BoxFuture<'static, Result<TopicView, Refusal>>;
    /// Removes durable consumer `name`'s stored state on `topic` (its actor is stopped
    /// first).
    fn delete_consumer(
        &self,
        topic: String,
        name: String,
    ) -> BoxFuture<'static, Result<(), Refusal>>;
    /// Replaces the config's topic rules; the topics not created explicitly take their
    /// new settings (as on a restart). How many changed.
    fn set_topic_rules(
        &self,
        rules: crate::topic::TopicRules,
    ) -> BoxFuture<'static, Result<usize, Refusal>>;
    /// Stores a message on behalf of the broker itself (a dead letter); its seq. It is
    /// fanned out like any other, with no origin.
    fn append_internal(
        &self,
        topic: String,
        payload: Bytes,
        headers: BTreeMap<String, String>,
    ) -> BoxFuture<'static, Result<u64, Refusal>>;
    /// Up to `max_msgs` messages (and about `max_bytes`, at least one) of `topic` with
    /// `seq >= from`, in order; none for a topic without a log.
    fn read(
        &self,
        topic: &str,
        from: u64,
        max_msgs: usize,
        max_bytes: usize,
    ) -> BoxFuture<'static, Result<Vec<LogEntry>, StoreError>>;
    /// The first seq of `topic` whose timestamp is at or after `ts_ms`, or one past its
    /// last seq if none is.
    fn first_at_or_after(&self, topic: &str, ts_ms: i64)
        -> BoxFuture<'static, Result<u64, StoreError>>;
    /// The last seq of `topic`, updated after every pass that appends to it.
    fn watch(&self, topic: &str) -> watch::Receiver<u64>;
    /// Every durable consumer's stored state.
    fn consumers(&self) -> Result<Vec<StoredConsumer>, StoreError>;
    /// Stores consumer `name`'s state on `topic`; `stored` is told once it is (per the
    /// fsync policy). Several saves of one consumer close together may be written once.
    fn save_consumer(
        &self,
        topic: &str,
        name: &str,
        record: ConsumerRecord,
        stored: Option<oneshot::Sender<()>>,
    ) -> Result<(), Stopped>;
    /// Applies retention limits and expires old dedup entries (called every second).
    fn enforce_retention(&self);
    /// Finishes what is in flight, makes it durable, and stops. Reads still running
    /// finish first, so the data can be reopened once this returns.
    fn shutdown(&self) -> BoxFuture<'static, ()>;
}

/// The first seq to deliver for `topic` (as `view` describes it) from `start`.
pub async fn start_seq(
    log: &dyn Log,
    topic: &str,
    view: &TopicView,
    start: &Position,
) -> Result<u64, StoreError> {
    let s = view.stats;
    let after_last = s.last_seq + 1;
    Ok(match *start {
        Position::New(_) => after_last,
        Position::First(_) => s.first_seq.max(1),
        Position::Last(_) if s.messages > 0 => s.last_seq,
        Position::Last(_) => after_last,
        Position::Seq(n) => n,
        // Bounded by `view`: a message stored after it was taken is newer than any
        // time asked for, and comes live.
        Position::TimeMs(ts) => log.first_at_or_after(topic, ts).await?.min(after_last),
        Position::RelativeMs(delta) => log
            .first_at_or_after(topic, now_ms().saturating_add(delta))
            .await?
            .min(after_last),
    })
}
