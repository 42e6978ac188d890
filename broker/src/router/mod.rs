//! The subscription index and live fan-out to anything that implements [`Subscriber`].
//!
//! Subscriptions live in a token trie: each level is one topic token, with separate slots
//! for the `*` and `>` wildcards, so matching a topic costs one walk of its tokens however
//! many subscriptions exist. A publish walks the trie under a shared read lock and hands
//! the message — encoded once by the caller — to each matching [`Subscriber`] as a
//! [`Live`] delivery. A subscriber never waits (a full queue drops and counts), so the
//! read lock is held only for the walk. Subscribe and unsubscribe take the write lock and
//! bump a generation counter; a session publishing to a few topics keeps the subscribers
//! each matched in a [`MatchCache`] and walks the trie again only after that counter
//! moved ([`Router::publish_cached`]).
//!
//! # The subscriber seam
//! The router knows receivers only through [`Subscriber`]. A connection's outbound queue
//! (`crate::outbound::Subscription`), a replaying subscription (`crate::replay::Gate`),
//! a QUIC datagram sink (`crate::transport::quic`) implement it today; a WebSocket
//! connection reuses the first, and an SSE stream, a long-poll waiter, a presence tracker
//! or a bridge to other brokers would each implement it too. A subscriber that queues
//! with the wake-up of its writer left to the caller adds itself to the caller's
//! [`Flushes`], which the caller flushes once it has published what it has (the end of a
//! read for a session, the end of a pass for delivery).
//!
//! A publisher's messages are handed over in the order its session handles them, and
//! each subscriber keeps them in that order, so every subscriber sees one publisher's
//! messages in publish order.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;

use crate::topic_cache::TopicCache;

mod group;

pub use group::{Group, Member};

/// One message on its way to live subscribers.
#[derive(Debug, Clone, Copy)]
pub struct Live<'a> {
    /// Its topic.
    pub topic: &'a str,
    /// Its position in the topic's log (0 for ephemeral topics).
    pub seq: u64,
    /// The `rtc.v1.Message`, encoded once (`rtc_proto::codec::encode_message`).
    pub message: &'a Bytes,
    /// The topic is configured for datagrams: a subscriber that can send one may.
    pub datagram: bool,
    /// Whether other subscribers share the message (see [`Share`]).
    pub share: Share,
}

/// How a queue should keep a delivery's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Share {
    /// Copy it now: the message goes to this subscriber alone.
    Copy,
    /// Keep a reference (a `Bytes` clone) and copy it when writing: other subscribers get
    /// the same message, or the caller owns it anyway.
    Reference,
}

/// Anything that receives live messages from the router.
pub trait Subscriber: Send + Sync + std::fmt::Debug {
    /// Takes one live message; whether it was taken (`false`: dropped, e.g. a full queue).
    /// Never waits. A subscriber that leaves waking its writer to the caller adds itself
    /// to `later`.
    fn deliver(&self, live: &Live<'_>, later: &mut Flushes) -> bool;

    /// Its queue is more than half full: a publisher should let it run before it drops.
    fn is_backlogged(&self) -> bool {
        false
    }
}

/// A queue whose writer must be woken once its filler has queued what it has.
pub trait Flush: Send + Sync {
    /// Writes what is queued (directly when it can), or wakes the writer.
    fn flush(&self);
    /// Wakes the writer, without writing from this thread.
    fn wake(&self);
}

/// How many queues a [`Flushes`] list holds for direct writes; the writers of any more
/// are woken at once. Writing to thousands of connections from one thread, after queuing
/// to all of them, reaches the last ones later than waking their writers as they are
/// queued to, which then run on every worker while the rest is queued (see
/// docs/benchmarks.md, "direct-write budget").
const DIRECT_BUDGET: usize = 16;

/// Queues filled with their wake left to the caller, to be flushed together once the
/// caller has queued everything it has: a session at the end of the frames of one read,
/// delivery at the end of a pass. Anything still listed when this is dropped is flushed
/// then, so no wake is lost.
#[derive(Default)]
pub struct Flushes(Vec<Arc<dyn Flush>>);

impl std::fmt::Debug for Flushes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Flushes").field(&self.0.len()).finish()
    }
}

impl Flushes {
    /// Lists a queue to flush; once [`DIRECT_BUDGET`] are listed, wakes its writer
    /// instead.
    pub fn push(&mut self, queue: Arc<dyn Flush>) {
        if self.0.len() < DIRECT_BUDGET {
            self.0.push(queue);
        } else {
            queue.wake();
        }
    }

    /// Flushes every listed queue, in the order listed, and empties the list.
    pub fn flush_all(&mut self) {
        self.0.drain(..).for_each(|queue| queue.flush());
    }
}

impl Drop for Flushes {
    fn drop(&mut self) {
        self.flush_all();
    }
}

/// One subscription in the trie, or one queue group.
#[derive(Debug, Clone)]
struct Entry {
    /// The connection (or other owner) it belongs to (0 for a group).
    owner: u64,
    /// The owner's id for it (0 for a group).
    sub_id: u64,
    /// The subscription's queue, or the group.
    sub: Arc<dyn Subscriber>,
    /// The group, when this entry is one.
    group: Option<Arc<Group>>,
}

impl Entry {
    fn is(&self, owner: u64, sub_id: u64) -> bool {
        self.group.is_none() && self.owner == owner && self.sub_id == sub_id
    }

    /// A plain entry.
    fn plain(member: Member) -> Entry {
        Entry {
            owner: member.owner,
            sub_id: member.sub_id,
            sub: member.sub,
            group: None,
        }
    }

    /// The subscription a request goes to: this one, or the group member whose turn it
    /// is.
    fn recipient(&self) -> Option<Member> {
        match &self.group {
            None => Some(Member {
                owner: self.owner,
                sub_id: self.sub_id,
                sub: self.sub.clone(),
            }),
            Some(group) => group.pick(),
        }
    }
}

/// Adds `member` to `entries`: alone, or into its group there (made if new).
fn add(entries: &mut Vec<Entry>, member: Member, group: Option<&str>) {
    let Some(name) = group else {
        return entries.push(Entry::plain(member));
    };
    match entries
        .iter()
        .find_map(|e| e.group.as_ref().filter(|g| g.name() == name))
    {
        Some(group) => group.join(member),
        None => {
            let group = Group::new(name, member);
            entries.push(Entry {
                owner: 0,
                sub_id: 0,
                sub: group.clone(),
                group: Some(group),
            });
        }
    }
}

/// Removes subscription `(owner, sub_id)` from `entries`, alone or from its group (and
/// the group once empty); whether it was there.
fn take(entries: &mut Vec<Entry>, owner: u64, sub_id: u64) -> bool {
    if let Some(i) = entries.iter().position(|e| e.is(owner, sub_id)) {
        entries.swap_remove(i);
        return true;
    }
    for i in 0..entries.len() {
        if let Some(group) = &entries[i].group {
            let (found, empty) = group.leave(owner, sub_id);
            if empty {
                entries.swap_remove(i);
            }
            if found {
                return true;
            }
        }
    }
    false
}

#[derive(Debug, Default)]
struct Node {
    /// Subscriptions whose pattern ends exactly at this node.
    here: Vec<Entry>,
    /// Subscriptions whose pattern ends with `>` at this level.
    rest: Vec<Entry>,
    /// Literal next tokens.
    children: HashMap<Box<str>, Node>,
    /// The `*` next token.
    star: Option<Box<Node>>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.here.is_empty()
            && self.rest.is_empty()
            && self.children.is_empty()
            && self.star.is_none()
    }

    /// The entries of the pattern `tokens`, made if missing.
    fn slot(&mut self, tokens: &[&str]) -> &mut Vec<Entry> {
        match tokens.split_first() {
            None => &mut self.here,
            Some((&">", _)) => &mut self.rest,
            Some((&"*", rest)) => self.star.get_or_insert_with(Default::default).slot(rest),
            Some((tok, rest)) => self.children.entry((*tok).into()).or_default().slot(rest),
        }
    }

    /// Removes one subscription; returns whether it was found. Prunes emptied nodes.
    fn remove(&mut self, tokens: &[&str], owner: u64, sub_id: u64) -> bool {
        match tokens.split_first() {
            None => take(&mut self.here, owner, sub_id),
            Some((&">", _)) => take(&mut self.rest, owner, sub_id),
            Some((&"*", rest)) => {
                let Some(star) = self.star.as_mut() else {
                    return false;
                };
                let found = star.remove(rest, owner, sub_id);
                if star.is_empty() {
                    self.star = None;
                }
                found
            }
            Some((tok, rest)) => {
                let Some(child) = self.children.get_mut(*tok) else {
                    return false;
                };
                let found = child.remove(rest, owner, sub_id);
                if child.is_empty() {
                    self.children.remove(*tok);
                }
                found
            }
        }
    }

    /// [`Node::for_each_match`] from the root: a wildcard in the first position does not
    /// match the broker's `$` topics (see `rtc_proto::topic::pattern_matches`).
    fn for_each_match_root(&self, tokens: &[&str], f: &mut impl FnMut(&Entry)) {
        match tokens.split_first() {
            Some((tok, rest)) if tok.starts_with('$') => {
                if let Some(child) = self.children.get(*tok) {
                    child.for_each_match(rest, f);
                }
            }
            _ => self.for_each_match(tokens, f),
        }
    }

    fn for_each_match(&self, tokens: &[&str], f: &mut impl FnMut(&Entry)) {
        let Some((tok, rest)) = tokens.split_first() else {
            self.here.iter().for_each(&mut *f);
            return;
        };
        // `>` needs at least one more token, which `tok` is.
        self.rest.iter().for_each(&mut *f);
        if let Some(child) = self.children.get(*tok) {
            child.for_each_match(rest, f);
        }
        if let Some(star) = &self.star {
            star.for_each_match(rest, f);
        }
    }
}

/// What [`Router::publish`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fanout {
    /// Subscriptions that took the message.
    pub queued: usize,
    /// Some matching subscriber's queue is more than half full: its writer is behind.
    pub backlogged: bool,
}

/// The broker-wide subscription index.
#[derive(Debug, Default)]
pub struct Router {
    root: RwLock<Node>,
    /// Bumped (under the write lock) by every subscribe and unsubscribe: a
    /// [`MatchCache`] filled at an older generation is stale.
    generation: AtomicU64,
}

/// Most tokens a topic may have (`rtc_proto::topic::MAX_TOKENS`); lets matching split a
/// topic into a stack array instead of a heap `Vec`.
const MAX_TOKENS: usize = rtc_proto::topic::MAX_TOKENS;

fn split_tokens<'a>(topic: &'a str, out: &mut [&'a str; MAX_TOKENS]) -> usize {
    let mut n = 0;
    for tok in topic.split('.').take(MAX_TOKENS) {
        out[n] = tok;
        n += 1;
    }
    n
}

impl Router {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds subscription `sub_id` of `owner` (a connection id) for a validated `pattern`.
    pub fn subscribe(&self, pattern: &str, owner: u64, sub_id: u64, sub: Arc<dyn Subscriber>) {
        self.subscribe_in(pattern, None, Member { owner, sub_id, sub });
    }

    /// Adds `member` for a validated `pattern`, alone or in queue group `group` of that
    /// pattern (see [`group`]).
    pub fn subscribe_in(&self, pattern: &str, group: Option<&str>, member: Member) {
        let tokens: Vec<&str> = pattern.split('.').collect();
        let mut root = self.root.write().unwrap_or_else(|p| p.into_inner());
        add(root.slot(&tokens), member, group);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Removes the subscription `(owner, sub_id)` made with `pattern` (alone or in a
    /// group); returns whether it existed.
    pub fn unsubscribe(&self, pattern: &str, owner: u64, sub_id: u64) -> bool {
        let tokens: Vec<&str> = pattern.split('.').collect();
        let mut root = self.root.write().unwrap_or_else(|p| p.into_inner());
        let found = root.remove(&tokens, owner, sub_id);
        self.generation.fetch_add(1, Ordering::Release);
        found
    }

    /// Calls `f` with `(owner, sub_id, subscriber)` for every subscription whose pattern
    /// matches the validated `topic`; a queue group is one subscriber, `(0, 0, group)`.
    pub fn for_each_match(&self, topic: &str, mut f: impl FnMut(u64, u64, &Arc<dyn Subscriber>)) {
        let mut buf = [""; MAX_TOKENS];
        let n = split_tokens(topic, &mut buf);
        self.root
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .for_each_match_root(&buf[..n], &mut |e: &Entry| f(e.owner, e.sub_id, &e.sub));
    }

    /// The subscriptions a request to the validated `topic` goes to: each one whose
    /// pattern matches, but of a queue group only the member whose turn it is.
    pub fn recipients(&self, topic: &str) -> Vec<Member> {
        let mut buf = [""; MAX_TOKENS];
        let n = split_tokens(topic, &mut buf);
        let mut out = Vec::new();
        self.root
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .for_each_match_root(&buf[..n], &mut |e: &Entry| out.extend(e.recipient()));
        out
    }

    /// Fans a message out to every matching subscription. `seq` is its position in the
    /// topic's log (0 for ephemeral topics); with `datagram`, subscriptions that can send
    /// datagrams may. `encode` runs at most once, and only if someone matches. The
    /// queues whose writers must then be woken are added to `later`, for the caller to
    /// flush once it has published what it has.
    pub fn publish(
        &self,
        topic: &str,
        seq: u64,
        datagram: bool,
        encode: impl FnOnce() -> Bytes,
        later: &mut Flushes,
    ) -> Fanout {
        let mut fan = FanOut::new(topic, seq, datagram, encode, later);
        // How many match is not known before the walk: share.
        self.for_each_match(topic, |_, _, sub| fan.deliver(sub, Share::Reference));
        fan.out
    }

    /// [`Router::publish`] through a cache of the subscriptions `topic` matched the last
    /// time: a publisher streaming to a few topics walks the trie only when a
    /// subscription was added or removed since. While a topic is cached, the cache keeps
    /// its subscribers alive (until the next subscribe or unsubscribe); a closed queue
    /// holds no buffers (its writer releases them when it stops).
    pub fn publish_cached(
        &self,
        cache: &mut MatchCache,
        topic: &str,
        seq: u64,
        datagram: bool,
        encode: impl FnOnce() -> Bytes,
        later: &mut Flushes,
    ) -> Fanout {
        let generation = self.generation.load(Ordering::Acquire);
        let Ok(subs) = cache.get_or_try_insert(generation, topic, || {
            let mut subs = Vec::new();
            self.for_each_match(topic, |_, _, sub| subs.push(sub.clone()));
            Ok::<_, std::convert::Infallible>(subs)
        });
        let mut fan = FanOut::new(topic, seq, datagram, encode, later);
        // A message for one subscriber is copied into its queue (no shared handle to
        // allocate and free on another thread); one for several is shared, and each
        // writer copies it.
        let share = if subs.len() > 1 {
            Share::Reference
        } else {
            Share::Copy
        };
        subs.iter().for_each(|sub| fan.deliver(sub, share));
        fan.out
    }
}

/// The subscribers a few topics matched, remembered by one publisher.
pub type MatchCache = TopicCache<Vec<Arc<dyn Subscriber>>>;

/// One message's fan-out: encodes it on the first match and counts what happened.
struct FanOut<'a, E> {
    topic: &'a str,
    later: &'a mut Flushes,
    seq: u64,
    datagram: bool,
    encode: Option<E>,
    message: Option<Bytes>,
    out: Fanout,
}

impl<'a, E: FnOnce() -> Bytes> FanOut<'a, E> {
    fn new(topic: &'a str, seq: u64, datagram: bool, encode: E, later: &'a mut Flushes) -> Self {
        FanOut {
            topic,
            later,
            seq,
            datagram,
            encode: Some(encode),
            message: None,
            out: Fanout::default(),
        }
    }

    /// Delivers to `sub`.
    fn deliver(&mut self, sub: &Arc<dyn Subscriber>, share: Share) {
        let encode = &mut self.encode;
        let message = self
            .message
            .get_or_insert_with(|| (encode.take().expect("encode runs once"))());
        let live = Live {
            topic: self.topic,
            seq: self.seq,
            message,
            datagram: self.datagram,
            share,
        };
        if sub.deliver(&live, self.later) {
            self.out.queued += 1;
        }
        self.out.backlogged |= sub.is_backlogged();
    }
}

#[cfg(test)]
mod tests;
