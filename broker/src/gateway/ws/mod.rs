//! WebSocket as a transport, in two subprotocols: `rtc.v1.proto`, one `Frame` per binary
//! message without rtc's length prefix, and `rtc.v1.json`, one `Frame` per text message
//! in the JSON mapping of `rtc_proto::json`. A WebSocket connection is handed to the one
//! accept path ([`crate::accept::Acceptor::admit`]) like a TCP connection, so it gets the
//! same session: handshake, auth, limits, dispatch, errors and heartbeats.
//!
//! [`upgrade`] checks the opening handshake (RFC 6455, 4.2) and answers 101, or 400 /
//! 426 with the usual JSON error; the connection's session then waits for hyper to hand
//! over the socket ([`WsIncoming::open`]). The frames are rtc's own ([`wire`], and
//! [`conn`] for the session's source and sink) rather than tungstenite's: tungstenite
//! allocated a fixed read buffer per connection and copied each outgoing message twice,
//! which kept idle WebSockets and fan-out over WebSocket off their targets
//! (docs/benchmarks.md, "rtc's own WebSocket frames").
//!
//! The message limit is `max_frame_size` for a binary message and [`JSON_FACTOR`] times
//! it for a text one (JSON and base64 are larger than protobuf); what a message may
//! carry is bounded by the session's own checks (`max_payload` and the rest) either way.

mod conn;
pub mod wire;

use std::io;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use base64::Engine;
use bytes::BytesMut;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use rtc_proto::Frame;
use sha1::{Digest, Sha1};
use tokio::io::AsyncWriteExt;

pub use conn::{WsSink, WsSource};

use super::{refused, Gateway, Peer};
use crate::accept::Incoming;
use crate::refusal::Refusal;
use crate::session::Connection;

/// The binary subprotocol.
pub const PROTO: &str = "rtc.v1.proto";
/// The JSON subprotocol.
pub const JSON: &str = "rtc.v1.json";
/// How much larger than `max_frame_size` a text message may be.
pub const JSON_FACTOR: usize = 4;
/// The socket under a WebSocket, once hyper hands it over.
type Io = TokioIo<hyper::upgrade::Upgraded>;
/// Appended to the client's key for `Sec-WebSocket-Accept` (RFC 6455, 1.3).
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// How long refusing a connection at the limit may wait for the socket.
const REFUSE_WAIT: Duration = Duration::from_secs(10);

/// How frames travel on a WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Binary messages, protobuf ([`PROTO`]).
    Proto,
    /// Text messages, JSON ([`JSON`]).
    Json,
}

impl Mode {
    /// The mode of the subprotocol the upgrade chose; binary when the client asked for
    /// none.
    pub fn of(protocol: Option<&str>) -> Mode {
        match protocol {
            Some(JSON) => Mode::Json,
            _ => Mode::Proto,
        }
    }

    /// The largest message in this mode.
    fn limit(self, max_frame_size: usize) -> usize {
        match self {
            Mode::Proto => max_frame_size,
            Mode::Json => max_frame_size * JSON_FACTOR,
        }
    }
}

/// The subprotocol to answer with: the first of the client's that rtc speaks.
fn choose_protocol(headers: &HeaderMap) -> Option<&'static str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| [PROTO, JSON].into_iter().find(|ours| *ours == p.trim()))
}

/// Whether a comma-separated header has `token` among its values.
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// `Sec-WebSocket-Accept` for a client's key.
fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(ACCEPT_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// `GET /v1/ws`: the opening handshake; the session starts once the socket is handed over.
pub(super) async fn upgrade(
    State(g): State<Gateway>,
    Extension(Peer(peer)): Extension<Peer>,
    mut request: Request,
) -> Response {
    let headers = request.headers();
    let bad = |why: &str| {
        refused(Refusal::InvalidRequest(format!(
            "not a WebSocket upgrade: {why}"
        )))
    };
    if !has_token(headers, header::CONNECTION, "upgrade")
        || !has_token(headers, header::UPGRADE, "websocket")
    {
        return bad("it needs Connection: Upgrade and Upgrade: websocket");
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        let mut response = bad("only Sec-WebSocket-Version 13 is spoken");
        *response.status_mut() = StatusCode::UPGRADE_REQUIRED;
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return response;
    }
    let key = match headers.get(header::SEC_WEBSOCKET_KEY) {
        Some(key)
            if base64::engine::general_purpose::STANDARD
                .decode(key.as_bytes())
                .is_ok_and(|k| k.len() == 16) =>
        {
            accept_key(key.as_bytes())
        }
        _ => return bad("Sec-WebSocket-Key must be 16 bytes in base64"),
    };
    let protocol = choose_protocol(headers);
    let Some(on_upgrade) = request.extensions_mut().remove::<OnUpgrade>() else {
        return bad("this connection cannot be upgraded");
    };
    g.acceptor.admit(WsIncoming {
        upgrade: on_upgrade,
        peer: format!("ws {peer}"),
        mode: Mode::of(protocol),
    });
    let mut response = (
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::CONNECTION, "upgrade"),
            (header::UPGRADE, "websocket"),
        ],
    )
        .into_response();
    let answer = response.headers_mut();
    if let Ok(accept) = HeaderValue::from_str(&key) {
        answer.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if let Some(protocol) = protocol {
        answer.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(protocol),
        );
    }
    response
}

/// A WebSocket answered 101, before hyper hands over its socket.
pub struct WsIncoming {
    upgrade: OnUpgrade,
    peer: String,
    mode: Mode,
}

impl Incoming for WsIncoming {
    fn transport(&self) -> &'static str {
        "ws"
    }

    type Source = WsSource;
    type Sink = WsSink;

    fn peer(&self) -> String {
        self.peer.clone()
    }

    async fn open(self, max_frame_size: usize) -> io::Result<Connection<WsSource, WsSink>> {
        let io = TokioIo::new(self.upgrade.await.map_err(io::Error::other)?);
        let (rx, tx) = tokio::io::split(io);
        let control = conn::Control::new(tx);
        let limit = self.mode.limit(max_frame_size);
        Ok(Connection {
            source: WsSource::new(rx, limit, self.mode, control.clone()),
            sink: WsSink {
                control,
                out: BytesMut::new(),
                mode: self.mode,
            },
            peer: self.peer,
            direct: None,
            datagrams: None,
        })
    }

    async fn refuse(self, error: Frame) {
        let _ = tokio::time::timeout(REFUSE_WAIT, async move {
            let mut io = TokioIo::new(self.upgrade.await.map_err(io::Error::other)?);
            let mut out = BytesMut::new();
            conn::put_frame(&mut out, self.mode, &error);
            wire::put_close(&mut out);
            io.write_all(&out).await?;
            io.shutdown().await
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rfc_example_key_is_accepted() {
        // RFC 6455, 1.3.
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn the_first_protocol_rtc_speaks_is_chosen() {
        let headers = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::SEC_WEBSOCKET_PROTOCOL, v.parse().unwrap());
            }
            h
        };
        assert_eq!(choose_protocol(&headers(&[])), None);
        assert_eq!(
            choose_protocol(&headers(&["chat, rtc.v1.json"])),
            Some(JSON)
        );
        assert_eq!(
            choose_protocol(&headers(&["rtc.v1.proto", "rtc.v1.json"])),
            Some(PROTO)
        );
        assert_eq!(choose_protocol(&headers(&["mqtt"])), None);
    }
}
