//! The subscription index and live fan-out.
//!
//! Subscriptions live in a token trie: each level is one topic token, with separate slots
//! for the `*` and `>` wildcards, so matching a topic costs one walk of its tokens however
//! many subscriptions exist. A publish walks the trie under a shared read lock and pushes
//! the message — encoded once by the caller, copied into the queue for a lone subscriber
//! and shared as `Bytes` among several — into each matching subscriber's [`Outbox`].
//! Pushing never waits (a full outbox drops and counts), so the read lock is held only
//! for the walk. Subscribe and unsubscribe take the write lock and bump a generation
//! counter; a session publishing to a few topics keeps the subscribers each matched in a
//! [`MatchCache`] and walks the trie again only after that counter moved
//! ([`Router::publish_cached`]).
//!
//! A publisher's messages are pushed in the order its session handles them, and each
//! outbox is FIFO, so every subscriber sees one publisher's messages in publish order.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;

use crate::outbound::{Flushes, Outbox, Share};
use crate::replay::Gate;
use crate::topic_cache::TopicCache;

/// One subscription as the router sees it.
#[derive(Debug, Clone)]
pub struct Subscriber {
    /// The connection that owns it.
    pub conn_id: u64,
    /// The client's id for it, echoed in every `Deliver`.
    pub sub_id: u64,
    /// Where its deliveries go.
    pub outbox: Arc<Outbox>,
    /// For a subscription replaying history: holds live messages until the replay has
    /// caught up (see [`crate::replay`]). `None` for live-only subscriptions.
    pub gate: Option<Arc<Gate>>,
    /// For a QUIC subscription that asked for datagrams: where they go.
    pub datagrams: Option<Arc<dyn DatagramSink>>,
}

/// Something that sends unreliable datagrams to a client (a QUIC connection).
pub trait DatagramSink: Send + Sync + std::fmt::Debug {
    /// Largest datagram the peer accepts now, if it accepts any.
    fn max_size(&self) -> Option<usize>;
    /// Sends one datagram; `false` if it could not be sent.
    fn send(&self, datagram: Bytes) -> bool;
}

impl DatagramSink for quinn::Connection {
    fn max_size(&self) -> Option<usize> {
        self.max_datagram_size()
    }

    fn send(&self, datagram: Bytes) -> bool {
        self.send_datagram(datagram).is_ok()
    }
}

impl Subscriber {
    /// Queues `message` for this subscription; whether it was queued (not dropped). An
    /// outbox that must then be flushed is added to `later`.
    fn deliver(
        &self,
        topic: &str,
        seq: u64,
        message: &Bytes,
        datagram: bool,
        share: Share,
        later: &mut Flushes,
    ) -> bool {
        if datagram {
            if let Some(sink) = &self.datagrams {
                if self.send_datagram(sink.as_ref(), message) {
                    return true;
                }
            }
        }
        match &self.gate {
            None => match self
                .outbox
                .push_deliver_deferred(self.sub_id, message, share)
            {
                None => false,
                Some(false) => true,
                Some(true) => {
                    later.push(self.outbox.clone());
                    true
                }
            },
            Some(gate) => {
                gate.offer(topic, seq, message);
                true
            }
        }
    }

    /// One `Frame{deliver}` without the length prefix, if it fits in a datagram.
    fn send_datagram(&self, sink: &dyn DatagramSink, message: &Bytes) -> bool {
        let len = rtc_proto::codec::deliver_frame_len(self.sub_id, message.len());
        if sink.max_size().is_none_or(|max| len > max) {
            return false;
        }
        let mut buf = bytes::BytesMut::with_capacity(rtc_proto::codec::LEN_PREFIX + len);
        rtc_proto::codec::encode_deliver(self.sub_id, message, &mut buf);
        sink.send(buf.split_off(rtc_proto::codec::LEN_PREFIX).freeze())
    }
}

impl Subscriber {
    fn is(&self, conn_id: u64, sub_id: u64) -> bool {
        self.conn_id == conn_id && self.sub_id == sub_id
    }
}

#[derive(Debug, Default)]
struct Node {
    /// Subscriptions whose pattern ends exactly at this node.
    here: Vec<Subscriber>,
    /// Subscriptions whose pattern ends with `>` at this level.
    rest: Vec<Subscriber>,
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

    fn insert(&mut self, tokens: &[&str], sub: Subscriber) {
        match tokens.split_first() {
            None => self.here.push(sub),
            Some((&">", _)) => self.rest.push(sub),
            Some((&"*", rest)) => self
                .star
                .get_or_insert_with(Default::default)
                .insert(rest, sub),
            Some((tok, rest)) => self
                .children
                .entry((*tok).into())
                .or_default()
                .insert(rest, sub),
        }
    }

    /// Removes one subscription; returns whether it was found. Prunes emptied nodes.
    fn remove(&mut self, tokens: &[&str], conn_id: u64, sub_id: u64) -> bool {
        let take = |v: &mut Vec<Subscriber>| match v.iter().position(|s| s.is(conn_id, sub_id)) {
            Some(i) => {
                v.swap_remove(i);
                true
            }
            None => false,
        };
        match tokens.split_first() {
            None => take(&mut self.here),
            Some((&">", _)) => take(&mut self.rest),
            Some((&"*", rest)) => {
                let Some(star) = self.star.as_mut() else {
                    return false;
                };
                let found = star.remove(rest, conn_id, sub_id);
                if star.is_empty() {
                    self.star = None;
                }
                found
            }
            Some((tok, rest)) => {
                let Some(child) = self.children.get_mut(*tok) else {
                    return false;
                };
                let found = child.remove(rest, conn_id, sub_id);
                if child.is_empty() {
                    self.children.remove(*tok);
                }
                found
            }
        }
    }

    fn for_each_match(&self, tokens: &[&str], f: &mut impl FnMut(&Subscriber)) {
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
    /// Some matching connection's queue is more than half full: its writer is behind.
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

    /// Adds a subscription for a validated `pattern`.
    pub fn subscribe(&self, pattern: &str, sub: Subscriber) {
        let tokens: Vec<&str> = pattern.split('.').collect();
        let mut root = self.root.write().unwrap_or_else(|p| p.into_inner());
        root.insert(&tokens, sub);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Removes the subscription `(conn_id, sub_id)` made with `pattern`; returns whether it
    /// existed.
    pub fn unsubscribe(&self, pattern: &str, conn_id: u64, sub_id: u64) -> bool {
        let tokens: Vec<&str> = pattern.split('.').collect();
        let mut root = self.root.write().unwrap_or_else(|p| p.into_inner());
        let found = root.remove(&tokens, conn_id, sub_id);
        self.generation.fetch_add(1, Ordering::Release);
        found
    }

    /// Calls `f` for every subscription whose pattern matches the validated `topic`.
    pub fn for_each_match(&self, topic: &str, mut f: impl FnMut(&Subscriber)) {
        let mut buf = [""; MAX_TOKENS];
        let n = split_tokens(topic, &mut buf);
        self.root
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .for_each_match(&buf[..n], &mut f);
    }

    /// Fans a message out to every matching subscription. `seq` is its position in the
    /// topic's log (0 for ephemeral topics); with `datagram`, subscriptions that asked
    /// for datagrams get it as one when it fits. `encode` runs at most once, and only if
    /// someone matches. The outboxes whose writers must then be woken are added to
    /// `later`, for the caller to flush once it has published what it has.
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
        self.for_each_match(topic, |sub| fan.deliver(sub, Share::Reference));
        fan.out
    }

    /// [`Router::publish`] through a cache of the subscriptions `topic` matched the last
    /// time: a publisher streaming to a few topics walks the trie only when a
    /// subscription was added or removed since. While a topic is cached, the cache keeps
    /// its subscribers' outboxes alive (until the next subscribe or unsubscribe); a closed
    /// one holds no buffers (its writer releases them when it stops).
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
            self.for_each_match(topic, |sub| subs.push(sub.clone()));
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

/// The subscriptions a few topics matched, remembered by one publisher.
pub type MatchCache = TopicCache<Vec<Subscriber>>;

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
    fn deliver(&mut self, sub: &Subscriber, share: Share) {
        let encode = &mut self.encode;
        let message = self
            .message
            .get_or_insert_with(|| (encode.take().expect("encode runs once"))());
        if sub.deliver(
            self.topic,
            self.seq,
            message,
            self.datagram,
            share,
            self.later,
        ) {
            self.out.queued += 1;
        }
        self.out.backlogged |= sub.outbox.is_backlogged();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc_proto::topic::pattern_matches;

    fn sub(conn_id: u64, sub_id: u64) -> Subscriber {
        Subscriber {
            conn_id,
            sub_id,
            outbox: Arc::new(Outbox::new(1 << 20, 1024, 1 << 20)),
            gate: None,
            datagrams: None,
        }
    }

    fn matches(router: &Router, topic: &str) -> Vec<(u64, u64)> {
        let mut v = Vec::new();
        router.for_each_match(topic, |s| v.push((s.conn_id, s.sub_id)));
        v.sort();
        v
    }

    #[test]
    fn trie_agrees_with_the_reference_matcher() {
        let patterns = [
            "a", "a.b", "a.*", "a.>", "*.b", "*", ">", "a.*.c", "a.b.>", "*.*.*", "x.y",
        ];
        let topics = [
            "a", "b", "a.b", "a.c", "b.b", "a.b.c", "a.x.c", "a.b.c.d", "x.y", "x.y.z",
        ];
        let router = Router::new();
        for (i, p) in patterns.iter().enumerate() {
            router.subscribe(p, sub(1, i as u64));
        }
        for t in topics {
            let want: Vec<(u64, u64)> = patterns
                .iter()
                .enumerate()
                .filter(|(_, p)| pattern_matches(p, t))
                .map(|(i, _)| (1, i as u64))
                .collect();
            assert_eq!(matches(&router, t), want, "topic {t}");
        }
    }

    #[test]
    fn unsubscribe_removes_only_that_subscription_and_prunes() {
        let router = Router::new();
        router.subscribe("a.*.c", sub(1, 1));
        router.subscribe("a.*.c", sub(2, 1));
        router.subscribe("a.>", sub(1, 2));
        assert!(router.unsubscribe("a.*.c", 1, 1));
        assert!(
            !router.unsubscribe("a.*.c", 1, 1),
            "second removal finds nothing"
        );
        assert!(
            !router.unsubscribe("a.x.c", 2, 1),
            "wrong pattern finds nothing"
        );
        assert_eq!(matches(&router, "a.b.c"), vec![(1, 2), (2, 1)]);
        assert!(router.unsubscribe("a.*.c", 2, 1));
        assert!(router.unsubscribe("a.>", 1, 2));
        assert!(
            router.root.read().unwrap().is_empty(),
            "trie pruned back to empty"
        );
    }

    #[test]
    fn publish_encodes_once_and_skips_encoding_without_subscribers() {
        let router = Router::new();
        let mut calls = 0;
        assert_eq!(
            router
                .publish(
                    "a",
                    0,
                    false,
                    || {
                        calls += 1;
                        Bytes::new()
                    },
                    &mut Flushes::default()
                )
                .queued,
            0
        );
        assert_eq!(calls, 0);
        router.subscribe("a", sub(1, 1));
        router.subscribe(">", sub(2, 1));
        assert_eq!(
            router
                .publish(
                    "a",
                    0,
                    false,
                    || {
                        calls += 1;
                        Bytes::from_static(b"m")
                    },
                    &mut Flushes::default()
                )
                .queued,
            2
        );
        assert_eq!(calls, 1);
    }

    #[test]
    fn cached_matches_follow_every_subscribe_and_unsubscribe() {
        let router = Router::new();
        let mut cache = MatchCache::default();
        let queued = |cache: &mut MatchCache, topic: &str| {
            router
                .publish_cached(
                    cache,
                    topic,
                    0,
                    false,
                    || Bytes::from_static(b"m"),
                    &mut Flushes::default(),
                )
                .queued
        };
        assert_eq!(queued(&mut cache, "a.b"), 0);
        router.subscribe("a.>", sub(1, 1));
        assert_eq!(queued(&mut cache, "a.b"), 1, "a new subscription is seen");
        assert_eq!(queued(&mut cache, "a.c"), 1);
        router.subscribe("a.b", sub(2, 1));
        assert_eq!(queued(&mut cache, "a.b"), 2);
        assert_eq!(queued(&mut cache, "a.c"), 1);
        assert!(router.unsubscribe("a.>", 1, 1));
        assert_eq!(queued(&mut cache, "a.b"), 1, "a removed one is gone");
        assert_eq!(queued(&mut cache, "a.c"), 0);
        // Agrees with the uncached walk for more topics than the cache holds.
        for i in 0..20 {
            let topic = format!("a.{}", i % 12);
            let walked = router
                .publish(&topic, 0, false, Bytes::new, &mut Flushes::default())
                .queued;
            assert_eq!(queued(&mut cache, &topic), walked, "{topic}");
        }
    }

    #[tokio::test]
    async fn every_subscriber_of_a_cached_fan_out_gets_the_message_itself() {
        let router = Router::new();
        let subs: Vec<Subscriber> = (1..=3).map(|c| sub(c, 1)).collect();
        for s in &subs {
            router.subscribe("a", s.clone());
        }
        let mut cache = MatchCache::default();
        for _ in 0..2 {
            let mut later = Flushes::default();
            let m = || Bytes::from_static(b"m");
            let out = router.publish_cached(&mut cache, "a", 0, false, m, &mut later);
            assert_eq!(out.queued, 3);
        }
        let mut one = bytes::BytesMut::new();
        rtc_proto::codec::encode_deliver(1, b"m", &mut one);
        for s in &subs {
            let queued = s.outbox.drain();
            assert_eq!(
                &queued[..],
                [&one[..], &one[..]].concat(),
                "conn {}",
                s.conn_id
            );
        }
    }
}
