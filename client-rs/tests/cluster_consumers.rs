//! Durable consumers in cluster mode, with real parts (a redis-server and broker
//! processes): members of one consumer on different nodes share its messages, each in
//! flight to one member at a time; a node's death hands its unacknowledged messages to
//! the others within `ack_wait`; redelivery counts and dead letters work across nodes.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::cluster::nodes;
use common::{next, take, WAIT};
use rtc_client::{Client, ConsumerOptions, StartAt, SubscribeOptions, Subscription};
use rtc_testkit::redis_server::RedisServer;

async fn join(c: &Client, topic: &str, consumer: ConsumerOptions) -> Subscription {
    let options = SubscribeOptions {
        consumer: Some(consumer),
        ..Default::default()
    };
    c.subscribe_with(topic, options).await.unwrap()
}

async fn publish_n(c: &Client, topic: &str, n: u64) {
    for i in 1..=n {
        c.publish(topic, format!("job {i}")).await.unwrap();
    }
}

/// Takes and acks messages until `n` seqs have been seen by `subs` together, or none
/// comes for a while; the seqs each one acked.
async fn work(subs: Vec<Subscription>, n: usize) -> Vec<Vec<u64>> {
    let mut tasks = Vec::new();
    for mut sub in subs {
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Ok(Some(m)) =
                tokio::time::timeout(Duration::from_millis(1500), sub.next()).await
            {
                sub.ack(&m).await.unwrap();
                seen.push(m.seq);
                if seen.len() == n {
                    break;
                }
            }
            seen
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_on_two_nodes_share_a_consumer_and_no_message_is_handled_twice() {
    let redis = RedisServer::start();
    let nodes = nodes(&redis, 3);
    let (a, b, c) = (
        nodes[0].client().await,
        nodes[1].client().await,
        nodes[2].client().await,
    );
    let opts = ConsumerOptions::new("billing").max_in_flight(5);
    let on_a = join(&a, "invoices", opts.clone()).await;
    let on_b = join(&b, "invoices", opts).await;
    const N: u64 = 200;
    publish_n(&c, "invoices", N).await;
    let seen = work(vec![on_a, on_b], N as usize).await;
    let all: Vec<u64> = seen.iter().flatten().copied().collect();
    let unique: BTreeSet<u64> = all.iter().copied().collect();
    assert_eq!(unique, (1..=N).collect(), "every message handled");
    assert_eq!(all.len(), N as usize, "none handled twice while both ack");
    assert!(
        seen.iter().all(|s| !s.is_empty()),
        "both nodes' members got work: {:?}",
        seen.iter().map(Vec::len).collect::<Vec<_>>()
    );
    // The consumer's state is the cluster's: its info on a third node.
    // The last acks reach Redis from A's and B's tasks a moment after they were sent.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let info = c.consumer_info("invoices", "billing").await.unwrap();
        if (info.ack_floor, info.next_seq, info.pending) == (N, N + 1, 0) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{info:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A consumer made on A alone is listed on C too, with the others of the topic.
    let _audit = join(&a, "invoices", ConsumerOptions::new("audit")).await;
    let listed: Vec<String> = c
        .list_consumers("invoices")
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(listed, ["audit", "billing"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_unacknowledged_messages_go_to_the_other_within_ack_wait() {
    let redis = RedisServer::start();
    let mut nodes = nodes(&redis, 2);
    let (a, b) = (nodes[0].client().await, nodes[1].client().await);
    let opts = ConsumerOptions::new("w")
        .ack_wait(Duration::from_millis(800))
        .max_in_flight(10);
    let mut on_b = join(&b, "jobs", opts.clone()).await;
    publish_n(&a, "jobs", 10).await;
    // B's member takes all ten and acks none; then B dies.
    let held = take(&mut on_b, 10).await;
    assert_eq!(held.len(), 10);
    let mut on_a = join(&a, "jobs", opts).await;
    let killed = tokio::time::Instant::now();
    nodes.remove(1).broker.kill();
    let mut again = Vec::new();
    for _ in 0..10 {
        let m = next(&mut on_a).await;
        on_a.ack(&m).await.unwrap();
        again.push((m.seq, m.delivery_count));
    }
    assert!(
        killed.elapsed() < WAIT,
        "redelivered within ack_wait and a claim interval"
    );
    again.sort_unstable();
    assert_eq!(
        again,
        (1..=10).map(|s| (s, 2)).collect::<Vec<_>>(),
        "each once more, as its second delivery"
    );
    let info = a.consumer_info("jobs", "w").await.unwrap();
    assert_eq!(
        (info.ack_floor, info.pending, info.redelivered),
        (10, 0, 10),
        "{info:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_past_max_deliver_goes_to_the_dead_letter_topic_once() {
    let redis = RedisServer::start();
    let nodes = nodes(&redis, 2);
    let (a, b) = (nodes[0].client().await, nodes[1].client().await);
    let opts = ConsumerOptions::new("pay")
        .max_deliver(2)
        .ack_wait(Duration::from_millis(200));
    let dlq = SubscribeOptions {
        start: StartAt::First,
        ..Default::default()
    };
    let mut dead = b.subscribe_with("$dlq.orders.pay", dlq).await.unwrap();
    let mut on_a = join(&a, "orders", opts).await;
    a.publish("orders", "poison").await.unwrap();
    // Delivered twice and never acked (once, then after ack_wait): then dead-lettered.
    let first = next(&mut on_a).await;
    let second = next(&mut on_a).await;
    assert_eq!((first.seq, second.seq, second.delivery_count), (1, 1, 2));
    let d = next(&mut dead).await;
    assert_eq!(&d.payload[..], b"poison");
    assert_eq!(d.headers.get("rtc-dlq-seq").map(String::as_str), Some("1"));
    assert_eq!(
        d.headers.get("rtc-dlq-deliveries").map(String::as_str),
        Some("2")
    );
    // The dead letter reaches its subscriber through the feed, possibly before the
    // consumer's task has acknowledged the original: wait for it, bounded.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let info = b.consumer_info("orders", "pay").await.unwrap();
        if (info.ack_floor, info.dead_lettered) == (1, 1) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{info:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(600), on_a.next())
            .await
            .is_err(),
        "not delivered a third time"
    );
}
