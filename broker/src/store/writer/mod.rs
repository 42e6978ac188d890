//! The storage thread: the only writer of the store.
//!
//! The engine's face ([`crate::store::LocalEngine`]) hands it requests over a crossbeam
//! channel ([`Request`]); a lone publish
//! may instead be stored by its session while the thread is idle, under the same lock
//! and through the same pass (`writer/shared.rs`: the loop, the lock and that rule).
//! Each pass it takes every request waiting (up to [`MAX_BATCH`] with fsync `always`,
//! [`MAX_PASS_UNSYNCED`] otherwise), and for the appends among them:
//! assigns the next sequence number of the topic and a broker timestamp (never earlier
//! than the topic's previous one), checks the message ID against the topic's dedup
//! window, and adds the message to the pass's one write (messages, then the updated topic
//! stats: see the parent module). It then flushes once if the fsync policy says so
//! (group commit) and reports the pass's outcomes — stored (with its seq and message),
//! duplicate, or refused — in order to the engine's [`CommitSink`]: delivery fans the
//! stored messages out to live subscribers and then answers each publisher. The writer
//! knows neither routing nor connections; an append's origin passes through untouched.
//!
//! If the write fails, nothing of the batch was applied: the in-memory state (sequence
//! numbers, stats, dedup entries) is rolled back and every request in it gets
//! a refusal with `STORAGE`, so nothing is acknowledged that is not stored. If only the flush
//! fails, the messages are in the store but not known to be on disk: the publishers get
//! `Error{STORAGE}`, and a retry with the same message ID is answered as a duplicate once
//! a later flush succeeds.
//!
//! The dedup index lives in memory (a fingerprint of the message ID → seq, per topic,
//! for the window) and is rebuilt from the log on start, like NATS JetStream's; it costs
//! about 70 bytes per message published with an ID within the window (`store/dedup.rs`).
//!
//! Retention runs here too ([`Request::Enforce`], sent every second by a timer): it
//! removes the oldest messages past a topic's `max_msgs`, `max_age` or `max_bytes` in
//! chunks, and forgets dedup entries older than their window.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use rtc_proto::v1::{self, TopicSettings};

use super::catalog::Catalog;
use super::{Storage, StoreError, StoredTopic, TopicId, TopicStats, WriteOp};
use crate::clock::now_ms;
use crate::config::FsyncPolicy;
use crate::engine::{Append, CommitSink, Committed, Outcome, StorageObserver, TopicView};
use crate::refusal::Refusal;
use crate::topic::{is_durable, normalize};

mod failure;
mod flush;
mod rebuild;
mod removal;
mod request;
mod retention;
mod shared;
mod stats;

pub use request::{Reply, Request};
pub use retention::first_at_or_after;
pub use shared::SharedWriter;

use super::dedup::Dedup;

/// Most requests handled in one pass (one write, one flush) with fsync `always`, where
/// every pass costs a flush and more requests per pass means fewer flushes.
pub const MAX_BATCH: usize = 4096;
/// Most requests handled in one pass with fsync `never` or `interval`. A long window of
/// acknowledged publishes (256 in flight) is then stored and answered in several passes,
/// and the publisher refills its window while the rest is still being stored; with
/// passes of the whole window, publisher and broker take turns instead of overlapping
/// (docs/benchmarks.md, "pass size").
pub const MAX_PASS_UNSYNCED: usize = 48;

#[derive(Debug)]
struct TopicLog {
    id: TopicId,
    settings: TopicSettings,
    explicit: bool,
    stats: TopicStats,
    dedup: Dedup,
    /// The next seq whose ID is to be read back into `dedup`, while that is pending
    /// (`writer/rebuild.rs`).
    dedup_from: Option<u64>,
    /// When (pass time, ms) its stats were last written.
    stats_saved_ms: i64,
    /// Messages were appended since its stats were last written.
    stats_stale: bool,
}

impl TopicLog {
    fn new(id: TopicId, settings: TopicSettings, explicit: bool, stats: TopicStats) -> Self {
        TopicLog {
            id,
            settings,
            explicit,
            stats,
            dedup: Dedup::default(),
            dedup_from: None,
            stats_saved_ms: 0,
            stats_stale: false,
        }
    }

    fn view(&self) -> TopicView {
        TopicView {
            settings: self.settings,
            stats: self.stats,
            // Ids are never reused in a store, so the id is the log's incarnation.
            epoch: u64::from(self.id),
        }
    }
}

/// A map looked up per append (three lookups of the topic name per append), hashed with
/// foldhash rather than std's slower SipHash.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// What a batch changed, to undo if its write fails.
#[derive(Default)]
struct Undo {
    stats: FastMap<String, TopicStats>,
    created: Vec<String>,
    /// Appends (their index in the pass) that added a dedup entry.
    dedup: Vec<usize>,
    next_id: Option<TopicId>,
    settings: HashMap<String, (TopicSettings, bool)>,
}

struct Writer<O> {
    storage: Arc<dyn Storage>,
    /// Where each pass's outcomes go.
    sink: Arc<dyn CommitSink<O>>,
    /// Where each touched topic is published after a pass.
    catalog: Arc<Catalog>,
    /// The owner of topic state: every topic with its id, settings, stats and dedup.
    topics: FastMap<String, TopicLog>,
    /// Topics whose dedup index is still to be read back, oldest first.
    rebuilding: VecDeque<String>,
    next_id: TopicId,
    fsync: FsyncPolicy,
    max_topics: usize,
    /// Written but not yet flushed.
    dirty: bool,
    last_flush: Instant,
    /// The storage thread has stopped: nothing more may be written (inline either).
    stopped: bool,
    /// The store failed and is not back yet (see `writer/failure.rs`).
    failed: Option<failure::Episode>,
    reserve: failure::Reserve,
    observer: Option<Arc<dyn StorageObserver>>,
}

/// The storage thread as its engine holds it: the channel to it, the writer it shares
/// with inline appends, and the thread.
pub struct Started<O> {
    /// Requests to the thread.
    pub tx: crossbeam_channel::Sender<Request<O>>,
    /// The writer, for inline appends.
    pub shared: Arc<SharedWriter<O>>,
    /// The thread, joined on shutdown.
    pub thread: std::thread::JoinHandle<()>,
}

/// How the storage thread writes, from the broker's config.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// When written messages are flushed to disk (`Config::fsync`).
    pub fsync: FsyncPolicy,
    /// Most topics (`Config::max_topics`).
    pub max_topics: usize,
    /// Bytes the store's filesystem keeps free; 0 for none (`Config::store_reserve`).
    pub store_reserve: u64,
    /// Who is told each pass's size and commit time, and each flush's duration.
    pub observer: Option<Arc<dyn StorageObserver>>,
}

/// Loads the store, publishes every topic to `catalog`, and starts the storage thread,
/// which reads the dedup windows back once the broker is serving (`writer/rebuild.rs`).
pub fn start<O: Send + 'static>(
    storage: Arc<dyn Storage>,
    sink: Arc<dyn CommitSink<O>>,
    catalog: Arc<Catalog>,
    config: WriterConfig,
) -> Result<Started<O>, StoreError> {
    let mut writer = Writer::new(storage.clone(), sink, catalog, config)?;
    writer.recover(storage.load_topics()?)?;
    let (tx, rx) = crossbeam_channel::unbounded();
    let shared = Arc::new(SharedWriter::new(writer));
    let thread_shared = shared.clone();
    let thread = std::thread::Builder::new()
        .name("rtc-storage".into())
        .spawn(move || shared::run(&thread_shared, rx))
        .map_err(|e| StoreError::Engine(format!("cannot start the storage thread: {e}")))?;
    Ok(Started { tx, shared, thread })
}

impl<O> Writer<O> {
    /// A writer with no topics loaded yet ([`Writer::recover`] loads them).
    fn new(
        storage: Arc<dyn Storage>,
        sink: Arc<dyn CommitSink<O>>,
        catalog: Arc<Catalog>,
        config: WriterConfig,
    ) -> Result<Self, StoreError> {
        let WriterConfig {
            fsync,
            max_topics,
            store_reserve,
            observer,
        } = config;
        Ok(Writer {
            next_id: storage.next_topic_id()?,
            storage,
            sink,
            catalog,
            topics: FastMap::default(),
            rebuilding: VecDeque::new(),
            fsync,
            max_topics,
            dirty: false,
            last_flush: Instant::now(),
            stopped: false,
            failed: None,
            reserve: failure::Reserve::new(store_reserve),
            observer,
        })
    }

    fn recover(&mut self, stored: Vec<StoredTopic>) -> Result<(), StoreError> {
        let now = now_ms();
        self.rebuilding.clear();
        let mut rewrites = Vec::new();
        for t in stored {
            let settings = if t.explicit {
                t.settings
            } else {
                // Auto-created topics follow the config as it is now.
                let current = self.catalog.rules().configured(&t.name);
                if current != t.settings {
                    rewrites.push(WriteOp::PutTopic {
                        name: t.name.clone(),
                        id: t.id,
                        settings: current,
                        explicit: false,
                    });
                }
                current
            };
            let mut log = TopicLog::new(t.id, settings, t.explicit, t.stats);
            if t.id != 0 && log.stats.messages > 0 {
                let since = now - log.settings.dedup_window_ms as i64;
                let from = first_at_or_after(
                    &*self.storage,
                    t.id,
                    log.stats.first_seq,
                    log.stats.last_seq,
                    since,
                )?;
                // Read back once the broker is serving (`writer/rebuild.rs`); at most
                // one ID per message from `from` on.
                let in_window = (log.stats.last_seq + 1).saturating_sub(from);
                if in_window > 0 {
                    log.dedup.reserve(usize::try_from(in_window).unwrap_or(0));
                    log.dedup_from = Some(from);
                    self.rebuilding.push_back(t.name.clone());
                }
            }
            self.catalog.set(&t.name, log.id, log.view());
            self.topics.insert(t.name, log);
        }
        if !rewrites.is_empty() {
            self.storage.write(rewrites)?;
            self.storage.flush()?;
        }
        Ok(())
    }

    /// Handles `batch`: its removals alone, in order, and the requests between them as
    /// passes.
    fn process(&mut self, batch: &mut Vec<Request<O>>) {
        while let Some(i) = batch.iter().position(Request::is_removal) {
            let rest = batch.split_off(i + 1);
            let removal = batch.pop().expect("found at i");
            self.pass(batch);
            self.remove(removal);
            *batch = rest;
        }
        self.pass(batch);
    }

    /// One pass: the appends, creations and consumer saves of `batch`, in one write.
    fn pass(&mut self, batch: &mut Vec<Request<O>>) {
        // A failed store refuses the whole pass, unless it can be had back now (which
        // reloads topic state, so before any seq is assigned).
        let usable = self.store_usable();
        let began = Instant::now();
        let mut ops = Vec::new();
        let mut undo = Undo::default();
        let mut appends = Vec::new();
        let mut creates = Vec::new();
        let mut consumers = HashMap::new();
        let mut saved = Vec::new();
        let now = now_ms();
        for request in batch.drain(..) {
            match request {
                Request::Append(mut a) => {
                    let outcome = self.append(&mut a, now, &mut ops, &mut undo);
                    if matches!(outcome, Outcome::Stored { .. }) && !a.msg_id.is_empty() {
                        undo.dedup.push(appends.len());
                    }
                    appends.push((a, outcome));
                }
                Request::CreateTopic {
                    name,
                    settings,
                    reply,
                } => {
                    let outcome = self.create(&name, settings, &mut ops, &mut undo);
                    creates.push((name, reply, outcome));
                }
                Request::EnsureTopic { name, reply } => {
                    let outcome = if self.topics.contains_key(&name) {
                        Ok(())
                    } else {
                        let settings = self.catalog.rules().configured(&name);
                        self.new_log(&name, settings, false, &mut ops, &mut undo)
                    };
                    creates.push((name, reply, outcome));
                }
                Request::SaveConsumer {
                    topic,
                    name,
                    record,
                    stored,
                } => {
                    // A consumer lives on a durable topic, which has an id from its
                    // creation on.
                    match self.topics.get(&topic).map(|t| t.id) {
                        Some(id) if id != 0 => {
                            consumers.insert((id, name), record);
                            saved.extend(stored);
                        }
                        _ => tracing::warn!(%topic, consumer = %name, "state of a consumer without a durable topic not saved"),
                    }
                }
                Request::Enforce | Request::Shutdown | Request::Wake => {}
                Request::DeleteTopic { .. }
                | Request::PurgeTopic { .. }
                | Request::DeleteConsumer { .. }
                | Request::SetRules { .. } => {
                    unreachable!("process hands removals to remove")
                }
            }
        }
        let stats_saved = self.stats_due(undo.stats.keys(), now, &mut ops);
        for ((id, name), record) in consumers {
            ops.push(WriteOp::PutConsumer { id, name, record });
        }
        let touched: Vec<String> = undo
            .stats
            .keys()
            .chain(undo.settings.keys())
            .chain(undo.created.iter())
            .cloned()
            .collect();

        let result = if !usable {
            Err(self.unavailable(appends.len() + creates.len()))
        } else if ops.is_empty() {
            Ok(())
        } else {
            self.reserve.wrote(ops.iter().map(WriteOp::size).sum());
            self.storage.write(ops).map(|_| self.dirty = true)
        };
        let result = match result {
            Ok(()) if self.fsync == FsyncPolicy::Always && self.dirty => match self.flush() {
                Ok(()) => Ok(()),
                Err(e) => {
                    // Written but not known to be on disk: refused, so not kept either
                    // (not read, not counted). What sled had of it is gone with the
                    // reopen that follows, unless it reached the disk after all: then a
                    // retry with the same msg_id is answered as a duplicate.
                    self.forget_written(&undo);
                    self.rollback(undo, &appends);
                    Err(e)
                }
            },
            Ok(()) => Ok(()),
            Err(e) => {
                self.rollback(undo, &appends);
                Err(e)
            }
        };
        for name in &touched {
            if let Some(log) = self.topics.get(name) {
                self.catalog.set(name, log.id, log.view());
            }
        }
        match &result {
            // The store's own failure, not the refusal of an episode already begun.
            Err(e) if usable => self.store_failed(e),
            _ => {}
        }

        if let (Ok(()), Some(observer)) = (&result, &self.observer) {
            if !appends.is_empty() {
                observer.pass(appends.len(), began.elapsed());
            }
        }
        if result.is_ok() {
            for done in saved {
                let _ = done.send(());
            }
            self.stats_written(stats_saved, now);
        }
        // The sink fans out in sequence order, then answers: a subscription made after a
        // publisher saw its ack must not receive that message live (answering first let
        // a quick `New` subscriber get it). The broker's own appends are answered after.
        let mut pass = Vec::with_capacity(appends.len());
        let mut internal = Vec::new();
        for (a, outcome) in appends {
            let outcome = match (&result, outcome) {
                (Err(e), Outcome::Stored { .. } | Outcome::Duplicate { .. }) => {
                    Outcome::Refused(Refusal::Storage(format!("not stored: {e}")))
                }
                (_, other) => other,
            };
            let origin = match a.origin {
                Reply::Origin(origin) => Some(origin),
                Reply::Internal(reply) => {
                    let answer = match &outcome {
                        Outcome::Stored { seq, .. }
                        | Outcome::Accepted { seq }
                        | Outcome::Duplicate { seq } => Ok(*seq),
                        Outcome::Refused(refusal) => Err(refusal.clone()),
                    };
                    internal.push((reply, answer));
                    None
                }
            };
            pass.push(Committed {
                topic: a.topic,
                outcome,
                origin,
            });
        }
        if !pass.is_empty() {
            self.sink.committed(pass);
        }
        for (reply, answer) in internal {
            let _ = reply.send(answer);
        }
        for (name, reply, outcome) in creates {
            let answer = match (&result, outcome) {
                (Err(e), Ok(())) => Err(Refusal::Storage(e.to_string())),
                (_, Err(refusal)) => Err(refusal),
                (Ok(()), Ok(())) => Ok(self.topics[&name].view()),
            };
            let _ = reply.send(answer);
        }
    }

    /// Assigns `a` its seq and queues its write; `a` is handed back as it came (its
    /// fields are lent to the encoder, not copied).
    fn append<X>(
        &mut self,
        a: &mut Append<X>,
        now: i64,
        ops: &mut Vec<WriteOp>,
        undo: &mut Undo,
    ) -> Outcome {
        if !self.topics.contains_key(&a.topic) {
            let settings = self.catalog.rules().configured(&a.topic);
            if let Err(refusal) = self.new_log(&a.topic, settings, false, ops, undo) {
                return Outcome::Refused(refusal);
            }
        }
        let mut log = self.topics.get_mut(&a.topic).expect("created above");
        if !a.msg_id.is_empty() && log.dedup_from.is_some() {
            // Its lookup must see every ID of the window (`writer/rebuild.rs`).
            if let Err(e) = self.complete_dedup(&a.topic) {
                return Outcome::Refused(Refusal::from(e));
            }
            log = self.topics.get_mut(&a.topic).expect("completing keeps the topic");
        }
        if log.id == 0 {
            // Created as ephemeral while this publish was on its way: nothing to store.
            return Outcome::Refused(Refusal::Conflict(format!(
                "topic {:?} is ephemeral; publish again",
                a.topic
            )));
        }
        let ts = now.max(log.stats.last_ts_ms);
        let id_fp = (!a.msg_id.is_empty()).then(|| Dedup::fingerprint(&a.msg_id));
        if let Some(fp) = id_fp {
            let since = ts - log.settings.dedup_window_ms as i64;
            if let Some(seq) = log.dedup.lookup(fp, since) {
                return Outcome::Duplicate { seq };
            }
        }
        if !undo.stats.contains_key(&a.topic) {
            undo.stats.insert(a.topic.clone(), log.stats);
        }
        let seq = log.stats.last_seq + 1;
        // Moved into the message to encode it and back out: no copies.
        let stored = v1::Message {
            topic: std::mem::take(&mut a.topic),
            payload: a.payload.clone(),
            headers: std::mem::take(&mut a.headers),
            seq,
            timestamp_ms: ts,
            msg_id: std::mem::take(&mut a.msg_id),
            delivery_count: 1,
            reply_to: String::new(),
            epoch: u64::from(log.id),
        };
        let message = rtc_proto::codec::encode_message(&stored);
        (a.topic, a.headers, a.msg_id) = (stored.topic, stored.headers, stored.msg_id);
        let s = &mut log.stats;
        if s.messages == 0 {
            s.first_seq = seq;
        }
        s.last_seq = seq;
        s.messages += 1;
        s.bytes += message.len() as u64;
        s.last_ts_ms = ts;
        if let Some(fp) = id_fp {
            log.dedup.insert(fp, seq, ts);
        }
        ops.push(WriteOp::Append {
            id: log.id,
            seq,
            ts_ms: ts,
            message: message.clone(),
        });
        Outcome::Stored { seq, message }
    }

    /// Adds a topic (durable ones get an id and a log) to this batch.
    fn new_log(
        &mut self,
        name: &str,
        settings: TopicSettings,
        explicit: bool,
        ops: &mut Vec<WriteOp>,
        undo: &mut Undo,
    ) -> Result<(), Refusal> {
        let durable = is_durable(&settings);
        let mut id = 0;
        if durable {
            let logs = self.topics.values().filter(|t| t.id != 0).count();
            if logs >= self.max_topics {
                return Err(Refusal::LimitExceeded(format!(
                    "the broker holds {} durable topics, its limit",
                    self.max_topics
                )));
            }
            undo.next_id.get_or_insert(self.next_id);
            id = self.next_id;
            self.next_id += 1;
            ops.push(WriteOp::PutNextTopicId(self.next_id));
        }
        ops.push(WriteOp::PutTopic {
            name: name.to_string(),
            id,
            settings,
            explicit,
        });
        undo.created.push(name.to_string());
        self.topics.insert(
            name.to_string(),
            TopicLog::new(id, settings, explicit, TopicStats::default()),
        );
        Ok(())
    }

    fn create(
        &mut self,
        name: &str,
        settings: TopicSettings,
        ops: &mut Vec<WriteOp>,
        undo: &mut Undo,
    ) -> Result<(), Refusal> {
        let settings = normalize(settings);
        let Some(log) = self.topics.get_mut(name) else {
            return self.new_log(name, settings, true, ops, undo);
        };
        if log.id != 0 && !is_durable(&settings) {
            return Err(Refusal::Conflict(format!(
                "topic {name:?} is durable and has a log; it cannot become ephemeral"
            )));
        }
        if log.id == 0 && is_durable(&settings) {
            // An ephemeral topic becoming durable gets a log from now on.
            let prior = self.topics.remove(name).expect("present");
            undo.settings
                .insert(name.to_string(), (prior.settings, prior.explicit));
            self.new_log(name, settings, true, ops, undo)?;
            undo.created.retain(|n| n != name);
        } else {
            undo.settings
                .entry(name.to_string())
                .or_insert((log.settings, log.explicit));
            log.settings = settings;
            log.explicit = true;
            ops.push(WriteOp::PutTopic {
                name: name.to_string(),
                id: log.id,
                settings,
                explicit: true,
            });
        }
        Ok(())
    }

    /// Forgets what a pass whose flush failed left held in the store.
    fn forget_written(&self, undo: &Undo) {
        for (name, before) in &undo.stats {
            if let Some(log) = self.topics.get(name) {
                self.storage.drop_held(log.id, before.last_seq + 1);
            }
        }
    }

    /// Undoes a pass whose write failed; `appends` are the pass's appends.
    fn rollback(&mut self, undo: Undo, appends: &[(Append<Reply<O>>, Outcome)]) {
        for (name, stats) in undo.stats {
            if let Some(log) = self.topics.get_mut(&name) {
                log.stats = stats;
            }
        }
        for &i in undo.dedup.iter().rev() {
            let a = &appends[i].0;
            if let Some(log) = self.topics.get_mut(&a.topic) {
                log.dedup.remove_newest(&a.msg_id);
            }
        }
        for name in undo.created {
            self.topics.remove(&name);
        }
        for (name, (settings, explicit)) in undo.settings {
            match self.topics.get_mut(&name) {
                Some(log) => {
                    log.settings = settings;
                    log.explicit = explicit;
                }
                None => {
                    self.topics.insert(
                        name,
                        TopicLog::new(0, settings, explicit, TopicStats::default()),
                    );
                }
            }
        }
        if let Some(id) = undo.next_id {
            self.next_id = id;
        }
    }
}
