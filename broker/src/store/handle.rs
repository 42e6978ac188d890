//! The sessions' side of the storage thread: the requests it takes ([`Request`],
//! [`Append`], and who is told the outcome, [`Responder`]) and [`LogHandle`], through
//! which sessions send them, bound the appends in flight and read the [`LogView`].

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use crossbeam_channel::Sender;
use rtc_proto::v1::TopicSettings;
use rtc_proto::ErrorCode;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use super::view::{LogView, TopicView};
use super::writer::SharedWriter;
use super::{Storage, TopicId};
use crate::outbound::Outbox;

/// A publish to a durable topic, on its way to the storage thread.
#[derive(Debug)]
pub struct Append {
    /// Topic name (validated).
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// Headers.
    pub headers: std::collections::BTreeMap<String, String>,
    /// Message ID ("" for none).
    pub msg_id: String,
    /// Who is told the outcome.
    pub responder: Responder,
}

/// Who is told how an append went.
#[derive(Debug)]
pub enum Responder {
    /// A client: `PubAck` or `Error` pushed into its outbox.
    Client {
        /// The publisher's req_id; 0 means no PubAck (errors are still sent).
        req_id: u64,
        /// Where the answer goes.
        outbox: Arc<Outbox>,
        /// Held until the answer is queued; bounds the work in flight.
        permit: OwnedSemaphorePermit,
    },
    /// A task inside the broker (e.g. a consumer writing a dead letter): the stored seq.
    Internal(oneshot::Sender<Result<u64, Refusal>>),
}

/// A refusal: the error code and message sent to the client.
pub type Refusal = (ErrorCode, String);

/// Work for the storage thread.
#[derive(Debug)]
pub enum Request {
    /// Store a message.
    Append(Append),
    /// Create a topic or change its settings.
    CreateTopic {
        /// Topic name (validated).
        name: String,
        /// Requested settings (normalized by the thread).
        settings: TopicSettings,
        /// Answer.
        reply: oneshot::Sender<Result<TopicView, Refusal>>,
    },
    /// Make sure a topic exists, with its configured settings (an existing one is left
    /// as it is).
    EnsureTopic {
        /// Topic name (validated).
        name: String,
        /// Answer.
        reply: oneshot::Sender<Result<TopicView, Refusal>>,
    },
    /// Store a durable consumer's state. Several saves of one consumer in a batch are
    /// written once (the last).
    SaveConsumer {
        /// Topic id.
        id: TopicId,
        /// Consumer name.
        name: String,
        /// Its state.
        record: super::ConsumerRecord,
        /// Told once the state is stored (and flushed per the fsync policy).
        stored: Option<oneshot::Sender<()>>,
    },
    /// Apply retention limits and expire dedup entries.
    Enforce,
    /// Nothing to do but look at the flush timer again: an inline append left the
    /// store unflushed under an `interval` policy.
    Wake,
    /// Flush and stop.
    Shutdown,
}

/// The storage thread has stopped (broker shutting down, or the thread failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped;

/// The sessions' side of the storage thread.
#[derive(Debug)]
pub struct LogHandle {
    pub(super) tx: Sender<Request>,
    /// The writer, for inline appends, and the count of requests sent.
    pub(super) shared: Arc<SharedWriter>,
    /// Topics and their stats.
    pub view: Arc<LogView>,
    /// For replays, which read directly.
    pub storage: Arc<dyn Storage>,
    pub(super) permits: Arc<Semaphore>,
    pub(super) thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl LogHandle {
    /// Waits for a slot for one more append in flight.
    pub async fn permit(&self) -> OwnedSemaphorePermit {
        self.permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }

    /// A slot for one more append in flight, if one is free now.
    pub fn try_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }

    /// Queues a request; fails only if the storage thread has stopped.
    pub fn send(&self, request: Request) -> Result<(), Stopped> {
        self.shared.send(&self.tx, request)
    }

    /// Stores and answers `append` right here when the storage thread is idle (see
    /// [`SharedWriter`]): `None`. Otherwise hands it back, for [`LogHandle::send`].
    pub fn append_inline(&self, append: Append) -> Option<Append> {
        self.shared.append_inline(&self.tx, append)
    }

    /// Creates or updates a topic and returns its view.
    pub async fn create_topic(
        &self,
        name: String,
        settings: TopicSettings,
    ) -> Result<TopicView, Refusal> {
        self.ask(|reply| Request::CreateTopic {
            name,
            settings,
            reply,
        })
        .await
    }

    /// Creates a topic with its configured settings unless it exists; returns its view.
    pub async fn ensure_topic(&self, name: String) -> Result<TopicView, Refusal> {
        self.ask(|reply| Request::EnsureTopic { name, reply }).await
    }

    /// Stores a message on a durable topic on behalf of the broker itself (dead letters);
    /// returns its seq.
    pub async fn append_internal(
        &self,
        topic: String,
        payload: Bytes,
        headers: std::collections::BTreeMap<String, String>,
    ) -> Result<u64, Refusal> {
        self.ask(|reply| {
            Request::Append(Append {
                topic,
                payload,
                headers,
                msg_id: String::new(),
                responder: Responder::Internal(reply),
            })
        })
        .await
    }

    async fn ask<T>(
        &self,
        request: impl FnOnce(oneshot::Sender<Result<T, Refusal>>) -> Request,
    ) -> Result<T, Refusal> {
        let (reply, rx) = oneshot::channel();
        if self.send(request(reply)).is_err() {
            return Err(stopped());
        }
        rx.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// Asks the thread to flush and stop, and waits until it has.
    pub fn shutdown(&self) {
        let _ = self.tx.send(Request::Shutdown);
        let handle = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

fn stopped() -> Refusal {
    (
        ErrorCode::Storage,
        "the storage thread has stopped".to_string(),
    )
}
