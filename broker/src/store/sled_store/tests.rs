//! Tests of the sled store: layout, chunks, recovery and refusals.

use super::*;
use crate::store::chunk;

fn open(dir: &Path) -> SledStorage {
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
    let chunks = s.db.scan_prefix([MSG_PREFIX]).count() as u64;
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
    assert_eq!(s.last_key_seq(1).unwrap(), Some(n));
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
        s.db.insert(VERSION_KEY, &99u32.to_be_bytes()).unwrap();
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
    use std::sync::Arc;

    use crate::config::FsyncPolicy;
    use crate::router::Router;
    use crate::store::Storage;
    use crate::topic::TopicRegistry;

    let dir = tempfile::tempdir().unwrap();
    {
        let storage: Arc<dyn Storage> = Arc::new(open(dir.path()));
        let log = crate::store::writer::start(
            storage,
            Arc::new(Router::new()),
            Arc::new(TopicRegistry::new(&[])),
            FsyncPolicy::Never,
            100,
        )
        .unwrap();
        for i in 0..5u8 {
            let seq = log
                .append_internal("stats.x".into(), Bytes::from(vec![i]), Default::default())
                .await
                .unwrap();
            assert_eq!(seq, u64::from(i) + 1);
        }
        log.shutdown();
    }
    let s = open(dir.path());
    let topic = s
        .load_topics()
        .unwrap()
        .into_iter()
        .find(|t| t.name == "stats.x")
        .expect("the topic is stored");
    let raw =
        s.db.get(stats_key(topic.id))
            .unwrap()
            .expect("stats stored");
    let stats = TopicStats::decode(&raw).unwrap();
    assert_eq!(
        (stats.messages, stats.last_seq),
        (5, 5),
        "the stats record as written, before any recount"
    );
}
