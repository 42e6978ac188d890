//! Kill the real `rtc-broker` binary with SIGKILL while acknowledged publishes are in
//! flight, restart it on the same data dir, and check that every acknowledged message is
//! there exactly once, in order, under the seq it was acknowledged with. Three rounds.
//! Under fsync `interval:MS`, which may lose the last MS ms, what is left must still be a
//! prefix of what was acknowledged, with consumer state never ahead of it.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{next, replay_all, take};
use futures_util::stream::{FuturesUnordered, StreamExt};
use rtc_client::{
    Client, ConnectOptions, ConsumerOptions, PublishMessage, SubscribeOptions, Subscription,
};
use rtc_testkit::{temp_dir, workspace_bin, BrokerProcess};

type Acked = Arc<Mutex<HashMap<String, u64>>>;

/// Publishes to `topic` forever with up to `window` in flight, recording each
/// acknowledgement as it arrives. Ends when the connection fails.
async fn publish_forever(
    client: Client,
    topic: &'static str,
    window: usize,
    round: usize,
    acked: Acked,
) {
    let mut in_flight = FuturesUnordered::new();
    let mut i = 0u64;
    loop {
        while in_flight.len() < window {
            let c = client.clone();
            let id = format!("r{round}-{i}");
            i += 1;
            in_flight.push(async move {
                let r = c
                    .publish_message(PublishMessage::new(topic, id.clone()).msg_id(id.clone()))
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

/// Checks what a restarted broker stores of `topic`: seqs 1..N without gaps, payloads
/// equal to their message IDs, none stored twice. Returns the topic's info and the
/// stored message IDs with their seqs.
async fn stored_after_restart(
    client: &Client,
    topic: &str,
    round: usize,
) -> (rtc_client::TopicInfo, HashMap<String, u64>, Subscription) {
    let (info, stored, replay) = replay_all(client, topic).await;
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
    (info, ids, replay)
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
        let publisher = tokio::spawn(publish_forever(
            client.clone(),
            "crash.t",
            16,
            round,
            acked.clone(),
        ));
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
        let (info, ids, mut sub) = stored_after_restart(&client, "crash.t", round).await;
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
            ids.len()
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

/// Under fsync `interval:50` a crash may lose the last 50 ms of acknowledged messages,
/// and the broker holds each topic's newest messages in memory before they reach the
/// storage engine. A SIGKILL under load, with a durable consumer acknowledging, must
/// still leave:
/// - a prefix of what was acknowledged: seqs 1..=k without gaps, each message under the
///   seq it was acknowledged with, none twice, and everything kept by an earlier round;
/// - consumer state no further than the stored messages, so that the seqs handed out
///   again after the crash are delivered, not skipped;
/// - a broker that starts and continues the sequence. Two rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_under_fsync_interval_keeps_a_prefix_with_consumers_behind_it() {
    const TOPIC: &str = "crash.i";
    let bin = workspace_bin("rtc-broker");
    let dir = temp_dir();
    let data = dir.path().join("data");
    let config = dir.path().join("rtc.toml");
    std::fs::write(&config, "fsync = \"interval:50\"\n").unwrap();
    let args = ["--config", config.to_str().unwrap()];
    let once = ConnectOptions {
        reconnect: None,
        ..Default::default()
    };
    let consumer_options = SubscribeOptions {
        consumer: Some(ConsumerOptions::new("c")),
        ..Default::default()
    };
    // What the store held after the last restart.
    let mut kept: HashMap<String, u64> = HashMap::new();
    for round in 0..2usize {
        let broker = BrokerProcess::start(&bin, &data, &args);
        let client = Client::connect_with(&broker.url(), once.clone())
            .await
            .unwrap();
        let acked: Acked = Arc::default();
        let started = std::time::Instant::now();
        let publisher = tokio::spawn(publish_forever(
            client.clone(),
            TOPIC,
            16,
            round,
            acked.clone(),
        ));
        let reader = Client::connect_with(&broker.url(), once.clone())
            .await
            .unwrap();
        let mut sub = reader
            .subscribe_with(TOPIC, consumer_options.clone())
            .await
            .unwrap();
        let consumer = tokio::spawn(async move {
            let mut acked = 0u64;
            while let Some(m) = sub.next().await {
                if sub.ack(&m).await.is_err() {
                    break;
                }
                acked += 1;
            }
            acked
        });
        // At least four flush intervals too: a kill before the first flush may keep
        // nothing at all, not even the topic (1000 publishes took under 50 ms once).
        let progressed = async {
            while acked.lock().unwrap().len() < 1000
                || started.elapsed() < Duration::from_millis(200)
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(60), progressed)
            .await
            .expect("publishing progresses");
        let publishing = started.elapsed();
        broker.kill();
        tokio::time::timeout(Duration::from_secs(30), publisher)
            .await
            .expect("publisher notices the broker is gone")
            .unwrap();
        let consumed = tokio::time::timeout(Duration::from_secs(30), consumer)
            .await
            .expect("consumer notices the broker is gone")
            .unwrap();
        let acked = acked.lock().unwrap().clone();

        let broker = BrokerProcess::start(&bin, &data, &args);
        let client = Client::connect(&broker.url()).await.unwrap();
        let (info, ids, _) = stored_after_restart(&client, TOPIC, round).await;
        assert_eq!(
            info.last_seq, info.messages,
            "round {round}: stats match the log"
        );
        for (id, seq) in &ids {
            if let Some(acked_seq) = acked.get(id) {
                assert_eq!(acked_seq, seq, "round {round}: {id} moved");
            }
        }
        for (id, seq) in acked.iter().chain(&kept) {
            if *seq <= info.last_seq {
                assert_eq!(
                    ids.get(id),
                    Some(seq),
                    "round {round}: {id} lost below the last kept seq"
                );
            }
        }
        let c = client.consumer_info(TOPIC, "c").await.unwrap();
        assert!(
            c.ack_floor <= info.last_seq && c.next_seq <= info.last_seq + 1,
            "round {round}: consumer at floor {} / next {} is ahead of the log's {}",
            c.ack_floor,
            c.next_seq,
            info.last_seq
        );
        let lost = acked.values().filter(|seq| **seq > info.last_seq).count();
        println!(
            "round {round}: {} acknowledged in {publishing:?}, {lost} of them lost (about {:.0} ms of publishing); {consumed} consumed, consumer floor {}",
            acked.len(),
            lost as f64 * publishing.as_secs_f64() * 1000.0 / acked.len() as f64,
            c.ack_floor
        );
        // The sequence continues where the log ends, and the consumer gets it.
        let fresh_id = format!("fresh-{round}");
        let fresh = client
            .publish_message(PublishMessage::new(TOPIC, fresh_id.clone()).msg_id(fresh_id.clone()))
            .await
            .unwrap();
        assert_eq!(fresh.seq, info.last_seq + 1);
        let mut sub = client
            .subscribe_with(TOPIC, consumer_options.clone())
            .await
            .unwrap();
        let mut seen_fresh = false;
        for _ in 0..=info.last_seq + 1 - c.ack_floor {
            let m = next(&mut sub).await;
            sub.ack(&m).await.unwrap();
            if m.seq == fresh.seq {
                seen_fresh = true;
                break;
            }
        }
        assert!(
            seen_fresh,
            "round {round}: the consumer skipped seq {}",
            fresh.seq
        );
        kept = ids;
        kept.insert(fresh_id, fresh.seq);
        client.close().await;
        broker.kill();
    }
}
