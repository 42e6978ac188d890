//! The supervisor: one task per client that keeps it connected.
//!
//! It runs a connection ([`crate::connection::run`]) until it ends. If the application
//! closed the client, it is done. If the link was lost, requests whose outcome is now
//! unknown fail, and it reconnects with exponential backoff plus jitter, per the
//! [`ReconnectPolicy`], publishing each step as a [`ConnectionState`]. On the new
//! connection it first restores the client's state: every subscription (durable consumers
//! rejoin; plain subscriptions resume after the last message they saw) and every publish
//! still waiting for its acknowledgement (same message ID, so the broker stores it once).

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use rtc_proto::Frame;

use crate::connection::{self, Ended, Session};
use crate::outgoing::Outgoing;
use crate::queue;
use crate::state::{ConnectionState, Shared};

/// How the client reconnects after losing its connection. `Default`: 100 ms doubling
/// up to 5 s, with jitter, at most 60 attempts (about five minutes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconnectPolicy {
    /// Delay before the first attempt.
    pub initial_delay: Duration,
    /// Longest delay between attempts.
    pub max_delay: Duration,
    /// Attempts before giving up and closing the client; `None`: never give up.
    pub max_attempts: Option<u32>,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        ReconnectPolicy {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            max_attempts: Some(60),
        }
    }
}

impl ReconnectPolicy {
    /// The wait before attempt `attempt` (from 1): the backoff, doubled each attempt up
    /// to `max_delay`, of which a random half is kept ("equal jitter") so that many
    /// clients cut off together do not come back in lockstep.
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(30));
        let base = self
            .initial_delay
            .saturating_mul(factor)
            .min(self.max_delay);
        let half = base / 2;
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let jitter_ns = (half.as_nanos() as u64)
            .checked_add(1)
            .map_or(0, |n| random % n);
        half + Duration::from_nanos(jitter_ns)
    }
}

/// Where and how to (re)connect.
#[derive(Debug, Clone)]
pub(crate) struct Dial {
    /// The URL given first, then `ConnectOptions::servers`.
    pub(crate) endpoints: Vec<crate::connection::Endpoint>,
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
    pub(crate) client_name: String,
    pub(crate) token: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) reconnect: Option<ReconnectPolicy>,
}

/// Keeps the client connected until it is closed. `first` is the connection `connect`
/// already made, with what it must send first.
pub(crate) async fn supervise(
    shared: Arc<Shared>,
    mut rx: queue::Receiver<Outgoing>,
    first: (Session, Vec<Frame>),
    dial: Dial,
) {
    let mut first = Some(first);
    let mut last_reason = String::new();
    // The endpoint of the connection: a reconnect tries the next one first.
    let mut at = 0;
    loop {
        let (s, restore) = match first.take() {
            Some(f) => f,
            None => match reconnect(&shared, &dial, &rx, &last_reason, &mut at).await {
                // Publishes still queued in the channel may go out twice (restored, then
                // from the queue); they carry their message ID, so the broker stores them
                // once and answers the second as a duplicate.
                Some(s) => (s, shared.restore_frames()),
                None => return,
            },
        };
        shared.state.send_replace(ConnectionState::Connected);
        match connection::run(&shared, &mut rx, s, restore).await {
            Ended::Closed => {
                shared.close("closed by the application".to_string());
                return;
            }
            Ended::Lost(reason) => {
                shared.connection_lost(&reason);
                if dial.reconnect.is_none() || shared.closing.is_cancelled() {
                    shared.close(reason);
                    return;
                }
                tracing::warn!(%reason, "connection lost; reconnecting");
                last_reason = reason;
            }
        }
    }
}

async fn reconnect(
    shared: &Shared,
    dial: &Dial,
    rx: &queue::Receiver<Outgoing>,
    last_reason: &str,
    at: &mut usize,
) -> Option<Session> {
    let policy = dial.reconnect.as_ref()?;
    let mut last = last_reason.to_string();
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        if policy.max_attempts.is_some_and(|max| attempt > max) {
            shared.close(format!(
                "gave up after {} reconnect attempts; last error: {last}",
                attempt - 1
            ));
            return None;
        }
        if rx.is_closed() {
            shared.close("every handle to the client was dropped".to_string());
            return None;
        }
        shared
            .state
            .send_replace(ConnectionState::Reconnecting(attempt));
        tokio::select! {
            _ = shared.closing.cancelled() => {
                shared.close("closed by the application".to_string());
                return None;
            }
            _ = tokio::time::sleep(policy.delay(attempt)) => {}
        }
        let n = dial.endpoints.len();
        let which = (*at + attempt as usize) % n;
        match connection::handshake(
            &dial.endpoints[which],
            dial.tls.as_ref(),
            &dial.client_name,
            &dial.token,
            dial.connect_timeout,
        )
        .await
        {
            Ok(s) => {
                tracing::info!(attempt, server = %dial.endpoints[which].addr, "reconnected");
                *at = which;
                return Some(s);
            }
            Err(e) => last = e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let p = ReconnectPolicy {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            max_attempts: None,
        };
        for (attempt, base_ms) in [
            (1u32, 100u64),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (40, 1000),
        ] {
            for _ in 0..20 {
                let d = p.delay(attempt);
                assert!(
                    d >= Duration::from_millis(base_ms / 2),
                    "attempt {attempt}: {d:?}"
                );
                assert!(
                    d <= Duration::from_millis(base_ms),
                    "attempt {attempt}: {d:?}"
                );
            }
        }
        let spread: std::collections::HashSet<Duration> = (0..20).map(|_| p.delay(3)).collect();
        assert!(spread.len() > 1, "jitter varies the delay");
    }
}
