//! The storage thread: the only writer of the store.
//!
//! Sessions hand it requests over a crossbeam channel ([`LogHandle`]); a lone publish
//! may instead be stored by its session while the thread is idle, under the same lock
//! and through the same pass (`writer/shared.rs`: the loop, the lock and that rule).
//! Each pass it takes every request waiting (up to [`MAX_BATCH`] with fsync `always`,
//! [`MAX_PASS_UNSYNCED`] otherwise), and for the appends among them:
//! assigns the next sequence number of the topic and a broker timestamp (never earlier
//! than the topic's previous one), checks the message ID against the topic's dedup
//! window, and adds the message to the pass's one write (messages, then the updated topic
//! stats: see the parent module). It then flushes once if the fsync policy says so
//! (group commit), fans every stored message out to live subscribers in sequence order,
//! and only then answers each publisher — `PubAck{seq}`, `PubAck{seq, duplicate}` or
//! `Error{STORAGE}` — by pushing straight into the publisher's outbox.
//!
//! If the write fails, nothing of the batch was applied: the in-memory state (sequence
//! numbers, stats, dedup entries) is rolled back and every request in it gets
//! `Error{STORAGE}`, so nothing is acknowledged that is not stored. If only the flush
//! fails, the messages are in the store but not known to be on disk: the publishers get
//! `Error{STORAGE}`, and a retry with the same message ID is answered as a duplicate once
//! a later flush succeeds.
//!
//! The dedup index lives in memory (message ID → seq, per topic, for the window) and is
//! rebuilt from the log on start, like NATS JetStream's; it costs roughly 100 bytes per
//! message published with an ID within the window.
//!
//! Retention runs here too ([`Request::Enforce`], sent every second by a timer): it
//! removes the oldest messages past a topic's `max_msgs`, `max_age` or `max_bytes` in
//! chunks, and forgets dedup entries older than their window.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use rtc_proto::v1::{self, frame::Op, TopicSettings};
use rtc_proto::{ErrorCode, Frame};
use tokio::sync::Semaphore;

use super::{Storage, StoreError, StoredTopic, TopicId, TopicStats, WriteOp};
use crate::config::FsyncPolicy;
use crate::outbound::{Flushes, Outbox};
use crate::router::Router;
use crate::session::now_ms;
use crate::topic::{is_durable, normalize, TopicRegistry};

mod flush;
mod retention;
mod shared;
mod stats;

pub use super::handle::{Append, LogHandle, Refusal, Request, Responder, Stopped};
pub use super::view::{LogView, TopicView};
pub use retention::first_at_or_after;
pub use shared::SharedWriter;

use super::dedup::Dedup;

/// Most requests handled in one pass (one write, one flush) with fsync `always`, where
/// every pass costs a flush and more requests per pass means fewer flushes.
pub const MAX_BATCH: usize = 4096;
/// Most requests handled in one pass with fsync `never` or `interval`. A long window of
/// acknowledged publishes (256 in flight) is then stored and answered in several passes,
/// and the publisher refills its window while the rest is still being stored; with
/// passes of the whole window, publisher and broker took turns instead of overlapping
/// (W = 256: 81–118 k → 104–136 k msgs/s, nine alternating runs).
pub const MAX_PASS_UNSYNCED: usize = 48;
/// Appends accepted but not yet answered, across all connections. Beyond it, publishers
/// wait for a slot before their request is read further.
pub const MAX_IN_FLIGHT: usize = 65_536;

#[derive(Debug)]
struct TopicLog {
    id: TopicId,
    settings: TopicSettings,
    explicit: bool,
    stats: TopicStats,
    dedup: Dedup,
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
            stats_saved_ms: 0,
            stats_stale: false,
        }
    }

    fn view(&self) -> TopicView {
        TopicView {
            id: self.id,
            settings: self.settings,
            stats: self.stats,
        }
    }
}

/// The result of one request in a batch, answered after the write.
enum Outcome {
    Stored { seq: u64, message: Bytes },
    Duplicate { seq: u64 },
    Refused(Refusal),
}

/// A map looked up per append, hashed with foldhash (std's SipHash was ~2 % of the
/// storage thread, three lookups of the topic name per append).
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

struct Writer {
    storage: Arc<dyn Storage>,
    router: Arc<Router>,
    registry: Arc<TopicRegistry>,
    view: Arc<LogView>,
    topics: FastMap<String, TopicLog>,
    next_id: TopicId,
    fsync: FsyncPolicy,
    max_topics: usize,
    /// Written but not yet flushed.
    dirty: bool,
    last_flush: Instant,
    /// The storage thread has stopped: nothing more may be written (inline either).
    stopped: bool,
}

/// Loads the store, rebuilds the dedup windows, and starts the storage thread.
pub fn start(
    storage: Arc<dyn Storage>,
    router: Arc<Router>,
    registry: Arc<TopicRegistry>,
    fsync: FsyncPolicy,
    max_topics: usize,
) -> Result<LogHandle, StoreError> {
    let view = Arc::new(LogView::default());
    let mut writer = Writer {
        next_id: storage.next_topic_id()?,
        storage: storage.clone(),
        router,
        registry,
        view: view.clone(),
        topics: FastMap::default(),
        fsync,
        max_topics,
        dirty: false,
        last_flush: Instant::now(),
        stopped: false,
    };
    writer.recover(storage.load_topics()?)?;
    let (tx, rx) = crossbeam_channel::unbounded();
    let shared = Arc::new(SharedWriter::new(writer));
    let thread_shared = shared.clone();
    let thread = std::thread::Builder::new()
        .name("rtc-storage".into())
        .spawn(move || shared::run(&thread_shared, rx))
        .map_err(|e| StoreError::Engine(format!("cannot start the storage thread: {e}")))?;
    Ok(LogHandle {
        tx,
        shared,
        view,
        storage,
        permits: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        thread: Mutex::new(Some(thread)),
    })
}

impl Writer {
    fn recover(&mut self, stored: Vec<StoredTopic>) -> Result<(), StoreError> {
        let now = now_ms();
        let mut rewrites = Vec::new();
        for t in stored {
            let settings = if t.explicit {
                self.registry.set_explicit(&t.name, t.settings);
                t.settings
            } else {
                // Auto-created topics follow the config as it is now.
                let current = self.registry.configured(&t.name);
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
                for (id, seq, ts) in self.storage.message_ids(t.id, from)? {
                    let hash = log.dedup.hash(&id);
                    log.dedup.insert(hash, &id, seq, ts);
                }
            }
            self.view.set(&t.name, log.view());
            self.topics.insert(t.name, log);
        }
        if !rewrites.is_empty() {
            self.storage.write(rewrites)?;
            self.storage.flush()?;
        }
        Ok(())
    }

    fn process(&mut self, batch: &mut Vec<Request>) {
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
                        let settings = self.registry.resolve(&name);
                        self.new_log(&name, settings, false, &mut ops, &mut undo)
                    };
                    creates.push((name, reply, outcome));
                }
                Request::SaveConsumer {
                    id,
                    name,
                    record,
                    stored,
                } => {
                    consumers.insert((id, name), record);
                    saved.extend(stored);
                }
                Request::Enforce | Request::Shutdown | Request::Wake => {}
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

        let result = if ops.is_empty() {
            Ok(())
        } else {
            self.storage.write(ops).map(|_| self.dirty = true)
        };
        let result = match result {
            Ok(()) if self.fsync == FsyncPolicy::Always && self.dirty => self.flush(),
            Ok(()) => Ok(()),
            Err(e) => {
                self.rollback(undo, &appends);
                Err(e)
            }
        };
        for name in &touched {
            if let Some(log) = self.topics.get(name) {
                self.view.set(name, log.view());
            }
        }
        if let Err(e) = &result {
            tracing::error!(error = %e, "storage write failed; answering the batch with STORAGE errors");
        }

        if result.is_ok() {
            for done in saved {
                let _ = done.send(());
            }
            self.stats_written(stats_saved, now);
        }
        // Fan out in sequence order, then answer: a subscription made after a publisher
        // saw its ack must not receive that message live (answering first let a quick
        // `New` subscriber get it).
        let outcomes: Vec<_> = appends
            .into_iter()
            .map(|(a, outcome)| {
                let outcome = match (&result, outcome) {
                    (Err(e), Outcome::Stored { .. } | Outcome::Duplicate { .. }) => {
                        Outcome::Refused((ErrorCode::Storage, format!("not stored: {e}")))
                    }
                    (_, other) => other,
                };
                (a, outcome)
            })
            .collect();
        // Deliveries and answers are all queued first and written after, each outbox
        // once per pass (directly from this thread when its writer is idle; see
        // `Outbox::flush`), so each connection gets the pass's frames in one write. An
        // outbox is listed when a frame finds its queue empty: once per pass, unless its
        // writer emptied it meanwhile (a second flush is then harmless).
        let mut later = Flushes::default();
        for (a, outcome) in &outcomes {
            if let Outcome::Stored { seq, message } = outcome {
                self.router
                    .publish(&a.topic, *seq, false, || message.clone(), &mut later);
            }
        }
        for (a, outcome) in outcomes {
            if let Some(outbox) = answer(a.responder, outcome) {
                later.push(outbox);
            }
        }
        later.flush_all();
        for (name, reply, outcome) in creates {
            let answer = match (&result, outcome) {
                (Err(e), Ok(())) => Err((ErrorCode::Storage, e.to_string())),
                (_, Err(refusal)) => Err(refusal),
                (Ok(()), Ok(())) => Ok(self.topics[&name].view()),
            };
            let _ = reply.send(answer);
        }
    }

    /// Assigns `a` its seq and queues its write; `a` is handed back as it came (its
    /// fields are lent to the encoder, not copied).
    fn append(
        &mut self,
        a: &mut Append,
        now: i64,
        ops: &mut Vec<WriteOp>,
        undo: &mut Undo,
    ) -> Outcome {
        if !self.topics.contains_key(&a.topic) {
            let settings = self.registry.resolve(&a.topic);
            if let Err(refusal) = self.new_log(&a.topic, settings, false, ops, undo) {
                return Outcome::Refused(refusal);
            }
        }
        let log = self.topics.get_mut(&a.topic).expect("created above");
        if log.id == 0 {
            // Created as ephemeral while this publish was on its way: nothing to store.
            return Outcome::Refused((
                ErrorCode::Conflict,
                format!("topic {:?} is ephemeral; publish again", a.topic),
            ));
        }
        let ts = now.max(log.stats.last_ts_ms);
        let id_hash = (!a.msg_id.is_empty()).then(|| log.dedup.hash(&a.msg_id));
        if let Some(hash) = id_hash {
            let since = ts - log.settings.dedup_window_ms as i64;
            if let Some(seq) = log.dedup.lookup(hash, &a.msg_id, since) {
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
        if let Some(hash) = id_hash {
            log.dedup.insert(hash, &a.msg_id, seq, ts);
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
                return Err((
                    ErrorCode::LimitExceeded,
                    format!(
                        "the broker holds {} durable topics, its limit",
                        self.max_topics
                    ),
                ));
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
            self.new_log(name, settings, true, ops, undo)?;
            self.registry.set_explicit(name, settings);
            return Ok(());
        };
        if log.id != 0 && !is_durable(&settings) {
            return Err((
                ErrorCode::Conflict,
                format!("topic {name:?} is durable and has a log; it cannot become ephemeral"),
            ));
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
        self.registry.set_explicit(name, settings);
        Ok(())
    }

    /// Undoes a pass whose write failed; `appends` are the pass's appends.
    fn rollback(&mut self, undo: Undo, appends: &[(Append, Outcome)]) {
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

/// Tells an append's responder how it went; returns a client's outbox that must then be
/// flushed ([`Outbox::flush`]).
fn answer(responder: Responder, outcome: Outcome) -> Option<Arc<Outbox>> {
    match responder {
        Responder::Internal(reply) => {
            let _ = reply.send(match outcome {
                Outcome::Stored { seq, .. } | Outcome::Duplicate { seq } => Ok(seq),
                Outcome::Refused(refusal) => Err(refusal),
            });
            None
        }
        Responder::Client {
            req_id,
            outbox,
            permit,
        } => {
            let frame = match outcome {
                Outcome::Refused((code, msg)) => Some(Frame::error(req_id, code, msg)),
                Outcome::Stored { seq, .. } => ack(req_id, seq, false),
                Outcome::Duplicate { seq } => ack(req_id, seq, true),
            };
            // A closed outbox means the publisher is gone; nobody is left to tell.
            let wake = frame.is_some_and(|f| outbox.push_frame_deferred(f) == Ok(true));
            drop(permit);
            wake.then_some(outbox)
        }
    }
}

fn ack(req_id: u64, seq: u64, duplicate: bool) -> Option<Frame> {
    (req_id != 0).then(|| {
        Frame::from_op(Op::PubAck(v1::PubAck {
            req_id,
            seq,
            duplicate,
        }))
    })
}
