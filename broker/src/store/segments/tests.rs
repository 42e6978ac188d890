//! Tests of the segment store: reads across segments, retention's floor, recovery from
//! what a crash leaves, failed writes taken back, and refusals.

use super::*;
use bytes::Bytes;

/// Segments of 4 KiB, so that a few dozen messages span several.
const SMALL: u64 = 4096;

fn open_in(dir: &Path) -> SegmentStorage {
    SegmentStorage::open_with(
        &dir.join("store"),
        &dir.join("log"),
        BackgroundFlush::Off,
        crate::config::DEFAULT_STORE_CACHE,
        SMALL,
    )
    .unwrap()
}

fn topic(name: &str, id: TopicId) -> WriteOp {
    WriteOp::PutTopic {
        name: name.into(),
        id,
        settings: Default::default(),
        explicit: false,
    }
}

/// Message `seq` of topic `id`: 200 bytes naming its seq.
fn numbered(id: TopicId, seq: u64) -> WriteOp {
    let mut body = format!("message {seq} ").into_bytes();
    body.resize(200, b'.');
    WriteOp::Append {
        id,
        seq,
        ts_ms: seq as i64 * 10,
        message: Bytes::from(body),
    }
}

fn seqs(s: &SegmentStorage, id: TopicId, from: u64) -> Vec<u64> {
    let mut out = Vec::new();
    let mut next = from;
    loop {
        let batch = s.read(id, next, 7, 1000).unwrap();
        let Some(last) = batch.last() else { return out };
        next = last.seq + 1;
        for e in &batch {
            assert!(e.message.starts_with(format!("message {} ", e.seq).as_bytes()));
            assert_eq!(e.ts_ms, e.seq as i64 * 10);
        }
        out.extend(batch.iter().map(|e| e.seq));
    }
}

fn segment_files(dir: &Path, id: TopicId) -> usize {
    std::fs::read_dir(dir.join("log").join(id.to_string()))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension() == Some("log".as_ref()))
        .count()
}

fn stats_of(s: &SegmentStorage, name: &str) -> TopicStats {
    let topics = s.load_topics().unwrap();
    topics.into_iter().find(|t| t.name == name).unwrap().stats
}

#[test]
fn messages_span_segments_and_read_back_from_any_seq_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open_in(dir.path());
        s.write(vec![topic("a", 1), topic("b", 2)]).unwrap();
        // Runs of 5, alternating topics in one write.
        for first in (1..=100).step_by(5) {
            let mut ops: Vec<WriteOp> = (first..first + 5).map(|q| numbered(1, q)).collect();
            ops.push(numbered(2, first));
            s.write(ops).unwrap();
        }
        s.flush().unwrap();
        assert_eq!(seqs(&s, 1, 1), (1..=100).collect::<Vec<_>>());
        assert_eq!(seqs(&s, 1, 57), (57..=100).collect::<Vec<_>>());
        assert!(segment_files(dir.path(), 1) >= 5);
    }
    let s = open_in(dir.path());
    for from in [1, 2, 19, 20, 21, 64, 99, 100] {
        assert_eq!(seqs(&s, 1, from), (from..=100).collect::<Vec<_>>(), "from {from}");
    }
    assert!(seqs(&s, 1, 101).is_empty());
    assert_eq!(seqs(&s, 2, 1), (1..=96).step_by(5).collect::<Vec<_>>());
    assert_eq!(s.timestamp(1, 42).unwrap(), Some(420));
    assert_eq!(s.timestamp(1, 101).unwrap(), None);
    let sizes = s.sizes(1, 10, 13).unwrap();
    assert_eq!(sizes, vec![(10, 200), (11, 200), (12, 200)]);
    // Stats were never written: the log counts them.
    let stats = stats_of(&s, "a");
    assert_eq!(
        (stats.first_seq, stats.last_seq, stats.messages, stats.bytes, stats.last_ts_ms),
        (1, 100, 100, 20_000, 1000)
    );
    // A read of one huge batch is bounded by its byte limit, but takes at least one.
    assert_eq!(s.read(1, 1, 1000, 1).unwrap().len(), 1);
    assert_eq!(s.read(1, 1, 1000, 2000).unwrap().len(), 10);
}

/// Files of `dir` this process holds open.
fn open_files_in(dir: &Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.starts_with(dir))
        .count()
}

#[test]
fn only_the_newest_segment_of_a_topic_holds_a_file_open() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().canonicalize().unwrap();
    {
        let s = open_in(&dir);
        s.write(vec![topic("a", 1), topic("b", 2)]).unwrap();
        for first in (1..=200).step_by(5) {
            s.write((first..first + 5).map(|q| numbered(1, q)).collect())
                .unwrap();
        }
        s.write(vec![numbered(2, 1)]).unwrap();
        assert!(segment_files(&dir, 1) >= 10);
        assert_eq!(open_files_in(&dir.join("log")), 2, "one per topic");
        // A read of every segment opens them for the read only.
        assert_eq!(seqs(&s, 1, 1).len(), 200);
        assert_eq!(open_files_in(&dir.join("log")), 2);
    }
    let s = open_in(&dir);
    assert_eq!(open_files_in(&dir.join("log")), 2, "after a reopen too");
    assert_eq!(seqs(&s, 1, 1), (1..=200).collect::<Vec<_>>());
}

#[test]
fn removals_move_the_floor_delete_whole_segments_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let files_before;
    {
        let s = open_in(dir.path());
        s.write(vec![topic("a", 1)]).unwrap();
        s.write((1..=100).map(|q| numbered(1, q)).collect()).unwrap();
        // Rolled only between runs: one run, one segment.
        assert_eq!(segment_files(dir.path(), 1), 1);
        for first in (101..=300).step_by(4) {
            s.write((first..first + 4).map(|q| numbered(1, q)).collect())
                .unwrap();
        }
        files_before = segment_files(dir.path(), 1);
        for to in [50, 51, 150, 151] {
            s.write(vec![WriteOp::RemoveRange { id: 1, from: 1, to }])
                .unwrap();
            assert_eq!(seqs(&s, 1, 1).first(), Some(&to));
            let st = stats_of(&s, "a");
            assert_eq!((st.first_seq, st.messages, st.last_seq), (to, 301 - to, 300));
        }
        assert!(segment_files(dir.path(), 1) < files_before);
        s.flush().unwrap();
    }
    let s = open_in(dir.path());
    assert_eq!(seqs(&s, 1, 1), (151..=300).collect::<Vec<_>>());
    let st = stats_of(&s, "a");
    assert_eq!((st.first_seq, st.messages, st.bytes), (151, 150, 150 * 200));
    // Everything removed: the seqs go on after the last.
    s.write(vec![WriteOp::RemoveRange {
        id: 1,
        from: 151,
        to: 301,
    }])
    .unwrap();
    assert_eq!(segment_files(dir.path(), 1), 0);
    drop(s);
    let s = open_in(dir.path());
    let st = stats_of(&s, "a");
    assert_eq!((st.first_seq, st.messages, st.last_seq), (0, 0, 300));
    s.write(vec![numbered(1, 301)]).unwrap();
    assert_eq!(seqs(&s, 1, 1), vec![301]);
    assert_eq!(stats_of(&s, "a").messages, 1);
}

#[test]
fn a_torn_write_at_the_end_is_cut_and_the_log_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open_in(dir.path());
        s.write(vec![topic("a", 1)]).unwrap();
        s.write((1..=3).map(|q| numbered(1, q)).collect()).unwrap();
    }
    // What a crash in the middle of a pwrite leaves: half a record.
    let seg = dir.path().join("log/1").join(format!("{:020}.log", 1));
    let mut half = Vec::new();
    segment::encode_record(&mut half, 4, 40, &[7u8; 200]);
    let f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    std::io::Write::write_all(&mut &f, &half[..150]).unwrap();
    drop(f);
    let s = open_in(dir.path());
    assert_eq!(seqs(&s, 1, 1), vec![1, 2, 3]);
    s.write(vec![numbered(1, 4)]).unwrap();
    assert_eq!(seqs(&s, 1, 1), vec![1, 2, 3, 4]);
    drop(s);
    assert_eq!(seqs(&open_in(dir.path()), 1, 1), vec![1, 2, 3, 4]);
}

#[test]
fn damage_inside_the_log_is_reported_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open_in(dir.path());
        s.write(vec![topic("a", 1)]).unwrap();
        s.write((1..=10).map(|q| numbered(1, q)).collect()).unwrap();
        s.write((11..=20).map(|q| numbered(1, q)).collect()).unwrap();
    }
    // Flip a byte in the first segment, which is full (its index is trusted).
    let seg = dir.path().join("log/1").join(format!("{:020}.log", 1));
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[segment::HEADER + 3] ^= 0xff;
    std::fs::write(&seg, bytes).unwrap();
    let s = open_in(dir.path());
    let err = s.read(1, 1, 100, 1_000_000).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    assert!(err.to_string().contains("damaged"), "{err}");
}

#[test]
fn a_failed_write_leaves_nothing_and_drop_held_takes_appends_back() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_in(dir.path());
    s.write(vec![topic("a", 1)]).unwrap();
    s.write((1..=30).map(|q| numbered(1, q)).collect()).unwrap();
    // A seq that is not above the last: refused whole, topic 2's run taken back.
    let err = s
        .write(vec![numbered(2, 1), numbered(1, 30)])
        .unwrap_err();
    assert!(err.to_string().contains("after seq 30"), "{err}");
    assert!(seqs(&s, 2, 1).is_empty());
    // A flush that failed: the pass's appends are forgotten, across a segment roll.
    for first in (31..=60).step_by(3) {
        s.write((first..first + 3).map(|q| numbered(1, q)).collect())
            .unwrap();
    }
    s.drop_held(1, 25);
    assert_eq!(seqs(&s, 1, 1), (1..=24).collect::<Vec<_>>());
    s.write(vec![numbered(1, 25)]).unwrap();
    drop(s);
    let s = open_in(dir.path());
    assert_eq!(seqs(&s, 1, 1), (1..=25).collect::<Vec<_>>());
    assert_eq!(stats_of(&s, "a").messages, 25);
}

#[test]
fn a_deleted_topic_and_an_orphan_log_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open_in(dir.path());
        s.write(vec![topic("a", 1), topic("b", 2)]).unwrap();
        s.write(vec![numbered(1, 1), numbered(2, 1)]).unwrap();
        // A first append whose topic never reached sled (a write cut off by a crash).
        s.write(vec![numbered(3, 1)]).unwrap();
        s.write(vec![WriteOp::DeleteTopic {
            name: "a".into(),
            id: 1,
        }])
        .unwrap();
        assert!(!dir.path().join("log/1").exists());
        assert!(s.read(1, 1, 10, 1000).unwrap().is_empty());
    }
    let s = open_in(dir.path());
    let names: Vec<String> = s.load_topics().unwrap().into_iter().map(|t| t.name).collect();
    assert_eq!(names, vec!["b".to_string()]);
    assert!(!dir.path().join("log/3").exists());
    assert_eq!(seqs(&s, 2, 1), vec![1]);
}

#[test]
fn reads_racing_writes_removals_and_cuts_see_each_message_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_in(dir.path());
    s.write(vec![topic("a", 1)]).unwrap();
    let n = 3000u64;
    std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            let mut seq = 1;
            while seq <= n {
                let run = 1 + seq % 4;
                if seq % 7 == 0 {
                    // A run whose flush failed: taken back, then written again (reads
                    // in progress meet the cut).
                    s.write((seq..seq + run).map(|q| numbered(1, q)).collect())
                        .unwrap();
                    s.drop_held(1, seq);
                }
                s.write((seq..seq + run).map(|q| numbered(1, q)).collect())
                    .unwrap();
                seq += run;
                if seq % 10 == 0 {
                    let to = seq.saturating_sub(200).max(1);
                    s.write(vec![WriteOp::RemoveRange { id: 1, from: 1, to }])
                        .unwrap();
                }
            }
        });
        let mut reads = 0u64;
        while !writer.is_finished() && reads < 100_000 {
            reads += 1;
            let from = (reads * 37) % n + 1;
            let batch = s
                .read(1, from, 50, 100_000)
                .unwrap_or_else(|e| panic!("read from {from}: {e}"));
            assert!(batch.iter().all(|e| e.seq >= from), "read from {from}");
            assert!(
                batch.windows(2).all(|w| w[1].seq == w[0].seq + 1),
                "read from {from}: a gap or a repeat"
            );
        }
        writer.join().unwrap();
    });
    let kept = seqs(&s, 1, 1);
    assert!(!kept.is_empty());
    assert_eq!(kept, (kept[0]..=*kept.last().unwrap()).collect::<Vec<_>>());
    assert!(*kept.last().unwrap() >= n);
}

#[test]
fn a_sled_store_with_messages_is_not_opened_as_segments_and_a_newer_log_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let sled = SledStorage::open(&dir.path().join("store"), BackgroundFlush::Off).unwrap();
        sled.write(vec![topic("a", 1), numbered(1, 1)]).unwrap();
        sled.flush().unwrap();
    }
    let err = SegmentStorage::open(
        &dir.path().join("store"),
        &dir.path().join("log"),
        BackgroundFlush::Off,
        crate::config::DEFAULT_STORE_CACHE,
    )
    .unwrap_err();
    assert!(err.contains("keeps its messages in sled"), "{err}");

    let other = tempfile::tempdir().unwrap();
    drop(open_in(other.path()));
    std::fs::write(other.path().join("log").join(LOG_MARKER), "9\n").unwrap();
    let err = SegmentStorage::open(
        &other.path().join("store"),
        &other.path().join("log"),
        BackgroundFlush::Off,
        crate::config::DEFAULT_STORE_CACHE,
    )
    .unwrap_err();
    assert!(err.contains("log format 9"), "{err}");
}

#[test]
fn a_metadata_write_that_fails_takes_back_the_appends_and_the_floor_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_in(dir.path());
    s.write(vec![topic("a", 1)]).unwrap();
    for first in (1..=40).step_by(4) {
        s.write((first..first + 4).map(|q| numbered(1, q)).collect())
            .unwrap();
    }
    let files = segment_files(dir.path(), 1);
    s.meta.fail_writes_after(0);
    let stats = TopicStats {
        first_seq: 20,
        last_seq: 44,
        messages: 25,
        bytes: 25 * 200,
        last_ts_ms: 440,
    };
    let err = s
        .write(vec![
            numbered(1, 41),
            numbered(1, 42),
            numbered(2, 1),
            WriteOp::RemoveRange {
                id: 1,
                from: 1,
                to: 20,
            },
            WriteOp::PutStats(1, stats),
        ])
        .unwrap_err();
    s.meta.fail_writes_after(usize::MAX);
    assert!(err.to_string().contains("injected"), "{err}");
    assert_eq!(seqs(&s, 1, 1), (1..=40).collect::<Vec<_>>());
    assert!(seqs(&s, 2, 1).is_empty());
    assert_eq!(segment_files(dir.path(), 1), files, "no segment deleted");
    drop(s);
    let s = open_in(dir.path());
    assert_eq!(seqs(&s, 1, 1), (1..=40).collect::<Vec<_>>());
    s.write(vec![numbered(1, 41)]).unwrap();
    assert_eq!(stats_of(&s, "a").messages, 41);
}

#[test]
fn a_walk_past_the_end_of_a_cut_file_stops_there() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    let mut buf = Vec::new();
    for seq in 1..=3 {
        segment::encode_record(&mut buf, seq, 0, &[1u8; 100]);
    }
    std::fs::write(&path, &buf).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let mut seen = Vec::new();
    // Asked for more than the file holds (it was cut after the length was read).
    let stopped = segment::walk(&file, &path, 0, buf.len() as u64 + 500, 200, &mut |seq, _, _, _| {
        seen.push(seq);
        ControlFlow::Continue(())
    })
    .unwrap();
    assert!(stopped < buf.len() as u64 + 500);
    assert!(seen.iter().all(|&s| (1..=3).contains(&s)), "{seen:?}");
}

#[test]
fn a_read_that_meets_a_cut_goes_on_from_the_log_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let s = open_in(dir.path());
    s.write(vec![topic("a", 1)]).unwrap();
    s.write((1..=30).map(|q| numbered(1, q)).collect()).unwrap();
    let log = s.log(1).unwrap();
    let cutter = log.clone();
    // The read sees 30 messages, then the file is cut to 10 before it reads them.
    *log.after_snapshot.lock().unwrap() = Some(topic_log::Hook(Box::new(move || {
        cutter.truncate_from(11).unwrap();
    })));
    let got = s.read(1, 1, 100, 1_000_000).unwrap();
    assert_eq!(
        got.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
}
