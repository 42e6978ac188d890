//! Crash consistency under load: the real `rtc-broker` binary (fsync `always`), two
//! publishers with 32 acknowledged publishes in flight each and a durable consumer with
//! confirmed acks, all reconnecting on their own, while the broker is SIGKILLed at random
//! moments and restarted on the same port, five times. Checked after each restart and at
//! the end:
//! - every acknowledged publish is stored exactly once, under the seq it was acknowledged
//!   with, and each publisher's messages are stored in the order it published them;
//! - sequence numbers run 1..=N without gaps or repeats;
//! - the consumer's ack floor never goes backwards and never falls below what its
//!   confirmed acks settled;
//! - a retried publish after a crash is recognised as a duplicate.
//!
//! The kill moments come from a seed printed at the start (set RTC_CRASH_SEED to replay).

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::replay_all;
use futures_util::stream::{FuturesUnordered, StreamExt};
use rtc_client::{
    Client, ConnectOptions, ConsumerOptions, PublishMessage, ReconnectPolicy, SubscribeOptions,
};
use rtc_testkit::{temp_dir, workspace_bin, BrokerProcess};

const TOPIC: &str = "cc.t";
const KILLS: usize = 5;

fn options() -> ConnectOptions {
    ConnectOptions {
        reconnect: Some(ReconnectPolicy {
            initial_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
            max_attempts: None,
        }),
        request_timeout: Duration::from_secs(60),
        ..Default::default()
    }
}

/// (publisher, index) -> acknowledged seq.
type Acks = Arc<Mutex<BTreeMap<(u32, u64), u64>>>;

async fn publisher(client: Client, p: u32, acks: Acks, stop: Arc<AtomicBool>) {
    let mut in_flight = FuturesUnordered::new();
    let mut i = 0u64;
    loop {
        while !stop.load(Ordering::SeqCst) && in_flight.len() < 32 {
            let c = client.clone();
            let id = format!("p{p}-{i}");
            let n = i;
            i += 1;
            in_flight.push(async move {
                let r = c
                    .publish_message(PublishMessage::new(TOPIC, id.clone()).msg_id(id))
                    .await;
                (n, r)
            });
        }
        match in_flight.next().await {
            Some((n, Ok(ack))) => {
                acks.lock().unwrap().insert((p, n), ack.seq);
            }
            Some((n, Err(e))) => panic!("publish p{p}-{n} failed for good: {e}"),
            None => return,
        }
    }
}

/// Acks every delivery without waiting, and every 50th with a confirmation: when that
/// is confirmed, every earlier ack on the connection is stored too (the broker applies a
/// connection's requests in order and stores the consumer's whole state).
async fn consumer(client: Client, confirmed: Arc<Mutex<BTreeSet<u64>>>, stop: Arc<AtomicBool>) {
    let options = SubscribeOptions {
        // A small window: after each restart the consumer first works through what was
        // buffered from the old connection, and that should not outlast the next kill.
        consumer: Some(
            ConsumerOptions::new("cc")
                .ack_wait(Duration::from_secs(2))
                .max_in_flight(100),
        ),
        ..Default::default()
    };
    let mut sub = client.subscribe_with(TOPIC, options).await.unwrap();
    let mut unconfirmed = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await else {
            continue;
        };
        unconfirmed.push(m.seq);
        if unconfirmed.len() < 50 {
            if sub.ack_nowait(&m).await.is_err() {
                unconfirmed.clear();
            }
            continue;
        }
        // An ack lost with the connection just means a redelivery later.
        if sub.ack(&m).await.is_ok() {
            confirmed
                .lock()
                .unwrap()
                .extend(unconfirmed.iter().copied());
        }
        unconfirmed.clear();
    }
}

fn contiguous_floor(set: &BTreeSet<u64>) -> u64 {
    let mut floor = 0;
    for &s in set {
        if s != floor + 1 {
            break;
        }
        floor = s;
    }
    floor
}

fn log_args() -> Vec<&'static str> {
    if std::env::var("RTC_CRASH_DEBUG").is_ok() {
        vec!["--log", "rtc_broker=debug"]
    } else {
        vec![]
    }
}

/// A tiny deterministic generator for the kill moments.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_sigkills_under_load_lose_nothing_acknowledged_and_store_nothing_twice() {
    let seed = std::env::var("RTC_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("crash consistency seed: {seed} (RTC_CRASH_SEED={seed} replays it)");
    let mut rng = XorShift(seed);
    let bin = workspace_bin("rtc-broker");
    let dir = temp_dir();
    let data = dir.path().join("data");
    let mut broker = BrokerProcess::start(&bin, &data, &log_args());
    let addr = broker.addr.to_string();
    let url = broker.url();

    let acks: Acks = Arc::default();
    let confirmed: Arc<Mutex<BTreeSet<u64>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for p in 0..2 {
        let c = Client::connect_with(&url, options()).await.unwrap();
        tasks.push(tokio::spawn(publisher(c, p, acks.clone(), stop.clone())));
    }
    let worker = Client::connect_with(&url, options()).await.unwrap();
    let consuming = tokio::spawn(consumer(worker, confirmed.clone(), stop.clone()));

    let mut last_floor = 0u64;
    for round in 0..KILLS {
        let wait = 300 + rng.next() % 600;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let log = broker.kill_collecting_stderr();
        if std::env::var("RTC_CRASH_DEBUG").is_ok() {
            eprintln!("---- broker log, round {round}\n{log}");
        }
        let floor_at_kill = contiguous_floor(&confirmed.lock().unwrap());
        let acked_at_kill = acks.lock().unwrap().clone();
        broker = BrokerProcess::start_on(&bin, &data, &addr, &log_args());

        let check = Client::connect(&url).await.unwrap();
        if let Ok(info) = check.consumer_info(TOPIC, "cc").await {
            assert!(
                info.ack_floor >= last_floor,
                "round {round}: ack floor went back from {last_floor} to {}",
                info.ack_floor
            );
            assert!(
                info.ack_floor >= floor_at_kill,
                "round {round}: confirmed acks settled {floor_at_kill}, the floor is {}",
                info.ack_floor
            );
            last_floor = info.ack_floor;
        }
        // Retrying acknowledged publishes after the crash: recognised, same seq.
        for ((p, i), seq) in acked_at_kill.iter().rev().take(3) {
            let id = format!("p{p}-{i}");
            let ack = check
                .publish_message(PublishMessage::new(TOPIC, id.clone()).msg_id(id))
                .await
                .unwrap();
            assert_eq!(
                (ack.seq, ack.duplicate),
                (*seq, true),
                "round {round}: retry of p{p}-{i}"
            );
        }
        println!(
            "round {round}: killed after {wait} ms; {} acknowledged so far, consumer floor {last_floor}",
            acked_at_kill.len()
        );
        check.close().await;
    }

    // Let the publishers finish what they have in flight, then check everything.
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("publishers drain")
            .unwrap();
    }
    tokio::time::timeout(Duration::from_secs(30), consuming)
        .await
        .expect("consumer stops")
        .unwrap();
    let acks = acks.lock().unwrap().clone();
    let check = Client::connect(&url).await.unwrap();
    let (info, stored, _) = replay_all(&check, TOPIC).await;
    assert_eq!(
        info.last_seq, info.messages,
        "no gaps: last seq equals the count"
    );
    let mut by_id: HashMap<String, u64> = HashMap::new();
    let mut last_index: HashMap<u32, u64> = HashMap::new();
    for (k, m) in stored.iter().enumerate() {
        assert_eq!(m.seq, k as u64 + 1, "seqs run 1..=N");
        assert!(
            by_id.insert(m.msg_id.clone(), m.seq).is_none(),
            "{} stored twice",
            m.msg_id
        );
        if let Some((p, i)) = m.msg_id.strip_prefix('p').and_then(|r| r.split_once('-')) {
            let (p, i): (u32, u64) = (p.parse().unwrap(), i.parse().unwrap());
            if let Some(prev) = last_index.insert(p, i) {
                assert!(i > prev, "publisher {p}: message {i} stored after {prev}");
            }
        }
    }
    for ((p, i), seq) in &acks {
        assert_eq!(
            by_id.get(&format!("p{p}-{i}")),
            Some(seq),
            "acknowledged p{p}-{i} lost or moved"
        );
    }
    println!(
        "consumer: {:?}; confirmed acks {}",
        check.consumer_info(TOPIC, "cc").await,
        confirmed.lock().unwrap().len()
    );
    println!(
        "{KILLS} kills: {} publishes acknowledged, {} stored exactly once, consumer floor {last_floor}",
        acks.len(),
        stored.len()
    );
    broker.kill();
}
