//! Subscriptions that start in the past: replay from the log, then switch to live
//! delivery with no gap and no duplicate.
//!
//! How the switch-over works. A replaying subscription is registered in the router at
//! once as a [`Gate`] (its [`Subscriber`]). While the gate is *catching up*, live messages for it are held
//! in the gate's buffer instead of being delivered. The replay task ([`run`]) then reads
//! each matching durable topic's log from the start position to its end and delivers
//! what it reads, remembering per topic the next seq it owes (its cursor). Then it drains
//! the buffer, skipping any message whose seq is below the topic's cursor, and when the
//! buffer is empty it opens the gate and tells the client with `ReplayEnd`: from then on
//! live messages go straight to the client, still skipping seqs below the cursors.
//!
//! Why nothing is missed: delivery fans a message out only after the engine committed
//! it. A message not fanned out to the gate was fanned out before the
//! subscription existed, so it was committed before the replay began reading and the
//! replay reads it. Why nothing repeats: every delivery, replayed or live, is checked
//! against the topic's cursor.
//!
//! If publishers outrun the replay and the buffer passes its cap, the gate drops the
//! buffer and marks itself overflowed; the task then reads the log again from its
//! cursors. Replayed deliveries wait for room in the connection's outbox — history is
//! never dropped — while live deliveries after the switch follow the ordinary
//! slow-consumer policy.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rtc_proto::v1::{self, frame::Op, start_position::Position};
use rtc_proto::Frame;

use crate::engine::{start_seq, Log, StoreError};
use crate::metrics::Metrics;
use crate::outbound::{Closed, Outbox};
use crate::refusal::Refusal;
use crate::router::{Flushes, Live, Share, Subscriber};

/// Bytes of live messages held per catching-up subscription before it falls back to
/// re-reading the log (the message cap is `Config::replay_buffer`).
const BUFFER_BYTES: usize = 16 * 1024 * 1024;
/// Messages read from the log per blocking read.
const READ_MSGS: usize = 512;
/// Bytes read from the log per blocking read (at least one message).
const READ_BYTES: usize = 512 * 1024;

struct Held {
    topic: String,
    seq: u64,
    message: Bytes,
}

#[derive(Default)]
struct GateState {
    live: bool,
    buffer: VecDeque<Held>,
    bytes: usize,
    overflowed: bool,
    /// Per topic, the lowest seq still to deliver (the replay's cursors).
    floors: HashMap<String, u64>,
}

/// The delivery switch of one replaying subscription. See the module docs.
pub struct Gate {
    sub_id: u64,
    outbox: Arc<Outbox>,
    max_held: usize,
    state: Mutex<GateState>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("sub_id", &self.sub_id)
            .finish()
    }
}

impl Gate {
    /// A gate in the catching-up state that holds at most `max_held` live messages.
    pub fn new(sub_id: u64, outbox: Arc<Outbox>, max_held: usize) -> Self {
        Gate {
            sub_id,
            outbox,
            max_held,
            state: Mutex::new(GateState::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tells the client that the history is done (`ReplayEnd`). Called with the gate's
    /// lock held, as it opens, so that it precedes every live delivery.
    fn replay_end(&self) {
        let end = Frame::from_op(Op::ReplayEnd(v1::ReplayEnd {
            sub_id: self.sub_id,
        }));
        // A closed queue: the client is gone.
        let _ = self.outbox.push_frame_now(end);
    }

    /// A live message for this subscription (`seq` 0 for ephemeral topics). Never waits.
    pub fn offer(&self, topic: &str, seq: u64, message: &Bytes) {
        let mut st = self.lock();
        if st.live {
            if seq != 0 && st.floors.get(topic).is_some_and(|&floor| seq < floor) {
                return;
            }
            drop(st);
            self.outbox
                .push_deliver(self.sub_id, message, Share::Reference);
            return;
        }
        if st.overflowed {
            return;
        }
        if st.buffer.len() >= self.max_held || st.bytes + message.len() > BUFFER_BYTES {
            st.overflowed = true;
            st.buffer.clear();
            st.bytes = 0;
            return;
        }
        st.bytes += message.len();
        st.buffer.push_back(Held {
            topic: topic.to_string(),
            seq,
            message: message.clone(),
        });
    }
}

/// Live messages reach a replaying subscription through its gate.
impl Subscriber for Gate {
    fn deliver(&self, live: &Live<'_>, _later: &mut Flushes) -> bool {
        self.offer(live.topic, live.seq, live.message);
        true
    }

    fn is_backlogged(&self) -> bool {
        self.outbox.is_backlogged()
    }
}

/// Replays `pattern` from `start` into the gate's subscription, reading `log`, then
/// opens the gate. Ends early if the connection closes. A storage failure is reported to
/// the client as `Error{STORAGE}` for this subscription, which then continues live.
/// `resume_after` maps topics to the last seq the client has: those continue after it,
/// the others start at `start`.
pub async fn run(
    gate: Arc<Gate>,
    log: Arc<dyn Log>,
    metrics: Arc<Metrics>,
    pattern: String,
    start: Position,
    resume_after: std::collections::BTreeMap<String, u64>,
) {
    let cursors = resume_after
        .into_iter()
        .map(|(topic, seq)| (topic, seq.saturating_add(1)))
        .collect();
    match catch_up(&gate, &*log, &metrics, &pattern, start, cursors).await {
        Ok(()) | Err(Failure::Closed) => {}
        Err(Failure::Store(e)) => {
            tracing::error!(sub_id = gate.sub_id, error = %e, "replay failed; continuing live");
            let refusal = Refusal::Storage(format!(
                "replay stopped by a storage error, continuing with live messages: {e}"
            ));
            let _ = gate.outbox.push_frame_now(refusal.sub_frame(gate.sub_id));
            open_gate(&gate, HashMap::new());
        }
    }
}

enum Failure {
    Closed,
    Store(StoreError),
}

impl From<Closed> for Failure {
    fn from(_: Closed) -> Self {
        Failure::Closed
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Store(e)
    }
}

async fn catch_up(
    gate: &Gate,
    log: &dyn Log,
    metrics: &Metrics,
    pattern: &str,
    start: Position,
    mut cursors: HashMap<String, u64>,
) -> Result<(), Failure> {
    let mut first_pass = true;
    loop {
        for (name, topic) in log.durable_matching(pattern) {
            let from = match cursors.get(&name) {
                Some(&c) => c,
                None if first_pass => start_seq(log, &name, &topic, &start).await?,
                // A topic that appeared after the subscription: all of it is new.
                None => 1,
            };
            let next = replay_topic(gate, log, metrics, &name, from).await?;
            cursors.insert(name, next);
        }
        first_pass = false;
        // Drain what arrived live meanwhile, then open the gate.
        loop {
            let held = {
                let mut st = gate.lock();
                if st.overflowed {
                    st.overflowed = false;
                    None
                } else if st.buffer.is_empty() {
                    // Under the same lock as the check: a live message offered between
                    // the two would be buffered, then cleared by the opening, and lost.
                    open(&mut st, cursors);
                    // Still under the lock: no live delivery gets ahead of the marker.
                    gate.replay_end();
                    return Ok(());
                } else {
                    st.bytes = 0;
                    Some(std::mem::take(&mut st.buffer))
                }
            };
            let Some(held) = held else { break };
            for h in held {
                if h.seq != 0 {
                    let cursor = cursors.entry(h.topic).or_insert(0);
                    if h.seq < *cursor {
                        continue;
                    }
                    *cursor = h.seq + 1;
                }
                gate.outbox
                    .push_deliver_wait(gate.sub_id, &h.message)
                    .await?;
            }
        }
    }
}

/// Opens the gate after a failed replay; the marker follows the error.
fn open_gate(gate: &Gate, cursors: HashMap<String, u64>) {
    let mut st = gate.lock();
    open(&mut st, cursors);
    gate.replay_end();
}

/// Switches a gate to live (its lock held by the caller).
fn open(st: &mut GateState, cursors: HashMap<String, u64>) {
    st.floors = cursors;
    st.live = true;
    st.buffer.clear();
    st.bytes = 0;
}

/// Delivers `topic` from seq `from` to the end of its log; returns the next seq owed.
async fn replay_topic(
    gate: &Gate,
    log: &dyn Log,
    metrics: &Metrics,
    topic: &str,
    from: u64,
) -> Result<u64, Failure> {
    let mut cursor = from;
    loop {
        let entries = log.read(topic, cursor, READ_MSGS, READ_BYTES).await?;
        metrics.replay_read(entries.len());
        if entries.is_empty() {
            return Ok(cursor);
        }
        for e in entries {
            cursor = e.seq + 1;
            gate.outbox
                .push_deliver_wait(gate.sub_id, &e.message)
                .await?;
        }
    }
}
