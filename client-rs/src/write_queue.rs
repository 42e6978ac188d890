//! The queue from the application's calls (publish, subscribe, acks, …) to the
//! connection's writer: [`Outgoing`] items in order, bounded by a count (the
//! `write_queue` option). It outlives connections: what is queued when a connection
//! drops is written on the next one.
//!
//! An unbounded tokio channel plus a shared counter, rather than tokio's bounded channel,
//! whose receiver locks a mutex to hand back each permit (profiled at ~10 % of a
//! fire-and-forget publisher's CPU). Here a sender waits only while the queue is full,
//! and the writer hands room back once per batch it takes. Senders that check the room
//! at the same moment may overshoot the bound by one item each.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, Notify};

use crate::connection::Outgoing;

/// Items taken by the writer before it hands their room back without waiting for the
/// end of its batch.
const RELEASE_EVERY: usize = 64;

#[derive(Debug)]
struct Room {
    queued: AtomicUsize,
    capacity: usize,
    freed: Notify,
    reader_gone: AtomicBool,
}

/// The senders' side (held by the client).
#[derive(Debug)]
pub(crate) struct WriteQueue {
    tx: mpsc::UnboundedSender<Outgoing>,
    room: Arc<Room>,
}

/// The writer's side (held by the connection supervisor).
#[derive(Debug)]
pub(crate) struct WriteQueueRx {
    rx: mpsc::UnboundedReceiver<Outgoing>,
    room: Arc<Room>,
    /// Taken since room was last handed back.
    taken: usize,
}

/// The writer is gone: the client is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Closed;

/// A queue holding at most `capacity` items (at least 1).
pub(crate) fn write_queue(capacity: usize) -> (WriteQueue, WriteQueueRx) {
    let (tx, rx) = mpsc::unbounded_channel();
    let room = Arc::new(Room {
        queued: AtomicUsize::new(0),
        capacity: capacity.max(1),
        freed: Notify::new(),
        reader_gone: AtomicBool::new(false),
    });
    (
        WriteQueue {
            tx,
            room: room.clone(),
        },
        WriteQueueRx { rx, room, taken: 0 },
    )
}

impl WriteQueue {
    /// Queues `item`, waiting while the queue is full.
    pub(crate) async fn send(&self, item: Outgoing) -> Result<(), Closed> {
        loop {
            let freed = self.room.freed.notified();
            tokio::pin!(freed);
            // Registered before the check, so a release in between is not missed.
            freed.as_mut().enable();
            if self.room.reader_gone.load(Ordering::Acquire) {
                return Err(Closed);
            }
            if self.room.queued.load(Ordering::Acquire) < self.room.capacity {
                break;
            }
            freed.await;
        }
        self.push(item)
    }

    /// Queues `item` unless the queue is full.
    pub(crate) fn try_send(&self, item: Outgoing) -> Result<(), Closed> {
        if self.room.queued.load(Ordering::Acquire) >= self.room.capacity {
            return Err(Closed);
        }
        self.push(item)
    }

    fn push(&self, item: Outgoing) -> Result<(), Closed> {
        self.room.queued.fetch_add(1, Ordering::AcqRel);
        self.tx.send(item).map_err(|_| {
            self.room.queued.fetch_sub(1, Ordering::AcqRel);
            Closed
        })
    }
}

impl WriteQueueRx {
    /// The next item; `None` once every sender is gone and the queue is empty.
    pub(crate) async fn recv(&mut self) -> Option<Outgoing> {
        self.release();
        let item = self.rx.recv().await;
        self.took(item.is_some());
        item
    }

    /// The next item if one is queued.
    pub(crate) fn try_recv(&mut self) -> Result<Outgoing, mpsc::error::TryRecvError> {
        let item = self.rx.try_recv();
        match &item {
            Ok(_) => self.took(true),
            Err(_) => self.release(),
        }
        item
    }

    /// Whether every sender is gone (the client was dropped).
    pub(crate) fn is_closed(&self) -> bool {
        self.rx.is_closed()
    }

    fn took(&mut self, some: bool) {
        if some {
            self.taken += 1;
            if self.taken >= RELEASE_EVERY {
                self.release();
            }
        }
    }

    /// Hands back the room of what was taken, waking senders if the queue was full.
    fn release(&mut self) {
        if self.taken == 0 {
            return;
        }
        let before = self.room.queued.fetch_sub(self.taken, Ordering::AcqRel);
        self.taken = 0;
        if before >= self.room.capacity {
            self.room.freed.notify_waiters();
        }
    }
}

impl Drop for WriteQueueRx {
    fn drop(&mut self) {
        self.room.reader_gone.store(true, Ordering::Release);
        self.room.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ping() -> Outgoing {
        numbered(0)
    }

    fn numbered(nonce: u64) -> Outgoing {
        Outgoing::Frame(rtc_proto::Frame::from_op(rtc_proto::Op::Ping(
            rtc_proto::v1::Ping { nonce },
        )))
    }

    #[tokio::test]
    async fn a_full_queue_makes_senders_wait_until_the_writer_takes_items() {
        let (q, mut rx) = write_queue(2);
        q.send(ping()).await.unwrap();
        q.send(ping()).await.unwrap();
        assert_eq!(q.try_send(ping()), Err(Closed), "full");
        let q = Arc::new(q);
        let waiting = tokio::spawn({
            let q = q.clone();
            async move { q.send(ping()).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "waits while full");
        assert!(rx.try_recv().is_ok());
        assert!(rx.try_recv().is_ok());
        // The writer finds the queue empty: room is handed back and the sender goes on.
        assert!(rx.try_recv().is_err());
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the waiting sender is woken")
            .unwrap()
            .unwrap();
        assert!(rx.recv().await.is_some());
    }

    #[tokio::test]
    async fn senders_fail_once_the_writer_is_gone() {
        let (q, rx) = write_queue(1);
        q.send(ping()).await.unwrap();
        let q = Arc::new(q);
        let waiting = tokio::spawn({
            let q = q.clone();
            async move { q.send(ping()).await }
        });
        tokio::task::yield_now().await;
        drop(rx);
        let r = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the waiting sender is woken")
            .unwrap();
        assert_eq!(r, Err(Closed));
        assert_eq!(q.send(ping()).await, Err(Closed));
    }

    #[tokio::test]
    async fn items_keep_their_order_and_the_receiver_ends_with_the_senders() {
        let (q, mut rx) = write_queue(1000);
        for i in 0..300 {
            q.send(numbered(i)).await.unwrap();
        }
        drop(q);
        let mut n = 0;
        while let Some(item) = rx.recv().await {
            let Outgoing::Frame(rtc_proto::Frame {
                op: Some(rtc_proto::Op::Ping(p)),
            }) = item
            else {
                panic!("not a ping");
            };
            assert_eq!(p.nonce, n, "in order");
            n += 1;
        }
        assert_eq!(n, 300);
        assert!(rx.is_closed());
    }
}
