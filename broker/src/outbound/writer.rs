//! The writer task of a connection: takes its [`Outbox`]'s whole queue whenever there is
//! something in it and nobody else holds the pen, writes it in order (chunks as they
//! are, shared deliveries behind their own `Deliver` header) and flushes once per batch.
//! It stops when the outbox is closed and drained or the socket fails, and then releases
//! the outbox's buffers.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use bytes::BytesMut;
use rtc_proto::codec::encode_frame;
use rtc_proto::Frame;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::{encode_shared_run, Entry, Outbox, CHUNK, KEEP, TRIM_AFTER};

/// Drains `outbox` into `writer` until the outbox is closed and empty or the socket fails,
/// then shuts the writer down.
pub(crate) async fn write_loop<W>(outbox: std::sync::Arc<Outbox>, mut writer: W)
where
    W: AsyncWrite + Unpin,
{
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
    let _ = writer.shutdown().await;
}

/// Writes a batch in order (chunks as they are, runs of shared deliveries encoded into
/// `out` first, after whatever `out` already holds), then flushes. Leaves `batch` and
/// `out` empty, whatever happens.
async fn write_batch<W>(
    outbox: &Outbox,
    batch: &mut VecDeque<Entry>,
    out: &mut BytesMut,
    writer: &mut W,
) -> std::io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    let result = write_entries(outbox, batch, out, writer).await;
    batch.clear();
    out.clear();
    result
}

async fn write_entries<W>(
    outbox: &Outbox,
    batch: &mut VecDeque<Entry>,
    out: &mut BytesMut,
    writer: &mut W,
) -> std::io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    while !batch.is_empty() {
        if encode_shared_run(batch, out) > 0 {
            if out.len() >= CHUNK {
                writer.write_all(out).await?;
                out.clear();
            }
            continue;
        }
        // The front is a chunk: what `out` holds goes first.
        if let Some(Entry::Chunk(buf)) = batch.pop_front() {
            if !out.is_empty() {
                writer.write_all(out).await?;
                out.clear();
            }
            writer.write_all(&buf).await?;
            outbox.recycle(buf);
        }
    }
    if !out.is_empty() {
        writer.write_all(out).await?;
        out.clear();
    }
    writer.flush().await
}
