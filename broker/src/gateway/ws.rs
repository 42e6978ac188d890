//! WebSocket as a transport: one `Frame` per binary message (subprotocol
//! `rtc.v1.proto`), without rtc's length prefix. A WebSocket connection is handed to the
//! one accept path ([`crate::accept::Acceptor::admit`]) like a TCP connection, so it gets
//! the same session: handshake, auth, limits, dispatch, errors and heartbeats.
//!
//! In: [`WsSource`] decodes each binary message into a frame. A ping or pong counts as
//! activity for the heartbeat timeout (tungstenite answers pings by itself). A text
//! message, an undecodable one or one above `max_frame_size` gets the same refusal as
//! such bytes over TCP (`BAD_FRAME`, `FRAME_TOO_LARGE`), and the connection is closed.
//!
//! Out: the session's writer hands [`WsSink`] whole length-prefixed frames, one or many
//! at once; each goes out as one binary message without its prefix.

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

/// An upgraded WebSocket, before its session.
pub struct WsIncoming {
    pub(super) socket: WebSocket,
    pub(super) peer: String,
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
            },
            sink: WsSink(tx),
            peer: self.peer,
            direct: None,
            datagrams: None,
        })
    }

    async fn refuse(self, error: Frame) {
        let (mut tx, _rx) = self.socket.split();
        let _ = tx.send(Message::Binary(error.encode_to_vec().into())).await;
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
}

impl FrameSource for WsSource {
    async fn fill(&mut self) -> io::Result<bool> {
        // `next` on the stream is cancel-safe: a message is taken whole or not at all.
        match self.rx.next().await {
            None | Some(Ok(Message::Close(_))) => Ok(false),
            Some(Err(e)) => Err(io::Error::other(e)),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(true),
            Some(Ok(Message::Text(_))) => {
                self.refused = Some(Refusal::BadFrame(format!(
                    "a text message on the {PROTO} subprotocol, which carries binary messages only"
                )));
                Ok(true)
            }
            Some(Ok(Message::Binary(bytes))) => {
                if bytes.len() > self.max_frame_size {
                    self.refused = Some(Refusal::FrameTooLarge(format!(
                        "a message of {} bytes; the limit is {}",
                        bytes.len(),
                        self.max_frame_size
                    )));
                } else {
                    match Frame::decode(bytes) {
                        Ok(frame) => self.frames.push_back(frame),
                        Err(e) => {
                            self.refused =
                                Some(Refusal::BadFrame(format!("undecodable frame: {e}")))
                        }
                    }
                }
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

/// Frames to a WebSocket, one binary message each.
pub struct WsSink(SplitSink<WebSocket, Message>);

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
            // Queued without flushing: `flush` sends the batch.
            self.0
                .feed(Message::Binary(Bytes::copy_from_slice(frame)))
                .await
                .map_err(io::Error::other)?;
            rest = &rest[LEN_PREFIX + len..];
        }
        Ok(())
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.0.flush().await.map_err(io::Error::other)
    }

    async fn close(&mut self) {
        let close = CloseFrame {
            code: axum::extract::ws::close_code::NORMAL,
            reason: "".into(),
        };
        let _ = self.0.send(Message::Close(Some(close))).await;
    }
}
