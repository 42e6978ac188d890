//! One session per client connection: handshake, read loop and dispatch — the core every
//! transport shares. The requests themselves are handled in [`pubsub`] (publish,
//! subscribe, unsubscribe), [`consume`] (durable consumer subscriptions, acks) and
//! [`admin`] (topic and consumer administration).
//!
//! # The transport seam
//! A session knows neither the byte stream nor the frame encoding. It is handed a
//! [`Connection`]: a [`FrameSource`] it reads decoded frames from (`source.rs`; a byte
//! stream of length-prefixed frames is [`ByteStreamSource`]), a
//! [`crate::outbound::FrameSink`] its writer task writes frames into, and what the
//! transport offers besides (direct writes for TCP, datagrams for QUIC). A WebSocket
//! connection carrying binary frames, or their JSON mapping, is one more source and sink;
//! everything here — handshake, auth, limits, heartbeats, errors — applies unchanged.
//!
//! It spawns the connection's writer task ([`crate::outbound::write_loop`]) over the
//! sink, then reads frames and handles each in turn — so one client's requests are
//! handled in the order sent. Every answer goes through the connection's [`Outbox`];
//! publishes fan out through the [`crate::router::Router`] into other connections'
//! queues. What one read's frames queued is flushed after them, once per queue
//! (`Session::flush`): written right there when the connection's writer is idle, so an
//! answer or a delivery to a quiet connection costs no thread wake-up.
//!
//! Lifecycle: `Hello` must arrive within `handshake_timeout`; after `Welcome` the client
//! must send something every `heartbeat_interval` and is closed after three silent
//! intervals. Protocol violations (undecodable frame, oversized length, no or repeated
//! `Hello`) get an `Error` and a close; a bad request (invalid topic, unknown sub_id, …)
//! gets an `Error` and the connection stays up. On broker shutdown the session stops
//! reading, sends `Error{SHUTTING_DOWN}`, and its writer finishes what is queued.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rtc_proto::silence::{Silence, SILENT_INTERVALS};
use rtc_proto::v1::{self, frame::Op};
use rtc_proto::Frame;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Identity;
use crate::bus::Bus;
use crate::clock::now_ms;
use crate::config::Config;
use crate::connections::{Conn, Connections};
use crate::consumer::Consumers;
use crate::delivery::{Delivery, Publishes};
use crate::engine::Log;
use crate::events::Events;
use crate::metrics::{AuthFailure, Metrics, Tally};
use crate::outbound::{write_loop, Closed, DirectWrite, FrameSink, Outbox};
use crate::presence::Presence;
use crate::refusal::Refusal;
use crate::request::Requests;
use crate::router::{Flushes, MatchCache, Router, Subscriber};
use crate::settings::Live;
use crate::throttle::Throttle;
use crate::topic_cache::TopicCache;

mod admin;
mod consume;
mod handshake;
mod presence;
mod pubsub;
mod reload;
mod request;
mod source;
mod token;

use consume::Settle;
pub use reload::SettingsChange;
pub use source::{codec_refusal, ByteStreamSource, FrameSource};

/// How long a closing connection's writer gets to flush what is queued.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// A limit as the `uint32` the protocol announces it in.
fn saturating_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// What every session shares: the broker's settings and services.
#[derive(Debug)]
pub struct Shared {
    /// Settings.
    pub config: Config,
    /// The subscription index.
    pub router: Arc<Router>,
    /// The log engine: topics, reads, consumer state.
    pub log: Arc<dyn Log>,
    /// The same engine's appends, answered through delivery.
    pub publishes: Arc<Publishes>,
    /// The other nodes of the cluster, if any: interest in patterns, relay of ephemeral
    /// messages.
    pub bus: Arc<dyn Bus>,
    /// Delivery, for its bound on appends in flight.
    pub delivery: Arc<Delivery>,
    /// Durable consumers.
    pub consumers: Consumers,
    /// The settings that change at run time: limits, users and tokens, log level.
    pub live: Live,
    /// Where sessions run the tasks they start (replays), so shutdown waits for them.
    pub tasks: TaskTracker,
    /// Requests waiting for a reply.
    pub requests: Arc<Requests>,
    /// Who is in each room.
    pub presence: Arc<Presence>,
    /// What the broker counts, for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The connections past their handshake, for the admin API.
    pub connections: Arc<Connections>,
    /// Recent events, for the admin API.
    pub events: Arc<Events>,
    /// When the broker started.
    pub started: std::time::Instant,
    next_conn_id: AtomicU64,
}

impl Shared {
    /// The broker's services for sessions; connection ids start at 1.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Config,
        router: Arc<Router>,
        log: Arc<dyn Log>,
        publishes: Arc<Publishes>,
        bus: Arc<dyn Bus>,
        delivery: Arc<Delivery>,
        consumers: Consumers,
        live: Live,
        tasks: TaskTracker,
        metrics: Arc<Metrics>,
    ) -> Self {
        let presence = Arc::new(Presence::new(
            config.presence_events_max,
            config.presence_update_rate,
            &config.topic,
        ));
        Shared {
            presence,
            config,
            router,
            log,
            publishes,
            bus,
            delivery,
            consumers,
            live,
            tasks,
            requests: Arc::new(Requests::new(metrics.clone())),
            metrics,
            connections: Arc::default(),
            events: Arc::default(),
            started: std::time::Instant::now(),
            next_conn_id: AtomicU64::new(1),
        }
    }

    /// Numbers the connections from `first` on (cluster mode: each node from its own
    /// range, so that ids, and the `anon-<id>` users of an open broker, are unique in
    /// the cluster). Called before anything connects.
    pub fn number_connections_from(&self, first: u64) {
        self.next_conn_id.store(first.max(1), Ordering::Relaxed);
    }

    /// A fresh connection id (also the owner id of its subscriptions in the router).
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// What a transport offers a subscription that asked for datagrams (QUIC): a subscriber
/// that sends what fits as unreliable datagrams and the rest through `stream`.
pub trait Datagrams: Send + Sync + std::fmt::Debug {
    /// Subscription `sub_id`'s subscriber, falling back to `stream`.
    fn subscriber(&self, sub_id: u64, stream: Arc<dyn Subscriber>) -> Arc<dyn Subscriber>;
}

/// One accepted connection, as a transport hands it to a session.
pub struct Connection<S, K> {
    /// Frames from the client.
    pub source: S,
    /// Where the connection's writer puts frames for the client.
    pub sink: K,
    /// The peer's address, for logs.
    pub peer: String,
    /// The socket again, when it can also be written without waiting (TCP; see
    /// [`Outbox::flush`]).
    pub direct: Option<Arc<dyn DirectWrite>>,
    /// Datagrams for subscriptions that ask for them (QUIC).
    pub datagrams: Option<Arc<dyn Datagrams>>,
}

/// Serves one connection until it closes, the client misbehaves, or `cancel` fires.
pub async fn run<S: FrameSource, K: FrameSink>(
    shared: Arc<Shared>,
    conn: Connection<S, K>,
    transport: &'static str,
    cancel: CancellationToken,
) {
    let Connection {
        source,
        sink,
        peer,
        direct,
        datagrams,
    } = conn;
    let config = &shared.config;
    let conn_id = shared.next_conn_id();
    let outbox = Arc::new(Outbox::with_direct(
        config.outbound_queue_bytes,
        config.outbound_queue_frames,
        config.max_frame_size,
        direct,
    ));
    let writer_task = tokio::spawn(write_loop(outbox.clone(), sink, shared.metrics.clone()));
    let mut session = Session {
        conn_id,
        shared: shared.clone(),
        outbox: outbox.clone(),
        identity: Identity::Open,
        expires: None,
        datagrams,
        transport,
        peer: peer.clone(),
        entry: None,
        throttle: {
            let (rate, burst) = shared.live.publish_rate();
            Throttle::new(rate, burst)
        },
        subs: HashMap::new(),
        known_topics: TopicCache::default(),
        matches: MatchCache::default(),
        read_ms: now_ms(),
        read_at: Instant::now(),
        lone: false,
        later: Flushes::default(),
        waiting: Arc::default(),
        tally: Tally::default(),
    };
    tracing::debug!(conn_id, %peer, "connection opened");
    let _ = session.serve(source, &cancel).await;
    // Boxed, like the handshake: the teardown's state (leaving every subscription, the
    // drains) is needed once, not reserved for the connection's whole life in its task.
    Box::pin(close(session, outbox, writer_task)).await;
}

/// Ends a session: its entry and subscriptions gone, owed answers and the writer
/// drained (each within [`DRAIN_TIMEOUT`]).
async fn close(
    mut session: Session,
    outbox: Arc<Outbox>,
    writer_task: tokio::task::JoinHandle<()>,
) {
    let (shared, conn_id, peer) = (
        session.shared.clone(),
        session.conn_id,
        session.peer.clone(),
    );
    // Whatever the last frames queued for others (the session may end mid-read).
    session.flush();
    if let Some(entry) = session.entry.take() {
        shared.connections.remove(conn_id);
        let v = entry.view();
        shared.events.record(
            "disconnect",
            format!(
                "connection {conn_id} ({} {}, user {}) closed after {} in / {} out, {} dropped",
                v.transport, v.peer, v.user, v.messages_in, v.messages_out, v.dropped
            ),
        );
    }
    session.remove_all_subscriptions().await;
    // Publishes still being stored are answered into the queue before it closes: a
    // client that closed its write side after publishing still gets its PubAcks.
    if tokio::time::timeout(DRAIN_TIMEOUT, outbox.answers_settled())
        .await
        .is_err()
    {
        tracing::warn!(conn_id, %peer, "answers still owed after {DRAIN_TIMEOUT:?}; closing without them");
    }
    outbox.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, writer_task)
        .await
        .is_err()
    {
        tracing::warn!(conn_id, %peer, "writer did not drain in time; dropping connection");
    }
    tracing::debug!(conn_id, %peer, dropped = outbox.dropped_total(), "connection closed");
}

/// The next frame from `source`, reading as needed; `None` once the peer closed.
async fn next_frame<S: FrameSource>(source: &mut S) -> Result<Option<Frame>, Refusal> {
    loop {
        if let Some(frame) = source.next_frame()? {
            return Ok(Some(frame));
        }
        match source.fill().await {
            Ok(true) => {}
            Ok(false) | Err(_) => return Ok(None),
        }
    }
}

struct Session {
    conn_id: u64,
    shared: Arc<Shared>,
    outbox: Arc<Outbox>,
    /// Who the connection acts as (set by the handshake).
    identity: Identity,
    /// When its token expires, if it does (see `token.rs`).
    expires: Option<Instant>,
    /// The publish rate limit, if any.
    throttle: Option<Throttle>,
    /// The transport's datagrams, for subscriptions that ask for them.
    datagrams: Option<Arc<dyn Datagrams>>,
    /// The transport's name and the peer's address, for the admin view.
    transport: &'static str,
    peer: String,
    /// Its entry in [`Shared::connections`], from the handshake on.
    entry: Option<Arc<Conn>>,
    /// Active subscriptions by sub_id.
    subs: HashMap<u64, pubsub::ActiveSub>,
    /// Settings of the topics this client published to lately (valid and permitted).
    known_topics: TopicCache<v1::TopicSettings>,
    /// The subscriptions those topics matched.
    matches: MatchCache,
    /// When the read that brought the frames being handled returned (ms since the Unix
    /// epoch): the timestamp of the messages published in them. Read from the clock once
    /// per read, not per message.
    read_ms: i64,
    /// The same moment as an `Instant`, for the publish latency metric.
    read_at: Instant,
    /// The frame being handled is the only one its read brought, with nothing after it
    /// in the buffer: a lone publish may be stored inline (see
    /// [`crate::engine::Appender::append`]); one of a stream goes to the storage
    /// thread, which stores what arrives together in one pass.
    lone: bool,
    /// Other connections' outboxes this session queued deliveries to since it last
    /// flushed ([`Session::flush`]).
    later: Flushes,
    /// This connection's requests waiting for a reply (see [`crate::request`]).
    waiting: Arc<std::sync::atomic::AtomicUsize>,
    /// Messages counted since the last flush, for the metrics.
    tally: Tally,
}

impl Session {
    /// Queues a response. It is written when the session flushes: after the frames of
    /// the current read, or before anything that may wait.
    async fn send(&self, frame: Frame) -> Result<(), Closed> {
        self.outbox.push_frame_unflushed(frame).await
    }

    /// Answers request `req_id` (0: none) with `refusal`'s `Error`.
    async fn refuse(&self, req_id: u64, refusal: Refusal) -> Result<(), Closed> {
        if let Refusal::PermissionDenied(why) = &refusal {
            self.shared
                .metrics
                .auth_failed(AuthFailure::PermissionDenied);
            self.shared.events.record(
                "auth_failure",
                format!("connection {}: {why}", self.conn_id),
            );
        }
        self.send(refusal.frame(req_id)).await
    }

    /// Writes (or wakes the writers of) everything this session queued since it last
    /// flushed: deliveries to other connections first, then its own answers. Done once
    /// per read rather than per frame, so a connection gets one read's worth in one
    /// write, and with no thread wake-up when its writer was idle.
    fn flush(&mut self) {
        self.later.flush_all();
        self.outbox.flush();
        let tally = std::mem::take(&mut self.tally);
        if let Some(entry) = &self.entry {
            entry.received(tally.messages_in, tally.bytes_in);
        }
        self.shared.metrics.add(tally);
    }

    async fn serve<S: FrameSource>(
        &mut self,
        mut source: S,
        cancel: &CancellationToken,
    ) -> Result<(), Closed> {
        let shared = self.shared.clone();
        let config = &shared.config;
        let shutting_down = || Refusal::ShuttingDown("broker is shutting down".into());
        // Boxed: its state (the Hello, the Welcome, the refusals) is needed once, not
        // reserved for the connection's whole life in its task.
        let Some(entry) = Box::pin(self.handshake(&mut source, cancel)).await? else {
            return Ok(());
        };

        // Read loop. Each fill is decoded whole and its frames handled in turn before
        // the next: the timers and the shutdown signal are polled once per read, not
        // once per frame. Silence is counted in heartbeat ticks, not by reading the
        // clock (see rtc_proto::silence).
        self.read_ms = now_ms();
        self.read_at = Instant::now();
        let interval = config.heartbeat_interval;
        let mut silence = Silence::default();
        // The Hello just arrived: the first interval is not a silent one.
        silence.heard();
        let mut ticks = tokio::time::interval_at(Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Boxed: the state of handling frames (a publish's, a boxed handler's) is
            // allocated once per read while it runs, not reserved for the connection's
            // whole life in its task, which is what an idle connection costs.
            if Box::pin(self.handle_read(&mut source)).await?.is_break() {
                return Ok(());
            }
            self.flush();
            // Each way the session ends here is a refusal to send; `Ok` is a read.
            let read = tokio::select! {
                _ = cancel.cancelled() => Err(shutting_down()),
                _ = entry.kicked() => {
                    let why = format!("disconnected by an operator: {}", entry.kick_reason());
                    Err(Refusal::Disconnected(why))
                }
                _ = token::until(self.expires) => Err(token::expired()),
                _ = ticks.tick() => {
                    if silence.tick() {
                        let msg = format!("nothing received for {SILENT_INTERVALS} heartbeat intervals ({:?})", interval * SILENT_INTERVALS);
                        Err(Refusal::HeartbeatTimeout(msg))
                    } else {
                        if silence.is_quiet() {
                            source.quiet();
                        }
                        continue;
                    }
                }
                read = source.fill() => Ok(read),
            };
            let read = match read {
                Ok(read) => read,
                // Boxed, like the handshake: once per connection.
                Err(ending) => return Box::pin(self.close_with(ending)).await,
            };
            match read {
                Ok(true) => {
                    silence.heard();
                    self.read_ms = now_ms();
                    self.read_at = Instant::now();
                }
                // The client closed, or the connection broke.
                Ok(false) | Err(_) => return Ok(()),
            }
        }
    }

    /// Handles every whole frame the last read brought, in turn; `Break` ends the
    /// session.
    async fn handle_read<S: FrameSource>(
        &mut self,
        source: &mut S,
    ) -> Result<ControlFlow<()>, Closed> {
        let mut first = true;
        loop {
            let frame = match source.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(ControlFlow::Continue(())),
                Err(refusal) => {
                    self.close_with(refusal).await?;
                    return Ok(ControlFlow::Break(()));
                }
            };
            self.lone = std::mem::take(&mut first) && source.is_drained();
            if !matches!(
                frame.op,
                Some(Op::Publish(_) | Op::Request(_) | Op::Reply(_))
            ) {
                // Anything but a publish, a request or a reply may wait (for the
                // storage thread, a consumer, …): what is queued goes out first.
                // Those three only queue, so a read's worth of them goes out in one
                // write per peer (flushing before each cost a write per request;
                // docs/benchmarks.md, "Request-reply").
                self.flush();
            }
            // Publishes are handled in place; any other frame's handler is boxed, so a
            // read of publishes allocates nothing per frame.
            let flow = match frame.op {
                Some(Op::Publish(p)) => {
                    self.publish(p).await?;
                    ControlFlow::Continue(())
                }
                op => Box::pin(self.handle(Frame { op })).await?,
            };
            if flow.is_break() {
                return Ok(flow);
            }
        }
    }

    /// Sends a closing error; the caller then ends the session.
    async fn close_with(&self, refusal: Refusal) -> Result<(), Closed> {
        tracing::debug!(conn_id = self.conn_id, code = ?refusal.code(), msg = %refusal, "closing connection");
        self.refuse(0, refusal).await
    }

    /// Handles one frame after the handshake. `Break` ends the session.
    async fn handle(&mut self, frame: Frame) -> Result<ControlFlow<()>, Closed> {
        let op_name = frame.op_name();
        match frame.op {
            // `handle_read` handles publishes itself, in place; this keeps `handle` whole.
            Some(Op::Publish(p)) => self.publish(p).await?,
            Some(Op::Subscribe(s)) => self.subscribe(s).await?,
            Some(Op::Unsubscribe(u)) => self.unsubscribe(u).await?,
            Some(Op::Ping(p)) => {
                self.send(Frame::from_op(Op::Pong(v1::Pong { nonce: p.nonce })))
                    .await?
            }
            Some(Op::Pong(_)) => {}
            Some(Op::Hello(_)) => {
                let msg = "Hello was already received on this connection";
                self.close_with(Refusal::HandshakeRequired(msg.into()))
                    .await?;
                return Ok(ControlFlow::Break(()));
            }
            Some(Op::Error(e)) => {
                tracing::debug!(conn_id = self.conn_id, code = e.code, msg = %e.message, "client reported an error");
            }
            Some(
                Op::Welcome(_)
                | Op::PubAck(_)
                | Op::SubAck(_)
                | Op::UnsubAck(_)
                | Op::Deliver(_)
                | Op::TopicInfo(_)
                | Op::TopicList(_)
                | Op::Confirm(_)
                | Op::ConsumerInfo(_)
                | Op::ConsumerList(_)
                | Op::ReplayEnd(_)
                | Op::AuthRefreshed(_)
                | Op::Response(_)
                | Op::PresenceEvent(_)
                | Op::PresenceInfo(_),
            ) => {
                let msg = format!("{op_name} is sent by the broker, not accepted from clients");
                self.refuse(0, Refusal::Unsupported(msg)).await?;
            }
            Some(Op::TopicCreate(c)) => self.topic_create(c).await?,
            Some(Op::TopicInfoRequest(r)) => self.topic_info(r).await?,
            Some(Op::TopicListRequest(r)) => self.topic_list(r).await?,
            Some(Op::Ack(a)) => self.settle(a.req_id, a.sub_id, Settle::Ack, a.seqs).await?,
            Some(Op::Nack(n)) => {
                let delay = std::time::Duration::from_millis(n.delay_ms);
                self.settle(n.req_id, n.sub_id, Settle::Nack(delay), n.seqs)
                    .await?
            }
            Some(Op::InProgress(p)) => {
                self.settle(p.req_id, p.sub_id, Settle::InProgress, p.seqs)
                    .await?
            }
            Some(Op::ConsumerInfoRequest(r)) => self.consumer_info(r).await?,
            Some(Op::ConsumerListRequest(r)) => self.consumer_list(r).await?,
            Some(Op::AuthRefresh(r)) => self.refresh(r).await?,
            Some(Op::Request(r)) => self.request(r).await?,
            Some(Op::Reply(r)) => self.reply(r).await?,
            Some(Op::PresenceRequest(r)) => self.presence_query(r).await?,
            Some(Op::PresenceUpdate(u)) => self.presence_update(u).await?,
            Some(Op::TopicDelete(d)) => self.topic_delete(d).await?,
            Some(Op::TopicPurge(p)) => self.topic_purge(p).await?,
            Some(Op::ConsumerDelete(d)) => self.consumer_delete(d).await?,
            None => {
                self.refuse(0, Refusal::Unsupported("unknown operation".into()))
                    .await?
            }
        }
        Ok(ControlFlow::Continue(()))
    }
}
