//! One upgraded WebSocket as the session's [`FrameSource`] and [`FrameSink`].
//!
//! In: [`WsSource`] reads the socket into a buffer that starts small and grows only
//! while a peer streams or sends a large message, as a TCP connection's does (an idle
//! WebSocket costs little more than an idle TCP connection), and gives the session one
//! `Frame` per data message. A ping or pong counts as activity for the heartbeat timeout;
//! a ping is answered by [`Control::pong`]. A message of the other kind, an undecodable
//! one, one above the limit, or a frame the RFC forbids gets the same refusal as such
//! bytes over TCP (`BAD_FRAME`, `FRAME_TOO_LARGE`), and the connection is closed.
//!
//! Out: the session's writer hands [`WsSink`] whole length-prefixed frames; each goes
//! out as one message, its prefix replaced by a WebSocket header (binary), or mapped to
//! JSON (text). Messages gather in one buffer and go out in one write per batch.
//!
//! The write half is shared, under a lock held for a whole write, between the sink and
//! the pong that answers a client's ping, so neither splits the other's frame.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use prost::Message as _;
use rtc_proto::codec::{LEN_PREFIX, STREAMING_READ_BUFFER};
use rtc_proto::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};

use super::wire::{self, Event, Reader, WireError};
use super::{Io, Mode, JSON, PROTO};
use crate::outbound::FrameSink;
use crate::refusal::Refusal;
use crate::session::FrameSource;

/// Read buffer of a quiet connection, as for TCP.
const READ_BUFFER: usize = 512;
/// The sink writes what it gathered once it holds this much, flush or not.
const WRITE_CHUNK: usize = 64 * 1024;
/// How long a pong may wait for the socket before it is given up.
const PONG_WAIT: Duration = Duration::from_secs(10);

/// The write half, and the pong owed to the client.
pub(super) struct Control {
    io: tokio::sync::Mutex<WriteHalf<Io>>,
    /// The latest ping's data not yet answered, and whether a task is answering.
    pong: std::sync::Mutex<(Option<bytes::Bytes>, bool)>,
}

impl Control {
    pub(super) fn new(io: WriteHalf<Io>) -> Arc<Control> {
        Arc::new(Control {
            io: tokio::sync::Mutex::new(io),
            pong: std::sync::Mutex::new((None, false)),
        })
    }

    /// Answers a ping. The RFC lets a pong answer only the latest of several pings, so
    /// one task per connection at most sends them, and a client that floods pings costs
    /// one pending pong, not one each.
    fn pong(self: &Arc<Self>, data: bytes::Bytes) {
        {
            let mut state = self.pong.lock().unwrap_or_else(|p| p.into_inner());
            state.0 = Some(data);
            if std::mem::replace(&mut state.1, true) {
                return;
            }
        }
        let control = self.clone();
        tokio::spawn(async move {
            let answered = tokio::time::timeout(PONG_WAIT, control.send_pongs()).await;
            if !matches!(answered, Ok(Ok(()))) {
                *control.pong.lock().unwrap_or_else(|p| p.into_inner()) = (None, false);
            }
        });
    }

    /// Sends pending pongs until none is left, then says no task is answering.
    async fn send_pongs(&self) -> io::Result<()> {
        loop {
            let data = {
                let mut state = self.pong.lock().unwrap_or_else(|p| p.into_inner());
                match state.0.take() {
                    Some(data) => data,
                    None => {
                        state.1 = false;
                        return Ok(());
                    }
                }
            };
            let mut frame = BytesMut::with_capacity(wire::MAX_HEADER + data.len());
            wire::put_header(&mut frame, wire::PONG, data.len());
            frame.extend_from_slice(&data);
            self.write(&frame, true).await?;
        }
    }

    /// Writes `bytes` whole, under the lock.
    async fn write(&self, bytes: &[u8], flush: bool) -> io::Result<()> {
        let mut io = self.io.lock().await;
        io.write_all(bytes).await?;
        if flush {
            io.flush().await?;
        }
        Ok(())
    }
}

/// Frames from a WebSocket's messages.
pub struct WsSource {
    pub(super) io: ReadHalf<Io>,
    pub(super) buf: BytesMut,
    pub(super) reader: Reader,
    /// Decoded, not yet taken by the session.
    pub(super) frames: VecDeque<Frame>,
    /// What the last message broke, after the frames before it.
    pub(super) refused: Option<Refusal>,
    /// The client sent a Close.
    pub(super) closed: bool,
    pub(super) mode: Mode,
    pub(super) control: Arc<Control>,
}

impl WsSource {
    pub(super) fn new(io: ReadHalf<Io>, limit: usize, mode: Mode, control: Arc<Control>) -> Self {
        WsSource {
            io,
            buf: BytesMut::with_capacity(READ_BUFFER),
            reader: Reader::new(limit),
            frames: VecDeque::new(),
            refused: None,
            closed: false,
            mode,
            control,
        }
    }

    /// Takes every event buffered; whether there was any.
    fn take_events(&mut self) -> bool {
        let mut any = false;
        while !self.closed && self.refused.is_none() {
            let event = match self.reader.next(&mut self.buf) {
                Ok(Some(event)) => event,
                Ok(None) => break,
                Err(e) => {
                    self.refused = Some(match e {
                        WireError::Protocol(_) => Refusal::BadFrame(e.to_string()),
                        WireError::TooLarge { .. } => Refusal::FrameTooLarge(e.to_string()),
                    });
                    return true;
                }
            };
            any = true;
            match event {
                Event::Message { text, data } => match self.decode(text, data) {
                    Ok(frame) => self.frames.push_back(frame),
                    Err(refusal) => self.refused = Some(refusal),
                },
                Event::Ping(data) => self.control.pong(data),
                Event::Pong => {}
                Event::Close => self.closed = true,
            }
        }
        any
    }

    /// One message as a frame, or why not.
    fn decode(&self, text: bool, data: bytes::Bytes) -> Result<Frame, Refusal> {
        let undecodable = |e: String| Refusal::BadFrame(format!("undecodable frame: {e}"));
        match (self.mode, text) {
            (Mode::Proto, false) => Frame::decode(data).map_err(|e| undecodable(e.to_string())),
            (Mode::Json, true) => {
                let text = std::str::from_utf8(&data)
                    .map_err(|_| Refusal::BadFrame("a text message that is not UTF-8".into()))?;
                rtc_proto::json::from_json(text).map_err(|e| undecodable(e.to_string()))
            }
            (Mode::Proto, true) => Err(Refusal::BadFrame(format!(
                "a text message on the {PROTO} subprotocol"
            ))),
            (Mode::Json, false) => Err(Refusal::BadFrame(format!(
                "a binary message on the {JSON} subprotocol"
            ))),
        }
    }
}

impl FrameSource for WsSource {
    async fn fill(&mut self) -> io::Result<bool> {
        loop {
            if self.take_events() {
                return Ok(true);
            }
            if self.closed {
                return Ok(false);
            }
            // Room for more of a large message, up to a streaming buffer at a time: the
            // buffer grows with what arrives, not with what a header announces (a
            // header alone must not make the broker allocate a whole frame). Otherwise
            // a buffer that grows while the peer streams (a partial frame is left
            // behind a read) and stays small while it is quiet.
            let wanted = self.reader.wanted(&self.buf);
            if wanted > 0 {
                self.buf.reserve(wanted.min(STREAMING_READ_BUFFER));
            } else if !self.buf.is_empty() && self.buf.capacity() < STREAMING_READ_BUFFER / 2 {
                self.buf.reserve(STREAMING_READ_BUFFER);
            }
            self.buf.reserve(1);
            // Cancel-safe: what was read stays in the buffer, what was parsed in self.
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return Ok(false);
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
        self.frames.is_empty() && self.refused.is_none() && self.buf.is_empty()
    }

    fn quiet(&mut self) {
        self.frames.shrink_to_fit();
        rtc_proto::codec::shrink_read_buffer(&mut self.buf, READ_BUFFER);
    }
}

/// Appends `frame` as one message of `mode`.
pub(super) fn put_frame(out: &mut BytesMut, mode: Mode, frame: &Frame) {
    match mode {
        Mode::Proto => {
            wire::put_header(out, wire::BINARY, frame.encoded_len());
            frame.encode(out).unwrap_or_default();
        }
        Mode::Json => {
            let json = rtc_proto::json::to_json(frame);
            wire::put_header(out, wire::TEXT, json.len());
            out.extend_from_slice(json.as_bytes());
        }
    }
}

/// Frames to a WebSocket, one message each.
pub struct WsSink {
    pub(super) control: Arc<Control>,
    /// Messages not yet written.
    pub(super) out: BytesMut,
    pub(super) mode: Mode,
}

impl WsSink {
    /// Appends one frame (protobuf, no prefix) as a message.
    fn put(&mut self, frame: &[u8]) -> io::Result<()> {
        match self.mode {
            Mode::Proto => {
                wire::put_header(&mut self.out, wire::BINARY, frame.len());
                self.out.extend_from_slice(frame);
            }
            // The writer encodes protobuf; JSON is made from it here.
            Mode::Json => {
                let frame = Frame::decode(frame).map_err(io::Error::other)?;
                put_frame(&mut self.out, Mode::Json, &frame);
            }
        }
        Ok(())
    }

    /// Writes what was gathered; keeps the buffer for the next batch unless it is far
    /// larger than this one was (a quiet connection gives back a burst's buffer).
    async fn send(&mut self, flush: bool) -> io::Result<()> {
        let written = self.out.len();
        if written == 0 && !flush {
            return Ok(());
        }
        self.control.write(&self.out, flush).await?;
        self.out.clear();
        if self.out.capacity() > 4 * written.max(1024) {
            self.out = BytesMut::new();
        }
        Ok(())
    }
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
            self.put(frame)?;
            if self.out.len() >= WRITE_CHUNK {
                self.send(false).await?;
            }
            rest = &rest[LEN_PREFIX + len..];
        }
        Ok(())
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.send(true).await
    }

    async fn close(&mut self) {
        wire::put_close(&mut self.out);
        if self.send(true).await.is_ok() {
            let _ = self.control.io.lock().await.shutdown().await;
        }
    }
}
