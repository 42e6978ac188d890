//! One durable consumer's state machine and task.
//!
//! State: `next` (the next seq to deliver for the first time), `pending` (delivered and
//! not yet settled, with delivery counts, the member holding each and its timer), `ready`
//! (pending seqs waiting to be redelivered), and `floor` (every seq at or below it is
//! settled; it only moves forward). Each turn of the loop first *pumps* — gives ready
//! redeliveries, then new messages, to members with room — then waits for commands
//! (taking all that are queued, so a stream of acks costs one pump), a timer or new
//! messages in the topic. New messages come from `read_ahead`, refilled from the log a
//! batch at a time, so freeing one slot never costs a log read. Changed state is stored
//! within `SAVE_EVERY` (50 ms), and at once for a confirmed ack.
//!
//! Timers (one `DelayQueue` for all pending messages): an ack deadline (`ack_wait` after
//! delivery; `InProgress` restarts it) makes the message ready again; a nack delay makes
//! it ready when it ends. A message whose delivery count has reached `max_deliver` when
//! it would be made ready again is written to the dead-letter topic instead (with
//! headers saying why) and settled once that write is stored.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use rtc_proto::topic::dead_letter_topic;
use rtc_proto::v1::{self, start_position::Position};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::time::{delay_queue, DelayQueue};

use super::{Command, JoinSpec, DEFAULT_MAX_DELIVER};
use crate::engine::{start_seq, ConsumerRecord, Log, LogEntry, StoreError, TopicView};
use crate::outbound::Outbox;
use crate::refusal::Refusal;

/// Messages read from the log at once (with at most [`READ_BYTES`] of them).
const READ_BATCH: usize = 256;
/// Bytes read from the log at once (at least one message).
const READ_BYTES: usize = 4 * 1024 * 1024;
/// How long a member whose outbox was full is skipped.
const FULL_BACKOFF: Duration = Duration::from_millis(20);
/// Retry delay after a failed dead-letter write.
const DEAD_LETTER_RETRY: Duration = Duration::from_secs(1);
/// Changed state is stored at most this long after the change (a confirmed ack, a new
/// member's start position and shutdown store it at once). Saving per ack cost a store
/// write of the whole pending set per message.
const SAVE_EVERY: Duration = Duration::from_millis(50);
/// Commands handled per turn before the consumer pumps again.
const COMMANDS_PER_TURN: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    /// The member did not ack in time.
    Deadline,
    /// A nack delay ended.
    Ready,
    /// Try the dead-letter write again.
    DeadLetter,
}

#[derive(Debug)]
struct Pending {
    /// Deliveries made so far.
    count: u32,
    /// The member holding it, if delivered and not yet given back.
    member: Option<u64>,
    timer: Option<delay_queue::Key>,
}

#[derive(Debug)]
struct Member {
    sub_id: u64,
    outbox: Arc<Outbox>,
    explicit_ack: bool,
    ack_wait: Duration,
    max_in_flight: usize,
    in_flight: usize,
    /// Skipped until then (its outbox was full).
    blocked_until: Option<Instant>,
}

impl Member {
    fn has_room(&self, now: Instant) -> bool {
        self.in_flight < self.max_in_flight && self.blocked_until.is_none_or(|t| t <= now)
    }
}

pub(super) struct Actor {
    topic: String,
    name: String,
    log: Arc<dyn Log>,
    /// Position known (a stored consumer, or one that has had its first member).
    started: bool,
    floor: u64,
    next: u64,
    redelivered: u64,
    dead_lettered: u64,
    max_deliver: u32,
    pending: BTreeMap<u64, Pending>,
    ready: BTreeSet<u64>,
    members: BTreeMap<u64, Member>,
    next_member: u64,
    /// Round-robin position among members.
    turn: u64,
    timers: DelayQueue<(u64, Timer)>,
    last_seq: watch::Receiver<u64>,
    /// Messages from `next` on, read from the log ahead of room to deliver them: an ack
    /// that frees one slot is answered from here, not with a log read.
    read_ahead: VecDeque<LogEntry>,
    dirty: bool,
    /// When changed state is due to be stored.
    save_due: Option<Instant>,
}

impl Actor {
    pub(super) fn new(
        topic: &str,
        name: &str,
        record: Option<ConsumerRecord>,
        log: Arc<dyn Log>,
    ) -> Self {
        let last_seq = log.watch(topic);
        let mut actor = Actor {
            topic: topic.to_string(),
            name: name.to_string(),
            log,
            started: record.is_some(),
            floor: 0,
            next: 1,
            redelivered: 0,
            dead_lettered: 0,
            max_deliver: DEFAULT_MAX_DELIVER,
            pending: BTreeMap::new(),
            ready: BTreeSet::new(),
            members: BTreeMap::new(),
            next_member: 1,
            turn: 0,
            timers: DelayQueue::new(),
            last_seq,
            read_ahead: VecDeque::new(),
            dirty: false,
            save_due: None,
        };
        if let Some(r) = record {
            actor.floor = r.ack_floor;
            actor.next = r.next_seq.max(1);
            actor.redelivered = r.redelivered;
            actor.dead_lettered = r.dead_lettered;
            for (seq, count) in r.pending {
                actor.pending.insert(
                    seq,
                    Pending {
                        count,
                        member: None,
                        timer: None,
                    },
                );
                actor.ready.insert(seq);
            }
        }
        actor
    }

    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Command>, cancel: CancellationToken) {
        loop {
            if let Err(e) = self.pump().await {
                tracing::error!(topic = %self.topic, consumer = %self.name, error = %e, "consumer read failed");
            }
            self.save_soon();
            let unblock = self.members.values().filter_map(|m| m.blocked_until).min();
            tokio::select! {
                _ = cancel.cancelled() => break,
                cmd = rx.recv() => match cmd {
                    Some(Command::Stop(done)) => return self.stop(done),
                    Some(cmd) => {
                        self.handle(cmd).await;
                        // Take what else is queued (a stream of acks) before pumping.
                        for _ in 1..COMMANDS_PER_TURN {
                            match rx.try_recv() {
                                Ok(Command::Stop(done)) => return self.stop(done),
                                Ok(cmd) => self.handle(cmd).await,
                                Err(_) => break,
                            }
                        }
                    }
                    None => break,
                },
                _ = sleep_until(self.save_due), if self.save_due.is_some() => self.save(),
                Some(expired) = std::future::poll_fn(|cx| self.timers.poll_expired(cx)), if !self.timers.is_empty() => {
                    let (seq, timer) = expired.into_inner();
                    self.expired(seq, timer).await;
                }
                changed = self.last_seq.changed() => {
                    if changed.is_err() {
                        // The storage side is gone: the broker is stopping.
                        break;
                    }
                }
                _ = sleep_until(unblock), if unblock.is_some() => {}
            }
        }
        self.save();
    }

    /// The consumer (or its topic) is deleted: each member is told, and nothing more is
    /// stored — not even the state changed since the last save, which the deletion
    /// removes.
    fn stop(self, done: tokio::sync::oneshot::Sender<()>) {
        for m in self.members.values() {
            let notice = super::deleted_notice(m.sub_id, &self.topic, &self.name);
            let _ = m.outbox.push_frame_now(notice);
        }
        tracing::info!(topic = %self.topic, consumer = %self.name, members = self.members.len(), "consumer stopped for deletion");
        let _ = done.send(());
    }

    async fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Stop(done) => {
                debug_assert!(false, "run handles Stop");
                let _ = done.send(());
            }
            Command::Join(spec, reply) => {
                let result = self.join(*spec).await;
                let _ = reply.send(result);
            }
            Command::Leave(member) => self.leave(member),
            Command::Ack(seqs, confirm) => {
                for seq in seqs {
                    self.settle(seq);
                }
                self.advance_floor();
                if let Some(done) = confirm {
                    // The storage thread answers once this state is stored; the actor
                    // goes on meanwhile, so confirmed acks share storage batches.
                    self.dirty = true;
                    self.save_with(Some(done));
                }
            }
            Command::Nack(seqs, delay, done) => {
                for seq in seqs {
                    if self.take_back(seq) {
                        self.give_back(seq, delay).await;
                    }
                }
                let _ = done.send(());
            }
            Command::InProgress(member, seqs, done) => {
                for seq in seqs {
                    self.extend(member, seq);
                }
                let _ = done.send(());
            }
            Command::Info(reply) => {
                let _ = reply.send(self.info());
            }
        }
    }

    async fn join(&mut self, spec: JoinSpec) -> Result<u64, Refusal> {
        if !self.started {
            let view = self.log.topic(&self.topic).unwrap_or(TopicView {
                settings: Default::default(),
                stats: Default::default(),
                epoch: 0,
            });
            let start = spec.start.unwrap_or(Position::First(true));
            let next = start_seq(&*self.log, &self.topic, &view, &start).await?;
            self.next = next.max(1);
            self.floor = self.next - 1;
            self.started = true;
            self.dirty = true;
            // Where a new consumer starts is stored at once, not within SAVE_EVERY.
            self.save();
        }
        self.max_deliver = spec.max_deliver.max(1);
        let id = self.next_member;
        self.next_member += 1;
        // The SubAck goes out before any delivery for this subscription.
        let _ = spec.outbox.push_frame_now(spec.first_frame);
        self.members.insert(
            id,
            Member {
                sub_id: spec.sub_id,
                outbox: spec.outbox,
                explicit_ack: spec.explicit_ack,
                ack_wait: spec.ack_wait,
                max_in_flight: spec.max_in_flight.max(1),
                in_flight: 0,
                blocked_until: None,
            },
        );
        Ok(id)
    }

    /// A member is gone: what it held goes back to the others at once.
    fn leave(&mut self, member: u64) {
        self.members.remove(&member);
        let held: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.member == Some(member))
            .map(|(seq, _)| *seq)
            .collect();
        for seq in held {
            if let Some(p) = self.pending.get_mut(&seq) {
                p.member = None;
                if let Some(k) = p.timer.take() {
                    self.timers.remove(&k);
                }
                self.ready.insert(seq);
            }
        }
    }

    /// Settles `seq` (acknowledged, or dead-lettered).
    fn settle(&mut self, seq: u64) {
        let Some(p) = self.pending.remove(&seq) else {
            return;
        };
        if let Some(k) = p.timer {
            self.timers.remove(&k);
        }
        if let Some(m) = p.member.and_then(|m| self.members.get_mut(&m)) {
            m.in_flight = m.in_flight.saturating_sub(1);
        }
        self.ready.remove(&seq);
        self.dirty = true;
    }

    fn advance_floor(&mut self) {
        let settled_up_to = match self.pending.first_key_value() {
            Some((&seq, _)) => seq - 1,
            None => self.next - 1,
        };
        if settled_up_to > self.floor {
            self.floor = settled_up_to;
            self.dirty = true;
        }
    }

    /// Takes `seq` back from whoever holds it (nack). Returns whether it was held.
    fn take_back(&mut self, seq: u64) -> bool {
        let Some(p) = self.pending.get_mut(&seq) else {
            return false;
        };
        let Some(holder) = p.member.take() else {
            return false;
        };
        if let Some(k) = p.timer.take() {
            self.timers.remove(&k);
        }
        if let Some(m) = self.members.get_mut(&holder) {
            m.in_flight = m.in_flight.saturating_sub(1);
        }
        true
    }

    /// A message taken back: ready again (after `delay`), or dead-lettered if it has had
    /// its deliveries.
    async fn give_back(&mut self, seq: u64, delay: Duration) {
        let Some(p) = self.pending.get_mut(&seq) else {
            return;
        };
        if p.count >= self.max_deliver {
            self.dead_letter(seq).await;
        } else if delay.is_zero() {
            self.ready.insert(seq);
        } else {
            p.timer = Some(self.timers.insert((seq, Timer::Ready), delay));
        }
    }

    fn extend(&mut self, member: u64, seq: u64) {
        let Some(p) = self.pending.get_mut(&seq) else {
            return;
        };
        if p.member != Some(member) {
            return;
        }
        let ack_wait = self.members.get(&member).map(|m| m.ack_wait);
        if let (Some(k), Some(wait)) = (&p.timer, ack_wait) {
            self.timers.reset(k, wait);
        }
    }

    async fn expired(&mut self, seq: u64, timer: Timer) {
        if let Some(p) = self.pending.get_mut(&seq) {
            p.timer = None;
        }
        match timer {
            Timer::Deadline => {
                let holder = self.pending.get_mut(&seq).and_then(|p| p.member.take());
                if let Some(m) = holder.and_then(|h| self.members.get_mut(&h)) {
                    m.in_flight = m.in_flight.saturating_sub(1);
                }
                self.give_back(seq, Duration::ZERO).await;
            }
            Timer::Ready => {
                if self.pending.contains_key(&seq) {
                    self.ready.insert(seq);
                }
            }
            Timer::DeadLetter => self.dead_letter(seq).await,
        }
    }

    /// Writes message `seq` to the dead-letter topic and settles it once stored.
    async fn dead_letter(&mut self, seq: u64) {
        self.ready.remove(&seq);
        let entry = match self.read_one(seq).await {
            Ok(Some(e)) => e,
            Ok(None) => {
                // Removed by retention meanwhile: nothing left to dead-letter.
                self.settle(seq);
                self.advance_floor();
                return;
            }
            Err(e) => {
                tracing::error!(consumer = %self.name, seq, error = %e, "cannot read a message to dead-letter");
                self.retry_dead_letter(seq);
                return;
            }
        };
        let Ok(original) = v1::Message::decode(entry.message.clone()) else {
            tracing::error!(consumer = %self.name, seq, "stored message undecodable; settling it");
            self.settle(seq);
            self.advance_floor();
            return;
        };
        let count = self.pending.get(&seq).map_or(0, |p| p.count);
        let mut headers = original.headers;
        headers.insert("rtc-dlq-reason".into(), "max_deliver".into());
        headers.insert("rtc-dlq-topic".into(), self.topic.clone());
        headers.insert("rtc-dlq-consumer".into(), self.name.clone());
        headers.insert("rtc-dlq-seq".into(), seq.to_string());
        headers.insert("rtc-dlq-deliveries".into(), count.to_string());
        headers.insert("rtc-dlq-msg-id".into(), original.msg_id);
        let dlq = dead_letter_topic(&self.topic, &self.name);
        match self
            .log
            .append_internal(dlq, original.payload, headers)
            .await
        {
            Ok(_) => {
                self.dead_lettered += 1;
                self.settle(seq);
                self.advance_floor();
            }
            Err(refusal) => {
                tracing::error!(consumer = %self.name, seq, error = %refusal, "dead-letter write failed; will retry");
                self.retry_dead_letter(seq);
            }
        }
    }

    fn retry_dead_letter(&mut self, seq: u64) {
        if let Some(p) = self.pending.get_mut(&seq) {
            p.timer = Some(
                self.timers
                    .insert((seq, Timer::DeadLetter), DEAD_LETTER_RETRY),
            );
        }
    }

    /// The member whose turn it is among those with room.
    fn pick_member(&mut self) -> Option<u64> {
        let now = Instant::now();
        let with_room = self.members.iter().filter(|(_, m)| m.has_room(now));
        let id = super::next_in_turn(with_room.map(|(id, _)| *id), self.turn)?;
        self.turn = id;
        Some(id)
    }

    /// Gives members what they have room for: redeliveries first, then new messages.
    async fn pump(&mut self) -> Result<(), StoreError> {
        if !self.started {
            return Ok(());
        }
        loop {
            let now = Instant::now();
            if !self.members.values().any(|m| m.has_room(now)) {
                return Ok(());
            }
            if let Some(seq) = self.ready.pop_first() {
                match self.read_one(seq).await? {
                    Some(e) => self.deliver(e),
                    None => {
                        self.settle(seq);
                        self.advance_floor();
                    }
                }
                continue;
            }
            if self.read_ahead.is_empty() {
                let last = *self.last_seq.borrow_and_update();
                if self.next > last {
                    return Ok(());
                }
                let entries = self.read(self.next, READ_BATCH).await?;
                if entries.is_empty() {
                    // Everything from `next` on was removed by retention.
                    self.next = last + 1;
                    self.advance_floor();
                    self.dirty = true;
                    return Ok(());
                }
                self.read_ahead.extend(entries);
            }
            let Some(e) = self.read_ahead.pop_front() else {
                return Ok(());
            };
            self.next = e.seq + 1;
            self.pending.insert(
                e.seq,
                Pending {
                    count: 0,
                    member: None,
                    timer: None,
                },
            );
            self.deliver(e);
            self.advance_floor();
            self.dirty = true;
        }
    }

    /// Delivers a pending message to the next member with room, or leaves it ready.
    fn deliver(&mut self, e: LogEntry) {
        let Some(id) = self.pick_member() else {
            self.ready.insert(e.seq);
            return;
        };
        let Some(p) = self.pending.get_mut(&e.seq) else {
            return;
        };
        let count = p.count + 1;
        let message = if count == 1 {
            e.message
        } else {
            with_delivery_count(&e.message, count)
        };
        let m = self.members.get_mut(&id).expect("picked member exists");
        if !m.outbox.try_push_deliver(m.sub_id, &message) {
            m.blocked_until = Some(Instant::now() + FULL_BACKOFF);
            self.ready.insert(e.seq);
            return;
        }
        p.count = count;
        if count > 1 {
            self.redelivered += 1;
        }
        self.dirty = true;
        if !m.explicit_ack {
            self.settle(e.seq);
            return;
        }
        m.in_flight += 1;
        p.member = Some(id);
        p.timer = Some(self.timers.insert((e.seq, Timer::Deadline), m.ack_wait));
    }

    async fn read(&self, from: u64, max: usize) -> Result<Vec<LogEntry>, StoreError> {
        self.log
            .read(&self.topic, from, max.max(1), READ_BYTES)
            .await
    }

    async fn read_one(&self, seq: u64) -> Result<Option<LogEntry>, StoreError> {
        Ok(self.read(seq, 1).await?.into_iter().find(|e| e.seq == seq))
    }

    fn info(&self) -> v1::ConsumerInfo {
        v1::ConsumerInfo {
            req_id: 0,
            topic: self.topic.clone(),
            name: self.name.clone(),
            ack_floor: self.floor,
            next_seq: self.next,
            pending: self.pending.len() as u64,
            redelivered: self.redelivered,
            dead_lettered: self.dead_lettered,
            members: self.members.len() as u32,
            dead_letter_topic: dead_letter_topic(&self.topic, &self.name),
        }
    }

    /// Queues the state for the storage thread if it changed.
    fn save(&mut self) {
        self.save_with(None);
    }

    /// Stores changed state within [`SAVE_EVERY`].
    fn save_soon(&mut self) {
        if self.dirty && self.started && self.save_due.is_none() {
            self.save_due = Some(Instant::now() + SAVE_EVERY);
        }
    }

    fn save_with(&mut self, stored: Option<tokio::sync::oneshot::Sender<()>>) {
        if !self.dirty || !self.started {
            return;
        }
        self.dirty = false;
        self.save_due = None;
        let record = ConsumerRecord {
            ack_floor: self.floor,
            next_seq: self.next,
            redelivered: self.redelivered,
            dead_lettered: self.dead_lettered,
            pending: self
                .pending
                .iter()
                .map(|(seq, p)| (*seq, p.count))
                .collect(),
        };
        // Fails only once the engine has stopped: the broker is stopping.
        let _ = self
            .log
            .save_consumer(&self.topic, &self.name, record, stored);
    }
}

/// The stored message re-encoded with another delivery count (redeliveries only).
fn with_delivery_count(message: &Bytes, count: u32) -> Bytes {
    match v1::Message::decode(message.clone()) {
        Ok(mut m) => {
            m.delivery_count = count;
            rtc_proto::codec::encode_message(&m)
        }
        Err(_) => message.clone(),
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
