//! The relay of ephemeral messages to the other nodes: `Bus::relay` queues each one
//! (never waiting), and one task publishes whatever is queued as one pipeline of
//! `PUBLISH`es, in the order queued, so one publisher's messages reach every node in
//! publish order. Consecutive messages to one topic go as one `PUBLISH` (see
//! `wire.rs`): Redis then moves one message per run, not per message. Ephemeral messages are best effort, as on one broker: while Redis is
//! unreachable, or beyond [`MAX_QUEUED`] bytes waiting, they are dropped for the other
//! nodes (this node's subscribers had theirs already) and counted in the log.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{wire, Inner};

/// Bytes of relayed messages that may wait for Redis.
const MAX_QUEUED: usize = 64 * 1024 * 1024;
/// Most messages in one pipeline.
const MAX_BATCH: usize = 1024;

/// The relay's queue; see the module docs.
#[derive(Debug)]
pub struct Relay {
    tx: mpsc::UnboundedSender<Queued>,
    queued: Arc<AtomicUsize>,
    dropped: Arc<AtomicU64>,
}

impl Relay {
    /// Starts the relay's task on `tasks`.
    pub fn start(inner: Arc<Inner>, tasks: &TaskTracker, cancel: CancellationToken) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let dropped = Arc::new(AtomicU64::new(0));
        tasks.spawn(run(inner, rx, queued.clone(), dropped.clone(), cancel));
        Relay {
            tx,
            queued,
            dropped,
        }
    }

    /// Queues `message` (encoded) for `channel`, unless too much is waiting already.
    pub fn send(&self, channel: String, datagram: bool, message: bytes::Bytes) {
        let len = message.len();
        let queued = Queued {
            channel,
            datagram,
            message,
        };
        if self.queued.fetch_add(len, Ordering::AcqRel) + len > MAX_QUEUED
            || self.tx.send(queued).is_err()
        {
            self.queued.fetch_sub(len, Ordering::AcqRel);
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One message waiting for Redis.
#[derive(Debug)]
struct Queued {
    channel: String,
    datagram: bool,
    message: bytes::Bytes,
}

async fn run(
    inner: Arc<Inner>,
    mut rx: mpsc::UnboundedReceiver<Queued>,
    queued: Arc<AtomicUsize>,
    dropped: Arc<AtomicU64>,
    cancel: CancellationToken,
) {
    let mut told = 0;
    loop {
        let first = tokio::select! {
            first = rx.recv() => first,
            _ = cancel.cancelled() => None,
        };
        let Some(first) = first else { return };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let mut commands = Vec::new();
        let mut bytes = 0;
        let mut at = 0;
        while at < batch.len() {
            let channel = &batch[at].channel;
            let run = batch[at..]
                .iter()
                .take_while(|q| &q.channel == channel)
                .count();
            let mut payload = wire::relayed_header(&inner.node);
            for q in &batch[at..at + run] {
                bytes += q.message.len();
                wire::relayed_push(&mut payload, q.datagram, &q.message);
            }
            let mut publish = inner.publish_live();
            publish.arg(channel).arg(payload);
            commands.push((channel.clone(), publish));
            at += run;
        }
        let sent = inner.target.send_all(commands).await;
        queued.fetch_sub(bytes, Ordering::AcqRel);
        if let Err(e) = sent {
            dropped.fetch_add(batch.len() as u64, Ordering::Relaxed);
            let now = dropped.load(Ordering::Relaxed);
            // Once per outage-sized step, not per message.
            if now > told * 2 {
                told = now;
                tracing::warn!(
                    dropped = now,
                    "cluster: cannot relay live messages to other nodes: {e}"
                );
            }
        }
    }
}
