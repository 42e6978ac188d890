//! The transport seam on the way in: where a session's frames come from ([`FrameSource`]),
//! and its implementation for byte streams ([`ByteStreamSource`]: TCP, TLS, a QUIC
//! stream), which cuts rtc's length-prefixed frames out of what it reads.
//!
//! A source both reads and decodes, so a transport with its own message framing (one
//! WebSocket message per frame) or another encoding (the JSON mapping) is a source of
//! its own, and the session core — handshake, auth, limits, dispatch, heartbeats — is the
//! same for all of them.

use std::future::Future;
use std::io;

use bytes::BytesMut;
use rtc_proto::codec::{grow_read_buffer, shrink_read_buffer, CodecError};
use rtc_proto::{Frame, FrameCodec};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::codec::Decoder;

use crate::refusal::Refusal;

/// Where a session's frames come from.
///
/// The session takes every frame that one [`FrameSource::fill`] brought
/// ([`FrameSource::next_frame`] until `None`), handles them in order, then fills again;
/// the timers and the shutdown signal are polled once per fill, not once per frame.
pub trait FrameSource: Send + 'static {
    /// Waits for more input from the peer: `Ok(true)` when something arrived (frames,
    /// or activity such as a WebSocket ping, which counts against the heartbeat
    /// timeout), `Ok(false)` when the peer closed. Must be cancel-safe: the session
    /// drops it when a timer fires or the broker stops.
    fn fill(&mut self) -> impl Future<Output = io::Result<bool>> + Send;
    /// The next complete frame of what was read, if any. A refusal (undecodable bytes,
    /// a frame above the limit) closes the connection with that error.
    fn next_frame(&mut self) -> Result<Option<Frame>, Refusal>;
    /// Nothing is left of what was read after the frames taken so far: the frame just
    /// taken was the last one the peer had sent.
    fn is_drained(&self) -> bool;
    /// The connection has been quiet for a heartbeat interval: give back buffers.
    fn quiet(&mut self);
}

/// Read buffer of a quiet connection; it grows to hold a large frame, and to
/// `rtc_proto::codec::STREAMING_READ_BUFFER` while frames stream in, and shrinks back
/// when the connection has been quiet for a heartbeat interval.
const READ_BUFFER: usize = 512;

/// Length-prefixed frames over a byte stream.
#[derive(Debug)]
pub struct ByteStreamSource<R> {
    io: R,
    buf: BytesMut,
    codec: FrameCodec,
}

impl<R> ByteStreamSource<R> {
    /// Frames read from `io`, none larger than `max_frame_size`.
    pub fn new(io: R, max_frame_size: usize) -> Self {
        ByteStreamSource {
            io,
            buf: BytesMut::with_capacity(READ_BUFFER),
            codec: FrameCodec::new(max_frame_size),
        }
    }
}

impl<R: AsyncRead + Unpin + Send + 'static> FrameSource for ByteStreamSource<R> {
    async fn fill(&mut self) -> io::Result<bool> {
        grow_read_buffer(&mut self.buf);
        // Room to read into: reclaims the space of the frames decoded (moving a partial
        // one to the front) or grows, as FramedRead does.
        self.buf.reserve(1);
        // A partial frame left behind when the peer closes is dropped with it.
        Ok(self.io.read_buf(&mut self.buf).await? > 0)
    }

    fn next_frame(&mut self) -> Result<Option<Frame>, Refusal> {
        self.codec.decode(&mut self.buf).map_err(codec_refusal)
    }

    fn is_drained(&self) -> bool {
        self.buf.is_empty()
    }

    fn quiet(&mut self) {
        shrink_read_buffer(&mut self.buf, READ_BUFFER);
    }
}

/// The error a session closes with when bytes do not decode as frames.
pub fn codec_refusal(e: CodecError) -> Refusal {
    match &e {
        CodecError::FrameTooLarge { .. } => Refusal::FrameTooLarge(e.to_string()),
        CodecError::Decode(_) | CodecError::NotADelivery | CodecError::Io(_) => {
            Refusal::BadFrame(e.to_string())
        }
    }
}
