//! Server-Sent Events: `GET /v1/sse?topic=PATTERN[&topic=…][&from=POSITION][&token=…]`.
//!
//! An SSE stream is a session on a transport of its own (see [`super::stream`]): its
//! source sends what [`stream::open`] made up and then, every heartbeat interval (15 s
//! by default), writes a keep-alive comment and reports the client present, or ends the
//! session once the HTTP body is gone; its sink writes the [`stream::Item`]s of what the
//! broker sends as events:
//!
//! - a message: `id: POSITION` (none for an ephemeral topic's) and `data: {"topic",
//!   "seq", "time", "msg_id", "headers", "payload" | "payload_base64"}`;
//! - `event: live` when a pattern's history is done; `event: gap` where a topic's seqs
//!   jump; `event: rtc-error` with `{"code", "message"}` for an `Error` frame;
//! - `: ping` comments as keep-alive.
//!
//! `EventSource` sends the last id back in `Last-Event-ID` when it reconnects, and the
//! stream resumes from it. docs/protocol.md, "Server-Sent Events", has the exact format.

use std::collections::VecDeque;
use std::io;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use bytes::Bytes;
use rtc_proto::Frame;
use tokio::sync::mpsc;

use super::stream::{self, Item, StreamIncoming, StreamSink, Tracker};
use super::{refused, Gateway, Peer};
use crate::refusal::Refusal;
use crate::session::FrameSource;

/// Chunks of events queued for the HTTP body; beyond it the session's queue fills and
/// the slow-consumer policy applies.
const BODY_QUEUE: usize = 16;
/// What `EventSource` waits before it reconnects.
const RETRY_MS: u64 = 2000;

pub(super) async fn stream(
    State(g): State<Gateway>,
    Extension(Peer(peer)): Extension<Peer>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let resume = headers
        .get("last-event-id")
        .map(|v| v.to_str().unwrap_or("\u{0}"));
    let opened = stream::parse(query.as_deref(), &[])
        .and_then(|request| stream::open(&g, &headers, request, resume));
    let opened = match opened {
        Ok(o) => o,
        Err(r) => return refused(r),
    };
    let (tx, rx) = mpsc::channel::<Bytes>(BODY_QUEUE);
    let every = g.shared.config.heartbeat_interval;
    let incoming = StreamIncoming {
        source: SseSource {
            frames: opened.frames,
            started: false,
            every,
            next: tokio::time::Instant::now() + every,
            body: tx.clone(),
        },
        sink: SseSink {
            tx: Some(tx),
            tracker: opened.tracker,
        },
        peer: format!("sse {peer}"),
        transport: "sse",
    };
    g.acceptor.admit(incoming);
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, std::convert::Infallible>(chunk), rx))
    });
    let mut response = Body::from_stream(body).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Proxies such as nginx buffer responses unless told not to.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// What a client would send, then a keep-alive each interval, which also tells whether
/// the client is still there.
struct SseSource {
    frames: VecDeque<Frame>,
    started: bool,
    every: Duration,
    /// When the next keep-alive is due. Kept here, not in a sleep inside `fill`, which
    /// the session drops whenever its own timer fires first.
    next: tokio::time::Instant,
    /// The HTTP body, for the keep-alive.
    body: mpsc::Sender<Bytes>,
}

impl FrameSource for SseSource {
    async fn fill(&mut self) -> io::Result<bool> {
        if !self.started {
            self.started = true;
            return Ok(true);
        }
        tokio::time::sleep_until(self.next).await;
        self.next = tokio::time::Instant::now() + self.every;
        match self.body.try_send(Bytes::from_static(b": ping\n\n")) {
            // A body still queued for is a client still there: no keep-alive needed.
            Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => Ok(true),
            Err(mpsc::error::TrySendError::Closed(_)) => Ok(false),
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

/// What the broker sends, as events into the HTTP body.
struct SseSink {
    tx: Option<mpsc::Sender<Bytes>>,
    tracker: Tracker,
}

impl SseSink {
    async fn send(&mut self, text: String) -> io::Result<()> {
        let tx = self.tx.as_ref().ok_or_else(|| io::Error::other("closed"))?;
        tx.send(Bytes::from(text))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))
    }

    async fn write_frames(&mut self, frames: Vec<Frame>) -> io::Result<()> {
        let mut items = Vec::new();
        for frame in frames {
            self.tracker.items(frame, &mut items);
        }
        let mut out = String::new();
        for item in items {
            match item {
                Item::Message { data, id } => push_event(&mut out, None, id.as_deref(), &data),
                Item::Gap(data) => push_event(&mut out, Some("gap"), None, &data),
                Item::Live(data) => push_event(&mut out, Some("live"), None, &data),
                Item::Error(data) => push_event(&mut out, Some("rtc-error"), None, &data),
            }
        }
        if out.is_empty() {
            return Ok(());
        }
        self.send(out).await
    }
}

/// One event: optional `event:` and `id:` lines, then the JSON on one `data:` line.
fn push_event(out: &mut String, event: Option<&str>, id: Option<&str>, data: &serde_json::Value) {
    if let Some(event) = event {
        out.push_str("event: ");
        out.push_str(event);
        out.push('\n');
    }
    if let Some(id) = id {
        out.push_str("id: ");
        out.push_str(id);
        out.push('\n');
    }
    // serde_json escapes newlines, so the data is one line.
    out.push_str("data: ");
    out.push_str(&data.to_string());
    out.push_str("\n\n");
}

impl StreamSink for SseSink {
    async fn start(&mut self) -> io::Result<()> {
        self.send(format!("retry: {RETRY_MS}\n\n")).await
    }

    async fn frames(&mut self, frames: Vec<Frame>) -> io::Result<()> {
        self.write_frames(frames).await
    }

    fn end(&mut self) {
        // The body ends when the last sender is gone.
        self.tx = None;
    }
}
