//! Answers a connection is owed: one [`AnswerDue`] per request whose answer comes later,
//! from elsewhere (a durable publish, answered by delivery once the log engine committed
//! it). The session waits for every one of them before it closes the connection's queue
//! ([`Outbox::answers_settled`]), so a client that closed its write side after its last
//! publish still receives every PubAck the broker owes it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

use super::Outbox;

/// The count of answers owed, and who waits for it to reach zero.
#[derive(Debug, Default)]
pub(super) struct Owed {
    count: AtomicUsize,
    settled: Notify,
}

/// One answer owed to a connection; dropping it (once the answer is queued, or when it
/// can no longer come) settles it. It is also the way to the connection's queue.
#[derive(Debug)]
pub struct AnswerDue(Arc<Outbox>);

impl AnswerDue {
    /// The queue the answer goes into.
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.0
    }
}

impl Drop for AnswerDue {
    fn drop(&mut self) {
        let owed = &self.0.owed;
        if owed.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            owed.settled.notify_waiters();
        }
    }
}

impl Outbox {
    /// Records that the connection is owed one more answer, until the token is dropped.
    pub fn answer_due(self: &Arc<Self>) -> AnswerDue {
        self.owed.count.fetch_add(1, Ordering::AcqRel);
        AnswerDue(self.clone())
    }

    /// Waits until no answer is owed (each one queued, or gone for good).
    pub(crate) async fn answers_settled(&self) {
        loop {
            let settled = self.owed.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            if self.owed.count.load(Ordering::Acquire) == 0 {
                return;
            }
            settled.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn settles_when_the_last_owed_answer_is_dropped() {
        let outbox = Arc::new(Outbox::new(1 << 20, 16, 1 << 20));
        outbox.answers_settled().await;
        let (a, b) = (outbox.answer_due(), outbox.answer_due());
        let waiter = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.answers_settled().await }
        });
        drop(a);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "one answer is still owed");
        drop(b);
        tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
            .await
            .expect("settled once none is owed")
            .unwrap();
    }
}
