//! What Server-Sent Events and long-polling share: both follow topic patterns from a
//! position, as a session on a transport of their own.
//!
//! - [`StreamPosition`]: where a stream is — the last seq of every durable topic it
//!   delivered, and when it began — as the opaque id the client sends back
//!   (`Last-Event-ID`, `after=`).
//! - [`open`]: the checks before anything starts (token, patterns, permissions,
//!   the position), and the frames a client would send: `Hello` with the request's
//!   token, one `Subscribe` per pattern, resuming from the position with
//!   `Subscribe.resume_after`.
//! - [`Tracker`]: what the broker delivers, as JSON: each message once (two patterns
//!   may match one topic), a `gap` where a topic's seqs jump, the position after each.
//!
//! The session does the rest: auth, permissions, replay, the switch to live, the bounded
//! queue and the slow-consumer policy.

use std::collections::{BTreeMap, HashMap, VecDeque};

use axum::http::{header, HeaderMap};
use base64::Engine as _;
use rtc_proto::v1::{self, frame::Op, start_position::Position};
use rtc_proto::{Frame, PROTOCOL_VERSION};
use serde::{Deserialize, Serialize};

use super::{identity, Gateway};
use crate::accept::Incoming;
use crate::clock::now_ms;
use crate::outbound::FrameSink;
use crate::refusal::Refusal;
use crate::session::{Connection, FrameSource};

/// Topic patterns one stream may follow.
const MAX_PATTERNS: usize = 16;
/// Topics a position keeps a seq for (the limit of `Subscribe.resume_after`).
pub const MAX_TOPICS: usize = 1000;

/// A stream's position, as its id carries it.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
pub struct StreamPosition {
    /// When the stream began (ms since the epoch): topics without a seq start here.
    t: i64,
    /// Last seq delivered, per durable topic.
    c: BTreeMap<String, u64>,
    /// The epoch of each topic's seq in `c` (`Message.epoch`), where known: a topic
    /// deleted and created again since is resumed from its new log's start.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    e: BTreeMap<String, u64>,
}

impl StreamPosition {
    /// The id: base64url of the JSON, opaque to clients, safe in a header or a URL.
    pub fn encode(&self) -> String {
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

/// A stream's request: `topic=` (repeated), `from=`, `token=`, and the position to
/// resume from, if any.
#[derive(Debug)]
pub struct Request {
    pub patterns: Vec<String>,
    pub from: Option<Position>,
    pub token: String,
    /// Other parameters the endpoint takes (`timeout`), by name.
    pub extra: HashMap<String, String>,
}

/// Parses the query; `extra` names the parameters beyond `topic`, `from` and `token`
/// that the endpoint takes.
pub fn parse(query: Option<&str>, extra: &[&str]) -> Result<Request, Refusal> {
    let mut patterns = Vec::new();
    let mut from = None;
    let mut token = String::new();
    let mut others = HashMap::new();
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*key {
            "topic" => patterns.push(value.into_owned()),
            "from" => {
                let p = rtc_proto::position::parse_start(&value)
                    .map_err(|e| Refusal::InvalidRequest(e.to_string()))?;
                from = p.position;
            }
            "token" => token = value.into_owned(),
            k if extra.contains(&k) => {
                others.insert(k.to_string(), value.into_owned());
            }
            other => {
                return Err(Refusal::InvalidRequest(format!(
                    "unknown parameter {other:?} (topic, from, token{})",
                    extra.iter().map(|e| format!(", {e}")).collect::<String>()
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
        extra: others,
    })
}

/// A stream ready to start: the frames its source sends, and where it stands.
pub struct Opened {
    /// `Hello`, then one `Subscribe` per pattern.
    pub frames: VecDeque<Frame>,
    /// What the tracker starts from.
    pub tracker: Tracker,
    /// Subscriptions that will send `ReplayEnd` (those with history to catch up).
    pub replaying: usize,
}

/// Checks a stream's request (`resume`: the id it resumes from, if any) and builds what
/// its session starts with (the origin is checked for every route, see `cors`). Every refusal here is answered with an HTTP status, before
/// the stream starts; the session checks the token and patterns again.
pub fn open(
    g: &Gateway,
    headers: &HeaderMap,
    request: Request,
    resume: Option<&str>,
) -> Result<Opened, Refusal> {
    let who = identity(g, headers, Some(&request.token))?;
    if let Some(p) = request.patterns.iter().find(|p| !who.can_subscribe(p)) {
        let msg = format!("user {:?} may not subscribe to {p:?}", who.name());
        return Err(Refusal::PermissionDenied(msg));
    }
    let resume = match resume {
        None => None,
        Some(id) => Some(StreamPosition::decode(id).ok_or_else(|| {
            Refusal::InvalidRequest("not a stream position this broker gave".into())
        })?),
    };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let token = bearer.map_or(request.token.clone(), str::to_string);
    let (mut position, start) = match resume {
        // Topics with a seq continue after it; the others from `from`, or from when the
        // stream first began.
        Some(p) => {
            let start = request.from.unwrap_or(Position::TimeMs(p.t));
            (p, Some(start))
        }
        None => (
            StreamPosition {
                t: now_ms(),
                ..StreamPosition::default()
            },
            request.from,
        ),
    };
    // A topic deleted and created again since: its seqs are another log's, which the
    // stream has seen none of.
    let epochs = std::mem::take(&mut position.e);
    for (topic, epoch) in epochs {
        match g.shared.log.topic(&topic).map(|t| t.epoch) {
            Some(now) if now == epoch => {
                position.e.insert(topic, epoch);
            }
            _ => {
                position.c.insert(topic, 0);
            }
        }
    }
    let replaying = match start {
        None | Some(Position::New(_)) if position.c.is_empty() => 0,
        _ => request.patterns.len(),
    };
    let mut frames = VecDeque::new();
    frames.push_back(Frame::from_op(Op::Hello(v1::Hello {
        protocol_version: PROTOCOL_VERSION,
        client_name: "http-stream".into(),
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
    Ok(Opened {
        frames,
        tracker: Tracker {
            position,
            recent: HashMap::new(),
            tick: 0,
            patterns: request.patterns,
        },
        replaying,
    })
}

/// What a frame the broker sent means to a stream.
#[derive(Debug)]
pub enum Item {
    /// A message to hand on; the stream's id after it (`None` for an ephemeral topic's,
    /// which does not move the position).
    Message {
        data: serde_json::Value,
        id: Option<String>,
    },
    /// A topic's next message is not the one after the last delivered.
    Gap(serde_json::Value),
    /// A pattern's history is done.
    Live(serde_json::Value),
    /// An `Error` frame: `{"code", "message"}`.
    Error(serde_json::Value),
}

/// A stream's position, moved by what it delivers. See the module docs.
#[derive(Debug)]
pub struct Tracker {
    position: StreamPosition,
    /// When each topic of the position was last delivered (a counter), to keep the most
    /// recent ones.
    recent: HashMap<String, u64>,
    tick: u64,
    /// The stream's patterns, by sub_id - 1.
    patterns: Vec<String>,
}

impl Tracker {
    /// The position so far, as an id.
    pub fn id(&self) -> String {
        self.position.encode()
    }

    /// What `frame` means to the stream, in order (a gap before its message).
    pub fn items(&mut self, frame: Frame, out: &mut Vec<Item>) {
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
                out.push(Item::Live(serde_json::json!({ "pattern": pattern })));
            }
            Some(Op::Error(e)) => {
                let code = e
                    .error_code()
                    .as_str_name()
                    .trim_start_matches("ERROR_CODE_");
                out.push(Item::Error(
                    serde_json::json!({ "code": code, "message": e.message }),
                ));
            }
            // Welcome, SubAck, Pong and the rest are for a client that sent requests.
            _ => {}
        }
    }

    fn message(&mut self, m: v1::Message, out: &mut Vec<Item>) {
        let v1::Message {
            topic,
            payload,
            headers,
            seq,
            timestamp_ms,
            msg_id,
            delivery_count: _,
            // A stream cannot answer a request (docs/protocol.md, "Request-reply").
            reply_to: _,
            epoch,
        } = m;
        let mut id = None;
        if seq != 0 && epoch != 0 && self.position.e.get(&topic) != Some(&epoch) {
            // A new log under this name (the topic was deleted and created again): its
            // seqs are no duplicates of the old one's.
            if self.position.e.insert(topic.clone(), epoch).is_some() {
                self.position.c.remove(&topic);
            }
        }
        if seq != 0 {
            match self.position.c.get(&topic).copied() {
                // Already delivered (two patterns matching one topic, or the overlap of
                // a resume).
                Some(last) if seq <= last => return,
                Some(last) if seq > last + 1 => {
                    out.push(Item::Gap(
                        serde_json::json!({ "topic": topic, "after": last, "next": seq }),
                    ));
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
        out.push(Item::Message { data, id });
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
                self.position.e.remove(&oldest);
                self.recent.remove(&oldest);
            }
        }
    }
}

/// What a stream's HTTP request gets of the broker's frames: the sink of its session,
/// through [`Frames`].
pub trait StreamSink: Send + 'static {
    /// Writes what goes before anything else (SSE's `retry:` hint).
    fn start(&mut self) -> impl std::future::Future<Output = std::io::Result<()>> + Send {
        async { Ok(()) }
    }
    /// Hands on frames the broker sent.
    fn frames(
        &mut self,
        frames: Vec<Frame>,
    ) -> impl std::future::Future<Output = std::io::Result<()>> + Send;
    /// The session is over: nothing more comes.
    fn end(&mut self);
}

/// A [`StreamSink`] as the session's [`FrameSink`]: the writer's length-prefixed frames
/// decoded and handed on.
pub struct Frames<K>(K);

impl<K: StreamSink> FrameSink for Frames<K> {
    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let frames = frames(bytes)?;
        self.0.frames(frames).await
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }

    async fn close(&mut self) {
        self.0.end();
    }
}

/// A stream before its session: its made-up source and its sink.
pub struct StreamIncoming<S, K> {
    pub source: S,
    pub sink: K,
    pub peer: String,
    /// `sse` or `poll`, for the metrics.
    pub transport: &'static str,
}

impl<S: FrameSource, K: StreamSink> Incoming for StreamIncoming<S, K> {
    type Source = S;
    type Sink = Frames<K>;

    fn peer(&self) -> String {
        self.peer.clone()
    }

    fn transport(&self) -> &'static str {
        self.transport
    }

    async fn open(self, _max_frame_size: usize) -> std::io::Result<Connection<S, Frames<K>>> {
        let StreamIncoming {
            source,
            mut sink,
            peer,
            transport: _,
        } = self;
        sink.start().await?;
        Ok(Connection {
            source,
            sink: Frames(sink),
            peer,
            direct: None,
            datagrams: None,
        })
    }

    async fn refuse(self, error: Frame) {
        let mut sink = self.sink;
        let _ = sink.frames(vec![error]).await;
    }
}

/// Splits what the session's writer hands a sink into frames: whole length-prefixed
/// frames, one or many.
fn frames(bytes: &[u8]) -> std::io::Result<Vec<Frame>> {
    use bytes::Buf;
    use prost::Message as _;
    use rtc_proto::codec::LEN_PREFIX;
    let mut rest = bytes;
    let mut out = Vec::new();
    while !rest.is_empty() {
        if rest.len() < LEN_PREFIX {
            return Err(std::io::Error::other("a partial length prefix"));
        }
        let len = (&rest[..LEN_PREFIX]).get_u32() as usize;
        let Some(frame) = rest.get(LEN_PREFIX..LEN_PREFIX + len) else {
            return Err(std::io::Error::other("a partial frame"));
        };
        out.push(Frame::decode(frame).map_err(std::io::Error::other)?);
        rest = &rest[LEN_PREFIX + len..];
    }
    Ok(out)
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
            e: [("ünï.côdé".to_string(), 4)].into(),
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
        assert!(parse(Some("topic=chat.%3E&from=first"), &[]).is_ok());
        assert!(parse(None, &[]).is_err(), "no topic");
        assert!(parse(Some("topic=a..b"), &[]).is_err(), "bad pattern");
        assert!(
            parse(Some("topic=a&from=sometime"), &[]).is_err(),
            "bad position"
        );
        assert!(
            parse(Some("topic=a&colour=blue"), &[]).is_err(),
            "unknown parameter"
        );
        assert!(
            parse(Some("topic=a&timeout=5s"), &[]).is_err(),
            "not taken here"
        );
        let r = parse(
            Some("topic=a&topic=b.*&token=s3cret&timeout=5s"),
            &["timeout"],
        )
        .unwrap();
        assert_eq!((r.patterns.len(), r.token.as_str()), (2, "s3cret"));
        assert_eq!(r.extra.get("timeout").map(String::as_str), Some("5s"));
    }

    #[test]
    fn a_tracker_drops_repeats_and_reports_jumps() {
        let mut t = Tracker {
            position: StreamPosition::default(),
            recent: HashMap::new(),
            tick: 0,
            patterns: vec!["a.>".into()],
        };
        let deliver = |seq| {
            Frame::from_op(Op::Deliver(v1::Deliver {
                sub_id: 1,
                message: Some(v1::Message {
                    topic: "a.x".into(),
                    seq,
                    payload: bytes::Bytes::from_static(&[0xff]),
                    ..Default::default()
                }),
            }))
        };
        let mut out = Vec::new();
        for seq in [1, 2, 2, 1, 5] {
            t.items(deliver(seq), &mut out);
        }
        let kinds: Vec<String> = out
            .iter()
            .map(|i| match i {
                Item::Message { data, .. } => format!("m{}", data["seq"]),
                Item::Gap(g) => format!("gap{}-{}", g["after"], g["next"]),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(kinds, ["m1", "m2", "gap2-5", "m5"]);
        let Item::Message { data, .. } = &out[0] else {
            unreachable!()
        };
        assert_eq!(data["payload_base64"], "/w==");
    }
}
