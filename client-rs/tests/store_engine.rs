//! The two store engines side by side: a data directory keeps the engine it was made
//! with whatever `store_engine` says (it only chooses for a new one), each serves the
//! same log across restarts, and a sled data directory converted into a segment one
//! keeps its log, retention, dedup and consumers.

mod common;

use std::time::Duration;

use common::{start_in, start_with, take, WAIT};
use rtc_broker::config::StoreEngine;
use rtc_client::{ConsumerOptions, PublishMessage, StartAt, SubscribeOptions, TopicConfig};

/// Publishes, restarts with the other engine named in the config, and checks that the
/// log is served from the engine the directory was made with.
async fn a_data_dir_keeps_its_engine(made_with: StoreEngine, then: StoreEngine) {
    let b = start_with(|c| c.store_engine = made_with).await;
    let c = b.connect().await;
    for i in 1..=5u64 {
        let m = PublishMessage::new("e.x", format!("m{i}")).msg_id(format!("id-{i}"));
        assert_eq!(c.publish_message(m).await.unwrap().seq, i);
    }
    drop(c);
    let dir = b.stop().await;
    let has_log = dir.path().join("log").exists();
    assert_eq!(has_log, made_with == StoreEngine::Segments);

    let b = start_in(dir, |c| c.store_engine = then).await;
    assert_eq!(
        b.dir.path().join("log").exists(),
        has_log,
        "no second store made"
    );
    let c = b.connect().await;
    let mut sub = c
        .subscribe_with(
            "e.x",
            SubscribeOptions {
                start: StartAt::First,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let got = take(&mut sub, 5).await;
    assert_eq!(
        got.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    // The dedup window was read back from that log, and seqs go on after it.
    let again = PublishMessage::new("e.x", "m5").msg_id("id-5");
    let ack = c.publish_message(again).await.unwrap();
    assert_eq!((ack.seq, ack.duplicate), (5, true));
    assert_eq!(c.publish("e.x", "m6").await.unwrap().seq, 6);
    assert_eq!(c.topic_info("e.x").await.unwrap().messages, 6);
}

#[tokio::test]
async fn a_sled_data_dir_stays_sled_under_the_segments_default() {
    a_data_dir_keeps_its_engine(StoreEngine::Sled, StoreEngine::Segments).await;
}

#[tokio::test]
async fn a_segments_data_dir_stays_segments_when_the_config_says_sled() {
    a_data_dir_keeps_its_engine(StoreEngine::Segments, StoreEngine::Sled).await;
}

/// `rtc-broker convert-store`'s work: a sled data dir copied into a new segment one
/// keeps its topics (settings, epoch), messages (after retention), stats, dedup and
/// consumers.
#[tokio::test]
async fn a_sled_data_dir_converted_to_segments_serves_the_same_log() {
    let b = start_with(|c| c.store_engine = StoreEngine::Sled).await;
    let c = b.connect().await;
    let kept = TopicConfig {
        max_msgs: Some(20),
        ..Default::default()
    };
    c.create_topic("k.x", &kept).await.unwrap();
    for i in 1..=30u64 {
        let m = PublishMessage::new("k.x", format!("m{i}")).msg_id(format!("id-{i}"));
        assert_eq!(c.publish_message(m).await.unwrap().seq, i);
    }
    // Retention runs every second: wait for it to cut the log to 20.
    let deadline = tokio::time::Instant::now() + WAIT;
    while c.topic_info("k.x").await.unwrap().first_seq != 11 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention did not run"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let consumer = SubscribeOptions {
        consumer: Some(ConsumerOptions::new("w")),
        ..Default::default()
    };
    let mut work = c.subscribe_with("k.x", consumer.clone()).await.unwrap();
    for m in take(&mut work, 3).await {
        work.ack(&m).await.unwrap();
    }
    let before = c.topic_info("k.x").await.unwrap();
    drop(work);
    drop(c);
    let dir = b.stop().await;

    let to = tempfile::tempdir().unwrap();
    let done = rtc_broker::server::convert_store(dir.path(), to.path()).unwrap();
    assert_eq!((done.messages, done.consumers), (20, 1));
    // Neither a second time into the same place, nor from a converted one.
    let err = rtc_broker::server::convert_store(dir.path(), to.path()).unwrap_err();
    assert!(err.contains("not empty"), "{err}");
    let again = tempfile::tempdir().unwrap();
    let err = rtc_broker::server::convert_store(to.path(), again.path()).unwrap_err();
    assert!(
        err.contains("already keeps its messages in segment files"),
        "{err}"
    );

    let b = start_in(to, |_| {}).await;
    assert!(b.dir.path().join("log").exists());
    let c = b.connect().await;
    let after = c.topic_info("k.x").await.unwrap();
    assert_eq!(after, before, "settings, epoch and counts");
    let mut sub = c
        .subscribe_with(
            "k.x",
            SubscribeOptions {
                start: StartAt::First,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let got = take(&mut sub, 20).await;
    assert_eq!(
        got.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (11..=30).collect::<Vec<_>>()
    );
    assert_eq!(got[0].payload, bytes::Bytes::from("m11"));
    let again = PublishMessage::new("k.x", "m30").msg_id("id-30");
    let ack = c.publish_message(again).await.unwrap();
    assert_eq!((ack.seq, ack.duplicate), (30, true));
    assert_eq!(c.publish("k.x", "m31").await.unwrap().seq, 31);
    // The consumer goes on after what it acknowledged.
    let mut work = c.subscribe_with("k.x", consumer).await.unwrap();
    assert_eq!(take(&mut work, 1).await[0].seq, 14);
}
