//! The connections the broker serves, as operators see them ([`Connections`]): each
//! one's transport, peer, user, subscriptions, queue and counters, and a way to
//! disconnect it. A session registers itself once its handshake is done and removes
//! itself when it ends; it updates its entry when it subscribes or unsubscribes (rare)
//! and adds its message counts once per read, next to the metrics. The admin API reads
//! it, and topic deletion finds the outboxes of the subscribers to tell.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio_util::sync::CancellationToken;

use crate::outbound::{Outbox, OutboxStats};

/// One connection's entry.
#[derive(Debug)]
pub struct Conn {
    /// Its id (`Welcome.connection_id`).
    pub id: u64,
    /// `tcp`, `tls`, `quic`, `ws`, `sse`, `poll`, or an embedder's.
    pub transport: &'static str,
    /// The peer's address.
    pub peer: String,
    /// When the handshake was done (ms since the Unix epoch).
    pub since_ms: i64,
    /// Its outbound queue.
    pub outbox: Arc<Outbox>,
    user: Mutex<String>,
    /// Its subscriptions' (sub_id, pattern), sorted: a Vec, as most connections have one
    /// or two (a BTreeMap's first node took 368 bytes of each idle connection).
    subs: Mutex<Vec<(u64, String)>>,
    messages_in: AtomicU64,
    bytes_in: AtomicU64,
    kick: CancellationToken,
    reason: Mutex<String>,
}

/// A connection as the admin API lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConnView {
    pub id: u64,
    pub transport: &'static str,
    pub peer: String,
    /// The authenticated user ("-" on an open broker).
    pub user: String,
    /// `sub_id` → pattern.
    pub subscriptions: BTreeMap<u64, String>,
    /// Frames waiting in its outbound queue, and their bytes.
    pub queued_frames: usize,
    pub queued_bytes: usize,
    /// Messages it published, and their payload bytes.
    pub messages_in: u64,
    pub bytes_in: u64,
    /// Deliveries queued to it, their bytes, and deliveries dropped (slow consumer).
    pub messages_out: u64,
    pub bytes_out: u64,
    pub dropped: u64,
    pub connected_since_ms: i64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Conn {
    /// A new entry; the session adds it with [`Connections::add`].
    pub fn new(
        id: u64,
        transport: &'static str,
        peer: String,
        user: &str,
        since_ms: i64,
        outbox: Arc<Outbox>,
    ) -> Self {
        Conn {
            id,
            transport,
            peer,
            since_ms,
            outbox,
            user: Mutex::new(user.to_string()),
            subs: Mutex::default(),
            messages_in: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            kick: CancellationToken::new(),
            reason: Mutex::default(),
        }
    }

    /// A subscription was made.
    pub fn subscribed(&self, sub_id: u64, pattern: &str) {
        let mut subs = lock(&self.subs);
        match subs.binary_search_by_key(&sub_id, |(id, _)| *id) {
            Ok(i) => subs[i].1 = pattern.to_string(),
            Err(i) => subs.insert(i, (sub_id, pattern.to_string())),
        }
    }

    /// A subscription ended.
    pub fn unsubscribed(&self, sub_id: u64) {
        let mut subs = lock(&self.subs);
        if let Ok(i) = subs.binary_search_by_key(&sub_id, |(id, _)| *id) {
            subs.remove(i);
        }
    }

    /// The connection now acts as `user` (a refreshed token keeps the identity, but the
    /// name is set again for clarity).
    pub fn set_user(&self, user: &str) {
        *lock(&self.user) = user.to_string();
    }

    /// Adds what one read brought.
    pub fn received(&self, messages: u64, bytes: u64) {
        if messages > 0 {
            self.messages_in.fetch_add(messages, Ordering::Relaxed);
            self.bytes_in.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// Fires when an operator disconnects the connection.
    pub fn kicked(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.kick.cancelled()
    }

    /// Why it was disconnected.
    pub fn kick_reason(&self) -> String {
        lock(&self.reason).clone()
    }

    /// The admin view of it.
    pub fn view(&self) -> ConnView {
        let OutboxStats {
            queued_frames,
            queued_bytes,
            delivered,
            delivered_bytes,
            dropped,
        } = self.outbox.stats();
        ConnView {
            id: self.id,
            transport: self.transport,
            peer: self.peer.clone(),
            user: lock(&self.user).clone(),
            subscriptions: lock(&self.subs).iter().cloned().collect(),
            queued_frames,
            queued_bytes,
            messages_in: self.messages_in.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            messages_out: delivered,
            bytes_out: delivered_bytes,
            dropped,
            connected_since_ms: self.since_ms,
        }
    }
}

/// Every connection past its handshake, by id.
#[derive(Debug, Default)]
pub struct Connections {
    by_id: Mutex<BTreeMap<u64, Arc<Conn>>>,
}

impl Connections {
    /// Registers a connection.
    pub fn add(&self, conn: Arc<Conn>) {
        lock(&self.by_id).insert(conn.id, conn);
    }

    /// Forgets connection `id` (its session ended).
    pub fn remove(&self, id: u64) {
        lock(&self.by_id).remove(&id);
    }

    /// Connection `id`, if it is open.
    pub fn get(&self, id: u64) -> Option<Arc<Conn>> {
        lock(&self.by_id).get(&id).cloned()
    }

    /// How many are open.
    pub fn len(&self) -> usize {
        lock(&self.by_id).len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every open connection's view, by id.
    pub fn list(&self) -> Vec<ConnView> {
        let conns: Vec<Arc<Conn>> = lock(&self.by_id).values().cloned().collect();
        conns.iter().map(|c| c.view()).collect()
    }

    /// Disconnects connection `id` with `reason` (its client gets `Error{DISCONNECTED}`
    /// saying it); whether it was open.
    pub fn kick(&self, id: u64, reason: &str) -> bool {
        let Some(conn) = self.get(id) else {
            return false;
        };
        *lock(&conn.reason) = reason.to_string();
        conn.kick.cancel();
        true
    }
}
