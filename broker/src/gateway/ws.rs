//! WebSocket as a transport, in two subprotocols: `rtc.v1.proto`, one `Frame` per binary
//! message without rtc's length prefix, and `rtc.v1.json`, one `Frame` per text message
//! in the JSON mapping of `rtc_proto::json`. A WebSocket connection is handed to the one
//! accept path ([`crate::accept::Acceptor::admit`]) like a TCP connection, so it gets the
//! same session: handshake, auth, limits, dispatch, errors and heartbeats.
//!
//! In: [`WsSource`] decodes each message into a frame. A ping or pong counts as activity
//! for the heartbeat timeout (tungstenite answers pings by itself). A message of the
//! other kind, an undecodable one, or one above the limit gets the same refusal as such
//! bytes over TCP (`BAD_FRAME`, `FRAME_TOO_LARGE`), and the connection is closed. The
//! limit is `max_frame_size` for a binary message and [`JSON_FACTOR`] times it for a text
//! one (JSON and base64 are larger than protobuf); what a message may carry is bounded by
//! the session's own checks (`max_payload` and the rest) either way.
//!
//! Out: the session's writer hands [`WsSink`] whole length-prefixed frames, one or many
//! at once; each goes out as one message, without its prefix or mapped to JSON.

use std::collections::VecDeque;
use std::io;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use bytes::{Buf, Bytes};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use rtc_proto::codec::LEN_PREFIX;
use rtc_proto::Frame;

use crate::accept::Incoming;
use crate::outbound::FrameSink;
use crate::refusal::Refusal;
use crate::session::{Connection, FrameSource};

/// The binary subprotocol.
pub const PROTO: &str = "rtc.v1.proto";
/// The JSON subprotocol.
pub const JSON: &str = "rtc.v1.json";
/// How much larger than `max_frame_size` a text message may be.
pub const JSON_FACTOR: usize = 4;

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

    fn message(self, frame: &Frame) -> Message {
        match self {
            Mode::Proto => Message::Binary(frame.encode_to_vec().into()),
            Mode::Json => Message::Text(rtc_proto::json::to_json(frame).into()),
        }
    }
}

/// An upgraded WebSocket, before its session.
pub struct WsIncoming {
    pub(super) socket: WebSocket,
    pub(super) peer: String,
    pub(super) mode: Mode,
}

impl Incoming for WsIncoming {
    type Source = WsSource;
    type Sink = WsSink;

    fn peer(&self) -> String {
        self.peer.clone()
    }

    async fn open(self, max_frame_size: usize) -> io::Result<Connection<WsSource, WsSink>> {
        let (tx, rx) = self.socket.split();
        Ok(Connection {
            source: WsSource {
                rx,
                frames: VecDeque::new(),
                refused: None,
                max_frame_size,
                mode: self.mode,
            },
            sink: WsSink {
                tx,
                mode: self.mode,
            },
            peer: self.peer,
            direct: None,
            datagrams: None,
        })
    }

    async fn refuse(self, error: Frame) {
        let (mut tx, _rx) = self.socket.split();
        let _ = tx.send(self.mode.message(&error)).await;
        let _ = tx.send(Message::Close(None)).await;
    }
}

/// Frames from a WebSocket's binary messages.
pub struct WsSource {
    rx: SplitStream<WebSocket>,
    /// Decoded, not yet taken by the session.
    frames: VecDeque<Frame>,
    /// What the last message broke, after the frames before it.
    refused: Option<Refusal>,
    max_frame_size: usize,
    mode: Mode,
}

impl WsSource {
    /// Takes one message of `len` bytes (`expected`: of the subprotocol's kind), decoded
    /// by `decode` if it is within `limit`; a refusal otherwise.
    fn take(
        &mut self,
        expected: bool,
        len: usize,
        limit: usize,
        decode: impl FnOnce() -> Result<Frame, String>,
    ) {
        let refusal = if !expected {
            let (kind, other) = match self.mode {
                Mode::Proto => ("text", PROTO),
                Mode::Json => ("binary", JSON),
            };
            Refusal::BadFrame(format!("a {kind} message on the {other} subprotocol"))
        } else if len > limit {
            Refusal::FrameTooLarge(format!("a message of {len} bytes; the limit is {limit}"))
        } else {
            match decode() {
                Ok(frame) => return self.frames.push_back(frame),
                Err(e) => Refusal::BadFrame(format!("undecodable frame: {e}")),
            }
        };
        self.refused = Some(refusal);
    }
}

impl FrameSource for WsSource {
    async fn fill(&mut self) -> io::Result<bool> {
        // `next` on the stream is cancel-safe: a message is taken whole or not at all.
        match self.rx.next().await {
            None | Some(Ok(Message::Close(_))) => Ok(false),
            Some(Err(e)) => Err(io::Error::other(e)),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(true),
            Some(Ok(Message::Text(text))) => {
                let limit = self.max_frame_size * JSON_FACTOR;
                self.take(self.mode == Mode::Json, text.len(), limit, || {
                    rtc_proto::json::from_json(text.as_str()).map_err(|e| e.to_string())
                });
                Ok(true)
            }
            Some(Ok(Message::Binary(bytes))) => {
                let len = bytes.len();
                self.take(self.mode == Mode::Proto, len, self.max_frame_size, || {
                    Frame::decode(bytes).map_err(|e| e.to_string())
                });
                Ok(true)
            }
        }
    }

    fn next_frame(&mut self) -> Result<Option<Frame>, Refusal> {
        match self.frames.pop_front() {
            Some(frame) => Ok(Some(frame)),
            None => self.refused.take().map_or(Ok(None), Err),
        }
    }

    fn is_drained(&self) -> bool {
        self.frames.is_empty() && self.refused.is_none()
    }

    fn quiet(&mut self) {
        self.frames.shrink_to_fit();
    }
}

/// Frames to a WebSocket, one message each.
pub struct WsSink {
    tx: SplitSink<WebSocket, Message>,
    mode: Mode,
}

impl FrameSink for WsSink {
    async fn write(&mut self, frames: &[u8]) -> io::Result<()> {
        let mut rest = frames;
        while !rest.is_empty() {
            if rest.len() < LEN_PREFIX {
                return Err(io::Error::other("a partial length prefix for a WebSocket"));
            }
            let len = (&rest[..LEN_PREFIX]).get_u32() as usize;
            let Some(frame) = rest.get(LEN_PREFIX..LEN_PREFIX + len) else {
                return Err(io::Error::other("a partial frame for a WebSocket"));
            };
            let message = match self.mode {
                Mode::Proto => Message::Binary(Bytes::copy_from_slice(frame)),
                // The writer encodes protobuf; JSON is made from it here.
                Mode::Json => {
                    let frame = Frame::decode(frame).map_err(io::Error::other)?;
                    self.mode.message(&frame)
                }
            };
            // Queued without flushing: `flush` sends the batch.
            self.tx.feed(message).await.map_err(io::Error::other)?;
            rest = &rest[LEN_PREFIX + len..];
        }
        Ok(())
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.tx.flush().await.map_err(io::Error::other)
    }

    async fn close(&mut self) {
        let close = CloseFrame {
            code: axum::extract::ws::close_code::NORMAL,
            reason: "".into(),
        };
        let _ = self.tx.send(Message::Close(Some(close))).await;
    }
}
