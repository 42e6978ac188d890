//! The trie against the reference matcher, and fan-out into real outboxes.

use super::*;
use crate::outbound::{Outbox, Subscription};
use rtc_proto::topic::pattern_matches;

/// Subscribes `sub_id` of connection `owner` to `pattern`, into an outbox of its own.
fn add(router: &Router, pattern: &str, owner: u64, sub_id: u64) -> Arc<Outbox> {
    let outbox = Arc::new(Outbox::new(1 << 20, 1024, 1 << 20));
    let sub = Arc::new(Subscription::new(sub_id, outbox.clone()));
    router.subscribe(pattern, owner, sub_id, sub);
    outbox
}

fn matches(router: &Router, topic: &str) -> Vec<(u64, u64)> {
    let mut v = Vec::new();
    router.for_each_match(topic, |owner, sub_id, _| v.push((owner, sub_id)));
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
        add(&router, p, 1, i as u64);
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
    add(&router, "a.*.c", 1, 1);
    add(&router, "a.*.c", 2, 1);
    add(&router, "a.>", 1, 2);
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
    add(&router, "a", 1, 1);
    add(&router, ">", 2, 1);
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
    add(&router, "a.>", 1, 1);
    assert_eq!(queued(&mut cache, "a.b"), 1, "a new subscription is seen");
    assert_eq!(queued(&mut cache, "a.c"), 1);
    add(&router, "a.b", 2, 1);
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
    let outboxes: Vec<(u64, Arc<Outbox>)> = (1..=3).map(|c| (c, add(&router, "a", c, 1))).collect();
    let mut cache = MatchCache::default();
    for _ in 0..2 {
        let mut later = Flushes::default();
        let m = || Bytes::from_static(b"m");
        let out = router.publish_cached(&mut cache, "a", 0, false, m, &mut later);
        assert_eq!(out.queued, 3);
    }
    let mut one = bytes::BytesMut::new();
    rtc_proto::codec::encode_deliver(1, b"m", &mut one);
    for (conn_id, outbox) in &outboxes {
        let queued = outbox.drain();
        assert_eq!(
            &queued[..],
            [&one[..], &one[..]].concat(),
            "conn {conn_id}",
        );
    }
}
