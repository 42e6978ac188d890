//! The broker's recent events, for operators ([`Events`]): connects, disconnects, auth
//! failures, slow consumers, storage errors, topic and consumer changes. A bounded ring
//! (the newest [`RING`] kept) that the admin API lists, and a broadcast that its SSE
//! stream follows. Whoever sees an event records it here: sessions (connections, auth),
//! the removals (topic changes), the admin sampler (slow consumers and storage errors,
//! from the metrics' counters once a second, so the hot paths record nothing).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tokio::sync::broadcast;

use crate::clock::now_ms;

/// Events kept.
pub const RING: usize = 1000;

/// One event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Event {
    /// Increasing from 1 (the SSE stream's `id`).
    pub id: u64,
    /// When (ms since the Unix epoch).
    pub time_ms: i64,
    /// `connect`, `disconnect`, `auth_failure`, `slow_consumer`, `storage_error`,
    /// `topic_created`, `topic_deleted`, `topic_purged`, `consumer_deleted`, `kick`.
    pub kind: &'static str,
    /// What happened, for people.
    pub detail: String,
}

/// See the module docs.
#[derive(Debug)]
pub struct Events {
    ring: Mutex<VecDeque<Event>>,
    live: broadcast::Sender<Event>,
    next: AtomicU64,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            ring: Mutex::new(VecDeque::with_capacity(RING)),
            live: broadcast::channel(256).0,
            next: AtomicU64::new(1),
        }
    }
}

impl Events {
    /// Records an event.
    pub fn record(&self, kind: &'static str, detail: impl Into<String>) {
        let event = Event {
            id: self.next.fetch_add(1, Ordering::Relaxed),
            time_ms: now_ms(),
            kind,
            detail: detail.into(),
        };
        {
            let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
            if ring.len() == RING {
                ring.pop_front();
            }
            ring.push_back(event.clone());
        }
        // Nobody following is fine.
        let _ = self.live.send(event);
    }

    /// The events kept, oldest first.
    pub fn list(&self) -> Vec<Event> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.iter().cloned().collect()
    }

    /// Events from now on (a receiver that lags loses the oldest, and is told).
    pub fn follow(&self) -> broadcast::Receiver<Event> {
        self.live.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_newest() {
        let e = Events::default();
        for i in 0..RING + 5 {
            e.record("connect", format!("{i}"));
        }
        let list = e.list();
        assert_eq!(list.len(), RING);
        assert_eq!(list[0].detail, "5");
        assert_eq!(list.last().unwrap().id, (RING + 5) as u64);
    }
}
