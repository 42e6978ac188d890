//! Who runs the writer: the storage thread, or a session appending inline.
//!
//! The [`Writer`] sits behind one lock ([`SharedWriter`]). The storage thread's loop
//! ([`run`]) takes every request waiting on the channel and processes them as one pass
//! under that lock. A session with a publish for a durable topic may instead process it
//! itself, as a pass of one ([`SharedWriter::append_inline`]), but only when nothing
//! is waiting for the storage thread and nobody holds the lock: a lone publish then
//! costs no hand-over to another thread and back (two wake-ups, a large part of its
//! round trip on a small machine). Under load, requests queue for the thread and are
//! batched as before.
//!
//! Order: a connection's publishes are stored in the order it sent them. Requests
//! sent to the thread are counted ([`SharedWriter::queued`]) from before they are sent
//! until the pass that processed them is done, under the lock; a session appends inline
//! only while that count is zero under the lock, so never ahead of one of its own
//! publishes still on its way through the channel.
//!
//! Inline appends are off with fsync `always`: the flush would block a runtime worker
//! for milliseconds. The thread owns the timers (`writer/flush.rs`): with
//! `interval:N`, the first inline append after a flush tells it ([`Request::Wake`]), and
//! so does an inline append that leaves the store holding messages when it held none.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};

use super::{Reply, Request, Writer, MAX_BATCH, MAX_PASS_UNSYNCED};
use crate::engine::{Append, Stopped};
use crate::config::FsyncPolicy;

/// The writer and the count of requests on their way to the storage thread.
pub struct SharedWriter<O> {
    writer: Mutex<Writer<O>>,
    /// Requests sent to the storage thread whose pass has not finished.
    queued: AtomicUsize,
    /// Whether sessions may append inline (not with fsync `always`).
    inline: bool,
}

impl<O> std::fmt::Debug for SharedWriter<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedWriter")
            .field("queued", &self.queued)
            .field("inline", &self.inline)
            .finish_non_exhaustive()
    }
}

impl<O> SharedWriter<O> {
    pub(super) fn new(writer: Writer<O>) -> Self {
        SharedWriter {
            inline: writer.fsync != FsyncPolicy::Always,
            writer: Mutex::new(writer),
            queued: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Writer<O>> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `request` for the storage thread, counted until its pass is done; fails
    /// only if the thread has stopped.
    pub(crate) fn send(&self, tx: &Sender<Request<O>>, request: Request<O>) -> Result<(), Stopped> {
        self.queued.fetch_add(1, Ordering::SeqCst);
        tx.send(request).map_err(|_| {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            Stopped
        })
    }

    /// Stores `append` and answers it from the calling thread, if the storage thread
    /// has nothing waiting and is not in a pass (`None`); otherwise hands `append` back,
    /// to be sent to the thread. `tx` is for telling the thread about a flush it owes.
    pub(crate) fn append_inline(
        &self,
        tx: &Sender<Request<O>>,
        append: Append<Reply<O>>,
    ) -> Option<Append<Reply<O>>> {
        if !self.inline || self.queued.load(Ordering::SeqCst) != 0 {
            return Some(append);
        }
        let Ok(mut writer) = self.writer.try_lock() else {
            return Some(append);
        };
        // Checked again under the lock: the thread's pass ends (and the count drops)
        // under it, so a zero here means every earlier request has been processed.
        // While dedup indexes are read back, an append could have to complete one: that
        // is the storage thread's work, not a runtime worker's.
        if writer.stopped || self.queued.load(Ordering::SeqCst) != 0 || writer.rebuild_pending()
        {
            return Some(append);
        }
        let was_dirty = writer.dirty;
        let was_holding = writer.storage.seal_due().is_some();
        let mut batch = vec![Request::Append(append)];
        writer.process(&mut batch);
        let owes_timed_flush =
            !was_dirty && writer.dirty && matches!(writer.fsync, FsyncPolicy::IntervalMs(_));
        let owes_seal = !was_holding && writer.storage.seal_due().is_some();
        drop(writer);
        if owes_timed_flush || owes_seal {
            // The thread sets its timer. If it has stopped, it flushed on the way out.
            let _ = self.send(tx, Request::Wake);
        }
        None
    }
}

/// The storage thread: passes over what the channel holds until it is told to stop or
/// every sender is gone; then a last flush.
pub(super) fn run<O>(shared: &SharedWriter<O>, rx: Receiver<Request<O>>) {
    let max_pass = if shared.lock().fsync == FsyncPolicy::Always {
        MAX_BATCH
    } else {
        MAX_PASS_UNSYNCED
    };
    let mut batch = Vec::with_capacity(max_pass);
    loop {
        let (deadline, rebuilding) = {
            let writer = shared.lock();
            (writer.deadline(), writer.rebuild_pending())
        };
        let first = if rebuilding {
            // Idle time reads back the dedup index (`writer/rebuild.rs`), a step at a time.
            match rx.try_recv() {
                Ok(r) => r,
                Err(TryRecvError::Empty) => {
                    let mut writer = shared.lock();
                    if deadline.is_some_and(|d| d <= Instant::now()) {
                        writer.deadline_passed();
                    } else {
                        writer.rebuild_step();
                    }
                    continue;
                }
                Err(TryRecvError::Disconnected) => break,
            }
        } else {
            match deadline {
                Some(deadline) => {
                    match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                        Ok(r) => r,
                        Err(RecvTimeoutError::Timeout) => {
                            shared.lock().deadline_passed();
                            continue;
                        }
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                None => match rx.recv() {
                    Ok(r) => r,
                    Err(_) => break,
                },
            }
        };
        batch.push(first);
        while batch.len() < max_pass {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let taken = batch.len();
        let shutdown = batch.iter().any(|r| matches!(r, Request::Shutdown));
        let enforce = batch.iter().any(|r| matches!(r, Request::Enforce));
        let mut writer = shared.lock();
        writer.process(&mut batch);
        if enforce {
            writer.enforce_retention();
            writer.save_stale_stats();
        }
        if shutdown {
            writer.stopped = true;
        }
        shared.queued.fetch_sub(taken, Ordering::SeqCst);
        drop(writer);
        if shutdown {
            break;
        }
    }
    let mut writer = shared.lock();
    writer.stopped = true;
    writer.save_stale_stats();
    writer.flush_logged();
    tracing::debug!("storage thread stopped");
}
