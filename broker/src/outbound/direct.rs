//! Direct writes: [`Outbox::flush`] writes a connection's queue from the thread that
//! filled it, when nobody else is writing, so an answer or a delivery to an idle
//! connection costs no wake-up of its writer task (on a 2-core machine such a wake-up is
//! tens of microseconds: most of a request's round trip).
//!
//! Flow: the flusher takes the pen and the whole queue under the lock, writes it outside
//! the lock with non-blocking writes ([`DirectWrite::try_write`]), then hands back what
//! the socket did not take (to the front of the queue, ahead of anything queued
//! meanwhile), puts the pen down and wakes the writer task if anything is left. The
//! writer task, which waits for the socket to become writable, finishes the job. The
//! socket is the same one the writer task writes through ([`TcpWriter`], from
//! `rtc_proto::tcp`).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::sync::atomic::Ordering;

use bytes::{Buf, BytesMut};
pub use rtc_proto::tcp::TcpWriter;
use tokio::net::tcp::OwnedWriteHalf;

use super::{encode_shared_run, Entry, Outbox, CHUNK};

/// A socket that can be written without waiting, from any thread.
pub trait DirectWrite: Send + Sync + std::fmt::Debug {
    /// Writes what the socket takes now, without waiting; `WouldBlock` when it takes
    /// nothing.
    fn try_write(&self, buf: &[u8]) -> io::Result<usize>;
}

/// The socket behind a [`TcpWriter`] ([`TcpWriter::half`]), written to directly without
/// going through the writer's own `Arc`.
impl DirectWrite for OwnedWriteHalf {
    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        OwnedWriteHalf::try_write(self, buf)
    }
}

thread_local! {
    /// Where a direct writer encodes shared deliveries (one buffer per thread).
    static SCRATCH: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

impl Outbox {
    /// Writes what is queued now, from the calling thread, if nobody holds the pen and
    /// the connection's socket takes it without waiting; what it does not take is left to
    /// the writer task, which is woken. Without a direct socket (TLS, QUIC), or with a
    /// slow-consumer notice to send first, this just wakes the writer task.
    ///
    /// For callers that queued frames with the wake left to them
    /// ([`Outbox::push_frame_deferred`]; see [`crate::router::Flushes`]). Never waits; never holds the lock across a
    /// write.
    pub(crate) fn flush(&self) {
        let mut st = self.lock();
        if st.writing || st.frames == 0 {
            // The pen's holder looks at the queue again when it puts the pen down.
            return;
        }
        let direct = match &st.direct {
            Some(direct) if !st.closed && self.dropped.load(Ordering::Relaxed) == 0 => {
                direct.clone()
            }
            _ => {
                drop(st);
                self.wake();
                return;
            }
        };
        let mut batch = std::mem::take(&mut st.spare_queue);
        Self::take_locked(&mut st, &mut batch);
        self.backlog.store(false, Ordering::Relaxed);
        drop(st);
        self.space.notify_waiters();

        let written = SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
            Ok(mut scratch) => self.write_now(direct.as_ref(), &mut batch, &mut scratch),
            // Not reentrant; cannot happen, but the writer task can always do it.
            Err(_) => Ok(()),
        });

        let mut st = self.lock();
        if let Err(e) = written {
            // The connection is broken: its session sees that on its next read.
            tracing::debug!(error = %e, "direct write failed; closing the queue");
            st.closed = true;
            batch.clear();
        }
        // What the socket did not take goes back in front of what came meanwhile.
        for entry in batch.drain(..).rev() {
            st.bytes += entry.wire_len();
            st.frames += 1;
            st.entries.push_front(entry);
        }
        st.spare_queue = batch;
        st.writing = false;
        // The writer task releases spare chunks after a while idle, but only times that
        // when it knows they are there: it is told when they appear (not on every direct
        // write, which would cost the wake-up that direct writes exist to save).
        let untimed_spares = !st.spares_timed && !st.spares.is_empty();
        let wake = st.frames > 0 || st.closed || untimed_spares;
        drop(st);
        if wake {
            self.wake();
        }
    }

    /// Writes `batch` from the front until it is empty or the socket takes no more; the
    /// entries left (the first possibly cut to what is unwritten) stay in `batch`.
    fn write_now(
        &self,
        socket: &dyn DirectWrite,
        batch: &mut VecDeque<Entry>,
        scratch: &mut BytesMut,
    ) -> io::Result<()> {
        while let Some(front) = batch.front_mut() {
            match front {
                Entry::Chunk(buf) => {
                    let n = write_some(socket, buf)?;
                    if n < buf.len() {
                        buf.advance(n);
                        return Ok(());
                    }
                    if let Some(Entry::Chunk(buf)) = batch.pop_front() {
                        self.recycle(buf);
                    }
                }
                Entry::Shared { .. } => {
                    // Taken off the batch: on a failed write the caller drops the batch
                    // anyway, and what the socket does not take goes back as a chunk.
                    scratch.clear();
                    encode_shared_run(batch, scratch);
                    let n = write_some(socket, scratch);
                    let rest = match &n {
                        Ok(n) if *n < scratch.len() => Some(BytesMut::from(&scratch[*n..])),
                        _ => None,
                    };
                    if scratch.capacity() > 2 * CHUNK {
                        // One large message must not stay in every thread's scratch.
                        *scratch = BytesMut::new();
                    }
                    n?;
                    if let Some(rest) = rest {
                        batch.push_front(Entry::Chunk(rest));
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }
}

/// Writes as much of `buf` as the socket takes now; how much that was.
fn write_some(socket: &dyn DirectWrite, buf: &[u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match socket.try_write(&buf[done..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests;
