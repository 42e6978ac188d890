//! [`Inner`]: what a [`crate::Client`] and its [`crate::Subscription`]s share — the
//! connection's writer queue, the pending requests, the limits — and how a request
//! travels: a fresh `req_id`, registered in the pending map, handed to the writer (or
//! written directly, `crate::direct`), answered by the reader task or timed out.
//! `client` (the public API) and `subscription` both build on it; it knows neither.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rtc_proto::publish::PublishRef;
use rtc_proto::v1::{self, frame::Op};
use rtc_proto::Frame;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::error::Error;
use crate::message::PublishMessage;
use crate::options::IdGen;
use crate::outgoing::Outgoing;
use crate::queue;
use crate::state::{Reply, Shared};

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) shared: Arc<Shared>,
    pub(crate) tx: queue::Sender<Outgoing>,
    /// When fire-and-forget frames may be written directly.
    pub(crate) quiet: crate::direct::QuietSpell,
    pub(crate) next_id: AtomicU64,
    pub(crate) max_frame_size: usize,
    pub(crate) request_timeout: Duration,
    pub(crate) subscription_capacity: usize,
    pub(crate) server_version: String,
    pub(crate) connection_id: u64,
    pub(crate) ids: IdGen,
    pub(crate) supervisor: Mutex<Option<JoinHandle<()>>>,
}

impl Inner {
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn closed_error(&self) -> Error {
        Error::Closed(
            self.shared
                .closed_reason()
                .unwrap_or_else(|| "the client was closed".to_string()),
        )
    }

    /// Refuses a frame whose length prefix would be `len`, if above the broker's limit.
    pub(crate) fn check_len(&self, len: usize) -> Result<(), Error> {
        if len > self.max_frame_size {
            return Err(Error::TooLarge {
                len,
                max: self.max_frame_size,
            });
        }
        Ok(())
    }

    /// Queues an item for the writer without waiting for an answer, or writes it to the
    /// socket directly after a quiet spell (`crate::direct`); `frame_len` is the length
    /// prefix it will be written with.
    pub(crate) async fn send(&self, item: Outgoing, frame_len: usize) -> Result<(), Error> {
        self.check_len(frame_len)?;
        let item = match self.tx.try_send_or_take_pen(item) {
            Ok(queue::Pen::Queued) => return Ok(()),
            Ok(queue::Pen::Taken(socket, item)) => {
                if self.quiet.passed() {
                    crate::direct::write_with_pen(&self.tx, socket, &item, self.max_frame_size);
                    return Ok(());
                }
                self.tx.put_pen_back(&socket, None);
                item
            }
            Err(queue::TrySendError::Full(item)) => item,
            Err(queue::TrySendError::Closed(_)) => return Err(self.closed_error()),
        };
        self.tx.send(item).await.map_err(|_| self.closed_error())
    }

    /// Sends a request built around a fresh req_id and waits for its answer.
    pub(crate) async fn request(&self, build: impl FnOnce(u64) -> Frame) -> Result<Op, Error> {
        let req_id = self.next_id();
        let frame = build(req_id);
        let len = rtc_proto::codec::frame_len(&frame);
        self.send_request(req_id, Outgoing::Frame(frame), len, None)
            .await
    }

    /// [`Inner::request`] waiting up to `wait` instead of the request timeout (for a
    /// `Request`, which carries its own).
    pub(crate) async fn request_waiting(
        &self,
        wait: Duration,
        build: impl FnOnce(u64) -> Frame,
    ) -> Result<Op, Error> {
        let req_id = self.next_id();
        let frame = build(req_id);
        let len = rtc_proto::codec::frame_len(&frame);
        let rx = self
            .start_request(req_id, Outgoing::Frame(frame), len, None)
            .await?;
        self.answer_within(req_id, rx, wait).await
    }

    /// Queues an acknowledged publish; the publish stays in the outbox (and is resent
    /// after a reconnect) until it has an answer, even if waiting for it times out.
    /// Returns its req_id and where the answer will arrive.
    pub(crate) async fn start_publish(
        &self,
        message: PublishMessage,
    ) -> Result<(u64, oneshot::Receiver<Reply>), Error> {
        let req_id = self.next_id();
        // One copy, shared by the outbox and the writer (which encodes it in place).
        let publish = Arc::new(message.into_publish(req_id));
        let len = PublishRef::from(&*publish).frame_len();
        let rx = self
            .start_request(req_id, Outgoing::Acked(publish.clone()), len, Some(publish))
            .await?;
        Ok((req_id, rx))
    }

    /// Sends a request and waits for its answer.
    async fn send_request(
        &self,
        req_id: u64,
        item: Outgoing,
        frame_len: usize,
        publish: Option<Arc<v1::Publish>>,
    ) -> Result<Op, Error> {
        let rx = self.start_request(req_id, item, frame_len, publish).await?;
        self.answer(req_id, rx).await
    }

    /// Registers `req_id`, keeps `publish` in the outbox and queues `item` (whose
    /// length prefix will be `frame_len`), or writes it to the socket directly if it is
    /// the only request waiting and the writer is idle (`crate::direct`); returns where
    /// the answer will arrive.
    async fn start_request(
        &self,
        req_id: u64,
        item: Outgoing,
        frame_len: usize,
        publish: Option<Arc<v1::Publish>>,
    ) -> Result<oneshot::Receiver<Reply>, Error> {
        self.check_len(frame_len)?;
        let (tx, rx) = oneshot::channel();
        let alone = self.shared.register(req_id, tx)?;
        if let Some(p) = publish {
            let added = crate::state::lock(&self.shared.outbox).add(req_id, p);
            if let Err(e) = added {
                self.shared.unregister(req_id);
                return Err(e);
            }
        }
        let item = if alone {
            match crate::direct::write(&self.tx, item, self.max_frame_size) {
                None => return Ok(rx),
                Some(item) => item,
            }
        } else {
            item
        };
        if self.tx.send(item).await.is_err() {
            self.shared.unregister(req_id);
            return Err(self.closed_error());
        }
        Ok(rx)
    }

    /// Waits up to the request timeout for the answer to `req_id`.
    pub(crate) async fn answer(
        &self,
        req_id: u64,
        rx: oneshot::Receiver<Reply>,
    ) -> Result<Op, Error> {
        self.answer_within(req_id, rx, self.request_timeout).await
    }

    /// Waits up to `wait` for the answer to `req_id`.
    async fn answer_within(
        &self,
        req_id: u64,
        rx: oneshot::Receiver<Reply>,
        wait: Duration,
    ) -> Result<Op, Error> {
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err(self.closed_error()),
            Err(_) => {
                self.shared.unregister(req_id);
                Err(Error::Timeout(wait))
            }
        }
    }
}

pub(crate) fn unexpected(wanted: &str, got: Op) -> Error {
    Error::Closed(format!(
        "protocol error: expected {wanted}, got {}",
        Frame { op: Some(got) }.op_name()
    ))
}
