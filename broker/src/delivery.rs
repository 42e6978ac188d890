//! Delivery: what happens to a pass once the log engine has committed it. It implements
//! the engine's [`CommitSink`]: each stored message is fanned out through the router to
//! live subscribers, in the pass's order, and only then is each publisher answered —
//! `PubAck{seq}`, `PubAck{seq, duplicate}` or the refusal's `Error` — in its connection's
//! outbox. Every queue filled is flushed once at the end of the pass, so a connection
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
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::engine::{Appender, CommitSink, Committed, Outcome};
use crate::outbound::{AnswerDue, Outbox};
use crate::router::{Flushes, Router};

/// Appends accepted but not yet answered, across all connections. Beyond it, publishers
/// wait for a slot before their request is read further.
pub const MAX_IN_FLIGHT: usize = 65_536;

/// Who to answer about one append: the publisher's request and its connection's queue.
#[derive(Debug)]
pub struct Origin {
    /// The publisher's req_id; 0 means no PubAck (errors are still sent).
    pub req_id: u64,
    /// The answer owed, and the queue it goes into: the connection does not close its
    /// queue before every answer owed is queued.
    pub due: AnswerDue,
    /// Held until the answer is queued; bounds the appends in flight.
    pub permit: OwnedSemaphorePermit,
}

/// The appends of sessions, with their origins.
pub type Publishes = dyn Appender<Origin>;

/// The commit sink of the broker: fan-out, then answers. See the module docs.
#[derive(Debug)]
pub struct Delivery {
    router: Arc<Router>,
    permits: Arc<Semaphore>,
}

impl Delivery {
    /// Delivery through `router`.
    pub fn new(router: Arc<Router>) -> Self {
        Delivery {
            router,
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
        for c in &pass {
            if let Outcome::Stored { seq, message } = &c.outcome {
                self.router
                    .publish(&c.topic, *seq, false, || message.clone(), &mut later);
            }
        }
        for c in pass {
            let Committed {
                topic: _,
                outcome,
                origin,
            } = c;
            if let Some(origin) = origin {
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
        req_id,
        due,
        permit,
    } = origin;
    let frame = match outcome {
        Outcome::Refused(refusal) => Some(refusal.frame(req_id)),
        Outcome::Stored { seq, .. } => ack(req_id, seq, false),
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
