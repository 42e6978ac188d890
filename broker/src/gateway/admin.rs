//! The admin API under `/v1/admin/` (docs/admin.md), for operators and the dashboard.
//! Every route needs an admin identity (`Authorization: Bearer`, or `?token=` where a
//! browser cannot set headers: the events stream): 401 without a valid token, 403 for
//! one that is not an admin's.
//!
//! - `GET stats`: uptime, version, connections, messages per second in and out (over the
//!   last second), topics, stored bytes, and the last five minutes per second
//!   ([`History`], sampled by [`sample`]);
//! - `GET connections`, `DELETE connections/{id}[?reason=…]`;
//! - `GET topics`, `GET|PUT|DELETE topics/{name}`, `POST topics/{name}/purge[?keep=N]`;
//! - `GET consumers`, `GET|PUT|DELETE consumers/{topic}/{name}`;
//! - `GET events` (the ring), `GET events/stream` (SSE: each new event, and a `stats`
//!   event every second);
//! - `GET settings`: the effective configuration, secrets redacted;
//! - `GET cluster`: the nodes of the cluster (`super::cluster`).
//!
//! The removals are the session's own ([`crate::session::Shared::delete_topic`] and
//! friends), so they behave exactly as over the protocol.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::Stream;
use rtc_proto::topic::validate_publish_topic;
use rtc_proto::v1::{self, StorageClass};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::{identity, refused, Gateway};
use crate::clock::now_ms;
use crate::engine::TopicView;
use crate::metrics::ConsumerFigures;
use crate::refusal::Refusal;
use crate::session::SettingsChange;

/// Seconds of per-second figures kept for the dashboard's charts.
const HISTORY: usize = 300;

/// One second's figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Sample {
    pub time_ms: i64,
    pub connections: usize,
    pub messages_in: u64,
    pub messages_out: u64,
}

/// The last [`HISTORY`] seconds, newest last.
#[derive(Debug, Default)]
pub struct History(Mutex<VecDeque<Sample>>);

impl History {
    fn push(&self, s: Sample) {
        let mut h = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if h.len() == HISTORY {
            h.pop_front();
        }
        h.push_back(s);
    }

    fn list(&self) -> Vec<Sample> {
        let h = self.0.lock().unwrap_or_else(|p| p.into_inner());
        h.iter().copied().collect()
    }

    fn last(&self) -> Option<Sample> {
        let h = self.0.lock().unwrap_or_else(|p| p.into_inner());
        h.back().copied()
    }
}

/// Once a second until `cancel`: the per-second figures, events for deliveries dropped
/// (slow consumers) and storage failures in that second, and the durable consumers'
/// metrics.
pub async fn sample(g: Gateway, cancel: CancellationToken) {
    // The topics config rules name exactly: their consumers get series of their own.
    let named: Vec<String> = g
        .shared
        .config
        .topic
        .iter()
        .map(|r| r.pattern.clone())
        .filter(|p| !p.contains(['*', '>']))
        .collect();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut was_in, mut was_out, mut was_dropped) = g.shared.metrics.totals();
    let (mut was_failures, mut was_failed, _) = g.shared.metrics.storage_state();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (now_in, now_out, dropped) = g.shared.metrics.totals();
        g.history.push(Sample {
            time_ms: now_ms(),
            connections: g.shared.connections.len(),
            messages_in: now_in - was_in,
            messages_out: now_out - was_out,
        });
        if dropped > was_dropped {
            g.shared.events.record(
                "slow_consumer",
                format!(
                    "{} message(s) dropped for connections that read too slowly",
                    dropped - was_dropped
                ),
            );
        }
        (was_in, was_out, was_dropped) = (now_in, now_out, dropped);
        let (failures, failed, error) = g.shared.metrics.storage_state();
        if failures > was_failures {
            g.shared.events.record(
                "storage_error",
                format!("the store failed and refuses writes: {error}"),
            );
        } else if was_failed && !failed {
            g.shared.events.record(
                "storage_recovered",
                "the store is back: writes are accepted again",
            );
        }
        (was_failures, was_failed) = (failures, failed);
        let figures: Vec<ConsumerFigures> = g
            .shared
            .consumers
            .here()
            .await
            .into_iter()
            .map(|c| ConsumerFigures {
                topic: c.topic,
                name: c.name,
                pending: c.pending,
                redelivered: c.redelivered,
                dead_lettered: c.dead_lettered,
            })
            .collect();
        g.shared.metrics.set_consumers(&figures, &named);
    }
}

/// `?token=`, for the routes a browser opens without headers.
#[derive(Debug, Default, Deserialize)]
pub(super) struct TokenQuery {
    token: Option<String>,
}

/// The caller is an admin, or the refusal to answer with.
pub(super) fn admin(
    g: &Gateway,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<(), Refusal> {
    let who = identity(g, headers, query_token)?;
    if who.is_admin() {
        return Ok(());
    }
    let msg = format!("user {:?} is not an admin", who.name());
    g.shared
        .events
        .record("auth_failure", format!("admin API: {msg}"));
    Err(Refusal::PermissionDenied(msg))
}

/// Runs `answer` for an admin caller.
macro_rules! for_admin {
    ($g:expr, $headers:expr, $token:expr, $answer:expr) => {
        match admin(&$g, &$headers, $token) {
            Ok(()) => $answer,
            Err(refusal) => refused(refusal),
        }
    };
}

pub(super) async fn stats(State(g): State<Gateway>, headers: HeaderMap) -> Response {
    for_admin!(g, headers, None, Json(stats_json(&g, true)).into_response())
}

fn stats_json(g: &Gateway, with_history: bool) -> Value {
    let topics = g.shared.log.topics();
    let stored: u64 = topics.iter().map(|(_, t)| t.stats.bytes).sum();
    let last = g.history.last();
    let (total_in, total_out, dropped) = g.shared.metrics.totals();
    let mut v = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": g.shared.started.elapsed().as_secs(),
        "connections": g.shared.connections.len(),
        "messages_in_per_s": last.map_or(0, |s| s.messages_in),
        "messages_out_per_s": last.map_or(0, |s| s.messages_out),
        "messages_in": total_in,
        "messages_out": total_out,
        "dropped": dropped,
        "topics": topics.len(),
        "stored_bytes": stored,
    });
    if with_history {
        v["history"] = json!(g.history.list());
    }
    v
}

pub(super) async fn connections(State(g): State<Gateway>, headers: HeaderMap) -> Response {
    for_admin!(
        g,
        headers,
        None,
        Json(json!({ "connections": g.shared.connections.list() })).into_response()
    )
}

/// `?reason=`, said to the client that is disconnected.
#[derive(Debug, Deserialize)]
pub(super) struct Kick {
    #[serde(default)]
    reason: Option<String>,
}

pub(super) async fn disconnect(
    State(g): State<Gateway>,
    Path(id): Path<u64>,
    Query(kick): Query<Kick>,
    headers: HeaderMap,
) -> Response {
    if let Err(refusal) = admin(&g, &headers, None) {
        return refused(refusal);
    }
    let reason = kick.reason.unwrap_or_else(|| "no reason given".into());
    if !g.shared.connections.kick(id, &reason) {
        return refused(Refusal::NotFound(format!("no connection {id}")));
    }
    g.shared
        .events
        .record("kick", format!("connection {id} disconnected: {reason}"));
    StatusCode::NO_CONTENT.into_response()
}

fn topic_json(name: &str, t: &TopicView) -> Value {
    let s = &t.settings;
    json!({
        "name": name,
        "storage": if t.is_durable() { "durable" } else { "ephemeral" },
        "epoch": t.epoch,
        "first_seq": t.stats.first_seq,
        "last_seq": t.stats.last_seq,
        "messages": t.stats.messages,
        "bytes": t.stats.bytes,
        "last_time_ms": t.stats.last_ts_ms,
        "max_age_ms": s.max_age_ms,
        "max_msgs": s.max_msgs,
        "max_bytes": s.max_bytes,
        "dedup_window_ms": s.dedup_window_ms,
        "datagram": s.datagram,
    })
}

pub(super) async fn topics(State(g): State<Gateway>, headers: HeaderMap) -> Response {
    for_admin!(g, headers, None, {
        let list: Vec<Value> = g
            .shared
            .log
            .topics()
            .iter()
            .map(|(name, t)| topic_json(name, t))
            .collect();
        Json(json!({ "topics": list })).into_response()
    })
}

pub(super) async fn topic(
    State(g): State<Gateway>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    for_admin!(g, headers, None, {
        match g.shared.log.topic_now(&name).await {
            Some(t) => Json(topic_json(&name, &t)).into_response(),
            None => refused(Refusal::NotFound(format!("no topic {name:?}"))),
        }
    })
}

/// The body of `PUT topics/{name}`: its settings (all optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TopicBody {
    #[serde(default)]
    ephemeral: bool,
    #[serde(default)]
    max_age_ms: u64,
    #[serde(default)]
    max_msgs: u64,
    #[serde(default)]
    max_bytes: u64,
    #[serde(default)]
    dedup_window_ms: u64,
    #[serde(default)]
    datagram: bool,
}

pub(super) async fn create_topic(
    State(g): State<Gateway>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Option<Json<TopicBody>>,
) -> Response {
    if let Err(refusal) = admin(&g, &headers, None) {
        return refused(refusal);
    }
    if let Err(e) = validate_publish_topic(&name) {
        return refused(Refusal::InvalidTopic(format!("{name:?}: {e}")));
    }
    let TopicBody {
        ephemeral,
        max_age_ms,
        max_msgs,
        max_bytes,
        dedup_window_ms,
        datagram,
    } = body.map(|Json(b)| b).unwrap_or_default();
    let storage = if ephemeral {
        StorageClass::Ephemeral
    } else {
        StorageClass::Durable
    };
    let settings = v1::TopicSettings {
        storage: storage as i32,
        max_age_ms,
        max_msgs,
        max_bytes,
        dedup_window_ms,
        datagram,
    };
    match g.shared.log.create_topic(name.clone(), settings).await {
        Ok(view) => {
            g.shared
                .events
                .record("topic_created", format!("topic {name} created or changed"));
            Json(topic_json(&name, &view)).into_response()
        }
        Err(r) => refused(r),
    }
}

pub(super) async fn delete_topic(
    State(g): State<Gateway>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(refusal) = admin(&g, &headers, None) {
        return refused(refusal);
    }
    match g.shared.delete_topic(&name).await {
        Ok(told) => Json(json!({ "deleted": name, "subscriptions_told": told })).into_response(),
        Err(r) => refused(r),
    }
}

/// `?keep=N`.
#[derive(Debug, Deserialize)]
pub(super) struct Keep {
    #[serde(default)]
    keep: u64,
}

pub(super) async fn purge_topic(
    State(g): State<Gateway>,
    Path(name): Path<String>,
    Query(Keep { keep }): Query<Keep>,
    headers: HeaderMap,
) -> Response {
    if let Err(refusal) = admin(&g, &headers, None) {
        return refused(refusal);
    }
    match g.shared.purge_topic(&name, keep).await {
        Ok(view) => Json(topic_json(&name, &view)).into_response(),
        Err(r) => refused(r),
    }
}

fn consumer_json(c: &v1::ConsumerInfo) -> Value {
    let v1::ConsumerInfo {
        req_id: _,
        topic,
        name,
        ack_floor,
        next_seq,
        pending,
        redelivered,
        dead_lettered,
        members,
        dead_letter_topic,
    } = c;
    json!({
        "topic": topic,
        "name": name,
        "ack_floor": ack_floor,
        "next_seq": next_seq,
        "pending": pending,
        "redelivered": redelivered,
        "dead_lettered": dead_lettered,
        "members": members,
        "dead_letter_topic": dead_letter_topic,
    })
}

pub(super) async fn consumers(State(g): State<Gateway>, headers: HeaderMap) -> Response {
    if let Err(refusal) = admin(&g, &headers, None) {
        return refused(refusal);
    }
    let list: Vec<Value> = g
        .shared
        .consumers
        .all()
        .await
        .iter()
        .map(consumer_json)
        .collect();
    Json(json!({ "consumers": list })).into_response()
}

pub(super) async fn consumer(
    State(g): State<Gateway>,
    Path((topic, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(refusal) = admin(&g, &headers, None) {
        return refused(refusal);
    }
    match g.shared.consumers.info(&topic, &name).await {
        Some(c) => Json(consumer_json(&c)).into_response(),
        None => refused(Refusal::NotFound(format!(
            "no consumer {name:?} on topic {topic:?}"
        ))),
    }
}

/// The body of `PUT consumers/{topic}/{name}`: where a new consumer starts (the text
/// forms of `rtc-cli sub --from`; default `first`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ConsumerBody {
    #[serde(default)]
    start: Option<String>,
}

pub(super) async fn create_consumer(
    State(g): State<Gateway>,
    Path((topic, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Option<Json<ConsumerBody>>,
) -> Response {
    if let Err(refusal) = admin(&g, &headers, None) {
        return refused(refusal);
    }
    if let Err(e) = rtc_proto::topic::validate_topic(&topic) {
        return refused(Refusal::InvalidTopic(format!("{topic:?}: {e}")));
    }
    if let Err(e) = rtc_proto::topic::validate_consumer_name(&name) {
        return refused(Refusal::InvalidRequest(e));
    }
    let start = match body.and_then(|Json(b)| b.start) {
        None => v1::start_position::Position::First(true),
        Some(text) => match rtc_proto::position::parse_start(&text) {
            Ok(p) => p
                .position
                .unwrap_or(v1::start_position::Position::First(true)),
            Err(e) => return refused(Refusal::InvalidRequest(e.to_string())),
        },
    };
    match g.shared.consumers.create(&topic, &name, start).await {
        Ok(c) => Json(consumer_json(&c)).into_response(),
        Err(r) => refused(r),
    }
}

pub(super) async fn delete_consumer(
    State(g): State<Gateway>,
    Path((topic, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(refusal) = admin(&g, &headers, None) {
        return refused(refusal);
    }
    match g.shared.delete_consumer(&topic, &name).await {
        Ok(()) => Json(json!({ "deleted": { "topic": topic, "name": name } })).into_response(),
        Err(r) => refused(r),
    }
}

pub(super) async fn events(State(g): State<Gateway>, headers: HeaderMap) -> Response {
    for_admin!(
        g,
        headers,
        None,
        Json(json!({ "events": g.shared.events.list() })).into_response()
    )
}

/// `GET events/stream`: SSE of new events (`event: rtc-event`) and of the figures every
/// second (`event: stats`, the `stats` object without history).
pub(super) async fn event_stream(
    State(g): State<Gateway>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> Response {
    if let Err(refusal) = admin(&g, &headers, q.token.as_deref()) {
        return refused(refusal);
    }
    Sse::new(follow(g))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

fn follow(g: Gateway) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let live = g.shared.events.follow();
    let tick = tokio::time::interval(Duration::from_secs(1));
    futures_util::stream::unfold((g, live, tick), |(g, mut live, mut tick)| async move {
        loop {
            let event = tokio::select! {
                _ = g.cancel.cancelled() => return None,
                _ = tick.tick() => SseEvent::default().event("stats").json_data(stats_json(&g, false)),
                e = live.recv() => match e {
                    Ok(e) => SseEvent::default().event("rtc-event").id(e.id.to_string()).json_data(&e),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => SseEvent::default()
                        .event("rtc-lagged")
                        .json_data(json!({ "missed": n })),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                },
            };
            if let Ok(event) = event {
                return Some((Ok(event), (g, live, tick)));
            }
        }
    })
}

pub(super) async fn settings(State(g): State<Gateway>, headers: HeaderMap) -> Response {
    for_admin!(g, headers, None, Json(settings_json(&g)).into_response())
}

/// `PATCH settings`: a [`SettingsChange`] as JSON; the settings after.
pub(super) async fn change_settings(
    State(g): State<Gateway>,
    headers: HeaderMap,
    Json(change): Json<SettingsChange>,
) -> Response {
    if let Err(refusal) = admin(&g, &headers, None) {
        return refused(refusal);
    }
    match g.shared.change(change) {
        Ok(_) => Json(settings_json(&g)).into_response(),
        Err(r) => refused(r),
    }
}

/// `POST reload`: rereads the config file, as SIGHUP does.
pub(super) async fn reload(State(g): State<Gateway>, headers: HeaderMap) -> Response {
    if let Err(refusal) = admin(&g, &headers, None) {
        return refused(refusal);
    }
    match g.shared.reload_file().await {
        Ok(changed) => Json(json!({ "reloaded": changed })).into_response(),
        Err(r) => refused(r),
    }
}

/// The effective configuration; token hashes and JWT secrets are left out.
fn settings_json(g: &Gateway) -> Value {
    let c = g.shared.live.current();
    let d = |d: Duration| humantime::format_duration(d).to_string();
    let users: Vec<Value> = c
        .user
        .iter()
        .map(|u| {
            json!({
                "name": u.name,
                "token_hash": "(redacted)",
                "publish": u.publish,
                "subscribe": u.subscribe,
                "admin": u.admin,
            })
        })
        .collect();
    let topics: Vec<Value> = c.topic.iter().map(|r| json!(format!("{r:?}"))).collect();
    let jwt = c.jwt.as_ref().map(|j| {
        json!({
            "hs256_secret": j.hs256_secret.as_ref().map(|_| "(redacted)"),
            "public_key_file": j.public_key_file,
            "algorithm": j.algorithm,
            "issuer": j.issuer,
            "audience": j.audience,
        })
    });
    json!({
        "tcp": c.tcp.to_string(),
        "http": c.http.map(|a| a.to_string()),
        "quic": c.quic.map(|a| a.to_string()),
        "data_dir": c.data_dir,
        "log": c.log,
        "fsync": format!("{:?}", c.fsync),
        "max_frame_size": c.max_frame_size,
        "max_payload": c.max_payload,
        "max_msg_id": c.max_msg_id,
        "heartbeat_interval": d(c.heartbeat_interval),
        "handshake_timeout": d(c.handshake_timeout),
        "outbound_queue_bytes": c.outbound_queue_bytes,
        "outbound_queue_frames": c.outbound_queue_frames,
        "max_connections": c.max_connections,
        "max_subscriptions_per_connection": c.max_subscriptions_per_connection,
        "max_topics": c.max_topics,
        "replay_buffer": c.replay_buffer,
        "store_engine": c.store_engine.to_string(),
        "store_cache": c.store_cache,
        "store_reserve": c.store_reserve,
        "publish_rate": c.publish_rate,
        "publish_burst": c.publish_burst,
        "request_timeout": d(c.request_timeout),
        "max_request_timeout": d(c.max_request_timeout),
        "max_requests_per_connection": c.max_requests_per_connection,
        "max_presence_info": c.max_presence_info,
        "presence_events_max": c.presence_events_max,
        "presence_update_rate": c.presence_update_rate,
        "allowed_origins": c.allowed_origins,
        "tls": c.tls_cert.is_some(),
        "users": users,
        "jwt": jwt,
        "topic_rules": topics,
        "adjustable": ["max_payload", "max_msg_id", "publish_rate", "publish_burst", "max_subscriptions_per_connection", "max_requests_per_connection", "log"],
        "log_adjustable": g.shared.live.can_set_log(),
        "config_file": g.shared.live.file(),
    })
}
