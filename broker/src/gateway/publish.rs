//! HTTP publish.
//!
//! - `POST /v1/publish/{topic}`: the body is the payload. `Idempotency-Key` sets the
//!   message ID (dedup, as `msg_id` over TCP). The answer is `{"seq": N, "duplicate":
//!   false}` once the message is stored per the fsync policy (`seq` 0 on an ephemeral
//!   topic, answered once it is fanned out).
//! - `POST /v1/publish` with a newline-delimited JSON body: one message per line,
//!   `{"topic": …, "payload": "text"}` or `{"topic": …, "payload_base64": "…"}`, with
//!   optional `"msg_id"` and `"headers"`. The answer is `{"results": [...]}`, one per line
//!   in order: `{"seq": N, "duplicate": false}` or `{"code": …, "message": …}`. The
//!   lines are handed to the log engine together, so they share its group commit.
//!
//! Every message passes the checks of any publish (`crate::publish`), and goes through
//! the log engine and delivery like a session's: a durable message's answer comes back
//! on a reply channel ([`AnswerTo::Reply`]) instead of a connection's queue. A body is at
//! most `max_payload` bytes, for a batch too. Each message takes a token of its HTTP
//! connection's publish rate (`publish_rate`, `publish_burst`); without one it is refused
//! with 429 `RATE_LIMITED` (a batch line: that line's result), never held.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine as _;
use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::oneshot;

use super::{identity, refused, Gateway, RateLimit};
use crate::auth::Identity;
use crate::clock::now_ms;
use crate::delivery::{Answer, AnswerTo, Origin};
use crate::metrics::{AuthFailure, Tally};
use crate::publish::{self, Contents};
use crate::refusal::Refusal;
use crate::router::Flushes;
use crate::topic::is_durable;

/// Lines one batch may carry.
const MAX_BATCH: usize = 10_000;

/// One line of a batch.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    topic: String,
    #[serde(default)]
    payload: Option<String>,
    #[serde(default)]
    payload_base64: Option<String>,
    #[serde(default)]
    msg_id: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

/// A publish handed on: its outcome now, or later on a channel.
enum Pending {
    Done(Result<(u64, bool), Refusal>),
    Waiting(oneshot::Receiver<Answer>),
}

impl Pending {
    async fn outcome(self) -> Result<(u64, bool), Refusal> {
        match self {
            Pending::Done(r) => r,
            Pending::Waiting(rx) => match rx.await {
                Ok(Answer::Stored { seq, duplicate }) => Ok((seq, duplicate)),
                Ok(Answer::Refused(refusal)) => Err(refusal),
                Err(_) => Err(Refusal::Storage(
                    "the log engine stopped before storing the message".into(),
                )),
            },
        }
    }
}

/// Who sends a publish request (its token), and its body of at most `max_payload`
/// bytes.
async fn who_and_body(
    g: &Gateway,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Identity, Bytes), Refusal> {
    let who = identity(g, headers, None)?;
    let max = g.shared.live.max_payload();
    let bytes = axum::body::to_bytes(body, max).await.map_err(|e| {
        // Over the limit, or the client stopped sending: either way nothing is published.
        Refusal::PayloadTooLarge(format!(
            "request body above {max} bytes, or unreadable: {e}"
        ))
    })?;
    Ok((who, bytes))
}

pub(super) async fn one(
    State(g): State<Gateway>,
    Extension(rate): Extension<RateLimit>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    request: Body,
) -> Response {
    let (identity, payload) = match who_and_body(&g, &headers, request).await {
        Ok(parts) => parts,
        Err(r) => return refused(r),
    };
    let msg_id = match headers.get("idempotency-key").map(|v| v.to_str()) {
        None => String::new(),
        Some(Ok(key)) => key.to_string(),
        Some(Err(_)) => {
            let r = Refusal::InvalidRequest("Idempotency-Key is not visible ASCII".into());
            return refused(r);
        }
    };
    if let Err(r) = rate.take(g.shared.live.publish_rate().0) {
        return refused(r);
    }
    let contents = Contents {
        payload,
        headers: BTreeMap::new(),
        msg_id,
    };
    match start(&g, &identity, topic, contents).await.outcome().await {
        Ok(stored) => Json(result(Ok(stored))).into_response(),
        Err(r) => refused(r),
    }
}

pub(super) async fn batch(
    State(g): State<Gateway>,
    Extension(rate): Extension<RateLimit>,
    headers: HeaderMap,
    request: Body,
) -> Response {
    let (identity, text) = match who_and_body(&g, &headers, request).await {
        Ok(parts) => parts,
        Err(r) => return refused(r),
    };
    let lines: Vec<&[u8]> = text
        .split(|b| *b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .collect();
    if lines.len() > MAX_BATCH {
        let r = Refusal::InvalidRequest(format!(
            "{} lines in one batch; the limit is {MAX_BATCH}",
            lines.len()
        ));
        return refused(r);
    }
    let mut pending = Vec::with_capacity(lines.len());
    for (i, line) in lines.into_iter().enumerate() {
        let p = match parse(line) {
            // Each line is one publish against the connection's rate.
            Ok((topic, contents)) => match rate.take(g.shared.live.publish_rate().0) {
                Ok(()) => start(&g, &identity, topic, contents).await,
                Err(r) => Pending::Done(Err(r)),
            },
            Err(msg) => Pending::Done(Err(Refusal::InvalidRequest(format!(
                "line {}: {msg}",
                i + 1
            )))),
        };
        pending.push(p);
    }
    let mut results = Vec::with_capacity(pending.len());
    for p in pending {
        results.push(result(p.outcome().await));
    }
    Json(serde_json::json!({ "results": results })).into_response()
}

/// One batch line as a publish.
fn parse(line: &[u8]) -> Result<(String, Contents), String> {
    let Line {
        topic,
        payload,
        payload_base64,
        msg_id,
        headers,
    } = serde_json::from_slice(line).map_err(|e| format!("not a message: {e}"))?;
    let payload = match (payload, payload_base64) {
        (Some(text), None) => Bytes::from(text),
        (None, Some(b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map(Bytes::from)
            .map_err(|e| format!("payload_base64: {e}"))?,
        (None, None) => Bytes::new(),
        (Some(_), Some(_)) => return Err("both payload and payload_base64".into()),
    };
    Ok((
        topic,
        Contents {
            payload,
            headers,
            msg_id,
        },
    ))
}

/// A result as JSON: `{"seq", "duplicate"}` or `{"code", "message"}`.
fn result(r: Result<(u64, bool), Refusal>) -> serde_json::Value {
    match r {
        Ok((seq, duplicate)) => serde_json::json!({ "seq": seq, "duplicate": duplicate }),
        Err(refusal) => super::refusal_json(&refusal),
    }
}

/// Checks one publish and hands it on: fanned out at once on an ephemeral topic, given
/// to the log engine on a durable one.
async fn start(g: &Gateway, identity: &Identity, topic: String, contents: Contents) -> Pending {
    let shared = &g.shared;
    if g.cancel.is_cancelled() {
        return Pending::Done(Err(Refusal::ShuttingDown(
            "the broker is shutting down".into(),
        )));
    }
    let settings = match publish::check_topic(&*shared.log, identity, &topic) {
        Ok(s) => s,
        Err(r) => {
            if let Refusal::PermissionDenied(_) = r {
                shared.metrics.auth_failed(AuthFailure::PermissionDenied);
            }
            return Pending::Done(Err(r));
        }
    };
    let (message, len) =
        match publish::message(&shared.config, &shared.live, topic, contents, now_ms()) {
            Ok(m) => m,
            Err(r) => return Pending::Done(Err(r)),
        };
    let mut tally = Tally {
        messages_in: 1,
        bytes_in: message.payload.len() as u64,
        ..Tally::default()
    };
    if !is_durable(&settings) {
        let mut later = Flushes::default();
        let relayed = publish::relay(&*shared.bus, &message, len, settings.datagram);
        let fanout = shared.router.publish(
            &message.topic,
            0,
            settings.datagram,
            || relayed.unwrap_or_else(|| rtc_proto::codec::encode_message_sized(&message, len)),
            &mut later,
        );
        later.flush_all();
        tally.messages_out = fanout.queued as u64;
        tally.bytes_out = (fanout.queued * len) as u64;
        shared.metrics.add(tally);
        return Pending::Done(Ok((0, false)));
    }
    let permit = shared.delivery.permit().await;
    let (tx, rx) = oneshot::channel();
    let origin = Origin {
        received: tokio::time::Instant::now(),
        to: AnswerTo::Reply(tx),
        permit,
    };
    shared.metrics.add(tally);
    let append = publish::append(message, origin);
    match shared.publishes.append(append, false) {
        Ok(()) => Pending::Waiting(rx),
        Err(stopped) => Pending::Done(Err(stopped.into())),
    }
}
