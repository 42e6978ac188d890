//! Kill the real `rtc-broker` binary with SIGKILL while acknowledged publishes are in
//! flight, restart it on the same data dir, and check that every acknowledged message is
//! there exactly once, in order, under the seq it was acknowledged with. Three rounds.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{next, take};
use futures_util::stream::{FuturesUnordered, StreamExt};
use rtc_client::{Client, PublishMessage, StartAt, SubscribeOptions};
use rtc_testkit::{temp_dir, workspace_bin, BrokerProcess};

type Acked = Arc<Mutex<HashMap<String, u64>>>;

/// Publishes forever with up to `window` in flight, recording each acknowledgement as
/// it arrives. Ends when the connection fails.
async fn publish_forever(client: Client, window: usize, round: usize, acked: Acked) {
    let mut in_flight = FuturesUnordered::new();
    let mut i = 0u64;
    loop {
        while in_flight.len() < window {
            let c = client.clone();
            let id = format!("r{round}-{i}");
            i += 1;
            in_flight.push(async move {
                let r = c
                    .publish_message(PublishMessage::new("crash.t", id.clone()).msg_id(id.clone()))
                    .await;
                (id, r)
            });
        }
        match in_flight.next().await {
            Some((id, Ok(ack))) => {
                acked.lock().unwrap().insert(id, ack.seq);
            }
            Some((_, Err(_))) | None => return,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_publishes_survive_sigkill() {
    let bin = workspace_bin("rtc-broker");
    let dir = temp_dir();
    let data = dir.path().join("data");
    let acked: Acked = Arc::default();
    for round in 0..3usize {
        let broker = BrokerProcess::start(&bin, &data, &[]);
        // This client must stop at the kill (no reconnect), so that what it counts as
        // acknowledged is exactly what the broker acknowledged before dying.
        let once = rtc_client::ConnectOptions {
            reconnect: None,
            ..Default::default()
        };
        let client = Client::connect_with(&broker.url(), once).await.unwrap();
        let before = acked.lock().unwrap().len();
        let publisher = tokio::spawn(publish_forever(client.clone(), 16, round, acked.clone()));
        // Kill once this round has had 300 publishes acknowledged, with more in flight.
        let progressed = async {
            while acked.lock().unwrap().len() < before + 300 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(60), progressed)
            .await
            .expect("publishing progresses");
        broker.kill();
        tokio::time::timeout(Duration::from_secs(30), publisher)
            .await
            .expect("publisher notices the broker is gone")
            .unwrap();
        let acked_now = acked.lock().unwrap().clone();

        let broker = BrokerProcess::start(&bin, &data, &[]);
        let client = Client::connect(&broker.url()).await.unwrap();
        let info = client.topic_info("crash.t").await.unwrap();
        let mut sub = client
            .subscribe_with(
                "crash.t",
                SubscribeOptions {
                    start: StartAt::First,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let stored = take(&mut sub, info.messages as usize).await;
        let mut ids = HashMap::new();
        for (i, m) in stored.iter().enumerate() {
            assert_eq!(
                m.seq,
                i as u64 + 1,
                "round {round}: seqs are 1.. without gaps"
            );
            assert_eq!(m.payload, m.msg_id.as_bytes(), "payload intact");
            assert!(
                ids.insert(m.msg_id.clone(), m.seq).is_none(),
                "{} stored twice",
                m.msg_id
            );
        }
        assert_eq!(
            info.last_seq, info.messages,
            "nothing beyond the last stored seq"
        );
        for (id, seq) in &acked_now {
            assert_eq!(
                ids.get(id),
                Some(seq),
                "round {round}: acknowledged {id} lost or moved"
            );
        }
        println!(
            "round {round}: {} acknowledged in all, {} stored (unacknowledged in-flight ones may be stored too)",
            acked_now.len(),
            stored.len()
        );
        // A retry of an acknowledged message is recognised as a duplicate.
        let (id, seq) = acked_now
            .iter()
            .max_by_key(|(_, s)| **s)
            .map(|(k, v)| (k.clone(), *v))
            .unwrap();
        let ack = client
            .publish_message(PublishMessage::new("crash.t", id.clone()).msg_id(id))
            .await
            .unwrap();
        assert_eq!((ack.seq, ack.duplicate), (seq, true));
        // New publishes continue the sequence and reach the replaying subscriber.
        let after = format!("after-{round}");
        let fresh = client
            .publish_message(PublishMessage::new("crash.t", after.clone()).msg_id(after))
            .await
            .unwrap();
        assert_eq!(fresh.seq, info.last_seq + 1);
        let m = next(&mut sub).await;
        assert_eq!(m.seq, fresh.seq);
        acked.lock().unwrap().extend(ids);
        acked.lock().unwrap().insert(m.msg_id, m.seq);
        client.close().await;
        broker.kill();
    }
}

/// A durable consumer's confirmed acks survive SIGKILL; unacknowledged messages come
/// back after the restart with their delivery count raised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_state_survives_sigkill() {
    let bin = workspace_bin("rtc-broker");
    let dir = temp_dir();
    let data = dir.path().join("data");
    let broker = BrokerProcess::start(&bin, &data, &[]);
    let client = Client::connect(&broker.url()).await.unwrap();
    for i in 1..=10 {
        client.publish("cs.t", format!("{i}")).await.unwrap();
    }
    let opts = SubscribeOptions {
        consumer: Some(rtc_client::ConsumerOptions::new("c")),
        ..Default::default()
    };
    let mut sub = client.subscribe_with("cs.t", opts.clone()).await.unwrap();
    let got = take(&mut sub, 10).await;
    for m in &got[..6] {
        sub.ack(m).await.unwrap();
    }
    broker.kill();

    let broker = BrokerProcess::start(&bin, &data, &[]);
    let client = Client::connect(&broker.url()).await.unwrap();
    let info = client.consumer_info("cs.t", "c").await.unwrap();
    assert_eq!((info.ack_floor, info.pending, info.next_seq), (6, 4, 11));
    let mut sub = client.subscribe_with("cs.t", opts).await.unwrap();
    let again: Vec<(u64, u32)> = take(&mut sub, 4)
        .await
        .iter()
        .map(|m| (m.seq, m.delivery_count))
        .collect();
    assert_eq!(again, vec![(7, 2), (8, 2), (9, 2), (10, 2)]);
    broker.kill();
}
