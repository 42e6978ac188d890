//! `GET /v1/presence/{topic}[?after=USER&limit=N&count_only=true]`: who is in a room, as
//! JSON — `{"topic", "members", "connections", "list": [{"user", "info", "connections",
//! "state"}], "next"}`, the fields of `PresenceInfo` (docs/protocol.md, "Presence"). It
//! needs subscribe permission on the topic, from `Authorization: Bearer` or `?token=`.
//! A member's `info` is the app's JSON, given as JSON (not as a string of it).

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use rtc_proto::topic::validate_topic;
use rtc_proto::v1;
use serde::Deserialize;

use super::{identity, refused, Gateway};
use crate::refusal::Refusal;

/// The query string.
#[derive(Debug, Deserialize)]
pub(super) struct Page {
    #[serde(default)]
    after: String,
    #[serde(default)]
    limit: u32,
    #[serde(default)]
    count_only: bool,
    #[serde(default)]
    token: Option<String>,
}

pub(super) async fn get(
    State(g): State<Gateway>,
    Path(topic): Path<String>,
    Query(page): Query<Page>,
    headers: HeaderMap,
) -> Response {
    let who = match identity(&g, &headers, page.token.as_deref()) {
        Ok(who) => who,
        Err(r) => return refused(r),
    };
    if let Err(e) = validate_topic(&topic) {
        return refused(Refusal::InvalidTopic(format!("{topic:?}: {e}")));
    }
    if !who.can_subscribe(&topic) {
        let msg = format!("user {:?} may not see who is in {topic:?}", who.name());
        return refused(Refusal::PermissionDenied(msg));
    }
    let request = v1::PresenceRequest {
        req_id: 0,
        topic,
        count_only: page.count_only,
        after: page.after,
        limit: page.limit,
    };
    let info = g.shared.presence.query_now(&request).await;
    let v1::PresenceInfo {
        req_id: _,
        topic,
        members,
        connections,
        list,
        next,
    } = info;
    let list: Vec<serde_json::Value> = list
        .into_iter()
        .map(|m| {
            let v1::PresenceMember {
                user,
                info,
                connections,
                state,
            } = m;
            let info: serde_json::Value = match info.as_str() {
                "" => serde_json::Value::Null,
                text => serde_json::from_str(text).unwrap_or(serde_json::Value::String(info)),
            };
            serde_json::json!({ "user": user, "info": info, "connections": connections, "state": state })
        })
        .collect();
    Json(serde_json::json!({
        "topic": topic,
        "members": members,
        "connections": connections,
        "list": list,
        "next": next,
    }))
    .into_response()
}
