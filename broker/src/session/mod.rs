//! One session per client connection: handshake, read loop and dispatch. The requests
//! themselves are handled in [`pubsub`] (publish, subscribe, unsubscribe), [`consume`]
//! (durable consumer subscriptions, acks) and [`admin`] (topic and consumer
//! administration).
//!
//! The session is transport-agnostic: it is handed a reader and a writer. It spawns the
//! connection's writer task ([`crate::outbound::write_loop`]) over the writer, then reads
//! frames and handles each in turn — so one client's requests are handled in the order
//! sent. Every answer goes through the connection's [`Outbox`]; publishes fan out through
//! the [`crate::router::Router`] into other connections' outboxes. What one read's frames
//! queued is flushed after them, once per outbox (`Session::flush`): written right there
//! when the connection's writer is idle, so an answer or a delivery to a quiet
//! connection costs no thread wake-up.
//!
//! Lifecycle: `Hello` must arrive within `handshake_timeout`; after `Welcome` the client
//! must send something every `heartbeat_interval` and is closed after three silent
//! intervals. Protocol violations (undecodable frame, oversized length, no or repeated
//! `Hello`) get an `Error` and a close; a bad request (invalid topic, unknown sub_id, …)
//! gets an `Error` and the connection stays up. On broker shutdown the session stops
//! reading, sends `Error{SHUTTING_DOWN}`, and its writer finishes what is queued.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use rtc_proto::codec::{grow_read_buffer, shrink_read_buffer, CodecError};
use rtc_proto::silence::{Silence, SILENT_INTERVALS};
use rtc_proto::v1::{self, frame::Op};
use rtc_proto::{ErrorCode, Frame, FrameCodec, PROTOCOL_VERSION};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::time::Instant;
use tokio_util::codec::{Decoder, FramedRead};
use tokio_util::sync::CancellationToken;

use crate::auth::Identity;
use crate::outbound::{write_loop, Closed, DirectWrite, Flushes, Outbox};
use crate::router::{DatagramSink, MatchCache};
use crate::server::Shared;
use crate::topic_cache::TopicCache;

mod admin;
mod consume;
mod pubsub;
mod throttle;

use consume::Settle;

/// Read buffer of a quiet connection; it grows to hold a large frame, and to
/// `STREAMING_READ_BUFFER` while frames stream in, and shrinks back when the connection
/// has been quiet for a heartbeat interval.
const READ_BUFFER: usize = 512;
/// How long a closing connection's writer gets to flush what is queued.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves one connection until it closes, the client misbehaves, or `cancel` fires.
/// `direct` is the writer's socket again when it can also be written without waiting
/// (TCP; see [`Outbox::flush`]).
pub(crate) async fn run<R, W>(
    shared: Arc<Shared>,
    reader: R,
    writer: W,
    peer: String,
    cancel: CancellationToken,
    datagrams: Option<Arc<dyn DatagramSink>>,
    direct: Option<Arc<dyn DirectWrite>>,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let config = &shared.config;
    let conn_id = shared.next_conn_id();
    let outbox = Arc::new(Outbox::with_direct(
        config.outbound_queue_bytes,
        config.outbound_queue_frames,
        config.max_frame_size,
        direct,
    ));
    let writer_task = tokio::spawn(write_loop(outbox.clone(), writer));
    let frames =
        FramedRead::with_capacity(reader, FrameCodec::new(config.max_frame_size), READ_BUFFER);
    let mut session = Session {
        conn_id,
        shared: shared.clone(),
        outbox: outbox.clone(),
        identity: Identity::Open,
        datagrams,
        throttle: throttle::Throttle::new(config.publish_rate, config.publish_burst),
        subs: HashMap::new(),
        known_topics: TopicCache::default(),
        matches: MatchCache::default(),
        read_ms: now_ms(),
        lone: false,
        later: Flushes::default(),
    };
    tracing::debug!(conn_id, %peer, "connection opened");
    let _ = session.serve(frames, &cancel).await;
    // Whatever the last frames queued for others (the session may end mid-read).
    session.flush();
    session.remove_all_subscriptions().await;
    outbox.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, writer_task)
        .await
        .is_err()
    {
        tracing::warn!(conn_id, %peer, "writer did not drain in time; dropping connection");
    }
    tracing::debug!(conn_id, %peer, dropped = outbox.dropped_total(), "connection closed");
}

struct Session {
    conn_id: u64,
    shared: Arc<Shared>,
    outbox: Arc<Outbox>,
    /// Who the connection acts as (set by the handshake).
    identity: Identity,
    /// The publish rate limit, if any.
    throttle: Option<throttle::Throttle>,
    /// The QUIC connection's datagram side, for subscriptions that ask for datagrams.
    datagrams: Option<Arc<dyn DatagramSink>>,
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
    /// The frame being handled is the only one its read brought, with nothing after it
    /// in the buffer: a lone publish may be stored inline (see
    /// [`crate::store::writer::SharedWriter`]); one of a stream goes to the storage
    /// thread, which stores what arrives together in one pass.
    lone: bool,
    /// Other connections' outboxes this session queued deliveries to since it last
    /// flushed ([`Session::flush`]).
    later: Flushes,
}

impl Session {
    /// Queues a response. It is written when the session flushes: after the frames of
    /// the current read, or before anything that may wait.
    async fn send(&self, frame: Frame) -> Result<(), Closed> {
        self.outbox.push_frame_unflushed(frame).await
    }

    /// Writes (or wakes the writers of) everything this session queued since it last
    /// flushed: deliveries to other connections first, then its own answers. Done once
    /// per read rather than per frame, so a connection gets one read's worth in one
    /// write, and with no thread wake-up when its writer was idle.
    fn flush(&mut self) {
        self.later.flush_all();
        self.outbox.flush();
    }

    async fn serve<R: AsyncRead + Unpin>(
        &mut self,
        mut frames: FramedRead<R, FrameCodec>,
        cancel: &CancellationToken,
    ) -> Result<(), Closed> {
        let shared = self.shared.clone();
        let config = &shared.config;
        // Handshake.
        let first = tokio::select! {
            _ = cancel.cancelled() => return self.close_with(ErrorCode::ShuttingDown, "broker is shutting down").await,
            r = tokio::time::timeout(config.handshake_timeout, frames.next()) => r,
        };
        let hello = match first {
            Err(_) => {
                let msg = format!("no Hello within {:?}", config.handshake_timeout);
                return self.close_with(ErrorCode::HandshakeTimeout, msg).await;
            }
            Ok(None) => return Ok(()),
            Ok(Some(Err(e))) => return self.codec_error(e).await,
            Ok(Some(Ok(Frame {
                op: Some(Op::Hello(h)),
            }))) => h,
            Ok(Some(Ok(other))) => {
                let msg = format!("the first frame must be Hello, got {}", other.op_name());
                return self.close_with(ErrorCode::HandshakeRequired, msg).await;
            }
        };
        if hello.protocol_version != PROTOCOL_VERSION {
            let msg = format!(
                "protocol version {} is not supported; this broker speaks {PROTOCOL_VERSION}",
                hello.protocol_version
            );
            return self.close_with(ErrorCode::UnsupportedVersion, msg).await;
        }
        match self.shared.auth.authenticate(&hello.auth_token) {
            Some(identity) => self.identity = identity,
            None => {
                tracing::info!(conn_id = self.conn_id, client = %hello.client_name, "refused: invalid or missing token");
                let msg = "this broker requires a valid token in Hello.auth_token";
                return self.close_with(ErrorCode::Unauthorized, msg).await;
            }
        }
        tracing::debug!(conn_id = self.conn_id, client = %hello.client_name, user = self.identity.name(), "handshake done");
        self.send(Frame::from_op(Op::Welcome(v1::Welcome {
            server_version: env!("CARGO_PKG_VERSION").to_string(),
            protocol_version: PROTOCOL_VERSION,
            max_frame_size: config.max_frame_size as u32,
            heartbeat_interval_ms: config.heartbeat_interval.as_millis() as u32,
            features: vec![],
            connection_id: self.conn_id,
        })))
        .await?;
        self.flush();

        // Read loop. Each read is decoded whole and its frames handled in turn before
        // the next read: the timers and the shutdown signal are polled once per read,
        // not once per frame. Silence is counted in heartbeat ticks, not by reading the
        // clock (see rtc_proto::silence).
        let parts = frames.into_parts();
        self.read_ms = now_ms();
        let (mut io, mut buf, mut codec) = (parts.io, parts.read_buf, parts.codec);
        let interval = config.heartbeat_interval;
        let mut silence = Silence::default();
        // The Hello just arrived: the first interval is not a silent one.
        silence.heard();
        let mut ticks = tokio::time::interval_at(Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut first = true;
            loop {
                let frame = match codec.decode(&mut buf) {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(e) => return self.codec_error(e).await,
                };
                self.lone = std::mem::take(&mut first) && buf.is_empty();
                if !matches!(frame.op, Some(Op::Publish(_))) {
                    // Anything but a publish may wait (for the storage thread, a
                    // consumer, …): what is queued goes out first.
                    self.flush();
                }
                if self.handle(frame).await?.is_break() {
                    return Ok(());
                }
            }
            self.flush();
            grow_read_buffer(&mut buf);
            // Room to read into: reclaims the space of the frames decoded (moving a
            // partial one to the front) or grows, as FramedRead does.
            buf.reserve(1);
            let read = tokio::select! {
                _ = cancel.cancelled() => {
                    return self.close_with(ErrorCode::ShuttingDown, "broker is shutting down").await;
                }
                _ = ticks.tick() => {
                    if silence.tick() {
                        let msg = format!("nothing received for {SILENT_INTERVALS} heartbeat intervals ({:?})", interval * SILENT_INTERVALS);
                        return self.close_with(ErrorCode::HeartbeatTimeout, msg).await;
                    }
                    if silence.is_quiet() {
                        shrink_read_buffer(&mut buf, READ_BUFFER);
                    }
                    continue;
                }
                read = io.read_buf(&mut buf) => read,
            };
            match read {
                // The client closed (a partial frame left behind is dropped with it).
                Ok(0) => return Ok(()),
                Ok(_) => {
                    silence.heard();
                    self.read_ms = now_ms();
                }
                Err(_) => return Ok(()),
            }
        }
    }

    /// Sends a closing error; the caller then ends the session.
    async fn close_with(&self, code: ErrorCode, msg: impl Into<String>) -> Result<(), Closed> {
        let msg = msg.into();
        tracing::debug!(conn_id = self.conn_id, ?code, %msg, "closing connection");
        self.send(Frame::error(0, code, msg)).await
    }

    async fn codec_error(&self, e: CodecError) -> Result<(), Closed> {
        let code = match &e {
            CodecError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            CodecError::Decode(_) => ErrorCode::BadFrame,
            CodecError::Io(_) => return Ok(()),
        };
        self.close_with(code, e.to_string()).await
    }

    /// Handles one frame after the handshake. `Break` ends the session.
    async fn handle(&mut self, frame: Frame) -> Result<ControlFlow<()>, Closed> {
        let op_name = frame.op_name();
        match frame.op {
            Some(Op::Publish(p)) => self.publish(p).await?,
            Some(Op::Subscribe(s)) => self.subscribe(s).await?,
            Some(Op::Unsubscribe(u)) => self.unsubscribe(u).await?,
            Some(Op::Ping(p)) => {
                self.send(Frame::from_op(Op::Pong(v1::Pong { nonce: p.nonce })))
                    .await?
            }
            Some(Op::Pong(_)) => {}
            Some(Op::Hello(_)) => {
                self.close_with(
                    ErrorCode::HandshakeRequired,
                    "Hello was already received on this connection",
                )
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
                | Op::ConsumerList(_),
            ) => {
                let msg = format!("{op_name} is sent by the broker, not accepted from clients");
                self.send(Frame::error(0, ErrorCode::Unsupported, msg))
                    .await?;
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
            None => {
                self.send(Frame::error(0, ErrorCode::Unsupported, "unknown operation"))
                    .await?
            }
        }
        Ok(ControlFlow::Continue(()))
    }
}

/// Milliseconds since the Unix epoch, the broker's message timestamp.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
