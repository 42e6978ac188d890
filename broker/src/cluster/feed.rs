//! The feed: one task per node that holds the node's Redis pub/sub connection, asks
//! Redis for what this node's subscribers want, and turns what arrives into fan-out
//! here.
//!
//! - **Interest.** Sessions' `listen` and `unlisten` (`Bus`) arrive as [`Cmd`]s. The
//!   feed counts subscriptions per channel or glob (`keys::Interest`), subscribes in
//!   Redis on the first and unsubscribes after the last, and answers a `listen` once
//!   Redis confirmed the subscription (at once while Redis is unreachable: the node
//!   subscribes when it is back). So a node receives only the topics its clients want.
//! - **Durable messages** come from the append script, in seq order per topic. The
//!   feed keeps, per topic, the next seq it owes this node and reports each message to
//!   the commit sink (delivery fans it out) exactly once and in order: a seq already
//!   seen is skipped, and a seq past the next one means messages were missed (the
//!   connection dropped, or the subscription is new): the feed reads the gap from the
//!   topic's stream on another task, holds what arrives meanwhile (bounded), and
//!   delivers the gap first. After a reconnect every topic it follows is caught up the
//!   same way.
//! - **Ephemeral messages** from other nodes go straight to the router; this node's own
//!   are skipped (they were fanned out here when published).
//!
//! The connection is classic or sharded pub/sub (`super::subscriber`). The task never
//! waits on anything but Redis's own subscribe confirmations: redis-rs reads the
//! connection on its own task into an unbounded queue, so Redis never sees a slow
//! reader (it disconnects subscribers whose output buffer grows too large).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::keys::Interest;
use super::scripts::Entry;
use super::subscriber::{Event, Subscriber};
use super::wire::{parse, Live};
use super::Inner;
use crate::engine::{CommitSink, Committed, Outcome};
use crate::router::{Flushes, Router};

/// What sessions ask of the feed.
#[derive(Debug)]
pub enum Cmd {
    /// One more subscription wants `Interest`; answered once it flows.
    Listen(Interest, oneshot::Sender<()>),
    /// One subscription less.
    Unlisten(Interest),
    /// The Redis in use changed (a Sentinel failover): connect to the new one.
    Reconnect,
}

/// Messages held per topic while its gap is read; past it they are dropped and read
/// from the stream after.
const HOLD_MAX: usize = 10_000;
/// Entries read per round trip when filling a gap.
const FILL_BATCH: usize = 500;
/// Messages handled before the pass is reported and the queues flushed.
const BURST: usize = 1024;
/// How long to wait for Redis to answer a subscribe, a ping or a connect.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

/// Where the feed stands with one durable topic.
#[derive(Debug, Default)]
struct Seqs {
    epoch: u64,
    /// The next seq owed to this node; 0 before the first message.
    next: u64,
    /// A read of a gap is running; live messages wait in `held`.
    filling: bool,
    held: VecDeque<(u64, i64, Vec<u8>)>,
    /// `held` overflowed: read the stream again once the fill ends.
    overflowed: bool,
}

/// What a fill task reports back.
struct Filled {
    topic: String,
    epoch: u64,
    entries: Vec<Entry>,
    /// The last batch: the gap is read (up to `to`, or to the end of the stream).
    last: bool,
    to: Option<u64>,
}

/// The feed task's state; see the module docs.
pub struct Feed<O> {
    inner: Arc<Inner>,
    sink: Arc<dyn CommitSink<O>>,
    router: Arc<Router>,
    interest: HashMap<Interest, usize>,
    topics: HashMap<String, Seqs>,
    fills: (
        mpsc::UnboundedSender<Filled>,
        mpsc::UnboundedReceiver<Filled>,
    ),
    pass: Vec<Committed<O>>,
    later: Flushes,
}

impl<O: Send + 'static> Feed<O> {
    /// A feed for `inner`'s cluster, reporting to `sink` and fanning ephemeral
    /// messages out through `router`.
    pub fn new(inner: Arc<Inner>, sink: Arc<dyn CommitSink<O>>, router: Arc<Router>) -> Self {
        Feed {
            inner,
            sink,
            router,
            interest: HashMap::new(),
            topics: HashMap::new(),
            fills: mpsc::unbounded_channel(),
            pass: Vec::new(),
            later: Flushes::default(),
        }
    }

    /// Runs until `cancel`: connects, subscribes, handles what arrives, and connects
    /// again whenever the connection is lost.
    pub async fn run(mut self, mut cmds: mpsc::UnboundedReceiver<Cmd>, cancel: CancellationToken) {
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.connect().await {
                Ok(sub) => {
                    backoff = Duration::from_millis(50);
                    self.inner.set_feed_up(true);
                    tracing::info!("cluster: subscribed to Redis");
                    self.catch_up();
                    let lost = self.serve(sub, &mut cmds, &cancel).await;
                    self.inner.set_feed_up(false);
                    match lost {
                        None => return,
                        Some(why) => tracing::warn!("cluster: lost Redis pub/sub: {why}"),
                    }
                }
                Err(e) => tracing::warn!("cluster: cannot subscribe to Redis: {e}"),
            }
            // Disconnected: keep answering sessions and reporting fills until it is
            // time to try again.
            let retry = tokio::time::sleep(backoff);
            tokio::pin!(retry);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = &mut retry => break,
                    cmd = cmds.recv() => match cmd {
                        Some(cmd) => self.count(cmd),
                        None => return,
                    },
                    Some(filled) = self.fills.1.recv() => {
                        self.filled(filled);
                        self.report();
                    }
                }
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// A new pub/sub connection with the control channel and every interest subscribed.
    async fn connect(&mut self) -> Result<Subscriber, String> {
        let connect = Subscriber::connect(&self.inner);
        let mut sub = tokio::time::timeout(ANSWER_WITHIN, connect)
            .await
            .map_err(|_| "no answer".to_string())??;
        let subscribe = async {
            sub.subscribe_own(&self.inner.keys.ctl()).await?;
            sub.subscribe_own(&self.inner.keys.replies(&self.inner.node))
                .await?;
            for interest in self.interest.keys() {
                sub.change(interest, true).await?;
            }
            Ok::<_, redis::RedisError>(())
        };
        tokio::time::timeout(ANSWER_WITHIN * 4, subscribe)
            .await
            .map_err(|_| "no answer to SUBSCRIBE".to_string())?
            .map_err(|e| e.to_string())?;
        Ok(sub)
    }

    /// Handles the connection until it is lost (`Some(why)`) or the broker stops.
    async fn serve(
        &mut self,
        mut sub: Subscriber,
        cmds: &mut mpsc::UnboundedReceiver<Cmd>,
        cancel: &CancellationToken,
    ) -> Option<String> {
        let mut ping = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return None,
                event = sub.next() => {
                    if !self.event(event) {
                        return Some("connection closed".into());
                    }
                    // Whatever else has arrived, as one pass.
                    for _ in 1..BURST {
                        let Some(event) = sub.try_next() else { break };
                        if !self.event(event) {
                            return Some("connection closed".into());
                        }
                    }
                    self.report();
                }
                cmd = cmds.recv() => {
                    let cmd = cmd?;
                    if let Cmd::Reconnect = cmd {
                        return Some("the Redis master moved".into());
                    }
                    if let Err(e) = self.change(cmd, &mut sub).await {
                        return Some(e);
                    }
                }
                Some(filled) = self.fills.1.recv() => {
                    self.filled(filled);
                    self.report();
                }
                _ = ping.tick() => {
                    match tokio::time::timeout(ANSWER_WITHIN, sub.ping()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return Some(format!("ping: {e}")),
                        Err(_) => return Some("no answer to PING".into()),
                    }
                }
            }
        }
    }

    /// Handles one event of the connection; false when it is lost (closed, or no
    /// longer subscribed to a channel this node wants).
    fn event(&mut self, event: Event) -> bool {
        match event {
            Event::Message(msg) => self.message(&msg),
            Event::Dropped(channel) => {
                return !self.interest.contains_key(&Interest::Channel(channel));
            }
            Event::Closed => return false,
        }
        true
    }

    /// Counts a listen or unlisten without telling Redis (disconnected); a listen is
    /// answered at once.
    fn count(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Listen(interest, done) => {
                *self.interest.entry(interest).or_default() += 1;
                let _ = done.send(());
            }
            Cmd::Unlisten(interest) => {
                self.forget(&interest);
            }
            Cmd::Reconnect => {}
        }
    }

    /// One subscription less; whether it was the last for `interest`.
    fn forget(&mut self, interest: &Interest) -> bool {
        match self.interest.get_mut(interest) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                self.interest.remove(interest);
                true
            }
            None => false,
        }
    }

    /// Applies a listen or unlisten, subscribing or unsubscribing in Redis when it is
    /// the first or the last.
    async fn change(&mut self, cmd: Cmd, sub: &mut Subscriber) -> Result<(), String> {
        let (interest, subscribe, done) = match cmd {
            Cmd::Listen(interest, done) => {
                let n = self.interest.entry(interest.clone()).or_default();
                *n += 1;
                let first = *n == 1;
                (interest, first.then_some(true), Some(done))
            }
            Cmd::Unlisten(interest) => {
                let last = self.forget(&interest);
                (interest, last.then_some(false), None)
            }
            Cmd::Reconnect => return Ok(()),
        };
        let result = match subscribe {
            None => Ok(()),
            Some(on) => timed(sub.change(&interest, on)).await,
        };
        if let Some(done) = done {
            let _ = done.send(());
        }
        result
    }

    /// Handles one message from Redis.
    fn message(&mut self, msg: &redis::Msg) {
        let channel = msg.get_channel_name();
        let payload = msg.get_payload_bytes();
        if channel == self.inner.keys.ctl() {
            let name = String::from_utf8_lossy(payload).into_owned();
            self.inner.spawn_reload(name);
            return;
        }
        if channel == self.inner.keys.replies(&self.inner.node) {
            let reply = prost::Message::decode(payload).ok();
            let requests = self.inner.requests.get();
            if let Some(outbox) = reply.zip(requests).and_then(|(r, q)| q.remote_reply(r)) {
                self.later.push(outbox);
            }
            return;
        }
        if let Some(room) = self.inner.keys.room_of(channel) {
            if let Some(roster) = self.inner.roster() {
                roster.message(room, payload);
            }
            return;
        }
        let Some(topic) = self.inner.keys.topic_of(channel) else {
            return;
        };
        match parse(payload) {
            Some(Live::Durable { epoch, ts, stored }) => {
                for (seq, body) in stored {
                    self.durable(topic.to_string(), seq, ts, epoch, body.to_vec());
                }
            }
            Some(Live::Ephemeral { node, messages }) => {
                if node != self.inner.node.as_bytes() {
                    for (datagram, message) in messages {
                        let message = Bytes::copy_from_slice(message);
                        let later = &mut self.later;
                        self.router.publish(topic, 0, datagram, || message, later);
                    }
                }
            }
            None => tracing::warn!(channel, "cluster: a live message not in rtc's format"),
        }
    }

    /// One durable message from the feed or a fill: delivered if it is the next one
    /// owed, held while a gap is read, or the start of a gap's read.
    fn durable(&mut self, topic: String, seq: u64, ts: i64, epoch: u64, body: Vec<u8>) {
        let st = self.topics.entry(topic.clone()).or_default();
        if st.epoch != epoch {
            // Another incarnation of the log (deleted and created again, or lost):
            // owed from where it arrives.
            *st = Seqs {
                epoch,
                ..Seqs::default()
            };
        }
        if st.filling {
            if st.held.len() < HOLD_MAX {
                st.held.push_back((seq, ts, body));
            } else {
                st.overflowed = true;
            }
            return;
        }
        if st.next != 0 && seq < st.next {
            return;
        }
        if st.next != 0 && seq > st.next {
            let from = st.next;
            st.filling = true;
            st.held.push_back((seq, ts, body));
            self.fill(topic, epoch, from, Some(seq));
            return;
        }
        st.next = seq + 1;
        self.deliver(topic, seq, ts, epoch, &body);
    }

    fn deliver(&mut self, topic: String, seq: u64, ts: i64, epoch: u64, body: &[u8]) {
        self.inner.saw(&topic, epoch, seq, ts, body.len());
        let message = super::message(seq, ts, epoch, 0, body);
        self.pass.push(Committed {
            topic,
            outcome: Outcome::Stored { seq, message },
            origin: None,
        });
    }

    /// Reads `topic` from `from` up to `to` (or its end) on another task.
    fn fill(&self, topic: String, epoch: u64, from: u64, to: Option<u64>) {
        let inner = self.inner.clone();
        let tx = self.fills.0.clone();
        tokio::spawn(async move {
            let mut from = from;
            loop {
                let limit = to.map_or(FILL_BATCH, |to| {
                    (to.saturating_sub(from) as usize).min(FILL_BATCH)
                });
                let read = if limit == 0 {
                    Ok((epoch, Vec::new()))
                } else {
                    inner.read_entries(&topic, from, limit).await
                };
                let (got, entries) = match read {
                    Ok(r) => r,
                    Err(e) => {
                        // Given up: what was missed stays missed for live delivery
                        // (it is in the log), and the feed goes on.
                        tracing::warn!(topic, "cluster: cannot read a gap: {e}");
                        (epoch, Vec::new())
                    }
                };
                let end = entries.len() < limit || got != epoch || limit == 0;
                if let Some(e) = entries.last() {
                    from = e.0 + 1;
                }
                let entries = if got == epoch { entries } else { Vec::new() };
                let last = end || to.is_some_and(|to| from >= to);
                let filled = Filled {
                    topic: topic.clone(),
                    epoch,
                    entries,
                    last,
                    to,
                };
                if tx.send(filled).is_err() || last {
                    return;
                }
            }
        });
    }

    /// A batch of a gap read.
    fn filled(&mut self, filled: Filled) {
        let Filled {
            topic,
            epoch,
            entries,
            last,
            to,
        } = filled;
        let Some(st) = self.topics.get_mut(&topic) else {
            return;
        };
        if st.epoch != epoch || !st.filling {
            return;
        }
        let mut owed = Vec::new();
        for (seq, ts, body) in entries {
            if seq >= st.next {
                st.next = seq + 1;
                owed.push((seq, ts, body));
            }
        }
        if last {
            // What the stream lacks below `to` was trimmed: it is not owed.
            if let Some(to) = to {
                st.next = st.next.max(to);
            }
            st.filling = false;
        }
        let again = last && std::mem::take(&mut st.overflowed);
        let held = if last {
            std::mem::take(&mut st.held)
        } else {
            VecDeque::new()
        };
        let next = st.next;
        for (seq, ts, body) in owed {
            self.deliver(topic.clone(), seq, ts, epoch, &body);
        }
        if again {
            // Live messages were dropped while filling: read on to the end.
            if let Some(st) = self.topics.get_mut(&topic) {
                st.filling = true;
            }
            self.fill(topic, epoch, next, None);
            return;
        }
        for (seq, ts, body) in held {
            self.durable(topic.clone(), seq, ts, epoch, body);
        }
    }

    /// After a reconnect: reads what every followed topic missed, and the settings.
    fn catch_up(&mut self) {
        self.inner.spawn_reload(String::new());
        let due: Vec<(String, u64, u64)> = self
            .topics
            .iter_mut()
            .filter(|(_, st)| st.next != 0 && !st.filling)
            .map(|(name, st)| {
                st.filling = true;
                (name.clone(), st.epoch, st.next)
            })
            .collect();
        for (topic, epoch, from) in due {
            self.fill(topic, epoch, from, None);
        }
    }

    /// Reports the pass so far and flushes the queues it filled.
    fn report(&mut self) {
        if !self.pass.is_empty() {
            self.sink.committed(std::mem::take(&mut self.pass));
        }
        self.later.flush_all();
    }
}

async fn timed(f: impl std::future::Future<Output = redis::RedisResult<()>>) -> Result<(), String> {
    match tokio::time::timeout(ANSWER_WITHIN, f).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer to a subscription change".into()),
    }
}
