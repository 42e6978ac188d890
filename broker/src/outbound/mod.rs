//! The per-connection outbound queue ([`Outbox`]) and the writer task that drains it into
//! the connection's [`FrameSink`] (`write_loop`).
//!
//! Everything a connection is sent goes through its `Outbox`: responses from its own
//! session (PubAck, SubAck, Error, Pong, …) and deliveries pushed by other connections'
//! publishes via the router, through the connection's [`Subscription`]s (this module's
//! implementation of [`crate::router::Subscriber`]). Frames are queued in rtc's own
//! encoding, length-prefixed protobuf; a transport that frames messages itself (a
//! WebSocket, one frame per message) or re-encodes them (JSON) does so in its
//! [`FrameSink`], so the queue, its limits and its slow-consumer policy are the same for
//! every transport. The queue holds two kinds of entry:
//!
//! - **chunks** of encoded frames (length prefix included, up to [`CHUNK`] bytes each):
//!   responses, and deliveries of a message that only this connection gets, are encoded
//!   into the last chunk as they are queued — a header and a copy under the lock, with
//!   no allocation. The writer writes a chunk as it is and hands it back for reuse, so a
//!   busy connection allocates nothing and its chunks stay in cache.
//! - **shared** deliveries: a message fanned out to several subscribers is encoded once
//!   and queued by reference (a `Bytes` clone); each connection's writer copies it behind
//!   its own `Deliver` header when it writes. The copies then happen in the writers, in
//!   parallel, not one after another in the publisher's session.
//!
//! The writer takes the whole queue at once, writes it in order and flushes once per
//! batch ([`writer`]).
//!
//! # Direct writes
//! Waking a connection's writer task costs a thread wake-up whenever that task is not
//! already running, and on a request–answer path those wake-ups are most of the latency.
//! So whoever queued frames may instead call [`Outbox::flush`] once it has queued what
//! it has (the end of a read's frames for a session, the end of a pass for the storage
//! thread): when no one is writing and the socket is a TCP socket, the frames are written
//! right there with non-blocking writes, and whatever the socket does not take at once
//! goes back to the front of the queue for the writer task ([`direct`]). Exactly one
//! party writes at a time: the writer task or one flusher holds the queue's *pen*
//! (`State::writing`) while it writes.
//!
//! # Slow-consumer policy
//! The queue is bounded in bytes and in frames (`outbound_queue_bytes`,
//! `outbound_queue_frames`). A delivery that does not fit is **dropped and counted**; it
//! never waits, so a subscriber that cannot keep up never slows the publisher or anyone
//! else. The next time the writer drains, it first sends the client
//! `Error{code: SLOW_CONSUMER}` saying how many messages were dropped since the last such
//! notice. A queue more than half full is *backlogged* ([`Outbox::is_backlogged`]): a
//! session publishing to it yields to the scheduler once per publish (it does not wait),
//! so that a writer that is merely not being scheduled — a client streaming publishes
//! always has the next frame ready — catches up before anything is dropped. Responses to
//! the connection's own requests are never dropped: they may use up to twice the byte
//! cap, and past that the session stops reading this client's requests until its writer
//! catches up (TCP backpressure on a client that does not read).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rtc_proto::codec::{deliver_frame_len, encode_deliver, encode_frame, frame_len, LEN_PREFIX};
use rtc_proto::Frame;
use tokio::sync::Notify;

mod answers;
mod direct;
mod subscription;
mod writer;

pub use crate::router::Share;
pub use answers::AnswerDue;
pub use direct::{DirectWrite, TcpWriter};
pub use subscription::Subscription;
pub(crate) use writer::write_loop;
pub use writer::{ByteStream, FrameSink};

/// Frames are encoded into chunks of this size (a larger frame gets a chunk of its own);
/// the writer also writes shared deliveries in pieces of about this size.
const CHUNK: usize = 64 * 1024;
/// The first chunk of a queue with no spare one: most connections are sent a frame now
/// and then, and should stay small (a chunk grows to fit a larger frame). A Welcome, a
/// SubAck or a delivery of a small message fits.
const FIRST_CHUNK: usize = 256;
/// Written chunks kept for reuse.
const MAX_SPARES: usize = 4;
/// Buffers the writer keeps grown past this (its batch queue, counted in bytes, and its
/// encoding buffer) are released, with the spare chunks, once the connection has had
/// nothing to send for [`TRIM_AFTER`], so idle connections stay small.
const KEEP: usize = 16 * 1024;
/// Not at once: a busy connection often finds its queue empty for a moment, and
/// allocating (and page-faulting) its buffers again per batch costs more than it saves.
const TRIM_AFTER: Duration = Duration::from_millis(500);

/// The bytes a delivery of an encoded message of `message_len` bytes takes in the queue.
fn delivery_len(sub_id: u64, message_len: usize) -> usize {
    LEN_PREFIX + deliver_frame_len(sub_id, message_len)
}

/// Takes the run of shared deliveries at the front of `batch` (at least one, if the front
/// is one) and encodes them into `out` until it holds a chunk's worth; how many it took.
/// The writer task and direct writers both write shared deliveries this way.
fn encode_shared_run(batch: &mut VecDeque<Entry>, out: &mut BytesMut) -> usize {
    let mut taken = 0;
    while matches!(batch.front(), Some(Entry::Shared { .. })) {
        if let Some(Entry::Shared { sub_id, message }) = batch.pop_front() {
            encode_deliver(sub_id, &message, out);
            taken += 1;
        }
        if out.len() >= CHUNK {
            break;
        }
    }
    taken
}

/// One queue entry.
#[derive(Debug)]
pub(crate) enum Entry {
    /// Whole encoded frames (length prefixes included), written as they are.
    Chunk(BytesMut),
    /// A delivery of a message shared with other subscribers, encoded by the writer.
    Shared {
        /// The subscription it is for.
        sub_id: u64,
        /// `rtc_proto::codec::encode_message` output.
        message: Bytes,
    },
}

impl Entry {
    /// Bytes it takes on the wire.
    fn wire_len(&self) -> usize {
        match self {
            Entry::Chunk(buf) => buf.len(),
            Entry::Shared { sub_id, message } => delivery_len(*sub_id, message.len()),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// The queue, oldest first.
    entries: VecDeque<Entry>,
    /// Empty chunks handed back by the writer.
    spares: Vec<BytesMut>,
    /// The writer task knows spares are kept and is timing their release: a direct
    /// writer that recycles a chunk need not wake it.
    spares_timed: bool,
    /// Bytes queued, as they will be written.
    bytes: usize,
    /// Frames queued (a remainder a direct write handed back counts as one per entry).
    frames: usize,
    closed: bool,
    /// The pen: the writer task or a direct writer is writing a batch it took. Nobody
    /// else may write until it is put down.
    writing: bool,
    /// The socket, for direct writes (TCP only); dropped when the writer stops.
    direct: Option<Arc<dyn DirectWrite>>,
    /// An empty queue kept for direct writers to swap with (keeps its capacity).
    spare_queue: VecDeque<Entry>,
    /// Deliveries queued over the connection's life, and their bytes (the admin view;
    /// counted under the lock the queueing holds anyway).
    delivered: u64,
    delivered_bytes: u64,
}

/// What an outbound queue holds and has carried, for the admin view.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxStats {
    /// Frames waiting to be written.
    pub queued_frames: usize,
    /// Their bytes.
    pub queued_bytes: usize,
    /// Deliveries queued over the connection's life.
    pub delivered: u64,
    /// Their bytes on the wire.
    pub delivered_bytes: u64,
    /// Deliveries dropped because the queue was full.
    pub dropped: u64,
}

impl State {
    /// Appends a frame of `len` bytes, written by `encode` into the last chunk (or a new
    /// one); returns whether the writer may be waiting (the queue was empty).
    fn append(&mut self, len: usize, encode: impl FnOnce(&mut BytesMut)) -> bool {
        let was_empty = self.frames == 0;
        let has_room = matches!(self.entries.back(),
            Some(Entry::Chunk(buf)) if buf.capacity() - buf.len() >= len);
        if !has_room {
            let mut buf = self.spares.pop().unwrap_or_else(|| {
                BytesMut::with_capacity(if was_empty { FIRST_CHUNK } else { CHUNK })
            });
            buf.reserve(len);
            self.entries.push_back(Entry::Chunk(buf));
        }
        let Some(Entry::Chunk(buf)) = self.entries.back_mut() else {
            unreachable!("a chunk with room was just ensured")
        };
        let before = buf.len();
        encode(buf);
        debug_assert_eq!(buf.len() - before, len, "frame length");
        self.bytes += buf.len() - before;
        self.frames += 1;
        was_empty
    }

    /// Queues a shared delivery that takes `len` bytes once written; returns whether the
    /// writer may be waiting.
    fn push_shared(&mut self, sub_id: u64, message: Bytes, len: usize) -> bool {
        let was_empty = self.frames == 0;
        self.entries.push_back(Entry::Shared { sub_id, message });
        self.bytes += len;
        self.frames += 1;
        was_empty
    }
}

/// The outbound queue of one connection. Cheap to share (`Arc<Outbox>`); its lock is held
/// only to queue a frame or to take the queue, never across I/O.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    /// Wakes the writer when the queue goes from empty to non-empty or is closed.
    ready: Notify,
    /// Wakes responders waiting for room after the writer took a batch.
    space: Notify,
    /// Deliveries dropped since the client was last told.
    dropped: AtomicU64,
    /// Deliveries dropped over the connection's life.
    dropped_total: AtomicU64,
    /// The queue holds more than half of a cap: its writer is falling behind.
    backlog: AtomicBool,
    max_bytes: usize,
    max_frames: usize,
    /// The frame limit announced to the client: a larger response is not sent.
    max_frame_size: usize,
    /// Answers owed that come from elsewhere (see `answers.rs`).
    owed: answers::Owed,
}

/// The connection is gone; nothing more can be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

impl Outbox {
    /// A queue capped at `max_bytes` and `max_frames` for deliveries, for a connection
    /// that was announced `max_frame_size`. (Sessions use [`Outbox::with_direct`].)
    #[cfg(any(test, feature = "internals"))]
    pub fn new(max_bytes: usize, max_frames: usize, max_frame_size: usize) -> Self {
        Self::with_direct(max_bytes, max_frames, max_frame_size, None)
    }

    /// [`Outbox::new`] for a connection whose socket may also be written directly
    /// (see [`Outbox::flush`]).
    pub fn with_direct(
        max_bytes: usize,
        max_frames: usize,
        max_frame_size: usize,
        direct: Option<Arc<dyn DirectWrite>>,
    ) -> Self {
        Outbox {
            state: Mutex::new(State {
                direct,
                ..State::default()
            }),
            ready: Notify::new(),
            space: Notify::new(),
            dropped: AtomicU64::new(0),
            dropped_total: AtomicU64::new(0),
            backlog: AtomicBool::new(false),
            max_bytes,
            max_frames,
            max_frame_size,
            owed: answers::Owed::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue inconsistent (every
        // critical section is an append or a swap), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a delivery of `len` bytes fits under the caps now.
    fn fits(&self, st: &State, len: usize) -> bool {
        st.frames < self.max_frames && st.bytes + len <= self.max_bytes
    }

    /// Queues a delivery of `message` (an encoded `Message`, see
    /// `rtc_proto::codec::encode_message`) if it fits; otherwise drops it and counts it.
    /// Never waits. Returns whether it was queued.
    pub(crate) fn push_deliver(&self, sub_id: u64, message: &Bytes, share: Share) -> bool {
        let queued = self.push_deliver_deferred(sub_id, message, share);
        if queued == Some(true) {
            self.wake();
        }
        queued.is_some()
    }

    /// [`Outbox::push_deliver`] that leaves waking the writer to the caller: `None` if
    /// the delivery was dropped, `Some(true)` if it found the queue empty, so the caller
    /// must [`Outbox::flush`] (see [`crate::router::Flushes`]) once it has queued what it has.
    pub(crate) fn push_deliver_deferred(
        &self,
        sub_id: u64,
        message: &Bytes,
        share: Share,
    ) -> Option<bool> {
        let len = delivery_len(sub_id, message.len());
        let st = self.lock();
        if st.closed {
            return None;
        }
        if !self.fits(&st, len) {
            drop(st);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            self.dropped_total.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.queue_deliver(st, sub_id, message, share, len))
    }

    /// Queues a delivery of `len` bytes; returns whether the queue was empty (the writer
    /// may be waiting).
    fn queue_deliver(
        &self,
        mut st: std::sync::MutexGuard<'_, State>,
        sub_id: u64,
        message: &Bytes,
        share: Share,
        len: usize,
    ) -> bool {
        let was_empty = match share {
            Share::Copy => st.append(len, |buf| encode_deliver(sub_id, message, buf)),
            Share::Reference => st.push_shared(sub_id, message.clone(), len),
        };
        st.delivered += 1;
        st.delivered_bytes += len as u64;
        if st.frames * 2 > self.max_frames || st.bytes * 2 > self.max_bytes {
            self.backlog.store(true, Ordering::Relaxed);
        }
        was_empty
    }

    /// Whether the queue holds more than half of its frame or byte cap (set when a push
    /// crosses that line, cleared when the writer takes the queue): a hint for busy
    /// publishers to let this connection's writer run before deliveries are dropped.
    pub(crate) fn is_backlogged(&self) -> bool {
        self.backlog.load(Ordering::Relaxed)
    }

    /// Queues a delivery if it fits, without counting a drop when it does not: for
    /// senders that keep the message and retry (durable consumers).
    pub(crate) fn try_push_deliver(&self, sub_id: u64, message: &Bytes) -> bool {
        let len = delivery_len(sub_id, message.len());
        let st = self.lock();
        if st.closed || !self.fits(&st, len) {
            return false;
        }
        if self.queue_deliver(st, sub_id, message, Share::Reference, len) {
            self.wake();
        }
        true
    }

    /// Queues a response frame, leaving the writer's wake to the caller, who must
    /// [`Outbox::flush`] once it has queued what it has (a session flushes after the
    /// frames of each read). It is never dropped; when the queue holds more than twice
    /// the byte cap this waits until the writer has taken a batch.
    pub(crate) async fn push_frame_unflushed(&self, frame: Frame) -> Result<(), Closed> {
        self.wait_room().await?;
        self.push_frame_deferred(frame).map(drop)
    }

    /// Queues a response frame without waiting, whatever the queue holds. For the storage
    /// thread, which must not block; the session bounds how much it can add by calling
    /// [`Outbox::wait_room`] before each publish it hands over.
    pub(crate) fn push_frame_now(&self, frame: Frame) -> Result<(), Closed> {
        if self.push_frame_deferred(frame)? {
            self.wake();
        }
        Ok(())
    }

    /// [`Outbox::push_frame_now`] without waking the writer: returns whether the queue
    /// was empty, so that the caller must [`Outbox::flush`] once it has queued the rest
    /// of its answers. The storage thread answers a whole pass this way, so each
    /// connection gets the pass's answers in one write instead of a write after the
    /// first (each fragment became one write for the broker and one read, and one
    /// refill, for the client).
    ///
    /// A response above the connection's frame limit cannot be sent; it is logged and
    /// left out.
    pub(crate) fn push_frame_deferred(&self, frame: Frame) -> Result<bool, Closed> {
        let len = frame_len(&frame);
        let mut st = self.lock();
        if st.closed {
            return Err(Closed);
        }
        if len > self.max_frame_size {
            drop(st);
            tracing::error!(
                len,
                max = self.max_frame_size,
                op = frame.op_name(),
                "dropping a response above the frame limit"
            );
            return Ok(false);
        }
        let max = self.max_frame_size;
        Ok(st.append(LEN_PREFIX + len, |buf| {
            // Cannot fail: the size was checked above.
            let _ = encode_frame(&frame, max, buf);
        }))
    }

    /// Wakes the writer (after [`Outbox::push_frame_deferred`]).
    pub(crate) fn wake(&self) {
        self.ready.notify_one();
    }

    /// Queues a delivery that must not be dropped (a replay from the log): waits while
    /// the queue is at its delivery cap.
    pub(crate) async fn push_deliver_wait(
        &self,
        sub_id: u64,
        message: &Bytes,
    ) -> Result<(), Closed> {
        let len = delivery_len(sub_id, message.len());
        // An empty queue always takes one item, however large.
        let st = self
            .wait_until(|st| st.frames == 0 || self.fits(st, len))
            .await?;
        if self.queue_deliver(st, sub_id, message, Share::Reference, len) {
            self.wake();
        }
        Ok(())
    }

    /// Waits until the queue holds no more than twice its byte and frame caps, the same
    /// condition [`Outbox::push_frame_unflushed`] waits for.
    pub(crate) async fn wait_room(&self) -> Result<(), Closed> {
        self.wait_until(|st| st.bytes <= self.max_bytes * 2 && st.frames <= self.max_frames * 2)
            .await
            .map(drop)
    }

    /// Waits until `ready` holds for the queue (rechecked each time the writer takes a
    /// batch) and returns with the lock held; fails once the queue is closed.
    async fn wait_until(
        &self,
        mut ready: impl FnMut(&State) -> bool,
    ) -> Result<std::sync::MutexGuard<'_, State>, Closed> {
        loop {
            let space = self.space.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            {
                let st = self.lock();
                if st.closed {
                    return Err(Closed);
                }
                if ready(&st) {
                    return Ok(st);
                }
            }
            // The frames in the way may have been queued with the wake left to a
            // `flush` that has not come yet.
            self.wake();
            space.await;
        }
    }

    /// Marks the queue closed: nothing more is accepted, and the writer exits once it has
    /// written what is already queued.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
        self.space.notify_waiters();
    }

    /// What it holds and has carried.
    pub fn stats(&self) -> OutboxStats {
        let st = self.lock();
        OutboxStats {
            queued_frames: st.frames,
            queued_bytes: st.bytes,
            delivered: st.delivered,
            delivered_bytes: st.delivered_bytes,
            dropped: self.dropped_total.load(Ordering::Relaxed),
        }
    }

    /// Whether `Outbox::close` was called or the writer stopped.
    #[cfg(any(test, feature = "internals"))]
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Deliveries dropped for this connection so far.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_total.load(Ordering::Relaxed)
    }

    /// Swaps the queue into `batch` (which must be empty) and takes the pen if anything
    /// is queued and nobody is writing; `Err(Closed)` once the queue is closed and
    /// drained.
    fn try_take(&self, batch: &mut VecDeque<Entry>) -> Result<bool, Closed> {
        debug_assert!(batch.is_empty(), "the writer hands back an empty queue");
        let mut st = self.lock();
        if st.writing {
            // A direct writer wakes the writer task when it puts the pen down.
            return Ok(false);
        }
        if st.frames == 0 {
            return if st.closed { Err(Closed) } else { Ok(false) };
        }
        Self::take_locked(&mut st, batch);
        self.backlog.store(false, Ordering::Relaxed);
        drop(st);
        self.space.notify_waiters();
        Ok(true)
    }

    /// Swaps the queue into `batch` and takes the pen.
    fn take_locked(st: &mut State, batch: &mut VecDeque<Entry>) {
        std::mem::swap(&mut st.entries, batch);
        st.bytes = 0;
        st.frames = 0;
        st.writing = true;
    }

    /// Puts the pen down after writing a batch taken with [`Outbox::take`].
    fn done_writing(&self) {
        self.lock().writing = false;
    }

    /// Waits for work and swaps the queue into `batch` (which must be empty), taking the
    /// pen (put it down with [`Outbox::done_writing`]): `Some(true)`. `None` once the
    /// queue is closed and drained. With `until_spares`, returns `Some(false)` without
    /// taking anything once spare chunks are kept (a direct writer recycled some), so
    /// that the writer can time their release.
    pub(crate) async fn take(
        &self,
        batch: &mut VecDeque<Entry>,
        until_spares: bool,
    ) -> Option<bool> {
        loop {
            let ready = self.ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            match self.try_take(batch) {
                Ok(true) => return Some(true),
                Err(Closed) => return None,
                Ok(false) if until_spares && self.has_spares() => return Some(false),
                Ok(false) => ready.await,
            }
        }
    }

    /// Takes back a written chunk for reuse.
    fn recycle(&self, mut chunk: BytesMut) {
        chunk.clear();
        let mut st = self.lock();
        if st.spares.len() < MAX_SPARES && chunk.capacity() <= CHUNK {
            st.spares.push(chunk);
        }
    }

    /// Whether spare chunks are kept.
    fn has_spares(&self) -> bool {
        !self.lock().spares.is_empty()
    }

    /// Whether spare chunks are kept; if so, notes that the writer task is timing their
    /// release (until [`Outbox::release_spares`]), so direct writers stop waking it for
    /// them.
    fn time_spares(&self) -> bool {
        let mut st = self.lock();
        st.spares_timed = !st.spares.is_empty();
        st.spares_timed
    }

    /// Releases the spare chunks (and the direct writers' spare queue).
    fn release_spares(&self) {
        let mut st = self.lock();
        st.spares_timed = false;
        let spares = std::mem::take(&mut st.spares);
        let spare_queue = std::mem::take(&mut st.spare_queue);
        drop(st);
        drop((spares, spare_queue));
    }

    /// Drops everything queued, every spare chunk and the socket: for a closed queue whose
    /// writer has stopped. An `Outbox` may outlive its connection for a while (a publisher's match
    /// cache holds it until the next subscribe or unsubscribe anywhere), and should not
    /// keep buffers meanwhile.
    fn release_all(&self) {
        let mut st = self.lock();
        let entries = std::mem::take(&mut st.entries);
        let spares = std::mem::take(&mut st.spares);
        let spare_queue = std::mem::take(&mut st.spare_queue);
        let direct = st.direct.take();
        st.bytes = 0;
        st.frames = 0;
        drop(st);
        drop((entries, spares, spare_queue, direct));
    }

    /// Everything queued, in order, as the writer would write it.
    #[cfg(test)]
    pub(crate) fn drain(&self) -> BytesMut {
        let mut batch = VecDeque::new();
        let mut all = BytesMut::new();
        if self.try_take(&mut batch) == Ok(true) {
            for entry in batch {
                match entry {
                    Entry::Chunk(buf) => all.extend_from_slice(&buf),
                    Entry::Shared { sub_id, message } => encode_deliver(sub_id, &message, &mut all),
                }
            }
            self.done_writing();
        }
        all
    }
}

#[cfg(test)]
mod tests;
