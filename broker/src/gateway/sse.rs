//! Server-Sent Events: `GET /v1/sse?topic=PATTERN[&topic=…][&from=POSITION][&token=…]`.
//!
//! An SSE stream is a session like any other, on a transport of its own: its source
//! makes up what a client would send (`Hello` with the request's token, one `Subscribe`
//! per `topic` pattern), and its sink turns what the broker sends into events. So the
//! stream gets the session's auth, permissions, replay, switch to live, bounded queue and
//! slow-consumer policy and shutdown, with nothing written twice. Every heartbeat
//! interval (15 s by default) the source writes a keep-alive comment and reports the
//! client present, or ends the session once the HTTP body is gone.
//!
//! Events (docs/protocol.md, "Server-Sent Events", has the exact format):
//! - a message: `id: POSITION` and `data: {"topic", "seq", "time", "msg_id", "headers",
//!   "payload" | "payload_base64"}`;
//! - `event: live` when a subscription's history is done (after `ReplayEnd`);
//! - `event: gap` when a topic's next message is not the one after the last delivered
//!   (retention removed some, or the stream was too slow and some were dropped);
//! - `event: rtc-error` with `{"code", "message"}` for an `Error` frame;
//! - `: ping` comments as keep-alive, one per heartbeat interval (none while events are
//!   still waiting to be sent).
//!
//! The id is the stream's position: for every durable topic delivered, the last seq, and
//! the time the stream began. `EventSource` sends it back in `Last-Event-ID` when it
//! reconnects, and the stream resumes with `Subscribe.resume_after`: each topic after
//! its seq, topics not yet seen from the stream's `from` (or its start time). The id is
//! `base64url(JSON)`, opaque to the client; it keeps the [`MAX_TOPICS`] topics delivered
//! most recently (the others resume from the stream's start, with repeats the stream then
//! drops, but no loss).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use base64::Engine as _;
use bytes::{Buf, Bytes};
use prost::Message as _;
use rtc_proto::codec::LEN_PREFIX;
use rtc_proto::v1::{self, frame::Op, start_position::Position};
use rtc_proto::{Frame, PROTOCOL_VERSION};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{identity, refused, Gateway, Peer};
use crate::accept::Incoming;
use crate::clock::now_ms;
use crate::outbound::FrameSink;
use crate::refusal::Refusal;
use crate::session::{Connection, FrameSource};

/// Topic patterns one stream may follow.
const MAX_PATTERNS: usize = 16;
/// Topics an id keeps a position for (the limit of `Subscribe.resume_after`).
pub const MAX_TOPICS: usize = 1000;
/// Chunks of events queued for the HTTP body; beyond it the session's queue fills and
/// the slow-consumer policy applies.
const BODY_QUEUE: usize = 16;
/// What `EventSource` waits before it reconnects.
const RETRY_MS: u64 = 2000;

/// A stream's position, as the event id carries it.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
struct StreamPosition {
    /// When the stream began (ms since the epoch): topics without a position start here.
    t: i64,
    /// Last seq delivered, per durable topic.
    c: BTreeMap<String, u64>,
}

impl StreamPosition {
    fn encode(&self) -> String {
        let json = serde_json::to_vec(self).expect("a map of strings and numbers");
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    fn decode(id: &str) -> Option<StreamPosition> {
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(id.trim())
            .ok()?;
        serde_json::from_slice(&json).ok()
    }
}

/// The request, checked.
struct Request {
    patterns: Vec<String>,
    from: Option<Position>,
    token: String,
}

fn parse(query: Option<&str>) -> Result<Request, Refusal> {
    let mut patterns = Vec::new();
    let mut from = None;
    let mut token = String::new();
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*key {
            "topic" => patterns.push(value.into_owned()),
            "from" => {
                let p = rtc_proto::position::parse_start(&value)
                    .map_err(|e| Refusal::InvalidRequest(e.to_string()))?;
                from = p.position;
            }
            "token" => token = value.into_owned(),
            other => {
                return Err(Refusal::InvalidRequest(format!(
                    "unknown parameter {other:?} (topic, from, token)"
                )))
            }
        }
    }
    if patterns.is_empty() || patterns.len() > MAX_PATTERNS {
        return Err(Refusal::InvalidRequest(format!(
            "give 1 to {MAX_PATTERNS} topic patterns (?topic=chat.>&topic=news.*)"
        )));
    }
    for p in &patterns {
        rtc_proto::topic::validate_pattern(p)
            .map_err(|e| Refusal::InvalidPattern(format!("{p:?}: {e}")))?;
    }
    Ok(Request {
        patterns,
        from,
        token,
    })
}

pub(super) async fn stream(
    State(g): State<Gateway>,
    Extension(Peer(peer)): Extension<Peer>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = super::origin_allowed(&headers, &g.shared.config.allowed_origins) {
        return refused(r);
    }
    let request = match parse(query.as_deref()) {
        Ok(r) => r,
        Err(r) => return refused(r),
    };
    // Refused here with a status, before the stream starts; the session checks again.
    let who = match identity(&g, &headers, Some(&request.token)) {
        Ok(i) => i,
        Err(r) => return refused(r),
    };
    if let Some(p) = request.patterns.iter().find(|p| !who.can_subscribe(p)) {
        let msg = format!("user {:?} may not subscribe to {p:?}", who.name());
        return refused(Refusal::PermissionDenied(msg));
    }
    let resume = match headers.get("last-event-id") {
        None => None,
        Some(id) => match id.to_str().ok().and_then(StreamPosition::decode) {
            Some(p) => Some(p),
            None => {
                return refused(Refusal::InvalidRequest(
                    "Last-Event-ID is not a position this broker gave".into(),
                ))
            }
        },
    };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let token = bearer.map_or(request.token.clone(), str::to_string);
    let (position, start) = match resume {
        // Topics with a position continue after it; the others from `from`, or from
        // when the stream first began.
        Some(p) => {
            let start = request.from.unwrap_or(Position::TimeMs(p.t));
            (p, Some(start))
        }
        None => (
            StreamPosition {
                t: now_ms(),
                c: BTreeMap::new(),
            },
            request.from,
        ),
    };
    let mut frames = VecDeque::new();
    frames.push_back(Frame::from_op(Op::Hello(v1::Hello {
        protocol_version: PROTOCOL_VERSION,
        client_name: "sse".into(),
        auth_token: token,
    })));
    for (i, pattern) in request.patterns.iter().enumerate() {
        frames.push_back(Frame::from_op(Op::Subscribe(v1::Subscribe {
            sub_id: i as u64 + 1,
            pattern: pattern.clone(),
            start: start.map(|p| v1::StartPosition { position: Some(p) }),
            resume_after: position.c.clone(),
            ..Default::default()
        })));
    }
    let (tx, rx) = mpsc::channel::<Bytes>(BODY_QUEUE);
    let incoming = SseIncoming {
        source: SseSource {
            frames,
            started: false,
            every: g.shared.config.heartbeat_interval,
            next: tokio::time::Instant::now() + g.shared.config.heartbeat_interval,
            body: tx.clone(),
        },
        sink: SseSink {
            tx: Some(tx),
            position,
            recent: HashMap::new(),
            tick: 0,
            patterns: request.patterns,
        },
        peer: format!("sse {peer}"),
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

/// An SSE stream, before its session.
struct SseIncoming {
    source: SseSource,
    sink: SseSink,
    peer: String,
}

impl Incoming for SseIncoming {
    type Source = SseSource;
    type Sink = SseSink;

    fn peer(&self) -> String {
        self.peer.clone()
    }

    async fn open(self, _max_frame_size: usize) -> io::Result<Connection<SseSource, SseSink>> {
        let mut sink = self.sink;
        sink.send(format!("retry: {RETRY_MS}\n\n")).await?;
        Ok(Connection {
            source: self.source,
            sink,
            peer: self.peer,
            direct: None,
            datagrams: None,
        })
    }

    async fn refuse(self, error: Frame) {
        let mut sink = self.sink;
        let mut text = String::new();
        sink.event_for(error, &mut text);
        let _ = sink.send(text).await;
    }
}

/// What a client would send: `Hello`, the subscriptions, then only that it is there.
/// It also writes the keep-alive, which tells it whether the client still is.
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
    position: StreamPosition,
    /// When each topic of the position was last delivered (a counter), to keep the most
    /// recent ones.
    recent: HashMap<String, u64>,
    tick: u64,
    /// The stream's patterns, by sub_id - 1.
    patterns: Vec<String>,
}

impl SseSink {
    async fn send(&mut self, text: String) -> io::Result<()> {
        let tx = self.tx.as_ref().ok_or_else(|| io::Error::other("closed"))?;
        tx.send(Bytes::from(text))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))
    }

    /// Appends the events for `frame` to `out`.
    fn event_for(&mut self, frame: Frame, out: &mut String) {
        match frame.op {
            Some(Op::Deliver(d)) => {
                if let Some(m) = d.message {
                    self.message(m, out);
                }
            }
            Some(Op::ReplayEnd(e)) => {
                let pattern = self
                    .patterns
                    .get(e.sub_id.saturating_sub(1) as usize)
                    .cloned()
                    .unwrap_or_default();
                push_event(
                    out,
                    Some("live"),
                    None,
                    &serde_json::json!({ "pattern": pattern }),
                );
            }
            Some(Op::Error(e)) => {
                let refusal_code = e
                    .error_code()
                    .as_str_name()
                    .trim_start_matches("ERROR_CODE_");
                let data = serde_json::json!({ "code": refusal_code, "message": e.message });
                push_event(out, Some("rtc-error"), None, &data);
            }
            // Welcome, SubAck, Pong and the rest are for a client that sent requests.
            _ => {}
        }
    }

    fn message(&mut self, m: v1::Message, out: &mut String) {
        let v1::Message {
            topic,
            payload,
            headers,
            seq,
            timestamp_ms,
            msg_id,
            delivery_count: _,
        } = m;
        let mut id = None;
        if seq != 0 {
            match self.position.c.get(&topic).copied() {
                // Already delivered (two patterns matching one topic, or a resume's
                // overlap).
                Some(last) if seq <= last => return,
                Some(last) if seq > last + 1 => {
                    let data = serde_json::json!({ "topic": topic, "after": last, "next": seq });
                    push_event(out, Some("gap"), None, &data);
                }
                _ => {}
            }
            self.remember(&topic, seq);
            id = Some(self.position.encode());
        }
        let mut data = serde_json::json!({
            "topic": topic,
            "seq": seq,
            "time": timestamp_ms,
            "msg_id": msg_id,
            "headers": headers,
        });
        match std::str::from_utf8(&payload) {
            Ok(text) => data["payload"] = text.into(),
            Err(_) => {
                data["payload_base64"] = base64::engine::general_purpose::STANDARD
                    .encode(&payload)
                    .into()
            }
        }
        push_event(out, None, id.as_deref(), &data);
    }

    fn remember(&mut self, topic: &str, seq: u64) {
        self.tick += 1;
        self.position.c.insert(topic.to_string(), seq);
        self.recent.insert(topic.to_string(), self.tick);
        if self.position.c.len() > MAX_TOPICS {
            // The topic delivered longest ago resumes from the stream's start.
            if let Some(oldest) = self
                .position
                .c
                .keys()
                .min_by_key(|t| self.recent.get(*t).copied().unwrap_or(0))
                .cloned()
            {
                self.position.c.remove(&oldest);
                self.recent.remove(&oldest);
            }
        }
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

impl FrameSink for SseSink {
    async fn write(&mut self, frames: &[u8]) -> io::Result<()> {
        let mut rest = frames;
        let mut out = String::new();
        while !rest.is_empty() {
            if rest.len() < LEN_PREFIX {
                return Err(io::Error::other("a partial length prefix for SSE"));
            }
            let len = (&rest[..LEN_PREFIX]).get_u32() as usize;
            let Some(bytes) = rest.get(LEN_PREFIX..LEN_PREFIX + len) else {
                return Err(io::Error::other("a partial frame for SSE"));
            };
            let frame = Frame::decode(bytes).map_err(io::Error::other)?;
            self.event_for(frame, &mut out);
            rest = &rest[LEN_PREFIX + len..];
        }
        if out.is_empty() {
            return Ok(());
        }
        self.send(out).await
    }

    async fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    async fn close(&mut self) {
        // The body ends when the last sender is gone.
        self.tx = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_reads_back_as_written() {
        let p = StreamPosition {
            t: 1_796_000_000_000,
            c: [
                ("chat.room=1,x".to_string(), 7),
                ("ünï.côdé".to_string(), 1),
            ]
            .into(),
        };
        let id = p.encode();
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(StreamPosition::decode(&id), Some(p));
        assert_eq!(StreamPosition::decode("not an id"), None);
    }

    #[test]
    fn parameters_are_checked() {
        assert!(parse(Some("topic=chat.%3E&from=first")).is_ok());
        assert!(parse(None).is_err(), "no topic");
        assert!(parse(Some("topic=a..b")).is_err(), "bad pattern");
        assert!(
            parse(Some("topic=a&from=sometime")).is_err(),
            "bad position"
        );
        assert!(
            parse(Some("topic=a&colour=blue")).is_err(),
            "unknown parameter"
        );
        let r = parse(Some("topic=a&topic=b.*&token=s3cret")).unwrap();
        assert_eq!((r.patterns.len(), r.token.as_str()), (2, "s3cret"));
    }
}
