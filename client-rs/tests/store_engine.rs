//! The two store engines side by side: a data directory keeps the engine it was made
//! with whatever `store_engine` says (it only chooses for a new one), and each serves
//! the same log across restarts: replays, dedup, retention and consumers.

mod common;

use common::{start_in, start_with, take};
use rtc_broker::config::StoreEngine;
use rtc_client::{PublishMessage, StartAt, SubscribeOptions};

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
