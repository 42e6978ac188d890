//! [`Subscription`]: a `Stream` of the messages delivered for one subscription.
//!
//! The reader task pushes each `Deliver` into the subscription's bounded queue; the
//! stream yields them in order. Dropping a `Subscription` unsubscribes in the background;
//! [`Subscription::unsubscribe`] does it and waits for the broker's confirmation.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::queue;
use rtc_proto::v1::{self, frame::Op};
use rtc_proto::Frame;

use crate::error::Error;
use crate::message::Message;
use crate::outgoing::Outgoing;
use crate::requests::{unexpected, Inner};

/// Messages for one subscription, in delivery order. Ends when the connection closes.
#[derive(Debug)]
pub struct Subscription {
    inner: Arc<Inner>,
    sub_id: u64,
    pattern: String,
    rx: queue::Receiver<Message>,
    active: bool,
}

impl Subscription {
    pub(crate) fn new(
        inner: Arc<Inner>,
        sub_id: u64,
        pattern: String,
        rx: queue::Receiver<Message>,
    ) -> Self {
        Subscription {
            inner,
            sub_id,
            pattern,
            rx,
            active: true,
        }
    }

    /// The next message, or `None` once the connection has closed.
    pub async fn next(&mut self) -> Option<Message> {
        self.rx.recv().await
    }

    /// The pattern this subscription was made with.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// The id the client gave this subscription (carried in every `Deliver`).
    pub fn sub_id(&self) -> u64 {
        self.sub_id
    }

    /// Acknowledges a message of a durable consumer subscription (explicit acks) and
    /// waits for the broker to confirm: it will not be redelivered.
    pub async fn ack(&self, message: &Message) -> Result<(), Error> {
        self.settle(
            |req_id, sub_id, seqs| {
                Op::Ack(v1::Ack {
                    req_id,
                    sub_id,
                    seqs,
                })
            },
            message,
        )
        .await
    }

    /// Acknowledges without waiting for the broker's confirmation.
    pub async fn ack_nowait(&self, message: &Message) -> Result<(), Error> {
        let frame = Frame::from_op(Op::Ack(v1::Ack {
            req_id: 0,
            sub_id: self.sub_id,
            seqs: vec![message.seq],
        }));
        self.inner
            .tx
            .send(Outgoing::Frame(frame))
            .await
            .map_err(|_| Error::Closed("the client was closed".into()))
    }

    /// Gives a message back: the broker redelivers it (to any member) after `delay`.
    pub async fn nack(&self, message: &Message, delay: std::time::Duration) -> Result<(), Error> {
        let delay_ms = delay.as_millis() as u64;
        self.settle(
            |req_id, sub_id, seqs| {
                Op::Nack(v1::Nack {
                    req_id,
                    sub_id,
                    seqs,
                    delay_ms,
                })
            },
            message,
        )
        .await
    }

    /// Tells the broker the message is still being worked on: its ack_wait restarts.
    pub async fn in_progress(&self, message: &Message) -> Result<(), Error> {
        self.settle(
            |req_id, sub_id, seqs| {
                Op::InProgress(v1::InProgress {
                    req_id,
                    sub_id,
                    seqs,
                })
            },
            message,
        )
        .await
    }

    async fn settle(
        &self,
        op: impl FnOnce(u64, u64, Vec<u64>) -> Op,
        message: &Message,
    ) -> Result<(), Error> {
        let sub_id = self.sub_id;
        match self
            .inner
            .request(|req_id| Frame::from_op(op(req_id, sub_id, vec![message.seq])))
            .await?
        {
            Op::Confirm(_) => Ok(()),
            other => Err(unexpected("Confirm", other)),
        }
    }

    /// Ends the subscription and waits for the broker to confirm. Messages still
    /// buffered in the client are discarded.
    pub async fn unsubscribe(mut self) -> Result<(), Error> {
        self.active = false;
        self.inner.shared.remove_sub(self.sub_id);
        let sub_id = self.sub_id;
        let reply = self
            .inner
            .request(|req_id| Frame::from_op(Op::Unsubscribe(v1::Unsubscribe { req_id, sub_id })))
            .await?;
        match reply {
            Op::UnsubAck(_) => Ok(()),
            other => Err(unexpected("UnsubAck", other)),
        }
    }
}

impl futures_core::Stream for Subscription {
    type Item = Message;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if !self.active {
            return;
        }
        self.inner.shared.remove_sub(self.sub_id);
        // Best effort: req_id 0 asks for no answer routing. If the writer queue is full or
        // the connection is gone, the broker drops the subscription when the connection ends.
        let frame = Frame::from_op(Op::Unsubscribe(v1::Unsubscribe {
            req_id: 0,
            sub_id: self.sub_id,
        }));
        let _ = self.inner.tx.try_send(Outgoing::Frame(frame));
    }
}
