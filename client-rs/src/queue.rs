//! A bounded queue between tasks, used twice: from the application's calls (publish,
//! subscribe, acks, …) to the connection's writer ([`Outgoing`] items, bounded by the
//! `write_queue` option; it outlives connections, so what is queued when a connection
//! drops is written on the next one), and from the reader task to each [`Subscription`]
//! (deliveries, bounded by `subscription_capacity`).
//!
//! An unbounded tokio channel plus a shared counter, rather than tokio's bounded channel,
//! whose receiver locks a mutex to hand back each permit (profiled at ~10 % of a
//! fire-and-forget publisher's CPU, and again on every delivery). Here a sender waits
//! only while the queue is full, and the receiver hands room back every
//! `RELEASE_EVERY` items and whenever it finds the queue empty. Senders that check the
//! room at the same moment may overshoot the bound by one item each.
//!
//! [`Outgoing`]: crate::connection::Outgoing
//! [`Subscription`]: crate::Subscription

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::{mpsc, Notify};

/// Items taken by the receiver before it hands their room back without waiting to find
/// the queue empty.
const RELEASE_EVERY: usize = 64;

#[derive(Debug)]
struct Room {
    queued: AtomicUsize,
    capacity: usize,
    freed: Notify,
    receiver_gone: AtomicBool,
}

/// The sending side; clones share the queue.
#[derive(Debug)]
pub(crate) struct Sender<T> {
    tx: mpsc::UnboundedSender<T>,
    room: Arc<Room>,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Sender {
            tx: self.tx.clone(),
            room: self.room.clone(),
        }
    }
}

/// The receiving side.
#[derive(Debug)]
pub(crate) struct Receiver<T> {
    rx: mpsc::UnboundedReceiver<T>,
    room: Arc<Room>,
    /// Taken since room was last handed back.
    taken: usize,
}

/// The receiver is gone; the item comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Closed<T>(pub T);

/// Why [`Sender::try_send`] did not queue; the item comes back.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TrySendError<T> {
    /// The queue is full.
    Full(T),
    /// The receiver is gone.
    Closed(T),
}

/// A queue holding at most `capacity` items (at least 1).
pub(crate) fn bounded<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let room = Arc::new(Room {
        queued: AtomicUsize::new(0),
        capacity: capacity.max(1),
        freed: Notify::new(),
        receiver_gone: AtomicBool::new(false),
    });
    (
        Sender {
            tx,
            room: room.clone(),
        },
        Receiver { rx, room, taken: 0 },
    )
}

impl<T> Sender<T> {
    /// Queues `item`, waiting while the queue is full.
    pub(crate) async fn send(&self, item: T) -> Result<(), Closed<T>> {
        // The common case, room: no waiter registration (it locks the Notify's list).
        if self.room.queued.load(Ordering::Acquire) < self.room.capacity {
            return self.push(item);
        }
        loop {
            let freed = self.room.freed.notified();
            tokio::pin!(freed);
            // Registered before the check, so a release in between is not missed.
            freed.as_mut().enable();
            if self.room.receiver_gone.load(Ordering::Acquire) {
                return Err(Closed(item));
            }
            if self.room.queued.load(Ordering::Acquire) < self.room.capacity {
                break;
            }
            freed.await;
        }
        self.push(item)
    }

    /// Queues `item` unless the queue is full.
    pub(crate) fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        if self.room.queued.load(Ordering::Acquire) >= self.room.capacity {
            return Err(TrySendError::Full(item));
        }
        self.push(item)
            .map_err(|Closed(item)| TrySendError::Closed(item))
    }

    fn push(&self, item: T) -> Result<(), Closed<T>> {
        self.room.queued.fetch_add(1, Ordering::AcqRel);
        self.tx.send(item).map_err(|e| {
            self.room.queued.fetch_sub(1, Ordering::AcqRel);
            Closed(e.0)
        })
    }
}

impl<T> Receiver<T> {
    /// The next item; `None` once every sender is gone and the queue is empty.
    pub(crate) async fn recv(&mut self) -> Option<T> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Polls for the next item (for `Stream` implementations).
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(item)) => {
                self.took();
                Poll::Ready(Some(item))
            }
            other => {
                // Empty (or ended): hand back all the room before waiting.
                self.release();
                other
            }
        }
    }

    /// The next item if one is queued.
    pub(crate) fn try_recv(&mut self) -> Result<T, mpsc::error::TryRecvError> {
        let item = self.rx.try_recv();
        match &item {
            Ok(_) => self.took(),
            Err(_) => self.release(),
        }
        item
    }

    /// Whether every sender is gone.
    pub(crate) fn is_closed(&self) -> bool {
        self.rx.is_closed()
    }

    fn took(&mut self) {
        self.taken += 1;
        if self.taken >= RELEASE_EVERY {
            self.release();
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

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.room.receiver_gone.store(true, Ordering::Release);
        self.room.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::connection::Outgoing;

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
        let (q, mut rx) = bounded(2);
        q.send(ping()).await.unwrap();
        q.send(ping()).await.unwrap();
        assert!(
            matches!(q.try_send(ping()), Err(TrySendError::Full(_))),
            "full"
        );
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
        let (q, rx) = bounded(1);
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
        assert!(matches!(r, Err(Closed(_))));
        assert!(matches!(q.send(ping()).await, Err(Closed(_))));
    }

    #[tokio::test]
    async fn items_keep_their_order_and_the_receiver_ends_with_the_senders() {
        let (q, mut rx) = bounded(1000);
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
