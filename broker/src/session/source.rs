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
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::BytesMut;
use rtc_proto::codec::{grow_read_buffer, shrink_read_buffer, CodecError, STREAMING_READ_BUFFER};
use rtc_proto::{Frame, FrameCodec};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
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

/// Read buffer of a connection that sends now and then; it grows to hold a large
/// frame, and to `rtc_proto::codec::STREAMING_READ_BUFFER` while frames stream in, and
/// shrinks back when the connection has been quiet for a heartbeat interval. A
/// connection waiting with nothing buffered holds none (`ByteStreamSource::poll_small`).
const READ_BUFFER: usize = 512;

thread_local! {
    /// Where a connection that holds no read buffer reads into; what arrives is copied
    /// into a buffer of its own. One per worker thread, borrowed only within a poll.
    static SCRATCH: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; STREAMING_READ_BUFFER].into_boxed_slice());
}

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
            // Allocated when something arrives (see `fill`).
            buf: BytesMut::new(),
            codec: FrameCodec::new(max_frame_size),
        }
    }
}

impl<R: AsyncRead + Unpin> ByteStreamSource<R> {
    /// A read with nothing buffered: into the small buffer while there is one and the
    /// peer has bytes ready; when a read would wait, the buffer is given back (512 bytes
    /// per idle connection) and the wait reads into the thread's scratch buffer. So a
    /// busy connection keeps its buffer, and one that waits holds none.
    fn poll_small(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        // The frames of the last read are gone (handled): the space they took is
        // reclaimed in place. If some are still held (a publish being stored), the
        // buffer is not enlarged: the read goes to the scratch buffer instead.
        if !self.buf.try_reclaim(READ_BUFFER) {
            self.buf = BytesMut::new();
            return self.poll_scratch(cx);
        }
        match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf) {
            Poll::Ready(read) => Poll::Ready(read.map(|n| n > 0)),
            Poll::Pending => {
                self.buf = BytesMut::new();
                Poll::Pending
            }
        }
    }

    /// Reads into the thread's scratch buffer, then into a buffer of just the size
    /// needed. Cancel-safe: nothing is held between polls.
    fn poll_scratch(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        SCRATCH.with_borrow_mut(|scratch| {
            let mut read = ReadBuf::new(scratch);
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut read))?;
            let got = read.filled();
            if got.is_empty() {
                return Poll::Ready(Ok(false));
            }
            let mut buf = BytesMut::with_capacity(got.len().max(READ_BUFFER));
            buf.extend_from_slice(got);
            self.buf = buf;
            Poll::Ready(Ok(true))
        })
    }
}

impl<R: AsyncRead + Unpin + Send + 'static> FrameSource for ByteStreamSource<R> {
    async fn fill(&mut self) -> io::Result<bool> {
        if self.buf.is_empty() && self.buf.capacity() <= READ_BUFFER {
            // Nothing buffered and not streaming: most connections, most of the time
            // (an idle subscriber waits here for hours).
            return std::future::poll_fn(|cx| self.poll_small(cx)).await;
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use rtc_proto::codec::encode_frame;
    use rtc_proto::v1::{self, frame::Op};
    use tokio::io::AsyncWriteExt;

    fn publish(payload: usize) -> (Frame, Vec<u8>) {
        let frame = Frame::from_op(Op::Publish(v1::Publish {
            topic: "a.b".into(),
            payload: vec![7u8; payload].into(),
            ..Default::default()
        }));
        let mut wire = BytesMut::new();
        encode_frame(&frame, usize::MAX, &mut wire).unwrap();
        (frame, wire.to_vec())
    }

    #[tokio::test]
    async fn a_waiting_source_holds_no_buffer_and_frames_split_across_reads_arrive_whole() {
        let (mut peer, io) = tokio::io::duplex(1 << 20);
        let mut source = ByteStreamSource::new(io, 1 << 20);
        // Nothing sent: the read waits, holding no buffer.
        assert!(source.fill().now_or_never().is_none());
        assert_eq!(source.buf.capacity(), 0);
        let (small, wire) = publish(10);
        peer.write_all(&wire).await.unwrap();
        assert!(source.fill().await.unwrap());
        assert_eq!(source.next_frame().unwrap(), Some(small.clone()));
        assert_eq!(source.next_frame().unwrap(), None);
        assert!(source.fill().now_or_never().is_none());
        assert_eq!(
            source.buf.capacity(),
            0,
            "given back once the next read waits"
        );
        // A frame larger than the scratch buffer, sent in two parts.
        let (big, wire) = publish(STREAMING_READ_BUFFER + 1000);
        let cut = wire.len() / 3;
        peer.write_all(&wire[..cut]).await.unwrap();
        assert!(source.fill().await.unwrap());
        assert_eq!(source.next_frame().unwrap(), None, "not whole yet");
        peer.write_all(&wire[cut..]).await.unwrap();
        let mut got = None;
        for _ in 0..100 {
            assert!(source.fill().await.unwrap());
            got = source.next_frame().unwrap();
            if got.is_some() {
                break;
            }
        }
        assert_eq!(got, Some(big));
        // Two frames in one write, then the peer closes.
        let mut two = publish(3).1;
        two.extend(publish(4).1);
        peer.write_all(&two).await.unwrap();
        drop(peer);
        assert!(source.fill().await.unwrap());
        assert!(source.next_frame().unwrap().is_some());
        assert!(source.next_frame().unwrap().is_some());
        assert!(!source.fill().await.unwrap(), "the peer closed");
    }
}
