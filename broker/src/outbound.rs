//! The per-connection outbound queue ([`Outbox`]) and the writer task that drains it into
//! the socket (`write_loop`).
//!
//! Everything a connection is sent goes through its `Outbox`: responses from its own
//! session (PubAck, SubAck, Error, Pong, …) and deliveries pushed by other connections'
//! publishes via the router. The writer takes the whole queue at once, encodes it into one
//! buffer, writes it and flushes once per batch.
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
//! always has the next frame ready — catches up before anything is dropped. Responses to the connection's own requests are never dropped: they may use up
//! to twice the byte cap, and past that the session stops reading this client's requests
//! until its writer catches up (TCP backpressure on a client that does not read).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::{Bytes, BytesMut};
use rtc_proto::codec::{encode_deliver, encode_frame};
use rtc_proto::Frame;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

/// Bytes charged for a queued item beyond its payload: what it occupies in the queue.
const FRAME_OVERHEAD: usize = std::mem::size_of::<Outgoing>();
/// The writer hands its buffer to the socket once it holds this much.
const WRITE_CHUNK: usize = 256 * 1024;
/// A write buffer grown past this is released once the connection is idle, so idle
/// connections stay small.
const KEEP_BUFFER: usize = 16 * 1024;
/// Likewise for the batch queue's capacity, in frames.
const KEEP_BATCH: usize = 256;

/// One queued outbound item.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// A frame built for this connection alone (boxed: a queue item is moved in and out
    /// of the queue, and deliveries, the bulk of them, are 40 bytes; a `Frame` is 136).
    Frame(Box<Frame>),
    /// A delivery of a message encoded once and shared by every subscriber.
    Deliver {
        /// The subscription it is for.
        sub_id: u64,
        /// `rtc_proto::codec::encode_message` output.
        message: Bytes,
    },
}

impl Outgoing {
    /// The memory this item holds while queued (payloads of responses are small and
    /// counted by their encoded size).
    fn charge(&self) -> usize {
        FRAME_OVERHEAD
            + match self {
                Outgoing::Frame(f) => prost::Message::encoded_len(f),
                Outgoing::Deliver { message, .. } => message.len(),
            }
    }
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Outgoing>,
    bytes: usize,
    closed: bool,
}

/// The outbound queue of one connection. Cheap to share (`Arc<Outbox>`); its lock is held
/// only to push or to swap the queue out, never across I/O.
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
}

/// The connection is gone; nothing more can be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

impl Outbox {
    /// A queue capped at `max_bytes` and `max_frames` for deliveries.
    pub fn new(max_bytes: usize, max_frames: usize) -> Self {
        Outbox {
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            space: Notify::new(),
            dropped: AtomicU64::new(0),
            dropped_total: AtomicU64::new(0),
            backlog: AtomicBool::new(false),
            max_bytes,
            max_frames,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue inconsistent (every
        // critical section is a push or a swap), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a delivery if it fits; otherwise drops it and counts it. Never waits.
    /// Returns whether it was queued.
    pub(crate) fn push_deliver(&self, sub_id: u64, message: Bytes) -> bool {
        let item = Outgoing::Deliver { sub_id, message };
        let charge = item.charge();
        let st = self.lock();
        if st.closed {
            return false;
        }
        if st.queue.len() >= self.max_frames || st.bytes + charge > self.max_bytes {
            drop(st);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            self.dropped_total.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        self.enqueue(st, item, charge);
        true
    }

    /// Appends under the lock, then wakes the writer if it may be waiting.
    fn enqueue(&self, st: std::sync::MutexGuard<'_, State>, item: Outgoing, charge: usize) {
        if self.enqueue_quietly(st, item, charge) {
            self.wake();
        }
    }

    /// Appends under the lock; returns whether the writer may be waiting (the queue was
    /// empty).
    fn enqueue_quietly(
        &self,
        mut st: std::sync::MutexGuard<'_, State>,
        item: Outgoing,
        charge: usize,
    ) -> bool {
        let was_empty = st.queue.is_empty();
        st.bytes += charge;
        st.queue.push_back(item);
        if st.queue.len() * 2 > self.max_frames || st.bytes * 2 > self.max_bytes {
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
    pub(crate) fn try_push_deliver(&self, sub_id: u64, message: Bytes) -> bool {
        let item = Outgoing::Deliver { sub_id, message };
        let charge = item.charge();
        let st = self.lock();
        if st.closed || st.queue.len() >= self.max_frames || st.bytes + charge > self.max_bytes {
            return false;
        }
        self.enqueue(st, item, charge);
        true
    }

    /// Queues a response frame. It is never dropped; when the queue holds more than twice
    /// the byte cap this waits until the writer has taken a batch.
    pub(crate) async fn push_frame(&self, frame: Frame) -> Result<(), Closed> {
        self.wait_room().await?;
        self.push_frame_now(frame)
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

    /// [`Outbox::push_frame_now`] without waking the writer: returns whether the caller
    /// must call [`Outbox::wake`] once it has queued the rest of its answers. The
    /// storage thread answers a whole pass this way, so the writer takes the pass's
    /// answers in one batch instead of waking after the first (each fragment became
    /// one write for the broker and one read, and one refill, for the client).
    pub(crate) fn push_frame_deferred(&self, frame: Frame) -> Result<bool, Closed> {
        let item = Outgoing::Frame(Box::new(frame));
        let charge = item.charge();
        let st = self.lock();
        if st.closed {
            return Err(Closed);
        }
        Ok(self.enqueue_quietly(st, item, charge))
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
        message: Bytes,
    ) -> Result<(), Closed> {
        let charge = FRAME_OVERHEAD + message.len();
        let st = self
            .wait_until(|st| {
                // An empty queue always takes one item, however large.
                st.queue.is_empty()
                    || (st.queue.len() < self.max_frames && st.bytes + charge <= self.max_bytes)
            })
            .await?;
        self.enqueue(st, Outgoing::Deliver { sub_id, message }, charge);
        Ok(())
    }

    /// Waits until the queue holds no more than twice its byte and frame caps, the same
    /// condition [`Outbox::push_frame`] waits for.
    pub(crate) async fn wait_room(&self) -> Result<(), Closed> {
        self.wait_until(|st| {
            st.bytes <= self.max_bytes * 2 && st.queue.len() <= self.max_frames * 2
        })
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

    /// Whether nothing is queued right now.
    fn is_idle(&self) -> bool {
        self.lock().queue.is_empty()
    }

    /// Whether `Outbox::close` was called or the writer stopped.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Deliveries dropped for this connection so far.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_total.load(Ordering::Relaxed)
    }

    /// Waits for work and swaps the queue into `batch` (which must be empty). Returns the
    /// bytes charged for the batch (an upper bound of its encoded size), or `None` when
    /// the queue is closed and fully drained.
    pub(crate) async fn take(&self, batch: &mut VecDeque<Outgoing>) -> Option<usize> {
        loop {
            let ready = self.ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            {
                let mut st = self.lock();
                if !st.queue.is_empty() {
                    std::mem::swap(&mut st.queue, batch);
                    let bytes = std::mem::take(&mut st.bytes);
                    self.backlog.store(false, Ordering::Relaxed);
                    drop(st);
                    self.space.notify_waiters();
                    return Some(bytes);
                }
                if st.closed {
                    return None;
                }
            }
            ready.await;
        }
    }
}

/// Drains `outbox` into `writer` until the outbox is closed and empty or the socket fails,
/// then shuts the writer down. `max_frame_size` is the limit announced to the client.
pub(crate) async fn write_loop<W>(
    outbox: std::sync::Arc<Outbox>,
    mut writer: W,
    max_frame_size: usize,
) where
    W: AsyncWrite + Unpin,
{
    let mut batch = VecDeque::new();
    let mut buf = BytesMut::new();
    while let Some(charged) = outbox.take(&mut batch).await {
        // One allocation per batch instead of doubling (and re-copying) as it fills.
        buf.reserve(charged.min(WRITE_CHUNK + max_frame_size));
        let dropped = outbox.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            let _ = encode_frame(&Frame::slow_consumer(dropped), max_frame_size, &mut buf);
        }
        let mut failed = false;
        for item in batch.drain(..) {
            match item {
                Outgoing::Deliver { sub_id, message } => encode_deliver(sub_id, &message, &mut buf),
                Outgoing::Frame(frame) => {
                    if let Err(e) = encode_frame(&frame, max_frame_size, &mut buf) {
                        tracing::error!(error = %e, op = frame.op_name(), "dropping unencodable response");
                    }
                }
            }
            if buf.len() >= WRITE_CHUNK && !failed {
                failed = writer.write_all(&buf).await.is_err();
                buf.clear();
            }
        }
        if !failed && !buf.is_empty() {
            failed = writer.write_all(&buf).await.is_err();
        }
        if !failed {
            failed = writer.flush().await.is_err();
        }
        buf.clear();
        // A busy connection keeps its buffers for the next batch; an idle one gives back
        // what a burst made it grow, so idle connections stay small.
        if outbox.is_idle() {
            if buf.capacity() > KEEP_BUFFER {
                buf = BytesMut::new();
            }
            if batch.capacity() > KEEP_BATCH {
                batch = VecDeque::new();
            }
        }
        if failed {
            break;
        }
    }
    outbox.close();
    let _ = writer.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc_proto::ErrorCode;

    #[tokio::test]
    async fn backlogged_past_half_a_cap_until_the_writer_takes_the_queue() {
        let msg = Bytes::from(vec![0u8; 10]);
        let outbox = Outbox::new(1 << 20, 4);
        assert!(outbox.push_deliver(1, msg.clone()));
        assert!(outbox.push_deliver(1, msg.clone()));
        assert!(!outbox.is_backlogged(), "half full is not behind");
        assert!(outbox.push_deliver(1, msg.clone()));
        assert!(outbox.is_backlogged(), "three of four");
        let mut batch = VecDeque::new();
        assert!(outbox.take(&mut batch).await.is_some());
        assert_eq!(batch.len(), 3);
        assert!(!outbox.is_backlogged(), "the writer took everything");
    }

    #[test]
    fn deliveries_beyond_the_caps_are_dropped_and_counted() {
        let msg = Bytes::from(vec![0u8; 100]);
        let one = FRAME_OVERHEAD + 100;
        let outbox = Outbox::new(10 * one, 3);
        assert!(outbox.push_deliver(1, msg.clone()));
        assert!(outbox.push_deliver(1, msg.clone()));
        assert!(outbox.push_deliver(1, msg.clone()));
        assert!(!outbox.push_deliver(1, msg.clone()), "frame cap");
        assert_eq!(outbox.dropped_total(), 1);

        let outbox = Outbox::new(2 * one, 100);
        assert!(outbox.push_deliver(1, msg.clone()));
        assert!(outbox.push_deliver(1, msg.clone()));
        assert!(!outbox.push_deliver(1, msg.clone()), "byte cap");
        assert_eq!(outbox.dropped_total(), 1);
        assert!(
            !outbox.try_push_deliver(1, msg),
            "try_push also respects the caps"
        );
        assert_eq!(outbox.dropped_total(), 1, "but does not count a drop");
    }

    #[tokio::test]
    async fn responses_are_queued_past_the_delivery_cap_and_closed_is_reported() {
        let outbox = Outbox::new(FRAME_OVERHEAD + 200, 1);
        assert!(outbox.push_deliver(1, Bytes::from(vec![0u8; 150])));
        assert!(!outbox.push_deliver(1, Bytes::from_static(b"x")));
        outbox
            .push_frame(Frame::error(1, ErrorCode::Internal, "x"))
            .await
            .unwrap();
        outbox.close();
        assert_eq!(
            outbox
                .push_frame(Frame::error(2, ErrorCode::Internal, "x"))
                .await,
            Err(Closed)
        );
        assert!(!outbox.push_deliver(1, Bytes::from_static(b"x")));
    }
}
