//! Request-reply: the requests that wait for a reply, broker-wide.
//!
//! A session that takes a `Request` registers it here ([`Requests::open`]) with the
//! connections it is about to deliver it to, then delivers it with `reply_to` set to the
//! request's token. A `Reply` names the token; [`Requests::answer`] takes the request out
//! only for a connection it was delivered to, so the first reply from a responder wins,
//! a later one finds nothing, and a connection that merely guessed or saw a token is
//! refused. The answer goes into the requester's own queue (its outbox): no other client
//! can read it.
//!
//! In cluster mode a request also goes to the other nodes (`crate::bus::Bus::request`),
//! with the requester's node in its token (`<token>@<node>`); a responder's node that
//! does not hold the request forwards the reply to the node the token names
//! (`Bus::reply`), where [`Requests::remote_reply`] answers it. Such a request takes
//! its first reply from any node, since this node cannot know the other nodes'
//! connections.
//!
//! Deadlines sit in one ordered set; one task ([`Requests::expire`]) sleeps until the
//! earliest and answers every request past its deadline with `Error{TIMEOUT}`. Each
//! requester's count of waiting requests bounds what one connection can hold here.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use rtc_proto::v1::{self, frame::Op};
use rtc_proto::Frame;

use crate::metrics::Metrics;
use crate::outbound::Outbox;
use crate::refusal::Refusal;

/// A request waiting for its reply.
#[derive(Debug)]
pub struct Pending {
    /// Where the answer goes.
    pub requester: Arc<Outbox>,
    /// The requester's id for it.
    pub req_id: u64,
    /// The connections it was delivered to, sorted: only these may answer.
    recipients: Vec<u64>,
    /// It went to other nodes too: a reply forwarded by another node may answer it.
    remote: bool,
    deadline: Instant,
    /// The requester's count of waiting requests, given back when this one ends.
    waiting: Arc<AtomicUsize>,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    pending: HashMap<u64, Pending>,
    deadlines: BTreeSet<(Instant, u64)>,
}

/// Every request waiting for a reply.
#[derive(Debug, Default)]
pub struct Requests {
    state: Mutex<State>,
    /// A new earliest deadline: the expiry task sleeps until then instead.
    earlier: Notify,
    /// Where timeouts are counted.
    metrics: Arc<Metrics>,
    /// This node's id, in cluster mode: tokens naming another node are not ours.
    node: std::sync::OnceLock<String>,
}

/// The `reply_to` a request is delivered with; in cluster mode with its node
/// (`r<id>@<node>`).
pub fn token(id: u64, node: Option<&str>) -> String {
    match node {
        Some(node) => format!("r{id:x}@{node}"),
        None => format!("r{id:x}"),
    }
}

/// The node a `reply_to` names, if any.
pub fn token_node(token: &str) -> Option<&str> {
    token.split_once('@').map(|(_, node)| node)
}

/// The id in a `reply_to`, if it is one.
fn parse_token(token: &str) -> Option<u64> {
    let local = token.split_once('@').map_or(token, |(t, _)| t);
    u64::from_str_radix(local.strip_prefix('r')?, 16).ok()
}

impl Requests {
    /// No request waiting yet.
    pub fn new(metrics: Arc<Metrics>) -> Requests {
        Requests {
            metrics,
            ..Requests::default()
        }
    }

    /// In cluster mode: this node's id, for the tokens.
    pub fn set_node(&self, node: &str) {
        let _ = self.node.set(node.to_string());
    }

    /// This node's id, in cluster mode.
    pub fn node(&self) -> Option<&str> {
        self.node.get().map(String::as_str)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a request of `requester` (whose count of waiting requests is
    /// `waiting`) that is about to be delivered to `recipients` (connection ids, sorted
    /// and without repeats); its id for the token.
    pub fn open(
        &self,
        requester: Arc<Outbox>,
        req_id: u64,
        recipients: Vec<u64>,
        timeout: Duration,
        waiting: Arc<AtomicUsize>,
        remote: bool,
    ) -> u64 {
        let deadline = Instant::now() + timeout;
        waiting.fetch_add(1, Ordering::Relaxed);
        let mut st = self.lock();
        st.next_id += 1;
        let id = st.next_id;
        let earliest = st.deadlines.first().is_none_or(|(d, _)| deadline < *d);
        st.deadlines.insert((deadline, id));
        st.pending.insert(
            id,
            Pending {
                requester,
                req_id,
                recipients,
                remote,
                deadline,
                waiting,
            },
        );
        drop(st);
        if earliest {
            self.earlier.notify_one();
        }
        id
    }

    /// Takes request `id` out (it will not be answered: nothing took it).
    pub fn cancel(&self, id: u64) {
        let mut st = self.lock();
        if let Some(p) = st.pending.remove(&id) {
            st.deadlines.remove(&(p.deadline, id));
            p.waiting.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Takes the request behind `token` out for connection `from`'s reply, or why not.
    pub fn answer(&self, token: &str, from: u64) -> Result<Pending, Refusal> {
        self.take(token, Some(from))
    }

    /// Answers the request behind `reply.reply_to` with a reply another node forwarded
    /// (cluster mode); nothing if it was answered or timed out meanwhile. The queue to
    /// flush, if any.
    pub fn remote_reply(&self, reply: v1::Reply) -> Option<Arc<Outbox>> {
        let v1::Reply {
            req_id: _,
            reply_to,
            payload,
            headers,
        } = reply;
        let pending = self.take(&reply_to, None).ok()?;
        let response = Frame::from_op(Op::Response(v1::Response {
            req_id: pending.req_id,
            payload,
            headers,
        }));
        match pending.requester.push_frame_deferred(response) {
            Ok(true) => Some(pending.requester.clone()),
            _ => None,
        }
    }

    /// Takes the request behind `token` out for a reply from connection `from` (`None`:
    /// from another node).
    fn take(&self, token: &str, from: Option<u64>) -> Result<Pending, Refusal> {
        let gone = || {
            Refusal::NotFound(format!(
                "no request waits for a reply to {token:?}: it was answered, timed out, or never existed"
            ))
        };
        let mine = match token_node(token) {
            None => true,
            Some(node) => self.node.get().is_some_and(|me| me == node),
        };
        if !mine {
            return Err(gone());
        }
        let id = parse_token(token).ok_or_else(gone)?;
        let mut st = self.lock();
        let p = st.pending.get(&id).ok_or_else(gone)?;
        let allowed = match from {
            Some(from) => p.recipients.binary_search(&from).is_ok(),
            None => p.remote,
        };
        if !allowed {
            return Err(Refusal::PermissionDenied(format!(
                "request {token:?} was not delivered to this connection"
            )));
        }
        let p = st.pending.remove(&id).ok_or_else(gone)?;
        st.deadlines.remove(&(p.deadline, id));
        p.waiting.fetch_sub(1, Ordering::Relaxed);
        Ok(p)
    }

    /// Requests waiting (for tests and stats).
    pub fn len(&self) -> usize {
        self.lock().pending.len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes out every request past its deadline at `now`.
    fn take_expired(&self, now: Instant) -> (Vec<Pending>, Option<Instant>) {
        let mut st = self.lock();
        let mut expired = Vec::new();
        while let Some(&(deadline, id)) = st.deadlines.first() {
            if deadline > now {
                break;
            }
            st.deadlines.pop_first();
            if let Some(p) = st.pending.remove(&id) {
                p.waiting.fetch_sub(1, Ordering::Relaxed);
                expired.push(p);
            }
        }
        (expired, st.deadlines.first().map(|(d, _)| *d))
    }

    /// Answers expired requests with `Error{TIMEOUT}` until `cancel` fires.
    pub async fn expire(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            let (expired, next) = self.take_expired(Instant::now());
            for p in expired {
                self.metrics.request_unanswered(true);
                let refusal = Refusal::Timeout(format!(
                    "no reply within the request's timeout (request {})",
                    p.req_id
                ));
                // A requester that has gone away has nothing to hear.
                let _ = p.requester.push_frame_now(refusal.frame(p.req_id));
            }
            // Far enough for "none", near enough not to overflow a deadline.
            let until = next.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep_until(until) => {}
                _ = self.earlier.notified() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox() -> Arc<Outbox> {
        Arc::new(Outbox::new(1 << 20, 1024, 1 << 20))
    }

    #[test]
    fn only_a_recipient_answers_and_only_once() {
        let requests = Requests::default();
        let waiting = Arc::new(AtomicUsize::new(0));
        let id = requests.open(
            outbox(),
            7,
            vec![2, 3],
            Duration::from_secs(5),
            waiting.clone(),
            false,
        );
        assert_eq!(waiting.load(Ordering::Relaxed), 1);
        let t = token(id, None);
        assert!(matches!(
            requests.answer(&t, 9),
            Err(Refusal::PermissionDenied(_))
        ));
        assert_eq!(requests.answer(&t, 3).unwrap().req_id, 7);
        assert!(matches!(requests.answer(&t, 2), Err(Refusal::NotFound(_))));
        assert!(matches!(
            requests.answer("x1", 2),
            Err(Refusal::NotFound(_))
        ));
        assert_eq!(waiting.load(Ordering::Relaxed), 0);
        assert!(requests.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_past_its_deadline_expires() {
        let requests = Arc::new(Requests::default());
        let waiting = Arc::new(AtomicUsize::new(0));
        let cancel = CancellationToken::new();
        let task = tokio::spawn(requests.clone().expire(cancel.clone()));
        let slow = requests.open(
            outbox(),
            1,
            vec![2],
            Duration::from_secs(10),
            waiting.clone(),
            false,
        );
        let fast = requests.open(
            outbox(),
            2,
            vec![2],
            Duration::from_secs(1),
            waiting.clone(),
            false,
        );
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(requests.answer(&token(fast, None), 2).is_err(), "expired");
        assert_eq!(requests.len(), 1);
        assert!(requests.answer(&token(slow, None), 2).is_ok());
        assert_eq!(waiting.load(Ordering::Relaxed), 0);
        cancel.cancel();
        task.await.unwrap();
    }
}
