//! A bounded queue between tasks, used twice: from the application's calls (publish,
//! subscribe, acks, …) to the connection's writer ([`Outgoing`] items, bounded by the
//! `write_queue` option; it outlives connections, so what is queued when a connection
//! drops is written on the next one), and from the reader task to each [`Subscription`]
//! (deliveries, bounded by `subscription_capacity`).
//!
//! A `VecDeque` under a mutex, which the receiver swaps out whole: a sender pushes under
//! the lock and wakes the receiver only if it was waiting; the receiver takes everything
//! queued in one lock and then works through it on its own. tokio's channels cost
//! several atomic operations per item on both sides (its bounded channel more still),
//! and moving items into and out of their blocks. A sender waits only while the queue is full. The bound applies to what is
//! waiting in the queue; the batch the receiver took is its own, so up to twice
//! `capacity` items may be held in all.
//!
//! The writer's queue also keeps the *pen* for direct writes ([`Sender::take_pen`],
//! `crate::direct`): while the writer waits with nothing in hand and nothing is queued,
//! one sender at a time may write to the connection's TCP socket itself; the writer takes
//! nothing from the queue until the pen is put back, with the unwritten end of the frame
//! (if any) at the front of the queue.
//!
//! [`Outgoing`]: crate::outgoing::Outgoing
//! [`Subscription`]: crate::Subscription

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use rtc_proto::tcp::TcpWriter;
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
    pen: PenState,
}

/// Direct writes to the connection's socket (the writer's queue only).
#[derive(Debug, Default)]
struct PenState {
    /// The socket of the connection the receiver is writing to, if it allows direct
    /// writes (TCP; not TLS or QUIC).
    socket: Option<TcpWriter>,
    /// A sender holds the pen: the receiver takes nothing until it is put back.
    out: bool,
    /// The receiver waits with nothing in hand: everything it took is written.
    idle: bool,
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

/// What [`Sender::try_send_or_take_pen`] did.
#[derive(Debug)]
pub(crate) enum Pen<T> {
    /// The item is queued.
    Queued,
    /// The caller holds the pen, for a direct write of the item to the socket.
    Taken(TcpWriter, T),
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
            pen: PenState::default(),
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
        self.push(self.shared.lock(), item)
    }

    /// Queues the items `next` yields under one lock and wakes the receiver once, until
    /// `next` yields none or an item does not go in; that one is handed back as
    /// [`Sender::try_send`] would. For the reader task, which hands each subscription the
    /// run of deliveries one read brought: a lock per delivery, contended by the
    /// receiver's swaps, cost more than the push itself.
    pub(crate) fn try_send_run(
        &self,
        mut next: impl FnMut() -> Option<T>,
    ) -> Result<(), TrySendError<T>> {
        let mut st = self.shared.lock();
        let result = loop {
            let Some(item) = next() else { break Ok(()) };
            if let Err(refused) = self.push_locked(&mut st, item) {
                break Err(refused);
            }
        };
        wake_if_queued(st);
        result
    }

    /// Queues `item` under the lock `st` holds, then wakes the receiver if it waits.
    fn push(&self, mut st: MutexGuard<'_, State<T>>, item: T) -> Result<(), TrySendError<T>> {
        self.push_locked(&mut st, item)?;
        wake_if_queued(st);
        Ok(())
    }

    /// Queues `item` unless the receiver is gone or the queue is full.
    fn push_locked(&self, st: &mut State<T>, item: T) -> Result<(), TrySendError<T>> {
        if st.receiver_gone {
            return Err(TrySendError::Closed(item));
        }
        if st.items.len() >= self.shared.capacity {
            return Err(TrySendError::Full(item));
        }
        st.items.push_back(item);
        Ok(())
    }
}

/// Releases the lock `st` holds, waking the receiver if it waits and anything is queued.
fn wake_if_queued<T>(mut st: MutexGuard<'_, State<T>>) {
    let wake = if st.items.is_empty() {
        None
    } else {
        st.waiting.take()
    };
    drop(st);
    if let Some(w) = wake {
        w.wake();
    }
}

impl<T> Sender<T> {
    /// Takes the pen if the receiver is idle, nothing is queued and its connection
    /// allows direct writes: the caller may then write one frame to the returned
    /// socket, and must hand the pen back with [`Sender::put_pen_back`].
    pub(crate) fn take_pen(&self) -> Option<TcpWriter> {
        take_pen(&mut self.shared.lock())
    }

    /// Queues `item` like [`Sender::try_send`], unless the pen is free (as for
    /// [`Sender::take_pen`]): then takes it and hands `item` back with the socket.
    pub(crate) fn try_send_or_take_pen(&self, item: T) -> Result<Pen<T>, TrySendError<T>> {
        let mut st = self.shared.lock();
        match take_pen(&mut st) {
            Some(socket) => Ok(Pen::Taken(socket, item)),
            None => self.push(st, item).map(|()| Pen::Queued),
        }
    }

    /// Hands the pen back after a direct write to `socket`, with `rest` (what the socket
    /// did not take) to go first. If the connection changed meanwhile, `rest` is
    /// dropped: the end of a frame begun on another socket must not be written to this
    /// one. Wakes the receiver if anything is queued.
    pub(crate) fn put_pen_back(&self, socket: &TcpWriter, rest: Option<T>) {
        let mut st = self.shared.lock();
        st.pen.out = false;
        let same = st
            .pen
            .socket
            .as_ref()
            .is_some_and(|s| s.same_socket(socket));
        if let (Some(rest), true) = (rest, same) {
            st.items.push_front(rest);
        }
        wake_if_queued(st);
    }
}

/// Takes the pen if the receiver is idle, nothing is queued and its connection allows
/// direct writes.
fn take_pen<T>(st: &mut State<T>) -> Option<TcpWriter> {
    if !st.pen.idle || st.pen.out || !st.items.is_empty() || st.receiver_gone {
        return None;
    }
    let socket = st.pen.socket.clone()?;
    st.pen.out = true;
    Some(socket)
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
                // Rechecked under the lock a sender pushes under: nothing is missed. While
                // a sender holds the pen, putting it back wakes us if anything is queued.
                if st.pen.out || (st.items.is_empty() && st.senders > 0) {
                    st.waiting = Some(cx.waker().clone());
                    st.pen.idle = true;
                    return Poll::Pending;
                }
                drop(st);
                self.poll_recv(cx)
            }
        }
    }

    /// The next item if one is queued (and no sender holds the pen).
    pub(crate) fn try_recv(&mut self) -> Result<T, TryRecvError> {
        if let Some(item) = self.batch.pop_front() {
            return Ok(item);
        }
        let mut st = self.shared.lock();
        if st.items.is_empty() || st.pen.out {
            return Err(if st.senders == 0 && !st.pen.out {
                TryRecvError::Disconnected
            } else {
                TryRecvError::Empty
            });
        }
        let was_full = st.items.len() >= self.shared.capacity;
        std::mem::swap(&mut st.items, &mut self.batch);
        st.pen.idle = false;
        drop(st);
        if was_full {
            self.shared.freed.notify_waiters();
        }
        // Not empty: the queue it was swapped with was not.
        self.batch.pop_front().ok_or(TryRecvError::Empty)
    }

    /// Starts writing to a connection: `socket` is where senders may write directly
    /// (`None`: not on this connection). The receiver is busy until it next waits.
    pub(crate) fn attach(&mut self, socket: Option<TcpWriter>) {
        let mut st = self.shared.lock();
        st.pen.socket = socket;
        st.pen.idle = false;
    }

    /// The connection ended: no more direct writes to its socket.
    pub(crate) fn detach(&mut self) {
        let mut st = self.shared.lock();
        st.pen.socket = None;
        st.pen.idle = false;
    }

    /// Queues an item of the receiver's own (the writer's heartbeat), behind what is
    /// queued; it is taken like any other, once no sender holds the pen.
    pub(crate) fn push_own(&mut self, item: T) {
        self.shared.lock().items.push_back(item);
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
    use crate::outgoing::Outgoing;

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
    async fn a_run_goes_in_until_the_queue_is_full_and_hands_back_the_first_that_does_not() {
        let (q, mut rx) = bounded::<u64>(3);
        let receiver = tokio::spawn(async move {
            let first = rx.recv().await;
            (first, rx)
        });
        tokio::task::yield_now().await;
        let mut items = 0..5u64;
        assert!(matches!(
            q.try_send_run(|| items.next()),
            Err(TrySendError::Full(3))
        ));
        assert_eq!(items.next(), Some(4), "nothing drawn past the one refused");
        let (first, mut rx) = tokio::time::timeout(Duration::from_secs(5), receiver)
            .await
            .expect("the waiting receiver is woken by the run")
            .unwrap();
        assert_eq!(first, Some(0));
        assert_eq!((rx.try_recv().ok(), rx.try_recv().ok()), (Some(1), Some(2)));
        assert!(rx.try_recv().is_err(), "three went in");
        assert!(q.try_send_run(|| None).is_ok(), "an empty run");
        let mut more = 10..12u64;
        assert!(q.try_send_run(|| more.next()).is_ok());
        assert_eq!(
            (rx.try_recv().ok(), rx.try_recv().ok()),
            (Some(10), Some(11))
        );
        drop(rx);
        assert!(matches!(
            q.try_send_run(|| Some(7)),
            Err(TrySendError::Closed(7))
        ));
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
