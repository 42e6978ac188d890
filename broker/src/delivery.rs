//! Delivery: what happens to a pass once the log engine has committed it. It implements
//! the engine's [`CommitSink`]: each stored message is fanned out through the router to
//! live subscribers, in the pass's order, and only then is each publisher answered —
//! `PubAck{seq}`, `PubAck{seq, duplicate}` or the refusal's `Error` — in its connection's
//! outbox, or, for a request that waits for its outcome itself (an HTTP publish), on its
//! reply channel. Every queue filled is flushed once at the end of the pass, so a connection
//! gets the pass's frames in one write (directly from the committing thread when its
//! writer is idle; see `crate::outbound`).
//!
//! It also bounds the appends in flight across all connections ([`Delivery::permit`]):
//! a publisher holds a permit from the moment its append is handed to the engine until
//! its answer is queued, and waits for one when [`MAX_IN_FLIGHT`] are out.
//!
//! Fanning out before answering is what makes a subscription made after a publisher saw
//! its ack never receive that message live, and a message from another node (cluster
//! mode: committed with no origin) is fanned out exactly like a local one.

use std::sync::Arc;

use rtc_proto::v1::{self, frame::Op};
use rtc_proto::Frame;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use crate::engine::{Appender, CommitSink, Committed, Outcome};
use crate::metrics::{Metrics, Tally};
use crate::outbound::{AnswerDue, Outbox};
use crate::refusal::Refusal;
use crate::router::{Flushes, Router};

/// Appends accepted but not yet answered, across all connections. Beyond it, publishers
/// wait for a slot before their request is read further.
pub const MAX_IN_FLIGHT: usize = 65_536;

/// Who to answer about one append, and the slot it holds.
#[derive(Debug)]
pub struct Origin {
    /// Where the answer goes.
    pub to: AnswerTo,
    /// Held until the answer is queued; bounds the appends in flight.
    pub permit: OwnedSemaphorePermit,
    /// When the broker received the publish (the read that brought it), for the
    /// publish latency metric.
    pub received: tokio::time::Instant,
}

/// Where the answer to one append goes.
#[derive(Debug)]
pub enum AnswerTo {
    /// A session's publish: a `PubAck` or `Error` frame in its connection's queue.
    Queue {
        /// The publisher's req_id; 0 means no PubAck (errors are still sent).
        req_id: u64,
        /// The answer owed, and the queue it goes into: the connection does not close
        /// its queue before every answer owed is queued.
        due: AnswerDue,
    },
    /// A request that waits for its outcome itself (an HTTP publish).
    Reply(oneshot::Sender<Answer>),
}

/// The outcome of one append, for an [`AnswerTo::Reply`].
#[derive(Debug)]
pub enum Answer {
    /// Stored under `seq` (0 for an ephemeral topic); `duplicate` when it was stored
    /// before, under that seq.
    Stored {
        /// Its sequence number.
        seq: u64,
        /// Stored earlier with the same message ID.
        duplicate: bool,
    },
    /// Refused.
    Refused(Refusal),
}

/// The appends of sessions, with their origins.
pub type Publishes = dyn Appender<Origin>;

/// The commit sink of the broker: fan-out, then answers. See the module docs.
#[derive(Debug)]
pub struct Delivery {
    router: Arc<Router>,
    /// Where the deliveries of each pass are counted.
    metrics: Arc<Metrics>,
    permits: Arc<Semaphore>,
}

impl Delivery {
    /// Delivery through `router`.
    pub fn new(router: Arc<Router>, metrics: Arc<Metrics>) -> Self {
        Delivery {
            router,
            metrics,
            permits: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        }
    }

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
}

impl CommitSink<Origin> for Delivery {
    fn committed(&self, pass: Vec<Committed<Origin>>) {
        // Deliveries and answers are all queued first and written after, each queue
        // once per pass. A queue is listed when a frame finds it empty: once per pass,
        // unless its writer emptied it meanwhile (a second flush is then harmless).
        let mut later = Flushes::default();
        let mut tally = Tally::default();
        for c in &pass {
            if let Outcome::Stored { seq, message } = &c.outcome {
                let fanout =
                    self.router
                        .publish(&c.topic, *seq, false, || message.clone(), &mut later);
                tally.messages_out += fanout.queued as u64;
                tally.bytes_out += (fanout.queued * message.len()) as u64;
            }
        }
        self.metrics.add(tally);
        for c in pass {
            let Committed {
                topic: _,
                outcome,
                origin,
            } = c;
            if let Some(origin) = origin {
                self.metrics.publish_answered(origin.received.elapsed());
                if let Some(outbox) = answer(origin, outcome) {
                    later.push(outbox);
                }
            }
        }
        later.flush_all();
    }
}

/// Queues the answer to one append; returns the outbox if it must then be flushed.
fn answer(origin: Origin, outcome: Outcome) -> Option<Arc<Outbox>> {
    let Origin {
        to,
        permit,
        received: _,
    } = origin;
    let (req_id, due) = match to {
        AnswerTo::Queue { req_id, due } => (req_id, due),
        AnswerTo::Reply(reply) => {
            let answer = match outcome {
                Outcome::Refused(refusal) => Answer::Refused(refusal),
                Outcome::Stored { seq, .. } | Outcome::Accepted { seq } => Answer::Stored {
                    seq,
                    duplicate: false,
                },
                Outcome::Duplicate { seq } => Answer::Stored {
                    seq,
                    duplicate: true,
                },
            };
            // A requester that went away has nobody left to tell.
            let _ = reply.send(answer);
            drop(permit);
            return None;
        }
    };
    let frame = match outcome {
        Outcome::Refused(refusal) => Some(refusal.frame(req_id)),
        Outcome::Stored { seq, .. } | Outcome::Accepted { seq } => ack(req_id, seq, false),
        Outcome::Duplicate { seq } => ack(req_id, seq, true),
    };
    // A closed outbox means the publisher is gone; nobody is left to tell.
    let outbox = due.outbox();
    let wake = frame.is_some_and(|f| outbox.push_frame_deferred(f) == Ok(true));
    let outbox = wake.then(|| outbox.clone());
    // Queued (or never to be): settled, after the frame is in the queue.
    drop(due);
    drop(permit);
    outbox
}

fn ack(req_id: u64, seq: u64, duplicate: bool) -> Option<Frame> {
    (req_id != 0).then(|| {
        Frame::from_op(Op::PubAck(v1::PubAck {
            req_id,
            seq,
            duplicate,
        }))
    })
}
