//! Durable consumers shared by every node: a Redis Streams consumer group per consumer
//! (`XGROUP` on the topic's stream, named as the consumer), and on each node that has
//! members of it one task ([`Group`]) that is one Redis consumer of that group, named
//! after the node.
//!
//! Redis keeps what the group shares: its position (the last entry handed to any
//! node), and every entry handed out and not yet acknowledged (the pending list), with
//! the node holding it, its idle time and its delivery count. The task keeps what is
//! local: its members, which of them holds which message, and the ack deadlines.
//!
//! Each turn the task fills its members' room (`max_in_flight`): first the messages due
//! for redelivery here (a nack's delay or an ack deadline ended: claimed again with
//! `XCLAIM`, which counts the delivery), then entries other nodes held for longer than
//! `ack_wait` (their node died, or its member went quiet: taken with `XAUTOCLAIM`, every
//! half `ack_wait`), then new entries (`XREADGROUP … >`). An ack is `XACK`. A message
//! whose delivery count passes `max_deliver` is written to the dead-letter topic and
//! acknowledged. New messages wake the task through the topic's watch, which the feed
//! moves (the task listens to the topic like a subscriber).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use futures_util::StreamExt;
use prost::Message as _;
use redis::AsyncCommands;
use rtc_proto::topic::dead_letter_topic;
use rtc_proto::v1::{self, start_position::Position};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::time::{delay_queue, DelayQueue};

use super::scripts::Entry;
use super::{feed, store_error, writer, Inner};
use crate::consumer::{
    deleted_notice, next_in_turn, Command, JoinSpec, Runner, DEFAULT_MAX_DELIVER,
};

mod stream;

use crate::engine::{start_seq, Append, ConsumerRecord, Log, Outcome, StoreError};
use crate::outbound::Outbox;
use crate::refusal::Refusal;
use stream::is_no_group;

/// Entries taken from Redis at once.
const BATCH: usize = 256;
/// How long a member whose outbox was full is skipped.
const FULL_BACKOFF: Duration = Duration::from_millis(20);
/// Commands taken per turn before the task pumps again.
const COMMANDS_PER_TURN: usize = 256;
/// How often a task with members and room looks for stale entries, at most.
const CLAIM_EVERY_MAX: Duration = Duration::from_secs(5);

/// Starts the [`Group`] tasks of a cluster node.
#[derive(Debug)]
pub struct GroupRunner {
    pub(super) inner: Arc<Inner>,
    pub(super) feed: mpsc::UnboundedSender<feed::Cmd>,
    /// The engine itself, for start positions.
    pub(super) log: Arc<dyn Log>,
}

impl Runner for GroupRunner {
    fn run(
        &self,
        topic: &str,
        name: &str,
        record: Option<ConsumerRecord>,
        commands: mpsc::Receiver<Command>,
        cancel: CancellationToken,
    ) -> BoxFuture<'static, ()> {
        let group = Group {
            inner: self.inner.clone(),
            feed: self.feed.clone(),
            log: self.log.clone(),
            topic: topic.to_string(),
            name: name.to_string(),
            start: record.map(|r| r.next_seq),
            created: false,
            members: BTreeMap::new(),
            next_member: 1,
            turn: 0,
            held: HashMap::new(),
            ready: VecDeque::new(),
            timers: DelayQueue::new(),
            max_deliver: DEFAULT_MAX_DELIVER,
            ack_wait: crate::consumer::DEFAULT_ACK_WAIT,
            last_seq: self.inner.catalog.watch(topic),
            claim_at: Instant::now(),
            caught_up: false,
        };
        group.run(commands, cancel).boxed()
    }

    fn exists_elsewhere(&self, topic: &str, name: &str) -> BoxFuture<'static, bool> {
        let inner = self.inner.clone();
        let (key, name) = (inner.keys.log(topic), name.to_string());
        async move {
            let mut conn = inner.conn();
            let groups: redis::RedisResult<redis::streams::StreamInfoGroupsReply> =
                conn.xinfo_groups(key).await;
            groups.is_ok_and(|g| g.groups.iter().any(|g| g.name == name))
        }
        .boxed()
    }

    fn names(&self, topic: Option<&str>) -> BoxFuture<'static, Vec<(String, String)>> {
        let inner = self.inner.clone();
        let topics: Vec<String> = match topic {
            Some(t) => vec![t.to_string()],
            None => (inner.catalog.durable_matching(">").into_iter())
                .map(|(name, _)| name)
                .collect(),
        };
        async move {
            // Each topic's stream's consumer groups, a few at a time; a topic whose
            // stream does not exist yet has none.
            let asks = topics.into_iter().map(|topic| {
                let (inner, key) = (inner.clone(), inner.keys.log(&topic));
                async move {
                    let mut conn = inner.conn();
                    let groups: redis::RedisResult<redis::streams::StreamInfoGroupsReply> =
                        conn.xinfo_groups(key).await;
                    let names = groups.map(|g| g.groups).unwrap_or_default();
                    names.into_iter().map(move |g| (topic.clone(), g.name))
                }
            });
            futures_util::stream::iter(asks)
                .buffer_unordered(LIST_CONCURRENCY)
                .flat_map(futures_util::stream::iter)
                .collect()
                .await
        }
        .boxed()
    }
}

/// Topics asked for their consumer groups at once when consumers are listed.
const LIST_CONCURRENCY: usize = 32;

#[derive(Debug)]
struct Member {
    sub_id: u64,
    outbox: Arc<Outbox>,
    explicit_ack: bool,
    max_in_flight: usize,
    in_flight: usize,
    blocked_until: Option<Instant>,
}

impl Member {
    fn has_room(&self, now: Instant) -> bool {
        self.in_flight < self.max_in_flight && self.blocked_until.is_none_or(|t| t <= now)
    }
}

/// A message this node holds: delivered to `member` (or waiting to be, `None`).
#[derive(Debug)]
struct Held {
    member: Option<u64>,
    count: u32,
    timer: Option<delay_queue::Key>,
}

/// One consumer on one node; see the module docs.
struct Group {
    inner: Arc<Inner>,
    feed: mpsc::UnboundedSender<feed::Cmd>,
    log: Arc<dyn Log>,
    topic: String,
    name: String,
    /// The first seq of a consumer the admin API created (else the first member's start).
    start: Option<u64>,
    created: bool,
    members: BTreeMap<u64, Member>,
    next_member: u64,
    turn: u64,
    held: HashMap<u64, Held>,
    /// Held seqs to deliver again here.
    ready: VecDeque<u64>,
    timers: DelayQueue<u64>,
    max_deliver: u32,
    ack_wait: Duration,
    last_seq: watch::Receiver<u64>,
    /// When to look for stale entries next.
    claim_at: Instant,
    /// `XREADGROUP` found nothing new since the last wake-up.
    caught_up: bool,
}

impl Group {
    fn log_key(&self) -> String {
        self.inner.keys.log(&self.topic)
    }

    fn counters_key(&self) -> String {
        self.inner.keys.consumer(&self.topic, &self.name)
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Command>, cancel: CancellationToken) {
        let interest = self.inner.keys.interest(&self.topic);
        let (done, _) = oneshot::channel();
        let _ = self.feed.send(feed::Cmd::Listen(interest.clone(), done));
        loop {
            if let Err(e) = self.pump().await {
                if is_no_group(&e) {
                    self.stop_members();
                    break;
                }
                tracing::warn!(topic = %self.topic, consumer = %self.name, "cluster consumer: {e}");
            }
            let unblock = self.members.values().filter_map(|m| m.blocked_until).min();
            let claim = (!self.members.is_empty()).then_some(self.claim_at);
            tokio::select! {
                _ = cancel.cancelled() => break,
                cmd = rx.recv() => match cmd {
                    Some(cmd) => {
                        if self.commands(cmd, &mut rx).await.is_break() {
                            break;
                        }
                    }
                    None => break,
                },
                Some(expired) = std::future::poll_fn(|cx| self.timers.poll_expired(cx)), if !self.timers.is_empty() => {
                    self.expired(expired.into_inner());
                }
                changed = self.last_seq.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    self.caught_up = false;
                }
                _ = sleep_until(unblock), if unblock.is_some() => {}
                _ = sleep_until(claim), if claim.is_some() => {}
            }
            if self.members.is_empty() && self.held.is_empty() {
                // Nobody here reads it: the group lives on in Redis for the others.
                break;
            }
        }
        let _ = self.feed.send(feed::Cmd::Unlisten(interest));
    }

    /// The consumer (or its topic) was deleted: each member is told.
    fn stop_members(&mut self) {
        for m in self.members.values() {
            let notice = deleted_notice(m.sub_id, &self.topic, &self.name);
            let _ = m.outbox.push_frame_now(notice);
        }
        self.members.clear();
        self.held.clear();
    }

    /// Handles `first` and whatever else is queued (up to [`COMMANDS_PER_TURN`]),
    /// acknowledging the acks among them with one `XACK`: a member acking each message
    /// costs one round trip per turn, not per message. Breaks on `Stop`.
    async fn commands(
        &mut self,
        first: Command,
        rx: &mut mpsc::Receiver<Command>,
    ) -> std::ops::ControlFlow<()> {
        let mut acks: Vec<u64> = Vec::new();
        let mut confirms = Vec::new();
        let mut next = Some(first);
        for _ in 0..COMMANDS_PER_TURN {
            let Some(cmd) = next.take().or_else(|| rx.try_recv().ok()) else {
                break;
            };
            match cmd {
                Command::Ack(seqs, confirm) => {
                    acks.extend(seqs);
                    confirms.extend(confirm);
                }
                Command::Stop(done) => {
                    self.stop_members();
                    let _ = done.send(());
                    return std::ops::ControlFlow::Break(());
                }
                other => {
                    // In order: the acks before it first.
                    self.flush_acks(&mut acks, &mut confirms).await;
                    self.handle(other).await;
                }
            }
        }
        self.flush_acks(&mut acks, &mut confirms).await;
        std::ops::ControlFlow::Continue(())
    }

    async fn flush_acks(&mut self, acks: &mut Vec<u64>, confirms: &mut Vec<oneshot::Sender<()>>) {
        if acks.is_empty() {
            confirms.clear();
            return;
        }
        let seqs = std::mem::take(acks);
        match self.ack(&seqs).await {
            Ok(()) => confirms.drain(..).for_each(|done| {
                let _ = done.send(());
            }),
            Err(e) => {
                // A confirm not answered tells its member the ack was not taken.
                confirms.clear();
                tracing::warn!(topic = %self.topic, consumer = %self.name, "cluster consumer: ack: {e}");
            }
        }
    }

    async fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Join(spec, reply) => {
                let joined = self.join(*spec).await;
                let _ = reply.send(joined);
            }
            Command::Leave(member) => self.leave(member),
            Command::Ack(seqs, confirm) => {
                let acked = self.ack(&seqs).await;
                if let Err(e) = acked {
                    tracing::warn!(topic = %self.topic, consumer = %self.name, "cluster consumer: ack: {e}");
                } else if let Some(done) = confirm {
                    let _ = done.send(());
                }
            }
            Command::Nack(seqs, delay, done) => {
                for seq in seqs {
                    self.give_back(seq, delay);
                }
                let _ = done.send(());
            }
            Command::InProgress(member, seqs, done) => {
                if let Err(e) = self.extend(member, &seqs).await {
                    tracing::warn!(topic = %self.topic, consumer = %self.name, "cluster consumer: in progress: {e}");
                }
                let _ = done.send(());
            }
            Command::Info(reply) => match self.info().await {
                Ok(info) => {
                    let _ = reply.send(info);
                }
                Err(e) => tracing::warn!(consumer = %self.name, "cluster consumer: info: {e}"),
            },
            Command::Stop(done) => {
                self.stop_members();
                let _ = done.send(());
            }
        }
    }

    async fn join(&mut self, spec: JoinSpec) -> Result<u64, Refusal> {
        if !self.created {
            self.create(spec.start).await?;
        }
        self.max_deliver = spec.max_deliver.max(1);
        self.ack_wait = spec.ack_wait;
        let id = self.next_member;
        self.next_member += 1;
        let _ = spec.outbox.push_frame_now(spec.first_frame);
        self.members.insert(
            id,
            Member {
                sub_id: spec.sub_id,
                outbox: spec.outbox,
                explicit_ack: spec.explicit_ack,
                max_in_flight: spec.max_in_flight.max(1),
                in_flight: 0,
                blocked_until: None,
            },
        );
        self.caught_up = false;
        self.claim_at = Instant::now();
        Ok(id)
    }

    /// Creates the consumer group unless it exists, at the first member's start.
    async fn create(&mut self, start: Option<Position>) -> Result<(), Refusal> {
        let next = match self.start {
            Some(next) => next,
            None => {
                let Some(view) = self.log.topic_now(&self.topic).await else {
                    return Err(Refusal::NotFound(format!("no topic {:?}", self.topic)));
                };
                let start = start.unwrap_or(Position::First(true));
                start_seq(&*self.log, &self.topic, &view, &start).await?
            }
        };
        let id = format!("{}-0", next.max(1) - 1);
        let mut conn = self.inner.conn();
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(self.log_key())
            .arg(&self.name)
            .arg(id)
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match created {
            Ok(()) => {}
            Err(e) if e.code() == Some("BUSYGROUP") => {}
            Err(e) => return Err(store_error(e).into()),
        }
        self.created = true;
        Ok(())
    }

    /// A member is gone: what it held goes to the other members here, or stays pending
    /// in Redis for any node to claim after `ack_wait`.
    fn leave(&mut self, member: u64) {
        self.members.remove(&member);
        let keep = !self.members.is_empty();
        let mut back = Vec::new();
        self.held.retain(|seq, h| {
            if h.member != Some(member) {
                return true;
            }
            if let Some(key) = h.timer.take() {
                self.timers.remove(&key);
            }
            h.member = None;
            back.push(*seq);
            keep
        });
        if keep {
            self.ready.extend(back);
        }
    }

    fn release(&mut self, seq: u64) -> Option<Held> {
        let mut h = self.held.remove(&seq)?;
        if let Some(key) = h.timer.take() {
            self.timers.remove(&key);
        }
        if let Some(m) = h.member.and_then(|id| self.members.get_mut(&id)) {
            m.in_flight = m.in_flight.saturating_sub(1);
        }
        Some(h)
    }

    async fn ack(&mut self, seqs: &[u64]) -> Result<(), StoreError> {
        for &seq in seqs {
            self.release(seq);
        }
        self.ready.retain(|seq| !seqs.contains(seq));
        self.xack(seqs).await
    }

    fn give_back(&mut self, seq: u64, delay: Duration) {
        let Some(mut h) = self.release(seq) else {
            return;
        };
        h.member = None;
        if delay.is_zero() {
            self.ready.push_back(seq);
        } else {
            h.timer = Some(self.timers.insert(seq, delay));
        }
        self.held.insert(seq, h);
    }

    /// An ack deadline or a nack's delay ended: the message is due here again.
    fn expired(&mut self, seq: u64) {
        if let Some(h) = self.held.get_mut(&seq) {
            h.timer = None;
            if let Some(m) = h.member.take().and_then(|id| self.members.get_mut(&id)) {
                m.in_flight = m.in_flight.saturating_sub(1);
            }
            self.ready.push_back(seq);
        }
    }

    fn room(&self) -> usize {
        let now = Instant::now();
        self.members
            .values()
            .filter(|m| m.has_room(now))
            .map(|m| m.max_in_flight - m.in_flight)
            .sum::<usize>()
            .min(BATCH)
    }

    /// Fills the members' room: redeliveries, stale entries of other nodes, new ones.
    async fn pump(&mut self) -> Result<(), StoreError> {
        if !self.created || self.members.is_empty() {
            return Ok(());
        }
        while self.room() > 0 && !self.ready.is_empty() {
            let n = self.room().min(self.ready.len());
            let seqs: Vec<u64> = self.ready.drain(..n).collect();
            let entries = self.claim(&seqs, 0).await?;
            let found: Vec<u64> = entries.iter().map(|e| e.0).collect();
            let gone: Vec<u64> = seqs
                .iter()
                .copied()
                .filter(|s| !found.contains(s))
                .collect();
            for seq in &gone {
                // Removed by retention, or taken by another node meanwhile.
                self.held.remove(seq);
            }
            for e in entries {
                let count = self.held.get(&e.0).map_or(1, |h| h.count + 1);
                self.offer(e, count).await?;
            }
        }
        if self.room() > 0 && Instant::now() >= self.claim_at {
            self.claim_stale().await?;
            let every = (self.ack_wait / 2).clamp(Duration::from_millis(50), CLAIM_EVERY_MAX);
            self.claim_at = Instant::now() + every;
        }
        while self.room() > 0 && !self.caught_up {
            let entries = self.read_new(self.room()).await?;
            if entries.is_empty() {
                self.caught_up = true;
            }
            for e in entries {
                self.offer(e, 1).await?;
            }
        }
        Ok(())
    }

    /// Delivers entry `e` (its `count`th delivery) to a member, or dead-letters it.
    async fn offer(&mut self, e: Entry, count: u32) -> Result<(), StoreError> {
        let (seq, ts, body) = e;
        if count > self.max_deliver {
            return self.dead_letter(seq, &body, count).await;
        }
        let epoch = self.inner.catalog.get(&self.topic).map_or(0, |v| v.epoch);
        // The first delivery carries no count, as on one broker.
        let shown = if count > 1 { count } else { 0 };
        let message = super::message(seq, ts, epoch, shown, &body);
        let Some(id) = self.pick_member() else {
            self.hold(seq, None, count, None);
            self.ready.push_back(seq);
            return Ok(());
        };
        let m = self.members.get_mut(&id).expect("picked");
        if !m.outbox.try_push_deliver(m.sub_id, &message) {
            m.blocked_until = Some(Instant::now() + FULL_BACKOFF);
            self.hold(seq, None, count, None);
            self.ready.push_back(seq);
            return Ok(());
        }
        let explicit_ack = m.explicit_ack;
        if explicit_ack {
            m.in_flight += 1;
        }
        if count > 1 {
            self.count("redelivered").await?;
        }
        if !explicit_ack {
            self.held.remove(&seq);
            return self.xack(&[seq]).await;
        }
        let timer = self.timers.insert(seq, self.ack_wait);
        self.hold(seq, Some(id), count, Some(timer));
        Ok(())
    }

    fn hold(&mut self, seq: u64, member: Option<u64>, count: u32, timer: Option<delay_queue::Key>) {
        if let Some(old) = self.held.insert(
            seq,
            Held {
                member,
                count,
                timer,
            },
        ) {
            if let Some(key) = old.timer {
                self.timers.remove(&key);
            }
        }
    }

    fn pick_member(&mut self) -> Option<u64> {
        let now = Instant::now();
        let with_room = self.members.iter().filter(|(_, m)| m.has_room(now));
        let id = next_in_turn(with_room.map(|(id, _)| *id), self.turn)?;
        self.turn = id;
        Some(id)
    }

    /// Writes message `seq` to the dead-letter topic, then acknowledges it.
    async fn dead_letter(&mut self, seq: u64, body: &[u8], count: u32) -> Result<(), StoreError> {
        self.held.remove(&seq);
        let original = v1::Message::decode(body).unwrap_or_default();
        let mut headers = original.headers;
        headers.insert("rtc-dlq-reason".into(), "max_deliver".into());
        headers.insert("rtc-dlq-topic".into(), self.topic.clone());
        headers.insert("rtc-dlq-consumer".into(), self.name.clone());
        headers.insert("rtc-dlq-seq".into(), seq.to_string());
        headers.insert("rtc-dlq-deliveries".into(), (count - 1).to_string());
        headers.insert("rtc-dlq-msg-id".into(), original.msg_id);
        let append = Append {
            topic: dead_letter_topic(&self.topic, &self.name),
            payload: original.payload,
            headers,
            // The same message dead-lettered twice (two nodes racing) is stored once.
            msg_id: format!(
                "dlq:{}:{seq}",
                self.inner.catalog.get(&self.topic).map_or(0, |v| v.epoch)
            ),
            origin: (),
        };
        let pass = writer::append_all(&self.inner, vec![append]).await;
        match pass.into_iter().next().map(|c| c.outcome) {
            Some(Outcome::Accepted { .. }) => {
                self.count("dead_lettered").await?;
                self.xack(&[seq]).await
            }
            Some(Outcome::Duplicate { .. }) => self.xack(&[seq]).await,
            other => Err(StoreError::Unavailable(format!(
                "dead letter not stored: {other:?}"
            ))),
        }
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
