//! Long-polling: `GET /v1/poll?topic=PATTERN[&topic=…][&after=ID][&from=POSITION]
//! [&timeout=25s][&token=…]`, the fallback when neither WebSocket nor SSE gets through a
//! proxy.
//!
//! Each poll is a short session on a transport of its own, like an SSE stream (see
//! [`super::stream`]): it subscribes from `after` (the `next` of the previous answer) or
//! from `from`, and answers as soon as it has messages — the history after the position
//! at once (however short `timeout` is: it is the wait for live messages, after the
//! history), or else the first live ones — or when `timeout` passes with none:
//!
//! `{"messages": [...], "gaps": [...], "errors": [...], "next": ID}`
//!
//! Messages are the JSON objects of SSE; `next` is the position after the last message
//! in the answer (unchanged when there are none). Polling with it, on any connection,
//! misses nothing and repeats nothing on durable topics. An answer holds at most
//! [`MAX_MESSAGES`]; the rest comes with the next poll.

use std::collections::VecDeque;
use std::io;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use rtc_proto::Frame;
use tokio::sync::mpsc;

use super::stream::{self, Item, StreamIncoming, StreamSink};
use super::{refused, Gateway, Peer};
use crate::refusal::Refusal;
use crate::session::FrameSource;

/// Messages one answer holds at most.
pub const MAX_MESSAGES: usize = 1000;
/// How long a poll waits for a first message when the client does not say.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(25);
/// The longest wait a client may ask for.
const MAX_TIMEOUT: Duration = Duration::from_secs(120);
/// After the first live message, how long the answer waits for more that come with it.
const LINGER: Duration = Duration::from_millis(10);

pub(super) async fn poll(
    State(g): State<Gateway>,
    Extension(Peer(peer)): Extension<Peer>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let request = match stream::parse(query.as_deref(), &["after", "timeout"]) {
        Ok(r) => r,
        Err(r) => return refused(r),
    };
    let timeout = match request.extra.get("timeout") {
        None => DEFAULT_TIMEOUT,
        Some(t) => match humantime::parse_duration(t) {
            Ok(t) if t <= MAX_TIMEOUT => t,
            _ => {
                return refused(Refusal::InvalidRequest(format!(
                    "timeout {t:?}: a duration up to {MAX_TIMEOUT:?}, such as 25s"
                )))
            }
        },
    };
    let after = request.extra.get("after").cloned();
    let opened = match stream::open(&g, &headers, request, after.as_deref()) {
        Ok(o) => o,
        Err(r) => return refused(r),
    };
    let mut next = opened.tracker.id();
    let (tx, mut rx) = mpsc::channel::<Vec<Item>>(16);
    g.acceptor.admit(StreamIncoming {
        source: PollSource {
            frames: opened.frames,
            answered: tx.clone(),
            every: g.shared.config.heartbeat_interval,
            next: tokio::time::Instant::now() + g.shared.config.heartbeat_interval,
        },
        sink: PollSink {
            tx: Some(tx),
            tracker: opened.tracker,
        },
        peer: format!("poll {peer}"),
        transport: "poll",
    });

    let mut messages = Vec::new();
    let mut gaps = Vec::new();
    let mut errors = Vec::new();
    let mut replaying = opened.replaying;
    let started = tokio::time::Instant::now();
    let deadline = started + timeout;
    // The history after the position is answered whatever the timeout (which is the
    // wait for live messages): a replay always ends with its ReplayEnd, and this only
    // bounds a replay that would take longer than any poll may wait.
    let replay_deadline = started + MAX_TIMEOUT.max(timeout);
    let mut linger = None;
    loop {
        // History is answered whole once every pattern has caught up; a live message
        // after a short linger for the ones that come with it.
        let until = match linger {
            Some(l) => l,
            None if replaying > 0 => replay_deadline,
            None => deadline,
        };
        let items = tokio::select! {
            items = rx.recv() => items,
            _ = tokio::time::sleep_until(until) => None,
        };
        let Some(items) = items else { break };
        for item in items {
            match item {
                Item::Message { data, id } if messages.len() < MAX_MESSAGES => {
                    messages.push(data);
                    if let Some(id) = id {
                        next = id;
                    }
                }
                // The rest comes with the next poll, which starts after `next`.
                Item::Message { .. } => {}
                Item::Gap(g) if messages.len() < MAX_MESSAGES => gaps.push(g),
                Item::Gap(_) => {}
                Item::Live(_) => replaying = replaying.saturating_sub(1),
                Item::Error(e) => errors.push(e),
            }
        }
        if messages.len() >= MAX_MESSAGES || (!errors.is_empty() && messages.is_empty()) {
            break;
        }
        if replaying == 0 && !messages.is_empty() && linger.is_none() {
            linger = Some(tokio::time::Instant::now() + LINGER);
        }
    }
    // Dropping `rx` ends the session.
    drop(rx);
    Json(serde_json::json!({
        "messages": messages,
        "gaps": gaps,
        "errors": errors,
        "next": next,
    }))
    .into_response()
}

/// What a client would send; then the poll is there until it has answered.
struct PollSource {
    frames: VecDeque<Frame>,
    /// Closed once the answer is sent.
    answered: mpsc::Sender<Vec<Item>>,
    every: Duration,
    /// When to tell the session again that the poll is waiting (a poll may wait longer
    /// than the heartbeat timeout). Kept here: the session drops `fill` at its ticks.
    next: tokio::time::Instant,
}

impl FrameSource for PollSource {
    async fn fill(&mut self) -> io::Result<bool> {
        if !self.frames.is_empty() {
            return Ok(true);
        }
        tokio::select! {
            _ = self.answered.closed() => Ok(false),
            _ = tokio::time::sleep_until(self.next) => {
                self.next = tokio::time::Instant::now() + self.every;
                Ok(true)
            }
        }
    }

    fn next_frame(&mut self) -> Result<Option<Frame>, Refusal> {
        Ok(self.frames.pop_front())
    }

    fn is_drained(&self) -> bool {
        self.frames.is_empty()
    }

    fn quiet(&mut self) {}
}

/// What the broker sends, as items for the waiting request.
struct PollSink {
    tx: Option<mpsc::Sender<Vec<Item>>>,
    tracker: stream::Tracker,
}

impl PollSink {
    async fn write_frames(&mut self, frames: Vec<Frame>) -> io::Result<()> {
        let mut items = Vec::new();
        for frame in frames {
            self.tracker.items(frame, &mut items);
        }
        if items.is_empty() {
            return Ok(());
        }
        let tx = self.tx.as_ref().ok_or_else(|| io::Error::other("closed"))?;
        tx.send(items)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the poll has answered"))
    }
}

impl StreamSink for PollSink {
    async fn frames(&mut self, frames: Vec<Frame>) -> io::Result<()> {
        self.write_frames(frames).await
    }

    fn end(&mut self) {
        self.tx = None;
    }
}
