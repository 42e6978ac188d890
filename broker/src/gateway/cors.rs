//! Origins and CORS, for every route of the gateway.
//!
//! A request with an `Origin` header comes from a browser page. It is served only when
//! that origin is the broker's own host or is listed in `Config::allowed_origins` (`"*"`:
//! any); otherwise it gets 403 `PERMISSION_DENIED` before any handler runs, so a page of
//! another site can neither read from nor publish through the broker (a plain form POST
//! would otherwise reach it). A request without `Origin` (curl, a backend, a mobile app)
//! is not a page's, and is served.
//!
//! An allowed cross-origin request gets `Access-Control-Allow-Origin` with its origin
//! (and `Vary: Origin`), so the page may read the answer. A preflight (`OPTIONS` with
//! `Access-Control-Request-Method`) is answered here: 204 with the methods and request
//! headers the gateway takes, cached for [`MAX_AGE`] seconds.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{refused, Gateway};
use crate::refusal::Refusal;

/// How long a browser may cache a preflight's answer, in seconds.
const MAX_AGE: &str = "600";
/// The methods of the gateway's routes.
const METHODS: &str = "GET, POST, OPTIONS";
/// The request headers a page may send.
const HEADERS: &str = "authorization, content-type, idempotency-key, last-event-id";
/// The answer headers a page may read besides the simple ones.
const EXPOSED: &str = "content-type";

/// Whether a request with these headers may be served: no `Origin` (not a browser
/// page), the page's own host, or an allowed origin.
pub(super) fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> Result<(), Refusal> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("");
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let same_host = origin
        .split_once("://")
        .is_some_and(|(_, rest)| !host.is_empty() && rest == host);
    if same_host || allowed.iter().any(|a| a == "*" || a == origin) {
        return Ok(());
    }
    Err(Refusal::PermissionDenied(format!(
        "origin {origin:?} is not allowed (allowed_origins in the broker's config)"
    )))
}

/// The middleware: see the module docs.
pub(super) async fn cors(State(g): State<Gateway>, request: Request, next: Next) -> Response {
    let origin = request.headers().get(header::ORIGIN).cloned();
    if let Err(refusal) = origin_allowed(request.headers(), &g.shared.config.allowed_origins) {
        return refused(refusal);
    }
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = if preflight {
        let mut r = StatusCode::NO_CONTENT.into_response();
        let h = r.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(METHODS),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(HEADERS),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static(MAX_AGE),
        );
        r
    } else {
        next.run(request).await
    };
    if let Some(origin) = origin {
        let h = response.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.append(header::VARY, HeaderValue::from_static("origin"));
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSED),
        );
    }
    response
}
