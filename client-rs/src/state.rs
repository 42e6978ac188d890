//! State shared by the client API, the supervisor and the connection tasks, across
//! reconnects: requests waiting for answers, the outbox, subscriptions (with what is
//! needed to restore them on a new connection), and the connection state.
//!
//! When a connection is lost, requests other than acknowledged publishes fail with
//! [`Error::Closed`] (their effect is unknown; for consumer acks, the broker redelivers),
//! while publishes stay in the outbox to be resent. When the client closes for good,
//! everything fails and every subscription stream ends.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use rtc_proto::v1::{self, frame::Op, start_position::Position, StartPosition};
use rtc_proto::Frame;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::message::Message;
use crate::outbox::Outbox;
use crate::queue;

/// A map keyed by this client's request or subscription IDs, looked up per answer and per
/// delivery: foldhash rather than the slower SipHash.
type IdMap<V> = HashMap<u64, V, foldhash::fast::RandomState>;

/// Where a broker answer is routed.
pub(crate) type Reply = Result<Op, Error>;

/// The client's connection, as the application can watch it
/// ([`crate::Client::state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    /// Making the first connection.
    Connecting,
    /// Connected and serving.
    Connected,
    /// The link dropped; trying again (attempt number, from 1).
    Reconnecting(u32),
    /// Closed for good (by the application, or reconnecting gave up).
    Closed,
}

/// A subscription as the client keeps it, to route deliveries and to restore it.
#[derive(Debug)]
pub(crate) struct SubEntry {
    pub(crate) tx: queue::Sender<Message>,
    /// The Subscribe frame as first sent (req_id and start are replaced on restore).
    pub(crate) request: v1::Subscribe,
    /// Confirmed by the broker (restored after a reconnect only then).
    pub(crate) active: bool,
    /// What was delivered, to resume after and to drop repeats.
    resume: Resume,
    /// When the broker confirmed it, for a resume with nothing received yet.
    since: Instant,
}

impl SubEntry {
    pub(crate) fn new(tx: queue::Sender<Message>, request: v1::Subscribe) -> Self {
        SubEntry {
            tx,
            request,
            active: false,
            resume: Resume::default(),
            since: Instant::now(),
        }
    }

    fn is_consumer(&self) -> bool {
        !self.request.consumer.is_empty()
    }

    /// The Subscribe that restores this subscription on a new connection. A durable
    /// consumer simply rejoins (the broker kept its position). A plain subscription
    /// resumes each topic it was delivered after the last seq it got
    /// (`Subscribe.resume_after`), and the topics it got nothing of from its own start
    /// (its start position, or the time it was made for a live one); repeats are dropped
    /// by seq. So on durable topics nothing is missed and nothing repeats, even when the
    /// link dropped while a replay over several topics was half done. Past
    /// [`MAX_RESUME_AFTER`] topics it resumes from the broker time of its last delivery
    /// instead. (A broker that predates `resume_after` ignores it: it replays from the
    /// start position, and the repeats are dropped.) A queue group member rejoins live:
    /// what its group got meanwhile went to the other members.
    fn restore(&self) -> v1::Subscribe {
        let mut s = self.request.clone();
        s.req_id = 0;
        if self.is_consumer() || !self.request.group.is_empty() {
            return s;
        }
        let since_start =
            || Position::RelativeMs(-(self.since.elapsed().as_millis() as i64) - 1000);
        let original = self.request.start.as_ref().and_then(|p| p.position);
        let position = if !self.resume.seen.is_empty() && self.resume.seen.len() <= MAX_RESUME_AFTER
        {
            s.resume_after = self
                .resume
                .seen
                .iter()
                .map(|(t, seq)| (t.clone(), *seq))
                .collect();
            // A topic deleted and created again meanwhile is then resumed from its new
            // log's start (with a TOPIC_DELETED notice), not after an old seq.
            s.epochs = self
                .resume
                .epochs
                .iter()
                .filter(|(t, _)| s.resume_after.contains_key(*t))
                .map(|(t, e)| (t.clone(), *e))
                .collect();
            match original {
                None | Some(Position::New(_)) => since_start(),
                Some(p) => p,
            }
        } else {
            match self.resume.last_ts {
                Some(ts) => Position::TimeMs(ts),
                None => since_start(),
            }
        };
        s.start = Some(StartPosition {
            position: Some(position),
        });
        s
    }
}

/// Most topics a restore lists in `Subscribe.resume_after` (the broker's limit).
const MAX_RESUME_AFTER: usize = 1000;

/// What a plain subscription on durable topics was delivered, for [`SubEntry::restore`].
#[derive(Debug, Default)]
struct Resume {
    /// Highest seq delivered per topic, to drop repeats after a resume.
    seen: HashMap<String, u64>,
    /// The epoch of each topic's seqs in `seen` (`Message.epoch`).
    epochs: HashMap<String, u64>,
    /// Broker timestamp of the last delivery, where a resume starts.
    last_ts: Option<i64>,
}

impl Resume {
    /// Whether `m` is new for a subscription (not a repeat from a resume); a durable
    /// consumer's deliveries always are (the broker tracks what it acknowledged).
    fn accept(&mut self, consumer: bool, m: &Message) -> bool {
        if m.seq == 0 || consumer {
            return true;
        }
        if m.epoch != 0 && self.epochs.get(m.topic.as_str()) != Some(&m.epoch) {
            // A topic's first message, or the first of a new log under its name (the
            // topic was deleted and created again): its seqs start again.
            if self.epochs.insert(m.topic.to_string(), m.epoch).is_some() {
                self.seen.remove(m.topic.as_str());
            }
        }
        match self.seen.get_mut(m.topic.as_str()) {
            Some(last) if *last >= m.seq => return false,
            Some(last) => *last = m.seq,
            None => {
                self.seen.insert(m.topic.to_string(), m.seq);
            }
        }
        self.last_ts = Some(m.timestamp_ms);
        true
    }
}

/// [`Shared::route`] with the subscriptions locked.
fn route_in(subs: &mut IdMap<SubEntry>, sub_id: u64, m: Message) -> Routed {
    let Some(entry) = subs.get_mut(&sub_id) else {
        return Routed::Skipped;
    };
    let consumer = entry.is_consumer();
    if !entry.resume.accept(consumer, &m) {
        return Routed::Skipped;
    }
    // Most deliveries find room: no sender clone, no await.
    match entry.tx.try_send(m) {
        Ok(()) => Routed::Queued,
        Err(queue::TrySendError::Full(_)) => Routed::Full,
        Err(queue::TrySendError::Closed(_)) => Routed::Closed,
    }
}

/// What became of a delivery ([`Shared::route`]).
pub(crate) enum Routed {
    /// Queued.
    Queued,
    /// Not wanted: an unknown subscription, or a repeat.
    Skipped,
    /// The subscription's queue is full: the delivery was dropped.
    Full,
    /// The application dropped the subscription.
    Closed,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Shared {
    pending: Mutex<IdMap<oneshot::Sender<Reply>>>,
    pub(crate) outbox: Mutex<Outbox>,
    subs: Mutex<IdMap<SubEntry>>,
    closed: Mutex<Option<String>>,
    last_error: Mutex<Option<String>>,
    /// Messages the broker reported dropping for this client (SLOW_CONSUMER).
    pub(crate) dropped: AtomicU64,
    /// Deliveries received as QUIC datagrams.
    pub(crate) datagrams: AtomicU64,
    pub(crate) state: watch::Sender<ConnectionState>,
    /// Cancelled by `Client::close`, so a supervisor waiting to reconnect stops.
    pub(crate) closing: CancellationToken,
    /// The presence events of the rooms this client joined with events.
    pub(crate) presence: tokio::sync::broadcast::Sender<rtc_proto::v1::PresenceEvent>,
}

/// Presence events kept for a receiver that reads slowly; beyond it the oldest are lost
/// (see `Client::presence_events`).
const PRESENCE_EVENTS: usize = 1024;

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    pub(crate) fn new(outbox: Outbox) -> Self {
        Shared {
            pending: Mutex::new(IdMap::default()),
            outbox: Mutex::new(outbox),
            subs: Mutex::new(IdMap::default()),
            closed: Mutex::new(None),
            last_error: Mutex::new(None),
            dropped: AtomicU64::new(0),
            datagrams: AtomicU64::new(0),
            state: watch::channel(ConnectionState::Connecting).0,
            closing: CancellationToken::new(),
            presence: tokio::sync::broadcast::channel(PRESENCE_EVENTS).0,
        }
    }

    /// `Some(reason)` once the client is closed for good.
    pub(crate) fn closed_reason(&self) -> Option<String> {
        lock(&self.closed).clone()
    }

    /// Records the broker's last connection-level error, used in the next close reason.
    pub(crate) fn set_last_error(&self, msg: String) {
        *lock(&self.last_error) = Some(msg);
    }

    /// Why a connection ended, with the broker's last word if it gave one.
    pub(crate) fn reason(&self, reason: String) -> String {
        match lock(&self.last_error).take() {
            Some(broker) => format!("{reason} ({broker})"),
            None => reason,
        }
    }

    /// Closes for good: every waiting request fails, every subscription ends.
    pub(crate) fn close(&self, reason: String) {
        {
            let mut closed = lock(&self.closed);
            if closed.is_some() {
                return;
            }
            tracing::debug!(%reason, "client closed");
            *closed = Some(reason.clone());
        }
        for (_, tx) in lock(&self.pending).drain() {
            let _ = tx.send(Err(Error::Closed(reason.clone())));
        }
        lock(&self.subs).clear();
        self.state.send_replace(ConnectionState::Closed);
    }

    /// A connection was lost: requests whose outcome is now unknown fail; publishes in
    /// the outbox wait for their resend.
    pub(crate) fn connection_lost(&self, reason: &str) {
        let outbox = lock(&self.outbox);
        let mut pending = lock(&self.pending);
        let lost: Vec<u64> = pending
            .keys()
            .copied()
            .filter(|id| !outbox.contains(*id))
            .collect();
        for id in lost {
            if let Some(tx) = pending.remove(&id) {
                let _ = tx.send(Err(Error::Closed(format!("connection lost: {reason}"))));
            }
        }
    }

    /// Registers a waiting request; fails at once if the client is closed. Returns
    /// whether it is the only request waiting.
    pub(crate) fn register(&self, req_id: u64, tx: oneshot::Sender<Reply>) -> Result<bool, Error> {
        let alone = {
            let mut pending = lock(&self.pending);
            pending.insert(req_id, tx);
            pending.len() == 1
        };
        // `close` sets the reason before draining `pending`, so checking after inserting
        // means a request is either drained by `close` or sees the reason here.
        if let Some(reason) = self.closed_reason() {
            lock(&self.pending).remove(&req_id);
            return Err(Error::Closed(reason));
        }
        Ok(alone)
    }

    pub(crate) fn unregister(&self, req_id: u64) {
        lock(&self.pending).remove(&req_id);
    }

    /// Completes request `req_id` (and forgets it in the outbox if it was a publish).
    pub(crate) fn complete(&self, req_id: u64, reply: Reply) {
        lock(&self.outbox).remove(req_id);
        if let Some(tx) = lock(&self.pending).remove(&req_id) {
            let _ = tx.send(reply);
        }
    }

    /// Registers a subscription's channel; fails if the client is closed.
    pub(crate) fn add_sub(&self, sub_id: u64, entry: SubEntry) -> Result<(), Error> {
        lock(&self.subs).insert(sub_id, entry);
        if let Some(reason) = self.closed_reason() {
            lock(&self.subs).remove(&sub_id);
            return Err(Error::Closed(reason));
        }
        Ok(())
    }

    pub(crate) fn activate_sub(&self, sub_id: u64) {
        if let Some(s) = lock(&self.subs).get_mut(&sub_id) {
            s.active = true;
            s.since = Instant::now();
        }
    }

    pub(crate) fn remove_sub(&self, sub_id: u64) {
        lock(&self.subs).remove(&sub_id);
    }

    /// The broker deleted `topic`, which subscription `sub_id` received: a durable
    /// consumer's subscription ends (its consumer is gone; its stream ends), a plain one
    /// forgets the topic's position, so a resume does not start after an old seq.
    pub(crate) fn topic_deleted(&self, sub_id: u64, topic: &str) {
        let mut subs = lock(&self.subs);
        let Some(entry) = subs.get_mut(&sub_id) else {
            return;
        };
        if entry.is_consumer() {
            subs.remove(&sub_id);
        } else {
            entry.resume.seen.remove(topic);
            entry.resume.epochs.remove(topic);
        }
    }

    /// Hands a delivery to its subscription's channel unless it is a repeat after a
    /// resume or the channel is full, without waiting (for QUIC datagrams, unreliable
    /// anyway).
    pub(crate) fn route(&self, sub_id: u64, m: Message) -> Routed {
        route_in(&mut lock(&self.subs), sub_id, m)
    }

    /// Routes `batch` in order under one lock (a read brings many deliveries), each run
    /// of deliveries to one subscription pushed into its queue under one lock of that
    /// queue. A subscription the application dropped is forgotten. Stops at the first
    /// delivery whose subscription's queue is full and returns it, with the sender to
    /// wait on; the rest stays in `batch`.
    pub(crate) fn route_batch<P: Pending>(
        &self,
        batch: &mut VecDeque<P>,
    ) -> Option<(u64, queue::Sender<Message>, Message)> {
        let mut subs = lock(&self.subs);
        while let Some(sub_id) = batch.front().map(P::sub_id) {
            let Some(entry) = subs.get_mut(&sub_id) else {
                batch.pop_front();
                continue;
            };
            let consumer = entry.is_consumer();
            let SubEntry { tx, resume, .. } = entry;
            let run = tx.try_send_run(|| {
                while batch.front().is_some_and(|p| p.sub_id() == sub_id) {
                    let Some(m) = batch.pop_front()?.into_message() else {
                        continue;
                    };
                    if resume.accept(consumer, &m) {
                        return Some(m);
                    }
                }
                None
            });
            match run {
                Ok(()) => {}
                Err(queue::TrySendError::Full(m)) => return Some((sub_id, tx.clone(), m)),
                Err(queue::TrySendError::Closed(_)) => {
                    subs.remove(&sub_id);
                }
            }
        }
        None
    }

    /// What a new connection must send first: the active subscriptions, then the
    /// unacknowledged publishes, in order.
    pub(crate) fn restore_frames(&self) -> Vec<Frame> {
        let mut frames: Vec<Frame> = lock(&self.subs)
            .values()
            .filter(|s| s.active)
            .map(|s| Frame::from_op(Op::Subscribe(s.restore())))
            .collect();
        frames.extend(
            lock(&self.outbox)
                .pending()
                .into_iter()
                .map(|(req_id, mut p)| {
                    p.req_id = req_id;
                    Frame::from_op(Op::Publish(p))
                }),
        );
        frames
    }
}

/// A delivery waiting in the reader's batch ([`Shared::route_batch`]): a frame not
/// decoded yet (the common case: it is decoded as it goes into its subscription's
/// queue, so the batch moves 40 bytes per message instead of the message), or a message
/// decoded already.
pub(crate) trait Pending {
    /// The subscription it is for.
    fn sub_id(&self) -> u64;
    /// The message; `None` (logged) if the frame does not decode.
    fn into_message(self) -> Option<Message>;
}

impl Pending for rtc_proto::hot::RawDelivery {
    fn sub_id(&self) -> u64 {
        self.sub_id
    }

    #[inline]
    fn into_message(self) -> Option<Message> {
        match self.decode() {
            Ok(d) => Some(Message::from_delivery(d)),
            Err(e) => {
                tracing::warn!(
                    sub_id = self.sub_id,
                    "dropping a delivery that does not decode: {e}"
                );
                None
            }
        }
    }
}

impl Pending for (u64, Message) {
    fn sub_id(&self) -> u64 {
        self.0
    }

    fn into_message(self) -> Option<Message> {
        Some(self.1)
    }
}

#[cfg(test)]
mod restore_tests {
    use super::*;

    fn entry(start: Option<Position>) -> SubEntry {
        let (tx, _rx) = queue::bounded(16);
        SubEntry::new(
            tx,
            v1::Subscribe {
                sub_id: 1,
                pattern: "a.>".into(),
                start: start.map(|p| StartPosition { position: Some(p) }),
                ..Default::default()
            },
        )
    }

    fn delivered(e: &mut SubEntry, topic: &str, seq: u64) {
        let m = Message::from(v1::Message {
            topic: topic.into(),
            seq,
            timestamp_ms: 1_000 + seq as i64,
            ..Default::default()
        });
        assert!(e.resume.accept(false, &m));
    }

    #[test]
    fn a_restore_resumes_each_topic_after_its_seq_and_the_rest_from_the_start() {
        let mut e = entry(Some(Position::First(true)));
        for seq in 1..=3 {
            delivered(&mut e, "a.x", seq);
        }
        let s = e.restore();
        assert_eq!(s.resume_after, [("a.x".to_string(), 3)].into());
        // a.y, not delivered yet (the replay was half done), starts from the first.
        assert_eq!(
            s.start.and_then(|p| p.position),
            Some(Position::First(true))
        );

        // A live subscription: unseen topics from when it was made.
        let mut e = entry(None);
        delivered(&mut e, "a.x", 7);
        let s = e.restore();
        assert_eq!(s.resume_after.get("a.x"), Some(&7));
        assert!(
            matches!(s.start.and_then(|p| p.position), Some(Position::RelativeMs(ms)) if ms < 0)
        );
    }

    #[test]
    fn a_group_member_rejoins_live() {
        let mut e = entry(None);
        e.request.group = "workers".into();
        delivered(&mut e, "a.x", 7);
        let s = e.restore();
        assert_eq!((s.start, s.resume_after.len()), (None, 0));
        assert_eq!(s.group, "workers");
    }

    #[test]
    fn past_the_broker_limit_a_restore_resumes_by_time() {
        let mut e = entry(Some(Position::First(true)));
        for i in 0..=MAX_RESUME_AFTER {
            delivered(&mut e, &format!("a.t{i}"), 1);
        }
        let s = e.restore();
        assert!(s.resume_after.is_empty());
        assert_eq!(
            s.start.and_then(|p| p.position),
            Some(Position::TimeMs(1_001))
        );
    }
}
