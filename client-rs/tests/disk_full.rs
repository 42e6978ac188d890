//! A full disk, for real: the real `rtc-broker` binary (fsync `always`, its default) on a
//! 24 MiB tmpfs the test mounts, filled with acknowledged publishes until a publish is
//! refused with `STORAGE`. While the disk is full every write is refused and counts hold
//! exactly what was acknowledged. Once the filesystem is grown, writes resume by
//! themselves, without a restart, continuing the seqs; the episode is logged once. After
//! a SIGKILL and a restart everything acknowledged is there once.
//!
//! Twice: with a disk reserve (`store_reserve`), where writes are refused before sled
//! meets the full disk, so replays keep being served during the episode; and with none,
//! where sled fails with ENOSPC and the broker reopens it once there is room.
//!
//! Mounting a tmpfs needs root (the CI machine runs as root). Elsewhere the tests say so
//! and stop; the failure-injection tests (`durable.rs`, the store's `fault_tests`) cover
//! the same logic without a real filesystem.

mod common;

use std::time::Duration;

use common::{replay_all, take, WAIT};
use futures_util::stream::{FuturesUnordered, StreamExt};
use rtc_client::{
    Client, ConnectOptions, ErrorCode, PubAck, PublishMessage, StartAt, SubscribeOptions,
};
use rtc_testkit::{temp_dir, workspace_bin, BrokerProcess, Tmpfs};

const TOPIC: &str = "full.t";
const PAYLOAD: usize = 2048;
/// Far more than 24 MiB holds, so the fill ends at the refusal, not at the bound.
const MAX_PUBLISHES: u64 = 100_000;

fn message(id: &str) -> PublishMessage {
    let mut payload = id.as_bytes().to_vec();
    payload.resize(PAYLOAD, b'.');
    PublishMessage::new(TOPIC, payload).msg_id(id)
}

/// Publishes with 16 in flight until the first refusal; returns the acknowledged IDs in
/// seq order and the refused IDs.
async fn fill(client: &Client) -> (Vec<(String, u64)>, Vec<String>) {
    let mut acked = Vec::new();
    let mut refused = Vec::new();
    let mut in_flight = FuturesUnordered::new();
    let mut i = 0u64;
    loop {
        while refused.is_empty() && in_flight.len() < 16 && i < MAX_PUBLISHES {
            let c = client.clone();
            let id = format!("m{i}");
            i += 1;
            in_flight.push(async move {
                let r = c.publish_message(message(&id)).await;
                (id, r)
            });
        }
        match in_flight.next().await {
            Some((id, Ok(ack))) => acked.push((id, ack.seq)),
            Some((id, Err(e))) => {
                assert_eq!(e.code(), Some(ErrorCode::Storage), "{e}");
                assert!(e.to_string().contains("No space left on device"), "{e}");
                refused.push(id);
            }
            None => break,
        }
    }
    assert!(
        !refused.is_empty(),
        "{MAX_PUBLISHES} publishes fit in 24 MiB"
    );
    acked.sort_by_key(|(_, seq)| *seq);
    (acked, refused)
}

/// `ids` (stored, in seq order from 1) are `want`, then possibly some of the `refused`
/// ones, each once: a write whose flush failed may have reached the disk all the same,
/// as in a crash between a write and its ack, and a retry with its ID is then answered
/// as a duplicate. Returns how many refused ones were kept.
fn kept(ids: &[&str], want: &[String], refused: &[String], what: &str) -> usize {
    assert!(
        ids.len() >= want.len(),
        "{what}: {} stored, {} acknowledged",
        ids.len(),
        want.len()
    );
    assert_ids(&ids[..want.len()], want, what);
    let mut extra: Vec<&str> = ids[want.len()..].to_vec();
    extra.sort_unstable();
    extra.dedup();
    assert_eq!(
        extra.len(),
        ids.len() - want.len(),
        "{what}: a message stored twice"
    );
    assert!(
        extra.iter().all(|id| refused.iter().any(|r| r == id)),
        "{what}: {extra:?}"
    );
    extra.len()
}

/// `got` is `want`; a failure names the first seq that differs (not 7000 IDs).
fn assert_ids(got: &[&str], want: &[String], what: &str) {
    if let Some(i) = (0..got.len().min(want.len())).find(|&i| got[i] != want[i]) {
        panic!(
            "{what}: seq {} holds {} instead of {}",
            i + 1,
            got[i],
            want[i]
        );
    }
    assert_eq!(got.len(), want.len(), "{what}: messages");
}

/// Publishes `msg` until the store is back, as a client retrying with the same `msg_id`.
/// `None` if the broker says the store cannot be reopened without a restart (sled 0.34,
/// after some I/O errors, cannot be closed: see `SledStorage::reopen`).
async fn publish_once_store_is_back(client: &Client, msg: PublishMessage) -> Option<PubAck> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match client.publish_message(msg.clone()).await {
            Err(e) if e.code() == Some(ErrorCode::Storage) => {
                if e.to_string().contains("restart the broker") {
                    return None;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "store not back: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            r => return Some(r.unwrap()),
        }
    }
}

/// How an episode ends.
#[derive(PartialEq)]
enum End {
    /// The filesystem is grown, and the broker takes writes again.
    Room,
    /// The broker is stopped with SIGTERM while the disk is full; it must exit.
    Sigterm,
}

/// One episode on a fresh 24 MiB tmpfs, with the broker's disk reserve set to
/// `reserve` bytes (0: none). Panics on what it finds wrong.
async fn episode(reserve: u64, end: End, name: &str) {
    if !Tmpfs::can_mount() {
        eprintln!(
            "{name}: not run: mounting a tmpfs needs root; durable.rs and the store's fault_tests cover the logic"
        );
        return;
    }
    let fs = Tmpfs::mount(24);
    let data = fs.path().join("data");
    let conf_dir = temp_dir();
    let conf = conf_dir.path().join("rtc.toml");
    std::fs::write(&conf, format!("store_reserve = {reserve}\n")).unwrap();
    let conf = conf.to_str().unwrap().to_string();
    let bin = workspace_bin("rtc-broker");
    let broker = BrokerProcess::start(&bin, &data, &["--config", &conf]);
    let once = ConnectOptions {
        reconnect: None,
        ..Default::default()
    };
    let client = Client::connect_with(&broker.url(), once).await.unwrap();

    let (acked, refused) = fill(&client).await;
    let n = acked.len() as u64;
    let seqs: Vec<u64> = acked.iter().map(|(_, s)| *s).collect();
    assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "acked seqs are 1..=N");
    println!(
        "{name}: {n} acknowledged, {} refused once the disk was full",
        refused.len()
    );
    let want: Vec<String> = acked.iter().map(|(id, _)| id.clone()).collect();

    // While full: counts are exactly what was acknowledged, writes are refused.
    let info = client.topic_info(TOPIC).await.unwrap();
    assert_eq!((info.messages, info.last_seq), (n, n), "{info:?}");
    for msg in [message(&refused[0]), message("new")] {
        let e = client.publish_message(msg).await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::Storage), "still full: {e}");
    }
    // With a reserve, sled never met the full disk, and reads of all of it go on; a
    // subscription replaying from the first message then gets the live ones after.
    let mut live = None;
    if reserve > 0 {
        let (_, stored, replay) = replay_all(&client, TOPIC).await;
        let ids: Vec<&str> = stored.iter().map(|m| m.msg_id.as_str()).collect();
        assert_ids(&ids, &want, "replay during the episode");
        let tail = SubscribeOptions {
            start: StartAt::Seq(n - 9),
            ..Default::default()
        };
        let mut sub = client.subscribe_with(TOPIC, tail).await.unwrap();
        let got: Vec<u64> = take(&mut sub, 10).await.iter().map(|m| m.seq).collect();
        assert_eq!(got, (n - 9..=n).collect::<Vec<_>>());
        live = Some(replay);
    }

    let mut want = want;
    if end == End::Sigterm {
        // A graceful stop flushes, and sled, after its I/O error, may wait for ever in
        // a flush: the broker must not.
        client.close().await;
        broker.signal(rtc_testkit::SIGTERM);
        let (status, log) = broker.wait(Duration::from_secs(30));
        assert!(status.success(), "{status:?}\n{log}");
        fs.resize(64);
        return restarted(&bin, &data, &conf, &want, &refused).await;
    }

    // Room again: writes resume without a restart, continuing the seqs.
    fs.resize(64);
    let resumed = publish_once_store_is_back(&client, message(&refused[0])).await;
    if let Some(retry) = &resumed {
        let after = client.publish_message(message("after")).await.unwrap();
        assert!(!after.duplicate);
        let (info, stored, _) = replay_all(&client, TOPIC).await;
        let ids: Vec<&str> = stored.iter().map(|m| m.msg_id.as_str()).collect();
        assert_eq!(ids.last(), Some(&"after"), "the newest message");
        assert_eq!(
            (info.last_seq, after.seq),
            (ids.len() as u64, ids.len() as u64)
        );
        let extra = kept(&ids[..ids.len() - 1], &want, &refused, "after the episode");
        assert_eq!(ids[retry.seq as usize - 1], refused[0], "the retry's seq");
        if reserve > 0 {
            // sled never failed: nothing refused reached it but the retry.
            assert_eq!((extra, retry.seq, retry.duplicate), (1, n + 1, false));
        }
        if let Some(mut live) = live {
            let total = ids.len() as u64;
            let seqs: Vec<u64> = take(&mut live, (total - n) as usize)
                .await
                .iter()
                .map(|m| m.seq)
                .collect();
            assert_eq!(
                seqs,
                (n + 1..=total).collect::<Vec<_>>(),
                "live delivery resumes"
            );
        }
        want = ids.iter().map(|id| id.to_string()).collect();
    } else {
        // Only where sled itself failed: with a reserve it never does.
        assert_eq!(
            reserve, 0,
            "a store that never failed must not need a restart"
        );
        println!(
            "{name}: sled could not be closed after its I/O error; the broker asks for a restart"
        );
    }
    client.close().await;

    let log = broker.kill_collecting_stderr();
    let lines = |needle: &str| log.lines().filter(|l| l.contains(needle)).count();
    let began = if reserve > 0 {
        "short of its reserve"
    } else {
        "the store failed;"
    };
    assert_eq!(lines(began), 1, "one episode, logged once:\n{log}");
    let (ended, errors) = match resumed {
        Some(_) => ("the store is back", 1),
        None => ("cannot be reopened in this process", 2),
    };
    assert_eq!(lines(ended), 1, "{log}");
    assert_eq!(lines(" ERROR "), errors, "nothing else went wrong:\n{log}");

    // Everything acknowledged survives a SIGKILL, once each.
    restarted(&bin, &data, &conf, &want, &refused).await;
}

/// Restarts the broker on `data`: it holds the messages `want` (by ID, in seq order
/// from 1), then possibly some of the `refused` ones (a write whose fsync failed may
/// have reached the disk all the same, as in a crash before the ack: a retry with the
/// same ID is then a duplicate), each once; and it takes writes.
async fn restarted(
    bin: &std::path::Path,
    data: &std::path::Path,
    conf: &str,
    want: &[String],
    refused: &[String],
) {
    let broker = BrokerProcess::start(bin, data, &["--config", conf]);
    let client = Client::connect(&broker.url()).await.unwrap();
    let (info, stored, _) = replay_all(&client, TOPIC).await;
    let ids: Vec<&str> = stored.iter().map(|m| m.msg_id.as_str()).collect();
    let extra = kept(&ids, want, refused, "after a restart");
    println!(
        "{} acknowledged and {extra} refused messages kept",
        want.len()
    );
    assert_eq!(info.last_seq, ids.len() as u64);
    let ack = client.publish_message(message("restarted")).await.unwrap();
    assert_eq!(
        ack.seq,
        ids.len() as u64 + 1,
        "writes work after the restart"
    );
    client.close().await;
    broker.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_reserve_writes_are_refused_reads_go_on_and_writes_resume_with_room() {
    episode(8 << 20, End::Room, "reserve").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_reserve_a_failed_store_is_reopened_with_room_or_asks_for_a_restart() {
    episode(0, End::Room, "no reserve").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_whose_store_failed_still_stops_on_sigterm() {
    episode(0, End::Sigterm, "sigterm").await;
}
