//! A bounded queue between tasks, used twice: from the application's calls (publish,
//! subscribe, acks, …) to the connection's writer ([`Outgoing`] items, bounded by the
//! `write_queue` option; it outlives connections, so what is queued when a connection
//! drops is written on the next one), and from the reader task to each [`Subscription`]
//! (deliveries, bounded by `subscription_capacity`).
//!
//! A `VecDeque` under a mutex, which the receiver swaps out whole: a sender pushes under
//! the lock and wakes the receiver only if it was waiting; the receiver takes everything
//! queued in one lock and then works through it on its own. tokio's channels cost
//! several atomic operations per item on both sides (profiled at ~13 % of a streaming
//! client's CPU, its bounded channel more still), and moving items into and out of their
//! blocks. A sender waits only while the queue is full. The bound applies to what is
//! waiting in the queue; the batch the receiver took is its own, so up to twice
//! `capacity` items may be held in all.
//!
//! [`Outgoing`]: crate::connection::Outgoing
//! [`Subscription`]: crate::Subscription

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::Notify;

#[derive(Debug)]
struct State<T> {
    items: VecDeque<T>,
    /// Live senders; the receiver ends once none is left and the queue is empty.
    senders: usize,
    receiver_gone: bool,
    /// Set while the receiver waits for an item.
    waiting: Option<Waker>,
}

#[derive(Debug)]
struct Shared<T> {
    state: Mutex<State<T>>,
    /// Wakes senders waiting for room.
    freed: Notify,
    capacity: usize,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Every critical section is a push, a swap or a counter update, none of which can
        // leave the state inconsistent if a panic unwound through it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The sending side; clones share the queue.
#[derive(Debug)]
pub(crate) struct Sender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        Sender {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.senders -= 1;
        let wake = if st.senders == 0 {
            st.waiting.take()
        } else {
            None
        };
        drop(st);
        if let Some(w) = wake {
            w.wake();
        }
    }
}

/// The receiving side.
#[derive(Debug)]
pub(crate) struct Receiver<T> {
    shared: Arc<Shared<T>>,
    /// The batch taken from the queue, worked through without the lock.
    batch: VecDeque<T>,
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

/// A queue holding at most `capacity` items (at least 1) waiting for the receiver.
pub(crate) fn bounded<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            senders: 1,
            receiver_gone: false,
            waiting: None,
        }),
        freed: Notify::new(),
        capacity: capacity.max(1),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver {
            shared,
            batch: VecDeque::new(),
        },
    )
}

impl<T> Sender<T> {
    /// Queues `item`, waiting while the queue is full.
    pub(crate) async fn send(&self, item: T) -> Result<(), Closed<T>> {
        let mut item = match self.try_send(item) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Closed(item)) => return Err(Closed(item)),
            Err(TrySendError::Full(item)) => item,
        };
        loop {
            let freed = self.shared.freed.notified();
            tokio::pin!(freed);
            // Registered before the check, so a take in between is not missed.
            freed.as_mut().enable();
            item = match self.try_send(item) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Closed(item)) => return Err(Closed(item)),
                Err(TrySendError::Full(item)) => item,
            };
            freed.await;
        }
    }

    /// Queues `item` unless the queue is full.
    pub(crate) fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        let mut st = self.shared.lock();
        if st.receiver_gone {
            return Err(TrySendError::Closed(item));
        }
        if st.items.len() >= self.shared.capacity {
            return Err(TrySendError::Full(item));
        }
        st.items.push_back(item);
        let wake = st.waiting.take();
        drop(st);
        if let Some(w) = wake {
            w.wake();
        }
        Ok(())
    }
}

impl<T> Receiver<T> {
    /// The next item; `None` once every sender is gone and the queue is empty.
    pub(crate) async fn recv(&mut self) -> Option<T> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Polls for the next item (for `Stream` implementations).
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        match self.try_recv() {
            Ok(item) => Poll::Ready(Some(item)),
            Err(TryRecvError::Disconnected) => Poll::Ready(None),
            Err(TryRecvError::Empty) => {
                let mut st = self.shared.lock();
                // Rechecked under the lock a sender pushes under: nothing is missed.
                if st.items.is_empty() && st.senders > 0 {
                    st.waiting = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                drop(st);
                self.poll_recv(cx)
            }
        }
    }

    /// The next item if one is queued.
    pub(crate) fn try_recv(&mut self) -> Result<T, TryRecvError> {
        if let Some(item) = self.batch.pop_front() {
            return Ok(item);
        }
        let mut st = self.shared.lock();
        if st.items.is_empty() {
            return Err(if st.senders == 0 {
                TryRecvError::Disconnected
            } else {
                TryRecvError::Empty
            });
        }
        let was_full = st.items.len() >= self.shared.capacity;
        std::mem::swap(&mut st.items, &mut self.batch);
        drop(st);
        if was_full {
            self.shared.freed.notify_waiters();
        }
        // Not empty: the queue it was swapped with was not.
        self.batch.pop_front().ok_or(TryRecvError::Empty)
    }

    /// Whether every sender is gone.
    pub(crate) fn is_closed(&self) -> bool {
        self.shared.lock().senders == 0
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.shared.lock().receiver_gone = true;
        self.shared.freed.notify_waiters();
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

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_by_a_push_and_ends_with_the_last_clone() {
        let (q, mut rx) = bounded(4);
        let receiver = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(item) = rx.recv().await {
                got.push(item);
            }
            got
        });
        let q2 = q.clone();
        for i in 0..3u64 {
            // Each push finds the receiver waiting (or not): either way it gets there.
            tokio::task::yield_now().await;
            q2.send(numbered(i)).await.unwrap();
        }
        drop(q);
        tokio::task::yield_now().await;
        assert!(!receiver.is_finished(), "a clone is still alive");
        drop(q2);
        let got = tokio::time::timeout(Duration::from_secs(5), receiver)
            .await
            .expect("the receiver ends once every sender is gone")
            .unwrap();
        assert_eq!(got.len(), 3);
    }
}
