//! Durable consumers: named cursors on a durable topic, kept by the broker, with
//! acknowledgements, redelivery and dead letters.
//!
//! Each consumer (topic + name) is one task, its actor (`actor`), which owns all of its
//! state; everything else talks to it through a channel ([`MemberRef`]). Connections
//! that subscribe with the same consumer name are its *members*: the actor hands each
//! message to one member at a time (round robin among members with room), so they share
//! the work. It reads the topic's log itself, from its cursor, only as far as its
//! members have room (`max_in_flight`), so a slow consumer never makes the broker buffer
//! a backlog. Its state — ack floor, next seq, the delivered-but-unacknowledged seqs with
//! their delivery counts — is saved through the storage thread after every change and
//! reloaded on start. [`Consumers`] is the registry of actors.
//!
//! The actor is the one of a broker on its own. A [`Runner`] decides which task runs a
//! consumer: [`Local`] runs `actor`; in cluster mode the Redis engine's runner runs one
//! that shares the consumer with the members on other nodes (`crate::cluster`). Both
//! take the same [`Command`]s.

mod actor;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use rtc_proto::v1::{self, start_position::Position};
use rtc_proto::Frame;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::engine::{ConsumerRecord, Log, StoredConsumer};
use crate::outbound::Outbox;
use crate::refusal::Refusal;

/// Redelivery delay when a subscription does not set `ack_wait`.
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);
/// In-flight cap when a subscription does not set `max_in_flight`.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 1000;
/// Delivery attempts before dead-lettering when a subscription does not set `max_deliver`.
pub const DEFAULT_MAX_DELIVER: u32 = 10;
/// Commands queued per consumer before senders wait.
const COMMAND_QUEUE: usize = 1024;

/// A connection joining a consumer.
#[derive(Debug)]
pub struct JoinSpec {
    /// Its subscription id (carried in every Deliver).
    pub sub_id: u64,
    /// Its outbound queue.
    pub outbox: Arc<Outbox>,
    /// Pushed into the outbox before any delivery (the SubAck).
    pub first_frame: Frame,
    /// Acks required (`false`: a delivery settles the message).
    pub explicit_ack: bool,
    /// Redelivery delay for its unacknowledged messages.
    pub ack_wait: Duration,
    /// Most unacknowledged deliveries to it at once.
    pub max_in_flight: usize,
    /// Delivery attempts before a message is dead-lettered.
    pub max_deliver: u32,
    /// Where a consumer that does not exist yet starts (default: first).
    pub start: Option<Position>,
}

/// What a consumer's task is asked to do.
#[derive(Debug)]
pub enum Command {
    /// A member joins; answered with its member id (or the refusal).
    Join(Box<JoinSpec>, oneshot::Sender<Result<u64, Refusal>>),
    /// Member `0` left; what it held goes to the others.
    Leave(u64),
    /// Settle these seqs. With a sender: answer once the new state is stored.
    Ack(Vec<u64>, Option<oneshot::Sender<()>>),
    /// Give these seqs back for redelivery after the delay.
    Nack(Vec<u64>, Duration, oneshot::Sender<()>),
    /// Member `0` is still working on these seqs: restart their ack_wait.
    InProgress(u64, Vec<u64>, oneshot::Sender<()>),
    /// Describe the consumer.
    Info(oneshot::Sender<v1::ConsumerInfo>),
    /// Tell the members it is deleted, and end without storing anything more.
    Stop(oneshot::Sender<()>),
}

/// Runs the task of one consumer (`topic`, `name`), starting from `record` when it was
/// stored or created by the admin API, until `cancel`, a `Stop`, or every sender is
/// gone.
pub trait Runner: Send + Sync + std::fmt::Debug {
    /// The task.
    fn run(
        &self,
        topic: &str,
        name: &str,
        record: Option<ConsumerRecord>,
        commands: mpsc::Receiver<Command>,
        cancel: CancellationToken,
    ) -> BoxFuture<'static, ()>;

    /// Whether consumer (`topic`, `name`) exists though no task of it runs here (in
    /// cluster mode: another node made it). A task is then started to answer for it.
    fn exists_elsewhere(&self, _topic: &str, _name: &str) -> BoxFuture<'static, bool> {
        Box::pin(std::future::ready(false))
    }

    /// The consumers that exist, as (topic, name), of `topic` or (with `None`) of every
    /// topic, whether or not a task of them runs here (in cluster mode: those other
    /// nodes made too). A broker on its own knows its consumers from its tasks alone.
    fn names(&self, _topic: Option<&str>) -> BoxFuture<'static, Vec<(String, String)>> {
        Box::pin(std::future::ready(Vec::new()))
    }
}

/// The runner of a broker on its own: the actor, over the engine `log`.
#[derive(Debug)]
pub struct Local(pub Arc<dyn Log>);

impl Runner for Local {
    fn run(
        &self,
        topic: &str,
        name: &str,
        record: Option<ConsumerRecord>,
        commands: mpsc::Receiver<Command>,
        cancel: CancellationToken,
    ) -> BoxFuture<'static, ()> {
        let actor = actor::Actor::new(topic, name, record, self.0.clone());
        Box::pin(actor.run(commands, cancel))
    }
}

/// One member's handle on its consumer: what its session uses to ack and to leave.
#[derive(Debug, Clone)]
pub struct MemberRef {
    tx: mpsc::Sender<Command>,
    member: u64,
}

impl MemberRef {
    /// Settles `seqs` (from whichever member holds them: a late ack still counts).
    /// With `confirm`, returns once the consumer's new state is stored — `false` if it
    /// could not be; otherwise once the request is queued.
    pub async fn ack(&self, seqs: Vec<u64>, confirm: bool) -> bool {
        if confirm {
            self.ask(|done| Command::Ack(seqs, Some(done))).await
        } else {
            self.tx.send(Command::Ack(seqs, None)).await.is_ok()
        }
    }

    /// Gives `seqs` back for redelivery after `delay`.
    pub async fn nack(&self, seqs: Vec<u64>, delay: Duration) -> bool {
        self.ask(|done| Command::Nack(seqs, delay, done)).await
    }

    /// Restarts the ack_wait of `seqs`.
    pub async fn in_progress(&self, seqs: Vec<u64>) -> bool {
        self.ask(|done| Command::InProgress(self.member, seqs, done))
            .await
    }

    /// Leaves the consumer; its unacknowledged messages go to the other members.
    pub async fn leave(&self) {
        let _ = self.tx.send(Command::Leave(self.member)).await;
    }

    /// Sends a command and waits for it to be done; `false` if it could not be.
    async fn ask(&self, cmd: impl FnOnce(oneshot::Sender<()>) -> Command) -> bool {
        let (done, rx) = oneshot::channel();
        self.tx.send(cmd(done)).await.is_ok() && rx.await.is_ok()
    }
}

/// The registry of durable consumers, keyed by (topic, name).
#[derive(Debug)]
pub struct Consumers {
    actors: Mutex<HashMap<(String, String), mpsc::Sender<Command>>>,
    log: Arc<dyn Log>,
    runner: Arc<dyn Runner>,
    tracker: TaskTracker,
    cancel: CancellationToken,
}

impl Consumers {
    /// A registry whose actors `runner` runs on `tracker` until `cancel`, with the
    /// consumers found in the store already started (without members).
    pub fn new(
        log: Arc<dyn Log>,
        runner: Arc<dyn Runner>,
        tracker: TaskTracker,
        cancel: CancellationToken,
        stored: Vec<StoredConsumer>,
    ) -> Self {
        let consumers = Consumers {
            actors: Mutex::new(HashMap::new()),
            log,
            runner,
            tracker,
            cancel,
        };
        for c in stored {
            consumers.spawn(&c.topic, &c.name, Some(c.record));
        }
        consumers
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), mpsc::Sender<Command>>> {
        self.actors.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn spawn(
        &self,
        topic: &str,
        name: &str,
        record: Option<ConsumerRecord>,
    ) -> mpsc::Sender<Command> {
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let task = self
            .runner
            .run(topic, name, record, rx, self.cancel.clone());
        self.tracker.spawn(task);
        self.lock()
            .insert((topic.to_string(), name.to_string()), tx.clone());
        tx
    }

    /// Adds a member to consumer `name` on `topic`, creating the consumer (and the topic)
    /// if needed.
    pub async fn join(
        &self,
        topic: &str,
        name: &str,
        spec: JoinSpec,
    ) -> Result<MemberRef, Refusal> {
        let view = self.log.ensure_topic(topic.to_string()).await?;
        if !view.is_durable() {
            return Err(Refusal::Conflict(format!(
                "topic {topic:?} is ephemeral; durable consumers need a durable topic"
            )));
        }
        let key = (topic.to_string(), name.to_string());
        let existing = self.lock().get(&key).cloned();
        let tx = match existing {
            Some(tx) if !tx.is_closed() => tx,
            _ => self.spawn(topic, name, None),
        };
        let (reply, rx) = oneshot::channel();
        let stopped = || Refusal::ShuttingDown("the consumer has stopped".to_string());
        tx.send(Command::Join(Box::new(spec), reply))
            .await
            .map_err(|_| stopped())?;
        let member = rx.await.map_err(|_| stopped())??;
        Ok(MemberRef { tx, member })
    }

    /// Creates consumer `name` on `topic` with no member yet, starting at `start` (the
    /// admin API), and stores it before answering; an existing one is left as it is. Its
    /// info either way. The names are checked by the caller.
    pub async fn create(
        &self,
        topic: &str,
        name: &str,
        start: Position,
    ) -> Result<v1::ConsumerInfo, Refusal> {
        let view = self.log.ensure_topic(topic.to_string()).await?;
        if !view.is_durable() {
            return Err(Refusal::Conflict(format!(
                "topic {topic:?} is ephemeral; durable consumers need a durable topic"
            )));
        }
        if let Some(info) = self.info(topic, name).await {
            return Ok(info);
        }
        let next = crate::engine::start_seq(&*self.log, topic, &view, &start)
            .await?
            .max(1);
        let record = ConsumerRecord {
            ack_floor: next - 1,
            next_seq: next,
            ..Default::default()
        };
        let (stored, rx) = oneshot::channel();
        self.log
            .save_consumer(topic, name, record.clone(), Some(stored))
            .map_err(Refusal::from)?;
        rx.await
            .map_err(|_| Refusal::ShuttingDown("the store has stopped".into()))?;
        self.spawn(topic, name, Some(record));
        self.info(topic, name)
            .await
            .ok_or_else(|| Refusal::ShuttingDown("the consumer has stopped".into()))
    }

    /// Deletes consumer `name` on `topic`: its members are told (`TOPIC_DELETED` with
    /// their sub_id), its actor ends, and its stored state is removed. `NOT_FOUND` if
    /// it does not exist.
    pub async fn delete(&self, topic: &str, name: &str) -> Result<(), Refusal> {
        let tx = self.lock().remove(&(topic.to_string(), name.to_string()));
        let Some(tx) = tx else {
            return Err(Refusal::NotFound(format!(
                "topic {topic:?} has no durable consumer {name:?}"
            )));
        };
        stop(tx).await;
        self.log
            .delete_consumer(topic.to_string(), name.to_string())
            .await
    }

    /// Stops every consumer of `topic` (before the topic is deleted, which removes their
    /// stored state); their members are told.
    pub async fn stop_all(&self, topic: &str) -> usize {
        let txs: Vec<mpsc::Sender<Command>> = {
            let mut actors = self.lock();
            let names: Vec<(String, String)> =
                actors.keys().filter(|(t, _)| t == topic).cloned().collect();
            names.iter().filter_map(|k| actors.remove(k)).collect()
        };
        let n = txs.len();
        for tx in txs {
            stop(tx).await;
        }
        n
    }

    /// Every consumer's info, sorted by topic and name: in cluster mode the whole
    /// cluster's (the admin API's list).
    pub async fn all(&self) -> Vec<v1::ConsumerInfo> {
        self.adopt(None, |_| true).await;
        self.infos(|_| true).await
    }

    /// The info of the consumers with a task on this node, sorted by topic and name:
    /// what the metrics sample every second, without asking Redis for the others.
    pub async fn here(&self) -> Vec<v1::ConsumerInfo> {
        self.infos(|_| true).await
    }

    /// Starts a task for each consumer the runner knows of (of `topic`, if given) that
    /// has none here, to answer for it, as [`Consumers::info`] does.
    async fn adopt(&self, topic: Option<&str>, keep: impl Fn(&str) -> bool) {
        for (t, name) in self.runner.names(topic).await {
            // A task that answered once and ended (no members here) counts as none.
            let key = (t.clone(), name.clone());
            let known = self.lock().get(&key).is_some_and(|tx| !tx.is_closed());
            if keep(&t) && !known {
                self.spawn(&t, &name, None);
            }
        }
    }

    /// The info of the consumers with a task here whose topic `keep` takes, sorted by
    /// topic and name.
    async fn infos(&self, keep: impl Fn(&str) -> bool) -> Vec<v1::ConsumerInfo> {
        let mut txs: Vec<((String, String), mpsc::Sender<Command>)> = self
            .lock()
            .iter()
            .filter(|((topic, _), _)| keep(topic))
            .map(|(k, tx)| (k.clone(), tx.clone()))
            .collect();
        txs.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out = Vec::new();
        for (_, tx) in txs {
            if let Some(info) = ask_info(tx).await {
                out.push(info);
            }
        }
        out
    }

    /// Describes consumer `name` on `topic`, if it exists.
    pub async fn info(&self, topic: &str, name: &str) -> Option<v1::ConsumerInfo> {
        let key = (topic.to_string(), name.to_string());
        let tx = self.lock().get(&key).filter(|tx| !tx.is_closed()).cloned();
        let tx = match tx {
            Some(tx) => tx,
            None if self.runner.exists_elsewhere(topic, name).await => {
                self.spawn(topic, name, None)
            }
            None => return None,
        };
        ask_info(tx).await
    }

    /// Describes every consumer of `topic`, sorted by name.
    pub async fn list(&self, topic: &str) -> Vec<v1::ConsumerInfo> {
        self.adopt(Some(topic), |t| t == topic).await;
        self.infos(|t| t == topic).await
    }
}

/// The member whose turn it is: the first of `with_room` (member ids with room, in
/// order) after `turn`, else the first; round robin across calls.
pub fn next_in_turn(with_room: impl Iterator<Item = u64>, turn: u64) -> Option<u64> {
    let mut first = None;
    for id in with_room {
        if id > turn {
            return Some(id);
        }
        first.get_or_insert(id);
    }
    first
}

/// What a member of consumer `name` on `topic` is told when the consumer (or the topic)
/// is deleted: `TOPIC_DELETED` for its subscription.
pub fn deleted_notice(sub_id: u64, topic: &str, name: &str) -> Frame {
    let mut notice = Frame::topic_deleted(sub_id, topic);
    if let Some(v1::frame::Op::Error(e)) = &mut notice.op {
        e.message = format!(
            "durable consumer {name:?} on topic {topic:?} was deleted; this subscription has ended"
        );
    }
    notice
}

/// Stops an actor and waits until it has told its members (or was gone already).
async fn stop(tx: mpsc::Sender<Command>) {
    let (done, rx) = oneshot::channel();
    if tx.send(Command::Stop(done)).await.is_ok() {
        let _ = rx.await;
    }
}

async fn ask_info(tx: mpsc::Sender<Command>) -> Option<v1::ConsumerInfo> {
    let (reply, rx) = oneshot::channel();
    tx.send(Command::Info(reply)).await.ok()?;
    rx.await.ok()
}
