//! Acknowledged publishes kept in flight, and where they are stored.
//!
//! Inline appends (fsync `never` / `interval`): a lone publish is stored by its session
//! when the storage thread is idle, the rest by the storage thread. The first two tests
//! mix the two paths and check what must not change: each connection's publishes are
//! stored in the order it sent them, every acknowledged message is stored once under its
//! seq, and an `interval` policy still flushes inline appends on time (checked with
//! SIGKILL). The last checks `Client::publish_queued`, which returns once a publish is
//! queued, with a future of its ack.

mod common;

use std::time::Duration;

use common::{start, start_with, take, WAIT};
use futures_util::stream::{FuturesOrdered, StreamExt};
use rtc_broker::FsyncPolicy;
use rtc_client::{Client, PublishMessage, StartAt, SubscribeOptions};
use rtc_testkit::{temp_dir, workspace_bin, BrokerProcess};

/// Publishes `count` messages `tag-0`, `tag-1`, … to `topic` with up to `window` in
/// flight; returns their acknowledged seqs in publish order.
async fn publish_all(
    client: Client,
    topic: &str,
    tag: &str,
    count: usize,
    window: usize,
) -> Vec<u64> {
    let mut seqs = Vec::with_capacity(count);
    let mut in_flight = FuturesOrdered::new();
    let mut sent = 0;
    while seqs.len() < count {
        while sent < count && in_flight.len() < window {
            let (c, t, id) = (client.clone(), topic.to_string(), format!("{tag}-{sent}"));
            in_flight.push_back(async move {
                c.publish_message(PublishMessage::new(&t, id.clone()).msg_id(id))
                    .await
            });
            sent += 1;
        }
        let ack = tokio::time::timeout(Duration::from_secs(30), in_flight.next())
            .await
            .expect("acknowledged in time")
            .expect("one in flight")
            .expect("stored");
        seqs.push(ack.seq);
    }
    seqs
}

/// The first `n` messages stored in `topic`, replayed from its first.
async fn stored(client: &Client, topic: &str, n: usize) -> Vec<rtc_client::Message> {
    let from_first = SubscribeOptions {
        start: StartAt::First,
        ..Default::default()
    };
    let mut sub = client.subscribe_with(topic, from_first).await.unwrap();
    take(&mut sub, n).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lone_and_streamed_publishes_keep_each_connections_order() {
    let broker = start_with(|c| c.fsync = FsyncPolicy::Never).await;
    // One at a time (each is lone: stored inline whenever the thread is idle), and
    // pipelined streams whose reads bring one or many publishes, so a connection's
    // publishes go both ways, often while its earlier ones wait for the thread.
    let shapes = [
        ("one", 300, 1),
        ("two", 300, 2),
        ("eight", 1500, 8),
        ("many", 3000, 64),
    ];
    let mut tasks = Vec::new();
    for (tag, count, window) in shapes {
        let client = Client::connect(&broker.url).await.unwrap();
        tasks.push(tokio::spawn(async move {
            (tag, publish_all(client, "mix.t", tag, count, window).await)
        }));
    }
    let mut acked = std::collections::HashMap::new();
    for task in tasks {
        let (tag, seqs) = task.await.unwrap();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{tag}: stored out of the order it was sent in"
        );
        for (i, seq) in seqs.into_iter().enumerate() {
            acked.insert(format!("{tag}-{i}"), seq);
        }
    }
    let total: usize = shapes.iter().map(|s| s.1).sum();
    assert_eq!(acked.len(), total);

    let client = Client::connect(&broker.url).await.unwrap();
    let stored = stored(&client, "mix.t", total).await;
    for (i, m) in stored.iter().enumerate() {
        assert_eq!(m.seq, i as u64 + 1, "seqs without gaps");
        assert_eq!(
            acked.remove(&m.msg_id),
            Some(m.seq),
            "{} stored twice, or not under its acknowledged seq",
            m.msg_id
        );
    }
    assert!(
        acked.is_empty(),
        "acknowledged, never stored: {:?}",
        acked.keys().take(5).collect::<Vec<_>>()
    );
}

/// With `interval:20`, publishes acknowledged well over the interval before a SIGKILL
/// are on disk. Nobody else writes, so each publish is stored inline, and the flush the
/// storage thread owes for it is the one being checked: without it the store would stay
/// unflushed until the next request reaches the thread. The 300 ms before each kill is
/// the policy's promise under test (15 intervals), not a wait for an event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interval_policy_flushes_inline_appends_in_time() {
    let bin = workspace_bin("rtc-broker");
    let dir = temp_dir();
    let data = dir.path().join("data");
    let config = dir.path().join("rtc.toml");
    std::fs::write(&config, "fsync = \"interval:20\"\n").unwrap();
    let config = config.to_str().unwrap();
    let mut acked = Vec::new();
    for round in 0..3 {
        let broker = BrokerProcess::start(&bin, &data, &["--config", config]);
        let client = Client::connect(&broker.url()).await.unwrap();
        let tag = format!("r{round}");
        let seqs = publish_all(client.clone(), "flush.t", &tag, 5, 1).await;
        acked.extend(
            seqs.into_iter()
                .enumerate()
                .map(|(i, s)| (format!("{tag}-{i}"), s)),
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        broker.kill();

        let broker = BrokerProcess::start(&bin, &data, &["--config", config]);
        let client = Client::connect(&broker.url()).await.unwrap();
        let info = client.topic_info("flush.t").await.unwrap();
        assert_eq!(
            info.messages as usize,
            acked.len(),
            "round {round}: acknowledged messages lost to the kill"
        );
        let stored = stored(&client, "flush.t", acked.len()).await;
        for (m, (id, seq)) in stored.iter().zip(&acked) {
            assert_eq!((&m.msg_id, m.seq), (id, *seq), "round {round}");
        }
        client.close().await;
        broker.kill();
    }
}

/// `publish_queued` keeps many publishes in flight from one task: each is stored in the
/// order queued, answered through its own future, and one whose future is dropped is
/// stored all the same (it is in the outbox from the start).
#[tokio::test]
async fn queued_publishes_are_stored_in_order_and_a_dropped_ack_future_withdraws_nothing() {
    let b = start().await;
    let c = Client::connect(&b.url).await.unwrap();
    let mut acks = Vec::new();
    for i in 0..300u64 {
        let m = PublishMessage::new("queued.t", format!("m{i}"));
        acks.push(c.publish_queued(m).await.unwrap());
    }
    let dropped = c
        .publish_queued(PublishMessage::new("queued.t", "dropped"))
        .await
        .unwrap();
    drop(dropped);
    let mut got = Vec::new();
    for ack in acks {
        got.push(tokio::time::timeout(WAIT, ack).await.unwrap().unwrap().seq);
    }
    assert_eq!(
        got,
        (1..=300).collect::<Vec<_>>(),
        "stored in the order queued"
    );
    let stored = stored(&c, "queued.t", 301).await;
    assert_eq!(stored[300].payload, "dropped".as_bytes());
    assert_eq!(stored[299].payload, "m299".as_bytes());
    assert_eq!(
        c.outbox_len(),
        0,
        "every answer arrived, the dropped one too"
    );
}
