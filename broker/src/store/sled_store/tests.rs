//! Tests of the sled store: layout, chunks, recovery and refusals.

use super::*;
use bytes::Bytes;
use crate::store::chunk;

pub(super) fn open(dir: &Path) -> SledStorage {
    SledStorage::open(dir, BackgroundFlush::Off).unwrap()
}

fn append(id: TopicId, seq: u64, ts_ms: i64, body: &'static [u8]) -> WriteOp {
    WriteOp::Append {
        id,
        seq,
        ts_ms,
        message: Bytes::from_static(body),
    }
}

/// A commit sink that drops what it is told: these tests read the store itself.
#[derive(Debug)]
pub(super) struct NoSink;

impl crate::engine::CommitSink<()> for NoSink {
    fn committed(&self, _pass: Vec<crate::engine::Committed<()>>) {}
}

/// The local engine (the storage thread) on `storage`, with fsync `never`.
fn start_writer(storage: SledStorage) -> crate::store::LocalEngine<()> {
    crate::store::LocalEngine::open(
        std::sync::Arc::new(storage),
        std::sync::Arc::new(NoSink),
        crate::topic::TopicRules::default(),
        crate::store::WriterConfig {
            fsync: crate::config::FsyncPolicy::Never,
            max_topics: 100,
            store_reserve: 0,
            observer: None,
        },
    )
    .unwrap()
}

#[test]
fn write_read_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let settings = rtc_proto::v1::TopicSettings {
        storage: rtc_proto::v1::StorageClass::Durable as i32,
        ..Default::default()
    };
    let stats = TopicStats {
        first_seq: 1,
        last_seq: 3,
        messages: 3,
        bytes: 3,
        last_ts_ms: 30,
    };
    {
        let s = open(dir.path());
        s.write(vec![
            WriteOp::PutTopic {
                name: "a.b".into(),
                id: 7,
                settings,
                explicit: true,
            },
            WriteOp::PutNextTopicId(8),
            append(7, 1, 10, b"x"),
            append(7, 2, 20, b"y"),
            append(7, 3, 30, b"z"),
            append(8, 1, 5, b"other topic"),
            WriteOp::PutStats(7, stats),
        ])
        .unwrap();
        s.flush().unwrap();
    }
    let s = open(dir.path());
    assert_eq!(s.next_topic_id().unwrap(), 8);
    let topics = s.load_topics().unwrap();
    assert_eq!(topics.len(), 1);
    assert_eq!(
        (topics[0].name.as_str(), topics[0].id, topics[0].stats),
        ("a.b", 7, stats)
    );
    assert!(topics[0].explicit);
    assert_eq!(topics[0].settings, settings);
    let got = s.read(7, 2, 10, usize::MAX).unwrap();
    assert_eq!(
        got.iter().map(|e| (e.seq, e.ts_ms)).collect::<Vec<_>>(),
        vec![(2, 20), (3, 30)]
    );
    assert_eq!(&got[1].message[..], b"z");
    assert_eq!(s.read(7, 1, 2, usize::MAX).unwrap().len(), 2, "max_msgs");
    assert_eq!(
        s.read(7, 1, 10, 1).unwrap().len(),
        1,
        "max_bytes, at least one"
    );
    assert_eq!(s.timestamp(7, 2).unwrap(), Some(20));
    assert_eq!(s.timestamp(7, 9).unwrap(), None);
    s.write(vec![WriteOp::RemoveRange {
        id: 7,
        from: 1,
        to: 3,
    }])
    .unwrap();
    assert_eq!(s.read(7, 0, 10, usize::MAX).unwrap().len(), 1);
    assert_eq!(s.sizes(7, 0, 10).unwrap(), vec![(3, 1)]);
}

/// Runs of appends become chunks; reads, timestamps, sizes and removals work at any
/// seq, across chunk boundaries and in the middle of a chunk.
#[test]
fn chunked_log_reads_and_removes_at_any_seq() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let n = 3 * chunk::MAX_MESSAGES as u64 + 5;
    let body = |seq: u64| format!("message {seq}").into_bytes();
    // Two passes; the second interleaves another topic.
    let mut ops: Vec<WriteOp> = (1..=n / 2)
        .map(|seq| WriteOp::Append {
            id: 1,
            seq,
            ts_ms: seq as i64 * 10,
            message: body(seq).into(),
        })
        .collect();
    s.write(std::mem::take(&mut ops)).unwrap();
    for seq in n / 2 + 1..=n {
        ops.push(WriteOp::Append {
            id: 1,
            seq,
            ts_ms: seq as i64 * 10,
            message: body(seq).into(),
        });
        ops.push(append(2, seq, 0, b"other"));
    }
    s.write(ops).unwrap();
    let chunks = s.db().unwrap().scan_prefix([MSG_PREFIX]).count() as u64;
    assert!(chunks < n / 10, "{chunks} chunks for {n} messages");

    for from in [1, 2, 127, 128, 129, n / 2, n / 2 + 1, n - 1, n] {
        let got = s.read(1, from, usize::MAX, usize::MAX).unwrap();
        let seqs: Vec<u64> = got.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (from..=n).collect::<Vec<_>>(), "from {from}");
        assert!(got.iter().all(|e| e.message == body(e.seq)));
    }
    assert_eq!(s.read(1, n + 1, 10, usize::MAX).unwrap().len(), 0);
    assert_eq!(s.read(1, 5, 3, usize::MAX).unwrap().len(), 3, "max_msgs");
    for seq in 1..=n {
        assert_eq!(s.timestamp(1, seq).unwrap(), Some(seq as i64 * 10));
    }
    assert_eq!(s.timestamp(1, n + 1).unwrap(), None);
    let sizes = s.sizes(1, 100, 300).unwrap();
    assert_eq!(sizes.len(), 200);
    assert_eq!(sizes[0], (100, body(100).len() as u64));

    // Remove from the start to the middle of a chunk, then a second cut.
    for (from, to) in [(1, 200), (200, 201)] {
        s.write(vec![WriteOp::RemoveRange { id: 1, from, to }])
            .unwrap();
        let seqs: Vec<u64> = s
            .read(1, 0, usize::MAX, usize::MAX)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(
            seqs,
            (to..=n).collect::<Vec<_>>(),
            "after removing {from}..{to}"
        );
        assert_eq!(s.timestamp(1, to - 1).unwrap(), None);
        assert_eq!(s.timestamp(1, to).unwrap(), Some(to as i64 * 10));
    }
    assert_eq!(
        s.read(2, 0, usize::MAX, usize::MAX).unwrap().len() as u64,
        n - n / 2
    );
}

/// A crash may keep a pass's appends without the stats written after them: the
/// messages are counted back in on open; a gap before them is corruption.
#[test]
fn messages_beyond_the_recorded_stats_are_counted_in_and_a_gap_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let stats = TopicStats {
        first_seq: 1,
        last_seq: 1,
        messages: 1,
        bytes: 1,
        last_ts_ms: 10,
    };
    let s = open(dir.path());
    s.write(vec![
        WriteOp::PutTopic {
            name: "a.b".into(),
            id: 7,
            settings: Default::default(),
            explicit: false,
        },
        append(7, 1, 10, b"x"),
        WriteOp::PutStats(7, stats),
    ])
    .unwrap();
    // What a cut-off pass leaves: two appends, no stats.
    s.write(vec![append(7, 2, 20, b"yy"), append(7, 3, 30, b"zzz")])
        .unwrap();
    let t = &s.load_topics().unwrap()[0];
    assert_eq!(
        t.stats,
        TopicStats {
            first_seq: 1,
            last_seq: 3,
            messages: 3,
            bytes: 6,
            last_ts_ms: 30,
        }
    );
    s.write(vec![append(7, 5, 50, b"after a gap")]).unwrap();
    let err = s.load_topics().unwrap_err().to_string();
    assert!(err.contains("message 5") && err.contains("gap"), "{err}");
}

#[test]
fn second_open_of_the_same_dir_is_refused_with_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let _first = open(dir.path());
    let err = SledStorage::open(dir.path(), BackgroundFlush::Off).unwrap_err();
    assert!(err.contains(&dir.path().display().to_string()), "{err}");
    assert!(err.contains("locked"), "{err}");
}

#[test]
fn a_store_emptied_by_damage_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path());
        s.write(vec![append(1, 1, 1, b"precious")]).unwrap();
        s.flush().unwrap();
    }
    assert!(dir.path().join(MARKER_FILE).exists());
    // Replace sled's files with an empty store: what a badly damaged log recovers to.
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap() != MARKER_FILE {
            if path.is_dir() {
                std::fs::remove_dir_all(&path).unwrap();
            } else {
                std::fs::remove_file(&path).unwrap();
            }
        }
    }
    let err = SledStorage::open(dir.path(), BackgroundFlush::Off).unwrap_err();
    assert!(
        err.contains("corrupt") && err.contains(MARKER_FILE),
        "{err}"
    );
}

#[test]
fn other_format_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path());
        s.db().unwrap().insert(VERSION_KEY, &99u32.to_be_bytes()).unwrap();
        s.flush().unwrap();
    }
    let err = SledStorage::open(dir.path(), BackgroundFlush::Off).unwrap_err();
    assert!(err.contains("version 99"), "{err}");
}

/// The storage thread writes a topic's stats at most once a second while it is
/// appended to; a graceful shutdown writes the stale ones, so the stats record on disk is
/// current (a restart would otherwise have to recount the log past it).
#[tokio::test]
async fn a_graceful_shutdown_writes_stale_stats() {
    use crate::engine::Log;
    let dir = tempfile::tempdir().unwrap();
    {
        let log = start_writer(open(dir.path()));
        for i in 0..5u8 {
            let seq = log
                .append_internal("stats.x".into(), Bytes::from(vec![i]), Default::default())
                .await
                .unwrap();
            assert_eq!(seq, u64::from(i) + 1);
        }
        log.shutdown().await;
    }
    let s = open(dir.path());
    let topic = s
        .load_topics()
        .unwrap()
        .into_iter()
        .find(|t| t.name == "stats.x")
        .expect("the topic is stored");
    let raw =
        s.db().unwrap().get(stats_key(topic.id))
            .unwrap()
            .expect("stats stored");
    let stats = TopicStats::decode(&raw).unwrap();
    assert_eq!(
        (stats.messages, stats.last_seq),
        (5, 5),
        "the stats record as written, before any recount"
    );
}

pub(super) fn numbered(id: TopicId, seq: u64) -> WriteOp {
    WriteOp::Append {
        id,
        seq,
        ts_ms: seq as i64 * 10,
        message: format!("message {seq}").into_bytes().into(),
    }
}

pub(super) fn seqs_read(s: &SledStorage, id: TopicId, from: u64) -> Vec<u64> {
    s.read(id, from, usize::MAX, usize::MAX)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect()
}

pub(super) fn chunks_in_sled(s: &SledStorage) -> usize {
    s.db().unwrap().scan_prefix([MSG_PREFIX]).count()
}

/// One append per write, as with a publisher waiting for each acknowledgement: the
/// messages are held in an open chunk (one sled insert per full chunk, not per message)
/// and read back the same before and after they are sealed.
#[test]
fn held_appends_are_read_the_same_before_and_after_sealing() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    assert_eq!(s.seal_due(), None);
    let n = 2 * chunk::MAX_MESSAGES as u64 + 44;
    for seq in 1..=n {
        s.write(vec![numbered(1, seq)]).unwrap();
    }
    assert_eq!(chunks_in_sled(&s), 2, "only the full chunks are in sled");
    assert!(s.seal_due().is_some(), "the rest is held");
    let check = |s: &SledStorage| {
        for from in [0, 1, 128, 129, 256, 257, 258, n - 1, n, n + 1] {
            let got = s.read(1, from, usize::MAX, usize::MAX).unwrap();
            let seqs: Vec<u64> = got.iter().map(|e| e.seq).collect();
            assert_eq!(seqs, (from.max(1)..=n).collect::<Vec<_>>(), "from {from}");
            for e in &got {
                assert_eq!(e.message, format!("message {}", e.seq).into_bytes());
                assert_eq!(e.ts_ms, e.seq as i64 * 10);
            }
        }
        let limited: Vec<u64> = s
            .read(1, 250, 10, usize::MAX)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(
            limited,
            (250..260).collect::<Vec<_>>(),
            "max_msgs across sled and held"
        );
        assert_eq!(s.timestamp(1, n).unwrap(), Some(n as i64 * 10));
        assert_eq!(s.timestamp(1, n + 1).unwrap(), None);
        let sizes = s.sizes(1, 250, n + 1).unwrap();
        assert_eq!(sizes.len() as u64, n + 1 - 250);
        assert_eq!(
            sizes.last(),
            Some(&(n, format!("message {n}").len() as u64))
        );
    };
    check(&s);
    s.seal().unwrap();
    assert_eq!(s.seal_due(), None);
    assert_eq!(chunks_in_sled(&s), 3);
    check(&s);
}

/// Stats, consumer state, topics and removals are never written ahead of held
/// messages: any write but appends seals them first, and so does a flush.
#[test]
fn a_write_of_another_kind_or_a_flush_seals_held_messages_first() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let others = [
        WriteOp::PutStats(1, TopicStats::default()),
        WriteOp::PutConsumer {
            id: 1,
            name: "c".into(),
            record: ConsumerRecord::default(),
        },
        WriteOp::PutNextTopicId(9),
        WriteOp::RemoveRange {
            id: 1,
            from: 1,
            to: 2,
        },
    ];
    let mut seq = 0;
    for other in others {
        seq += 1;
        s.write(vec![numbered(1, seq), numbered(2, seq)]).unwrap();
        assert!(s.seal_due().is_some());
        let before = chunks_in_sled(&s);
        s.write(vec![other.clone()]).unwrap();
        assert_eq!(s.seal_due(), None, "{other:?} sealed first");
        assert!(chunks_in_sled(&s) > before, "{other:?}");
    }
    assert_eq!(
        seqs_read(&s, 1, 0),
        (2..=seq).collect::<Vec<_>>(),
        "the removal saw the sealed message"
    );
    s.write(vec![numbered(1, seq + 1)]).unwrap();
    s.flush().unwrap();
    assert_eq!(s.seal_due(), None, "a flush seals");
    assert_eq!(seqs_read(&s, 2, 0), (1..=seq).collect::<Vec<_>>());
}

/// A run that does not fit the open chunk seals it and starts a new one; a run too
/// large for any chunk, or with a gap, is written through — always after the held
/// messages before it, so sled has each topic's messages in seq order.
#[test]
fn runs_that_do_not_fit_are_written_in_seq_order() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.write(vec![numbered(1, 1), numbered(1, 2)]).unwrap();
    let big: Vec<WriteOp> = (3..=3 + chunk::MAX_MESSAGES as u64)
        .map(|q| numbered(1, q))
        .collect();
    let last = 3 + chunk::MAX_MESSAGES as u64;
    s.write(big).unwrap();
    assert_eq!(
        s.seal_due(),
        None,
        "held messages sealed before the run written through"
    );
    // After a write-through a new open chunk starts; a gap in a run writes it through.
    s.write(vec![numbered(1, last + 1)]).unwrap();
    assert!(s.seal_due().is_some());
    s.write(vec![numbered(1, last + 2), numbered(1, last + 4)])
        .unwrap();
    assert_eq!(s.seal_due(), None);
    let stored: Vec<u64> =
        s.db().unwrap().scan_prefix([MSG_PREFIX])
            .map(|kv| seq_of(&kv.unwrap().0).unwrap())
            .collect();
    assert_eq!(
        stored,
        vec![
            1,
            3,
            3 + chunk::MAX_MESSAGES as u64,
            last + 1,
            last + 2,
            last + 4
        ]
    );
    let mut want: Vec<u64> = (1..=last + 2).collect();
    want.push(last + 4);
    assert_eq!(seqs_read(&s, 1, 0), want);
}

/// Dropping the store without a flush (an embedding application that never shut the
/// broker down) still keeps what was held.
#[test]
fn held_messages_are_sealed_when_the_store_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path());
        for seq in 1..=3 {
            s.write(vec![numbered(4, seq)]).unwrap();
        }
        assert!(s.seal_due().is_some());
    }
    let s = open(dir.path());
    assert_eq!(seqs_read(&s, 4, 0), vec![1, 2, 3]);
}

/// A reader racing the writer sees every message from where it starts, once, in
/// order: with held messages being sealed, and with runs written through. (Before reads
/// and writes were kept apart, such a read could miss the chunk holding its first seq
/// and start at the next one: 3 of 60 runs of a test like this one.)
#[test]
fn reads_racing_writes_see_each_message_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let n = 3000u64;
    std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            let mut seq = 1;
            while seq <= n {
                if seq % 500 == 0 {
                    // Too many for a chunk: written through, after the held ones.
                    let run = chunk::MAX_MESSAGES as u64 + 1;
                    s.write((seq..seq + run).map(|q| numbered(1, q)).collect())
                        .unwrap();
                    seq += run;
                    continue;
                }
                s.write(vec![numbered(1, seq)]).unwrap();
                if seq % 7 == 0 {
                    s.seal().unwrap();
                }
                seq += 1;
            }
            seq - 1
        });
        let mut reads = 0;
        while !writer.is_finished() && reads < 100_000 {
            reads += 1;
            let from = (reads as u64 * 37) % n + 1;
            let seqs = seqs_read(&s, 1, from);
            if let Some(&first) = seqs.first() {
                assert_eq!(first, from, "read from {from}");
                assert!(
                    seqs.windows(2).all(|w| w[1] == w[0] + 1),
                    "read from {from}: a gap or a repeat"
                );
            }
        }
        let last = writer.join().unwrap();
        assert!(last >= n);
    });
    let stored = seqs_read(&s, 1, 1);
    assert_eq!(stored, (1..=*stored.last().unwrap()).collect::<Vec<_>>());
    assert!(stored.len() as u64 >= n);
}

/// With fsync `never` nothing else makes the storage thread act, yet held messages reach
/// sled within about [`HOLD`]: the thread sleeps until the store's seal is due.
#[tokio::test]
async fn the_storage_thread_seals_held_messages_when_they_are_due() {
    use crate::engine::Log;

    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let log = start_writer(s.clone());
    // The first append creates the topic (written through); the next ones are held.
    for i in 0..3u8 {
        log.append_internal("held.x".into(), Bytes::from(vec![i]), Default::default())
            .await
            .unwrap();
    }
    assert!(s.seal_due().is_some(), "the last appends are held");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while s.seal_due().is_some() {
        assert!(std::time::Instant::now() < deadline, "never sealed");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let id = s.load_topics().unwrap()[0].id;
    let in_sled: Vec<u64> =
        s.db().unwrap().scan_prefix(&msg_key(id, 0)[..5])
            .map(|kv| seq_of(&kv.unwrap().0).unwrap())
            .collect();
    assert_eq!(in_sled, vec![1, 2], "message 1, then the chunk of 2 and 3");

    // A publish a session stores itself while the thread sleeps without a deadline:
    // it wakes the thread to set one.
    let inline = crate::engine::Append {
        topic: "held.x".into(),
        payload: Bytes::from_static(b"inline"),
        headers: Default::default(),
        msg_id: String::new(),
        origin: (),
    };
    assert!(log.append_inline(inline), "stored inline");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while s.seal_due().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the inline append never sealed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(seqs_read(&s, id, 0), vec![1, 2, 3, 4]);
    log.shutdown().await;
}

/// sled writes a node larger than a quarter of its segment as a blob file of its own,
/// which its cache does not count, so blob nodes stay in memory once read
/// (`chunk::MAX_BYTES`). A log of full chunks of small messages must not make any.
#[test]
fn a_log_of_small_messages_is_stored_without_blob_files() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let body = Bytes::from(vec![b'x'; 140]);
    let mut seq = 0u64;
    for _ in 0..200 {
        let ops = (0..48)
            .map(|_| {
                seq += 1;
                WriteOp::Append {
                    id: 1,
                    seq,
                    ts_ms: seq as i64,
                    message: body.clone(),
                }
            })
            .collect();
        s.write(ops).unwrap();
    }
    s.flush().unwrap();
    assert!(chunks_in_sled(&s) > 17, "enough chunks for sled to split leaves");
    let blobs = std::fs::read_dir(dir.path().join("blobs")).unwrap().count();
    assert_eq!(blobs, 0, "blob files in the store");
}

/// A read that finds its batch not whole reads again with writes held off, and returns
/// what is stored as it is: a log starting after `from`, and one with a hole (the seqs a
/// store lost with unflushed writes are never stored or reused).
#[test]
fn reads_return_a_log_with_a_hole_or_a_later_start_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.write((1..=5).chain(9..=12).map(|q| numbered(1, q)).collect())
        .unwrap();
    s.seal().unwrap();
    assert_eq!(seqs_read(&s, 1, 1), vec![1, 2, 3, 4, 5, 9, 10, 11, 12]);
    assert_eq!(seqs_read(&s, 1, 4), vec![4, 5, 9, 10, 11, 12]);
    assert_eq!(seqs_read(&s, 1, 6), vec![9, 10, 11, 12], "starts after the hole");
    assert_eq!(seqs_read(&s, 1, 13), Vec::<u64>::new());
}
