//! The writer task of a connection: takes its [`Outbox`]'s whole queue whenever there is
//! something in it and nobody else holds the pen, writes it in order (chunks as they
//! are, shared deliveries behind their own `Deliver` header) and flushes once per batch.
//! It stops when the outbox is closed and drained or the socket fails, and then releases
//! the outbox's buffers.
//!
//! It writes into a [`FrameSink`], the transport seam on the way out: [`ByteStream`] for
//! TCP, TLS and QUIC streams, which carry the frames as they are; a WebSocket sink
//! would send each frame as one message, in binary or mapped to JSON.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::sync::atomic::Ordering;

use bytes::BytesMut;
use rtc_proto::codec::encode_frame;
use rtc_proto::Frame;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::{encode_shared_run, Entry, Outbox, CHUNK, KEEP, TRIM_AFTER};

/// Where a connection's writer puts its frames.
///
/// [`FrameSink::write`] gets whole frames in rtc's encoding (a 4-byte big-endian length,
/// then a `Frame`), one or many at a time, in order. The one exception is the remainder
/// of a frame a direct write began (see [`crate::outbound::DirectWrite`]), which only a
/// byte stream can be given, since only a TCP socket is written directly.
pub trait FrameSink: Send + 'static {
    /// Sends `frames`.
    fn write(&mut self, frames: &[u8]) -> impl Future<Output = io::Result<()>> + Send;
    /// Pushes out what the sink buffered (called once per batch).
    fn flush(&mut self) -> impl Future<Output = io::Result<()>> + Send;
    /// Ends the connection's output once everything queued is written.
    fn close(&mut self) -> impl Future<Output = ()> + Send;
}

/// A byte stream (TCP, TLS, a QUIC stream): frames go out exactly as queued.
#[derive(Debug)]
pub struct ByteStream<W>(pub W);

impl<W: AsyncWrite + Unpin + Send + 'static> FrameSink for ByteStream<W> {
    async fn write(&mut self, frames: &[u8]) -> io::Result<()> {
        self.0.write_all(frames).await
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.0.flush().await
    }

    async fn close(&mut self) {
        let _ = self.0.shutdown().await;
    }
}

/// Drains `outbox` into `sink` until the outbox is closed and empty or the sink fails,
/// then closes the sink.
pub(crate) async fn write_loop<W: FrameSink>(
    outbox: std::sync::Arc<Outbox>,
    mut writer: W,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
) {
    let mut batch = VecDeque::new();
    // Shared deliveries (and the slow-consumer notice) are encoded here.
    let mut out = BytesMut::new();
    loop {
        let holds_memory = outbox.time_spares()
            || out.capacity() > KEEP
            || batch.capacity() * std::mem::size_of::<Entry>() > KEEP;
        let taken = if holds_memory {
            match tokio::time::timeout(TRIM_AFTER, outbox.take(&mut batch, false)).await {
                Ok(taken) => taken,
                Err(_idle) => {
                    // Nothing was taken (`take` swaps only when it returns).
                    outbox.release_spares();
                    out = BytesMut::new();
                    batch = VecDeque::new();
                    continue;
                }
            }
        } else {
            outbox.take(&mut batch, true).await
        };
        match taken {
            None => break,
            // Direct writes left spare chunks: wait again, timed.
            Some(false) => continue,
            Some(true) => {}
        }
        let dropped = outbox.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            metrics.dropped(dropped);
            let _ = encode_frame(
                &Frame::slow_consumer(dropped),
                outbox.max_frame_size,
                &mut out,
            );
        }
        let written = write_batch(&outbox, &mut batch, &mut out, &mut writer).await;
        outbox.done_writing();
        if written.is_err() {
            break;
        }
    }
    outbox.close();
    outbox.release_all();
    writer.close().await;
}

/// Writes a batch in order (chunks as they are, runs of shared deliveries encoded into
/// `out` first, after whatever `out` already holds), then flushes. Leaves `batch` and
/// `out` empty, whatever happens.
async fn write_batch<W: FrameSink>(
    outbox: &Outbox,
    batch: &mut VecDeque<Entry>,
    out: &mut BytesMut,
    writer: &mut W,
) -> io::Result<()> {
    let result = write_entries(outbox, batch, out, writer).await;
    batch.clear();
    out.clear();
    result
}

async fn write_entries<W: FrameSink>(
    outbox: &Outbox,
    batch: &mut VecDeque<Entry>,
    out: &mut BytesMut,
    writer: &mut W,
) -> io::Result<()> {
    while !batch.is_empty() {
        if encode_shared_run(batch, out) > 0 {
            if out.len() >= CHUNK {
                writer.write(out).await?;
                out.clear();
            }
            continue;
        }
        // The front is a chunk: what `out` holds goes first.
        if let Some(Entry::Chunk(buf)) = batch.pop_front() {
            if !out.is_empty() {
                writer.write(out).await?;
                out.clear();
            }
            writer.write(&buf).await?;
            outbox.recycle(buf);
        }
    }
    if !out.is_empty() {
        writer.write(out).await?;
        out.clear();
    }
    writer.flush().await
}
