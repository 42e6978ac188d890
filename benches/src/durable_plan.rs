//! What one run of the `durable` workload is ([`Plan`]), how the messages that come back
//! are checked ([`Checker`]) and what it measured ([`Measured`]): shared by the rtc run
//! (`crate::durable`) and the rivals' runs (`crate::durable_peers`), so that the rivals'
//! module does not import the workload that calls it.

use std::time::Duration;

use anyhow::bail;
use bytes::{BufMut, Bytes, BytesMut};

/// One run's shape.
pub struct Plan {
    /// Publishes in flight.
    pub window: usize,
    /// Messages.
    pub count: u64,
    /// Payload bytes (≥ 8).
    pub size: usize,
    /// Distinguishes this run's topic, stream or key from earlier ones.
    pub run_id: u64,
}

impl Plan {
    /// The payload of message `i`: its index (8 bytes, big-endian), then filler.
    pub fn payload(&self, i: u64) -> Bytes {
        let mut b = BytesMut::with_capacity(self.size);
        b.put_u64(i);
        b.resize(self.size, b'x');
        b.freeze()
    }
}

/// Checks that payloads come back as published: every index exactly once. (Publishes
/// with W > 1 in flight may be stored in any order among themselves; the rtc run also
/// checks that its consumer gets seqs in increasing order.)
pub struct Checker {
    seen: Vec<bool>,
    got: u64,
    size: usize,
}

impl Checker {
    /// Expects indexes `0..plan.count`.
    pub fn new(plan: &Plan) -> Checker {
        Checker {
            seen: vec![false; plan.count as usize],
            got: 0,
            size: plan.size,
        }
    }

    /// Checks the next payload.
    pub fn check(&mut self, payload: &[u8]) -> anyhow::Result<()> {
        let index = payload
            .get(..8)
            .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")));
        let slot = index.and_then(|i| self.seen.get_mut(i as usize));
        match slot {
            Some(seen) if !*seen && payload.len() == self.size => *seen = true,
            _ => bail!(
                "got message {index:?} ({} bytes) after {} others: duplicated, foreign or damaged",
                payload.len(),
                self.got
            ),
        }
        self.got += 1;
        Ok(())
    }

    /// All arrived.
    pub fn done(&self) -> bool {
        self.got == self.seen.len() as u64
    }
}

/// Rates measured by one run.
pub struct Measured {
    pub(crate) publish_rate: f64,
    pub(crate) consume_rate: f64,
    pub(crate) replay_rate: Option<f64>,
}

impl Measured {
    /// Rates from the times the phases took.
    pub fn new(
        plan: &Plan,
        publish: Duration,
        consume: Duration,
        replay: Option<Duration>,
    ) -> Measured {
        let rate = |d: Duration| plan.count as f64 / d.as_secs_f64();
        Measured {
            publish_rate: rate(publish),
            consume_rate: rate(consume),
            replay_rate: replay.map(rate),
        }
    }
}
