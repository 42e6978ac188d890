//! Cluster mode on a Redis Cluster of three masters (real redis-server processes,
//! created with `redis-cli --cluster create` on loopback): fan-out across nodes for
//! topics on every shard, durable topics with dedup and replay, and a durable consumer.

mod common;

use std::collections::BTreeSet;

use common::cluster::Node;
use common::{next, take};
use rtc_client::{ConsumerOptions, PublishMessage, StartAt, SubscribeOptions};
use rtc_testkit::redis_server::RedisServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_durable_topics_and_consumers_work_on_a_redis_cluster() {
    let shards = RedisServer::cluster(3);
    let seeds: Vec<String> = shards.iter().map(|s| format!("\"{}\"", s.url())).collect();
    let extra = format!("redis_cluster = [{}]", seeds.join(", "));
    let nodes: Vec<Node> = (0..2)
        .map(|_| Node::start_with(&shards[0], "t", &extra))
        .collect();
    let (a, b) = (nodes[0].client().await, nodes[1].client().await);
    // Twelve topics: their hash tags spread them over the three shards.
    let topics: Vec<String> = (0..12).map(|i| format!("orders.t{i}")).collect();
    let mut on_b = b.subscribe("orders.>").await.unwrap();
    let mut live_b = b.subscribe("live.>").await.unwrap();
    for round in 0..5 {
        for t in &topics {
            let id = format!("{t}-{round}");
            let ack = a
                .publish_message(PublishMessage::new(t.as_str(), id.clone()).msg_id(id))
                .await
                .unwrap();
            assert_eq!(ack.seq, round + 1, "{t}: its own seqs");
        }
    }
    for t in &topics {
        a.publish(format!("live.{t}").as_str(), "e").await.unwrap();
    }
    let got = take(&mut on_b, 60).await;
    for t in &topics {
        let seqs: Vec<u64> = got
            .iter()
            .filter(|m| m.topic.as_str() == t)
            .map(|m| m.seq)
            .collect();
        assert_eq!(
            seqs,
            [1, 2, 3, 4, 5],
            "{t}: every message once, in order, on B"
        );
    }
    // The topics' keys are spread over the shards, not on one.
    let holding = shards
        .iter()
        .filter(|s| s.cli(&["DBSIZE"]).trim().parse::<u64>().unwrap_or(0) > 0)
        .count();
    assert!(holding >= 2, "keys on {holding} shard(s)");
    let live: BTreeSet<String> = take(&mut live_b, 12)
        .await
        .into_iter()
        .map(|m| m.topic.to_string())
        .collect();
    assert_eq!(live.len(), 12, "ephemeral messages of every shard reach B");
    // A retry on the other node is a duplicate; replay on B from the start.
    let retry = b
        .publish_message(PublishMessage::new("orders.t3", "x").msg_id("orders.t3-0"))
        .await
        .unwrap();
    assert!(retry.duplicate && retry.seq == 1, "{retry:?}");
    let opts = SubscribeOptions {
        start: StartAt::First,
        ..Default::default()
    };
    let mut replay = b.subscribe_with("orders.t7", opts).await.unwrap();
    let history: Vec<u64> = take(&mut replay, 5).await.iter().map(|m| m.seq).collect();
    assert_eq!(history, [1, 2, 3, 4, 5]);
    // A durable consumer with a member on each node.
    let join = |c: &rtc_client::Client| {
        let c = c.clone();
        async move {
            let options = SubscribeOptions {
                consumer: Some(ConsumerOptions::new("w").max_in_flight(2)),
                ..Default::default()
            };
            c.subscribe_with("orders.t5", options).await.unwrap()
        }
    };
    let (mut ca, mut cb) = (join(&a).await, join(&b).await);
    let mut seen = BTreeSet::new();
    for _ in 0..5 {
        let (sub, m) = tokio::select! {
            m = next(&mut ca) => (&ca, m),
            m = next(&mut cb) => (&cb, m),
        };
        sub.ack(&m).await.unwrap();
        assert!(seen.insert(m.seq), "seq {} twice", m.seq);
    }
    assert_eq!(seen, (1..=5).collect());
}
