//! `GET /v1/admin/cluster` (docs/admin.md): the nodes of the cluster this broker is part
//! of, with their connection counts, as their heartbeats in Redis tell
//! (`crate::bus::Bus::nodes`); on a broker of its own, just this one.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::admin::admin;
use super::{refused, Gateway};
use crate::refusal::Refusal;

/// The cluster view; see the module docs.
pub(super) async fn cluster(State(g): State<Gateway>, headers: HeaderMap) -> Response {
    if let Err(refusal) = admin(&g, &headers, None) {
        return refused(refusal);
    }
    let bus = &g.shared.bus;
    let Some(me) = bus.node().map(str::to_string) else {
        return Json(json!({
            "cluster": false,
            "node": null,
            "nodes": [{"node": null, "this": true, "alive": true,
                       "connections": g.shared.connections.len()}],
        }))
        .into_response();
    };
    match bus.nodes().await {
        Ok(nodes) => {
            let nodes: Vec<_> = nodes
                .into_iter()
                .map(|n| {
                    json!({
                        "this": n.node == me,
                        "node": n.node,
                        "alive": n.alive,
                        "connections": n.connections,
                        "seen_ms": n.seen_ms,
                    })
                })
                .collect();
            Json(json!({"cluster": true, "node": me, "nodes": nodes})).into_response()
        }
        Err(e) => refused(Refusal::Unavailable(format!(
            "the cluster's Redis cannot be reached: {e}"
        ))),
    }
}
