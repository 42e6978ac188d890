//! The HTTP gateway: how browsers and mobile apps reach the broker. One HTTP/1.1
//! listener (HTTPS with the broker's TLS certificate) serves:
//!
//! - `GET /healthz`: 200 while the broker serves;
//! - `GET /readyz`: 200 once the store is open and until the broker stops (503 then);
//! - `GET /metrics`: Prometheus metrics (see `crate::metrics`);
//! - `GET /examples/chat` and `/examples/call`: the example pages (`examples/web/`), and
//!   `/examples/rtc-client.js`, the browser build of client-js they import;
//! - `GET /v1/ws`: a WebSocket upgrade, subprotocol `rtc.v1.proto` (see [`ws`]), handed
//!   to the one accept path like any connection;
//! - `GET /v1/sse`: Server-Sent Events, resumable with `Last-Event-ID` (see `sse`);
//! - `GET /v1/poll`: long-polling from a position (see `poll`);
//! - `POST /v1/publish/{topic}` and `POST /v1/publish` (a batch): see `publish`;
//! - `GET /v1/presence/{topic}`: who is in a room (see `presence`);
//! - `GET /`: the dashboard, and `/v1/admin/…`: the admin API (see `admin`).
//!
//! Each TCP connection is served by hyper with a header-read timeout of the broker's
//! `handshake_timeout` (a client that dribbles its headers is closed) and, with TLS, the
//! TLS handshake under the same limit. axum routes the requests; a WebSocket upgrade
//! ([`ws::upgrade`]) hands the socket to [`crate::accept::Acceptor::admit`], which
//! applies the connection limit and runs the session.
//!
//! A request that fails is answered with an HTTP status and a JSON body carrying the same
//! stable code as the binary protocol: `{"code": "PERMISSION_DENIED", "message": "…"}`
//! ([`refused`], [`status_of`]).
//!
//! Origins and CORS, for every route: see `cors`. By default no page of another origin
//! may use the gateway.

mod admin;
mod cluster;
mod cors;
mod poll;
mod presence;
mod publish;
mod sse;
mod stream;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::accept::Acceptor;
use crate::error::BrokerError;
use crate::metrics::AuthFailure;
use crate::refusal::Refusal;
use crate::session::Shared;
use crate::throttle::Throttle;

/// The HTTP listener, bound and not yet serving.
pub struct Http {
    listener: TcpListener,
    addr: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http")
            .field("addr", &self.addr)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Http {
    /// Binds `addr`; with `tls`, every connection speaks HTTPS.
    pub async fn bind(
        addr: SocketAddr,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Result<Http, BrokerError> {
        let bind_err = |source| BrokerError::Bind {
            transport: "http",
            addr,
            source,
        };
        let listener = TcpListener::bind(addr).await.map_err(bind_err)?;
        let addr = listener.local_addr().map_err(bind_err)?;
        Ok(Http {
            listener,
            addr,
            tls,
        })
    }

    /// The address it is bound to (the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https` with TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// Serves until `cancel`, every connection on `tracker`.
    pub fn spawn(self, gateway: Gateway, cancel: CancellationToken, tracker: &TaskTracker) {
        tracker.spawn(admin::sample(gateway.clone(), cancel.clone()));
        tracker.spawn(serve(self, gateway, cancel, tracker.clone()));
    }
}

/// What the gateway's handlers share.
#[derive(Debug, Clone)]
pub struct Gateway {
    shared: Arc<Shared>,
    acceptor: Acceptor,
    cancel: CancellationToken,
    /// The admin API's per-second figures.
    history: Arc<admin::History>,
}

impl Gateway {
    /// Handlers over the broker's services; WebSocket sessions go through `acceptor`.
    pub fn new(shared: Arc<Shared>, acceptor: Acceptor, cancel: CancellationToken) -> Self {
        Gateway {
            shared,
            acceptor,
            cancel,
            history: Arc::default(),
        }
    }

    fn router(self) -> Router {
        Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .route("/examples/chat", get(chat_example))
            .route("/examples/call", get(call_example))
            .route("/examples/rtc-client.js", get(client_js))
            .route("/v1/ws", get(ws::upgrade))
            .route("/v1/sse", get(sse::stream))
            .route("/v1/poll", get(poll::poll))
            .route("/v1/publish", post(publish::batch))
            .route("/v1/publish/{topic}", post(publish::one))
            .route("/v1/presence/{topic}", get(presence::get))
            .route("/", get(dashboard))
            .route("/v1/admin/stats", get(admin::stats))
            .route("/v1/admin/connections", get(admin::connections))
            .route("/v1/admin/connections/{id}", delete(admin::disconnect))
            .route("/v1/admin/topics", get(admin::topics))
            .route(
                "/v1/admin/topics/{name}",
                get(admin::topic)
                    .put(admin::create_topic)
                    .delete(admin::delete_topic),
            )
            .route("/v1/admin/topics/{name}/purge", post(admin::purge_topic))
            .route("/v1/admin/cluster", get(cluster::cluster))
            .route("/v1/admin/consumers", get(admin::consumers))
            .route(
                "/v1/admin/consumers/{topic}/{name}",
                get(admin::consumer)
                    .put(admin::create_consumer)
                    .delete(admin::delete_consumer),
            )
            .route("/v1/admin/events", get(admin::events))
            .route("/v1/admin/events/stream", get(admin::event_stream))
            .route(
                "/v1/admin/settings",
                get(admin::settings).patch(admin::change_settings),
            )
            .route("/v1/admin/reload", post(admin::reload))
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                cors::cors,
            ))
            .with_state(self)
    }
}

/// The publish rate limit of the connection a request came on (`publish_rate`,
/// `publish_burst`, as for a session); `None` inside when there is none.
#[derive(Clone)]
pub(crate) struct RateLimit(Arc<std::sync::Mutex<Option<Throttle>>>);

impl RateLimit {
    /// Takes one publish's token, or why not.
    pub(crate) fn take(&self, rate: u32) -> Result<(), Refusal> {
        let mut throttle = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match throttle.as_mut().map(Throttle::try_take) {
            None | Some(Ok(())) => Ok(()),
            Some(Err(wait)) => Err(Refusal::RateLimited(format!(
                "publishing faster than {rate}/s on this connection; retry in {} ms",
                wait.as_millis().max(1)
            ))),
        }
    }
}

/// The peer of the connection a request came on.
#[derive(Debug, Clone, Copy)]
struct Peer(SocketAddr);

async fn serve(http: Http, gateway: Gateway, cancel: CancellationToken, tracker: TaskTracker) {
    let Http { listener, tls, .. } = http;
    let limit = gateway.shared.config.handshake_timeout;
    let shared = gateway.shared.clone();
    let router = gateway.router();
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            a = listener.accept() => a,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors and friends: the TCP listener logs these once per
                // episode; here a pause is enough not to spin.
                tracing::debug!(error = %e, "http accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (rate, burst) = shared.live.publish_rate();
        let limit_rate = RateLimit(Arc::new(std::sync::Mutex::new(Throttle::new(rate, burst))));
        let router = router
            .clone()
            .layer(Extension(Peer(peer)))
            .layer(Extension(limit_rate));
        let (tls, cancel) = (tls.clone(), cancel.clone());
        tracker.spawn(connection(tcp, tls, router, cancel, limit));
    }
}

/// Serves one TCP connection: TLS first if configured, then HTTP/1.1 with upgrades.
async fn connection(
    tcp: TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
    router: Router,
    cancel: CancellationToken,
    limit: std::time::Duration,
) {
    match tls {
        None => http1(tcp, router, cancel, limit).await,
        Some(tls) => match tokio::time::timeout(limit, tls.accept(tcp)).await {
            Ok(Ok(stream)) => http1(stream, router, cancel, limit).await,
            Ok(Err(e)) => tracing::debug!(error = %e, "https handshake failed"),
            Err(_) => tracing::debug!("https handshake timed out"),
        },
    }
}

async fn http1<S>(io: S, router: Router, cancel: CancellationToken, limit: std::time::Duration)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(router);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limit)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "http connection ended");
            }
        }
        _ = cancel.cancelled() => {
            // Lets the request in progress finish; an upgraded WebSocket's session sees
            // the same signal and says SHUTTING_DOWN itself.
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// The HTTP status of a refusal; the body carries its stable code (see [`refused`]).
pub(crate) fn status_of(refusal: &Refusal) -> StatusCode {
    match refusal {
        Refusal::InvalidRequest(_)
        | Refusal::InvalidTopic(_)
        | Refusal::InvalidPattern(_)
        | Refusal::DuplicateSubscription(_)
        | Refusal::UnknownSubscription(_)
        | Refusal::Unsupported(_)
        | Refusal::HandshakeRequired(_)
        | Refusal::UnsupportedVersion(_)
        | Refusal::BadFrame(_) => StatusCode::BAD_REQUEST,
        Refusal::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        Refusal::PermissionDenied(_) => StatusCode::FORBIDDEN,
        Refusal::NotFound(_) => StatusCode::NOT_FOUND,
        Refusal::HandshakeTimeout(_) | Refusal::HeartbeatTimeout(_) => StatusCode::REQUEST_TIMEOUT,
        Refusal::NoResponders(_) => StatusCode::SERVICE_UNAVAILABLE,
        Refusal::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        Refusal::Conflict(_) | Refusal::UnrecoverablePosition(_) => StatusCode::CONFLICT,
        Refusal::Disconnected(_) => StatusCode::GONE,
        Refusal::PayloadTooLarge(_) | Refusal::FrameTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        Refusal::RateLimited(_) | Refusal::LimitExceeded(_) => StatusCode::TOO_MANY_REQUESTS,
        Refusal::ShuttingDown(_) => StatusCode::SERVICE_UNAVAILABLE,
        Refusal::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        Refusal::Storage(_) => StatusCode::INSUFFICIENT_STORAGE,
    }
}

/// A refused request as an answer: the status of [`status_of`] and
/// `{"code": "PERMISSION_DENIED", "message": "…"}`, the code as in rtc.proto without its
/// `ERROR_CODE_` prefix.
pub(crate) fn refused(refusal: Refusal) -> Response {
    (status_of(&refusal), Json(refusal_json(&refusal))).into_response()
}

/// `{"code": …, "message": …}` for `refusal`.
pub(crate) fn refusal_json(refusal: &Refusal) -> serde_json::Value {
    let code = refusal
        .code()
        .as_str_name()
        .trim_start_matches("ERROR_CODE_");
    serde_json::json!({ "code": code, "message": refusal.to_string() })
}

/// Who is making a request: the token of `Authorization: Bearer …`, or `query_token`
/// where a browser cannot set headers (WebSocket, SSE). A broker without users lets
/// everyone in.
pub(crate) fn identity(
    g: &Gateway,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<crate::auth::Identity, Refusal> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let token = bearer.or(query_token).unwrap_or("");
    g.shared.live.auth().authenticate(token).map_err(|why| {
        g.shared.metrics.auth_failed(if token.is_empty() {
            AuthFailure::MissingToken
        } else {
            AuthFailure::InvalidToken
        });
        Refusal::Unauthorized(format!(
            "{why} (Authorization: Bearer TOKEN, or ?token= for WebSocket and SSE)"
        ))
    })
}

/// The example chat page (examples/web/chat.html), served so that it runs against this
/// broker from its own origin.
async fn chat_example() -> Response {
    html(include_str!("../../../examples/web/chat.html"))
}

/// `GET /`: the dashboard (`broker/src/gateway/dashboard.html`), a page of the admin API.
async fn dashboard() -> Response {
    html(include_str!("dashboard.html"))
}

/// The example WebRTC call (examples/web/call.html), served the same way.
async fn call_example() -> Response {
    html(include_str!("../../../examples/web/call.html"))
}

/// The browser build of client-js the examples import (examples/web/rtc-client.js, made
/// by `npm run examples` in client-js/; testkit's client_js test checks it is current).
async fn client_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../../../examples/web/rtc-client.js"),
    )
        .into_response()
}

fn html(page: &'static str) -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response()
}

/// `GET /metrics`: Prometheus text exposition (OpenMetrics), see `crate::metrics`.
async fn metrics(State(g): State<Gateway>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        g.shared.metrics.render(),
    )
        .into_response()
}

async fn healthz() -> Response {
    Json(serde_json::json!({ "status": "serving" })).into_response()
}

async fn readyz(State(g): State<Gateway>) -> Response {
    if g.cancel.is_cancelled() {
        return refused(Refusal::ShuttingDown("the broker is shutting down".into()));
    }
    // The store is opened before any listener binds.
    Json(serde_json::json!({ "status": "ready" })).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_have_the_documented_statuses_and_codes() {
        let cases = [
            (Refusal::InvalidTopic("t".into()), 400, "INVALID_TOPIC"),
            (Refusal::Unauthorized("t".into()), 401, "UNAUTHORIZED"),
            (
                Refusal::PermissionDenied("t".into()),
                403,
                "PERMISSION_DENIED",
            ),
            (
                Refusal::PayloadTooLarge("t".into()),
                413,
                "PAYLOAD_TOO_LARGE",
            ),
            (Refusal::RateLimited("t".into()), 429, "RATE_LIMITED"),
            (Refusal::ShuttingDown("t".into()), 503, "SHUTTING_DOWN"),
            (Refusal::Storage("t".into()), 507, "STORAGE"),
        ];
        for (refusal, status, code) in cases {
            assert_eq!(status_of(&refusal).as_u16(), status, "{refusal:?}");
            let name = refusal
                .code()
                .as_str_name()
                .trim_start_matches("ERROR_CODE_");
            assert_eq!(name, code);
            assert_eq!(refused(refusal).status().as_u16(), status);
        }
    }

    #[test]
    fn origins_the_page_own_host_or_allowed_ones() {
        use super::cors::origin_allowed;
        let headers = |origin: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, "broker.example:7401".parse().unwrap());
            h.insert(header::ORIGIN, origin.parse().unwrap());
            h
        };
        let allowed = ["https://app.example".to_string()];
        assert!(origin_allowed(&HeaderMap::new(), &[]).is_ok(), "no Origin");
        assert!(origin_allowed(&headers("https://broker.example:7401"), &[]).is_ok());
        assert!(origin_allowed(&headers("https://app.example"), &allowed).is_ok());
        assert!(origin_allowed(&headers("https://app.example.evil"), &allowed).is_err());
        assert!(origin_allowed(&headers("null"), &allowed).is_err());
        assert!(origin_allowed(&headers("https://x"), &["*".to_string()]).is_ok());
    }
}
