//! Tests of the sled store's failure paths: a write that sled refuses part-way leaves
//! nothing of itself behind, and what was held before it stays held. sled 0.34 cannot
//! be made to fail a write, so these use the store's [`FailPoint`].

use super::tests::{chunks_in_sled, numbered as append, open, seqs_read};
use super::*;
use bytes::Bytes;

/// The seqs `storage` reads back for topic `id`, from the first.
fn seqs(storage: &SledStorage, id: TopicId) -> Vec<u64> {
    seqs_read(storage, id, 1)
}

fn stats(last_seq: u64) -> TopicStats {
    TopicStats {
        first_seq: 1,
        last_seq,
        messages: last_seq,
        bytes: 0,
        last_ts_ms: last_seq as i64,
    }
}

#[test]
fn a_write_whose_seal_fails_is_refused_whole_and_the_held_messages_stay_held() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.write(vec![append(1, 1), append(1, 2)]).unwrap();
    assert_eq!(chunks_in_sled(&s), 0, "held, not in sled yet");

    // A write of another kind seals first; the seal fails.
    s.fail.fail_after(0);
    assert!(s.write(vec![WriteOp::PutStats(1, stats(2))]).is_err());
    assert!(s.flush().is_err(), "a flush seals first too");
    assert_eq!(seqs(&s, 1), [1, 2], "still held and readable");
    assert_eq!(chunks_in_sled(&s), 0);
    assert!(
        s.db().unwrap().get(stats_key(1)).unwrap().is_none(),
        "the stats did not get ahead of their messages"
    );

    s.fail.off();
    s.write(vec![WriteOp::PutStats(1, stats(2))]).unwrap();
    s.flush().unwrap();
    assert_eq!(chunks_in_sled(&s), 1, "sealed as one chunk");
    drop(s);
    let s = open(dir.path());
    assert_eq!(seqs(&s, 1), [1, 2], "stored once, after a restart too");
}

#[test]
fn a_write_through_that_fails_part_way_takes_back_the_chunks_it_inserted() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    // More than a chunk takes: written through, as two chunks, not held.
    let run = || (1..=200).map(|seq| append(3, seq)).collect::<Vec<_>>();
    s.fail.fail_after(1);
    assert!(s.write(run()).is_err(), "the second chunk's insert fails");
    assert_eq!(chunks_in_sled(&s), 0, "the first chunk was taken back");
    assert!(seqs(&s, 3).is_empty());

    // The writer reuses the seqs of a failed write: they are stored once.
    s.fail.off();
    s.write(run()).unwrap();
    assert_eq!(seqs(&s, 3), (1..=200).collect::<Vec<_>>());
    assert_eq!(chunks_in_sled(&s), 2);
}

#[test]
fn an_all_or_nothing_write_that_fails_applies_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.write((1..=3).map(|seq| append(5, seq)).collect())
        .unwrap();
    s.flush().unwrap();
    // A removal is written as one sled batch with what comes with it.
    s.fail.fail_after(0);
    let removal = || {
        vec![
            WriteOp::RemoveRange {
                id: 5,
                from: 1,
                to: 3,
            },
            WriteOp::PutStats(5, stats(3)),
        ]
    };
    assert!(s.write(removal()).is_err());
    assert_eq!(seqs(&s, 5), [1, 2, 3], "nothing removed");
    assert!(s.db().unwrap().get(stats_key(5)).unwrap().is_none());

    s.fail.off();
    s.write(removal()).unwrap();
    assert_eq!(seqs(&s, 5), [3]);
}

/// The local engine on `s`, with fsync `always` and a disk reserve of `reserve` bytes.
fn engine_always(s: &SledStorage, reserve: u64) -> crate::store::LocalEngine<()> {
    crate::store::LocalEngine::open(
        Arc::new(s.clone()),
        Arc::new(super::tests::NoSink),
        crate::topic::TopicRules::default(),
        crate::store::WriterConfig {
            fsync: crate::config::FsyncPolicy::Always,
            max_topics: 100,
            store_reserve: reserve,
            observer: None,
        },
    )
    .unwrap()
}

/// A store that fails the way sled does after an I/O error — every write refused until
/// it is reopened — makes the writer refuse writes (a refused message is neither read
/// nor counted), then reopen it within a bounded time and take writes again with the next
/// seq: no gap, nothing stored twice.
#[tokio::test]
async fn a_failed_store_is_reopened_and_takes_writes_again_with_no_gap() {
    use crate::engine::Log;
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let log = engine_always(&s, 0);
    let put = |payload: &'static [u8]| {
        log.append_internal("f.x".into(), Bytes::from_static(payload), Default::default())
    };
    let read = || async { log.read("f.x", 1, 100, usize::MAX).await.unwrap() };
    assert_eq!(put(b"1").await.unwrap(), 1);

    s.fail.fail_until_reopen();
    let e = put(b"refused").await.unwrap_err();
    assert_eq!(e.code(), rtc_proto::ErrorCode::Storage, "{e}");
    assert_eq!(log.topic("f.x").unwrap().stats.messages, 1, "not counted");
    assert_eq!(read().await.len(), 1, "not read");

    let deadline = Instant::now() + Duration::from_secs(10);
    let seq = loop {
        match put(b"2").await {
            Ok(seq) => break seq,
            Err(e) => {
                assert_eq!(e.code(), rtc_proto::ErrorCode::Storage, "{e}");
                assert!(Instant::now() < deadline, "the store never came back: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert_eq!(seq, 2, "the refused message left no gap");
    let got: Vec<Bytes> = read()
        .await
        .into_iter()
        .map(|e| {
            rtc_proto::v1::Message::decode(e.message)
                .unwrap()
                .payload
        })
        .collect();
    assert_eq!(got, [&b"1"[..], b"2"]);
    log.shutdown().await;
    drop(log);
    drop(s);
    let s = open(dir.path());
    let id = s.load_topics().unwrap()[0].id;
    assert_eq!(seqs(&s, id), [1, 2], "as stored, after a restart too");
}

/// Below the disk reserve, writes are refused before they reach the store (sled never
/// sees a full disk), reads go on, and writes are taken again once there is room, with
/// no reopen and no gap in seqs.
#[tokio::test]
async fn below_the_disk_reserve_writes_are_refused_untouched_and_resume_with_room() {
    use crate::engine::Log;
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let log = engine_always(&s, 1 << 20);
    let put = |payload: &'static [u8]| {
        log.append_internal("r.x".into(), Bytes::from_static(payload), Default::default())
    };
    assert_eq!(put(b"1").await.unwrap(), 1);

    // Short of the reserve: refused once the check is due (every 100 ms at most).
    s.fail.free.store(1000, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = 1;
    let e = loop {
        match put(b"maybe").await {
            Ok(seq) => {
                assert!(Instant::now() < deadline, "the reserve is never checked");
                last = seq;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => break e,
        }
    };
    assert_eq!(e.code(), rtc_proto::ErrorCode::Storage, "{e}");
    assert!(e.to_string().contains("store_reserve"), "{e}");
    // Refused without touching the store: a write that reached it would fail with
    // "injected" and start an episode of another kind.
    s.fail.fail_after(0);
    let e = put(b"refused").await.unwrap_err();
    assert!(e.to_string().contains("store_reserve"), "{e}");
    assert_eq!(log.topic("r.x").unwrap().stats.messages, last);
    assert_eq!(log.read("r.x", 1, 100, usize::MAX).await.unwrap().len() as u64, last);

    s.fail.off();
    s.fail.free.store(u64::MAX, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    let seq = loop {
        match put(b"2").await {
            Ok(seq) => break seq,
            Err(e) => {
                assert!(e.to_string().contains("store_reserve"), "{e}");
                assert!(Instant::now() < deadline, "writes never resumed: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert_eq!(seq, last + 1, "no gap");
    assert_eq!(s.fail.reopens.load(Ordering::SeqCst), 0, "never failed, never reopened");
    log.shutdown().await;
}
