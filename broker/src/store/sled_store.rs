//! [`SledStorage`]: the [`Storage`] trait on sled 0.34, with the key layout documented in
//! the parent module. Opening checks the format version and turns sled's lock, corruption
//! and version errors into one clear message naming the path.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use prost::Message as _;

use super::{
    ConsumerRecord, LogEntry, Storage, StoreError, StoredTopic, TopicId, TopicStats, WriteOp,
    FORMAT_VERSION,
};

const VERSION_KEY: &[u8] = b"v";
const NEXT_ID_KEY: &[u8] = b"n";
const TOPIC_PREFIX: u8 = b't';
const STATS_PREFIX: u8 = b's';
const MSG_PREFIX: u8 = b'm';
const CONSUMER_PREFIX: u8 = b'c';

fn consumer_key(id: TopicId, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + name.len());
    k.push(CONSUMER_PREFIX);
    k.extend_from_slice(&id.to_be_bytes());
    k.extend_from_slice(name.as_bytes());
    k
}

fn topic_key(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len());
    k.push(TOPIC_PREFIX);
    k.extend_from_slice(name.as_bytes());
    k
}

fn stats_key(id: TopicId) -> [u8; 5] {
    let mut k = [STATS_PREFIX; 5];
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

fn msg_key(id: TopicId, seq: u64) -> [u8; 13] {
    let mut k = [MSG_PREFIX; 13];
    k[1..5].copy_from_slice(&id.to_be_bytes());
    k[5..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn seq_of(key: &[u8]) -> Result<u64, StoreError> {
    key.get(5..13)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| StoreError::Corrupt(format!("malformed message key {key:?}")))
}

fn split_value(v: &[u8]) -> Result<(i64, &[u8]), StoreError> {
    if v.len() < 8 {
        return Err(StoreError::Corrupt(
            "message value shorter than its timestamp".into(),
        ));
    }
    let ts = i64::from_be_bytes(v[..8].try_into().expect("8 bytes"));
    Ok((ts, &v[8..]))
}

/// Key and value of an op that puts one entry (messages, stats, consumer state).
fn encode_op(op: WriteOp) -> (Vec<u8>, Vec<u8>) {
    match op {
        WriteOp::PutStats(id, stats) => (stats_key(id).to_vec(), stats.encode().to_vec()),
        WriteOp::Append {
            id,
            seq,
            ts_ms,
            message,
        } => {
            let mut v = Vec::with_capacity(8 + message.len());
            v.extend_from_slice(&ts_ms.to_be_bytes());
            v.extend_from_slice(&message);
            (msg_key(id, seq).to_vec(), v)
        }
        WriteOp::PutConsumer { id, name, record } => (consumer_key(id, &name), record.encode()),
        other => unreachable!("not a single-entry op: {other:?}"),
    }
}

fn engine(e: sled::Error) -> StoreError {
    match e {
        sled::Error::Io(io) => StoreError::Io(io.to_string()),
        sled::Error::Corruption { .. } => StoreError::Corrupt(e.to_string()),
        other => StoreError::Engine(other.to_string()),
    }
}

/// The sled-backed store. Cloning shares the same database.
#[derive(Debug, Clone)]
pub struct SledStorage {
    db: sled::Db,
    path: PathBuf,
}

/// How sled's own background flusher is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackgroundFlush {
    /// rtc flushes explicitly (fsync `always` and `interval`).
    Off,
    /// sled flushes on its own every N ms (fsync `never`).
    EveryMs(u64),
}

impl SledStorage {
    /// Opens (or creates) the store in `dir`. Errors name `dir` and say what is wrong.
    ///
    /// Besides sled's files, `dir` holds [`MARKER_FILE`], written once the store has been
    /// created. sled recovers from a damaged log by dropping what it cannot read, which
    /// for a badly damaged file can be everything; a marker without a store behind it is
    /// therefore reported as corruption instead of starting on an empty store.
    pub fn open(dir: &Path, background: BackgroundFlush) -> Result<SledStorage, String> {
        let every = match background {
            BackgroundFlush::Off => None,
            BackgroundFlush::EveryMs(ms) => Some(ms),
        };
        let marker = dir.join(MARKER_FILE);
        let marked = read_marker(&marker)?;
        // sled releases its file lock from a background thread after the database is
        // dropped, so a store closed a moment ago (a restart in the same process) can
        // still look locked: wait for that briefly before calling it locked.
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let db = loop {
            match sled::Config::new().path(dir).flush_every_ms(every).open() {
                Ok(db) => break db,
                Err(e) if is_lock_error(&e) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(describe_open_error(dir, e)),
            }
        };
        let fail = |e| describe_open_error(dir, e);
        match db.get(VERSION_KEY).map_err(fail)? {
            None => {
                if let Some(version) = marked {
                    return Err(format!(
                        "data directory {} is corrupt: {} says it holds rtc data (format {version}) but the store is empty",
                        dir.display(),
                        marker.display()
                    ));
                }
                if db.first().map_err(fail)?.is_some() {
                    return Err(format!(
                        "data directory {} holds data without an rtc format version; it was not written by rtc-broker",
                        dir.display()
                    ));
                }
                db.insert(VERSION_KEY, &FORMAT_VERSION.to_be_bytes())
                    .and_then(|_| db.flush())
                    .map_err(fail)?;
            }
            Some(v) if v.as_ref() == FORMAT_VERSION.to_be_bytes() => {}
            Some(v) => {
                let found = <[u8; 4]>::try_from(v.as_ref())
                    .map(|b| u32::from_be_bytes(b).to_string())
                    .unwrap_or_else(|_| format!("{:?}", v.as_ref()));
                return Err(incompatible(dir, &found));
            }
        }
        match marked {
            Some(v) if v != FORMAT_VERSION.to_string() => return Err(incompatible(dir, &v)),
            Some(_) => {}
            None => std::fs::write(&marker, format!("{FORMAT_VERSION}\n")).map_err(|e| {
                format!(
                    "data directory {}: cannot write {}: {e}",
                    dir.display(),
                    marker.display()
                )
            })?,
        }
        Ok(SledStorage {
            db,
            path: dir.to_path_buf(),
        })
    }

    /// The directory the database lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Adds to `stats` the messages stored after the last recorded one: the appends of a
    /// pass whose stats a crash cut off (see `write`). They must follow on without a gap.
    fn count_unrecorded(
        &self,
        name: &str,
        id: TopicId,
        stats: &mut TopicStats,
    ) -> Result<(), StoreError> {
        let from = msg_key(id, stats.last_seq + 1);
        for item in self.db.range(from..=msg_key(id, u64::MAX)) {
            let (k, v) = item.map_err(engine)?;
            let seq = seq_of(&k)?;
            if seq != stats.last_seq + 1 {
                return Err(StoreError::Corrupt(format!(
                    "topic {name:?}: message {seq} is stored after {} with a gap",
                    stats.last_seq
                )));
            }
            let (ts_ms, message) = split_value(&v)?;
            if stats.messages == 0 {
                stats.first_seq = seq;
            }
            stats.last_seq = seq;
            stats.messages += 1;
            stats.bytes += message.len() as u64;
            stats.last_ts_ms = stats.last_ts_ms.max(ts_ms);
        }
        Ok(())
    }

    fn last_key_seq(&self, id: TopicId) -> Result<Option<u64>, StoreError> {
        let lo = msg_key(id, 0);
        let hi = msg_key(id, u64::MAX);
        match self.db.range(lo..=hi).next_back() {
            None => Ok(None),
            Some(r) => Ok(Some(seq_of(&r.map_err(engine)?.0)?)),
        }
    }
}

/// File beside sled's, holding the rtc format version of the store (see [`SledStorage::open`]).
pub const MARKER_FILE: &str = "rtc-format";

fn read_marker(path: &Path) -> Result<Option<String>, String> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s.trim().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

fn incompatible(dir: &Path, found: &str) -> String {
    format!(
        "data directory {} uses data format version {found}; this rtc-broker reads version {FORMAT_VERSION}",
        dir.display()
    )
}

/// How long opening waits for a lock left by a store that is closing.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

fn is_lock_error(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

fn describe_open_error(dir: &Path, e: sled::Error) -> String {
    let what = match &e {
        e if is_lock_error(e) => {
            "is locked by another process (is another rtc-broker using it?)".to_string()
        }
        sled::Error::Io(io) => format!("cannot be opened: {io}"),
        sled::Error::Corruption { at, .. } => {
            format!("is corrupt (sled found damaged data at {at:?})")
        }
        sled::Error::Unsupported(msg) => format!("is incompatible with this version: {msg}"),
        other => format!("cannot be opened: {other}"),
    };
    format!("data directory {} {what}", dir.display())
}

impl Storage for SledStorage {
    fn load_topics(&self) -> Result<Vec<StoredTopic>, StoreError> {
        let mut topics = Vec::new();
        for item in self.db.scan_prefix([TOPIC_PREFIX]) {
            let (k, v) = item.map_err(engine)?;
            let name = std::str::from_utf8(&k[1..])
                .map_err(|_| StoreError::Corrupt(format!("topic name is not UTF-8: {k:?}")))?
                .to_string();
            if v.len() < 5 {
                return Err(StoreError::Corrupt(format!(
                    "topic {name:?} metadata too short"
                )));
            }
            let id = TopicId::from_be_bytes(v[..4].try_into().expect("4 bytes"));
            let explicit = v[4] & 1 == 1;
            let settings = rtc_proto::v1::TopicSettings::decode(&v[5..])
                .map_err(|e| StoreError::Corrupt(format!("topic {name:?} settings: {e}")))?;
            let mut stats = TopicStats::default();
            if id != 0 {
                if let Some(raw) = self.db.get(stats_key(id)).map_err(engine)? {
                    stats = TopicStats::decode(&raw).ok_or_else(|| {
                        StoreError::Corrupt(format!("topic {name:?} stats malformed"))
                    })?;
                }
                // The log itself is the authority on the highest sequence number.
                if let Some(last) = self.last_key_seq(id)? {
                    if last > stats.last_seq {
                        self.count_unrecorded(&name, id, &mut stats)?;
                    }
                }
            }
            topics.push(StoredTopic {
                name,
                id,
                settings,
                explicit,
                stats,
            });
        }
        Ok(topics)
    }

    fn next_topic_id(&self) -> Result<TopicId, StoreError> {
        match self.db.get(NEXT_ID_KEY).map_err(engine)? {
            None => Ok(1),
            Some(v) => {
                Ok(TopicId::from_be_bytes(v.as_ref().try_into().map_err(
                    |_| StoreError::Corrupt("next topic id malformed".into()),
                )?))
            }
        }
    }

    fn write(&self, ops: Vec<WriteOp>) -> Result<(), StoreError> {
        if ops.iter().all(WriteOp::is_in_order_safe) {
            // In order, without a sled batch: a batch rolls sled's IO buffer twice (two
            // buffer writes per pass, which cost more CPU than the appends themselves
            // at one message per pass). sled recovers a prefix of what was written, so a
            // crash keeps the appends of a prefix of this pass, maybe without the stats
            // that follow them; `load_topics` counts such messages back in.
            let mut written = Vec::new();
            for op in ops {
                let (k, v) = encode_op(op);
                if let Err(e) = self.db.insert(&k, v) {
                    // The writer reuses these seqs after a failed pass: take back what
                    // this pass wrote (best effort; sled refuses all writes after an IO
                    // error, so then none of it reaches the disk either).
                    for k in written {
                        let _ = self.db.remove::<Vec<u8>>(k);
                    }
                    return Err(engine(e));
                }
                written.push(k);
            }
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for op in ops {
            match op {
                WriteOp::PutTopic {
                    name,
                    id,
                    settings,
                    explicit,
                } => {
                    let mut v = id.to_be_bytes().to_vec();
                    v.push(u8::from(explicit));
                    settings.encode(&mut v).expect("Vec grows");
                    batch.insert(topic_key(&name), v);
                }
                WriteOp::PutNextTopicId(id) => batch.insert(NEXT_ID_KEY, &id.to_be_bytes()),
                op @ (WriteOp::PutStats(..)
                | WriteOp::Append { .. }
                | WriteOp::PutConsumer { .. }) => {
                    let (k, v) = encode_op(op);
                    batch.insert(k, v);
                }
                WriteOp::RemoveRange { id, from, to } => {
                    for seq in from..to {
                        batch.remove(&msg_key(id, seq));
                    }
                }
            }
        }
        self.db.apply_batch(batch).map_err(engine)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(engine)
    }

    fn read(
        &self,
        id: TopicId,
        from: u64,
        max_msgs: usize,
        max_bytes: usize,
    ) -> Result<Vec<LogEntry>, StoreError> {
        let mut out = Vec::new();
        let mut bytes = 0;
        for item in self.db.range(msg_key(id, from)..=msg_key(id, u64::MAX)) {
            let (k, v) = item.map_err(engine)?;
            let (ts_ms, message) = split_value(&v)?;
            bytes += message.len();
            out.push(LogEntry {
                seq: seq_of(&k)?,
                ts_ms,
                message: Bytes::copy_from_slice(message),
            });
            if out.len() >= max_msgs || bytes >= max_bytes {
                break;
            }
        }
        Ok(out)
    }

    fn timestamp(&self, id: TopicId, seq: u64) -> Result<Option<i64>, StoreError> {
        match self.db.get(msg_key(id, seq)).map_err(engine)? {
            None => Ok(None),
            Some(v) => Ok(Some(split_value(&v)?.0)),
        }
    }

    fn message_ids(&self, id: TopicId, from: u64) -> Result<Vec<(String, u64, i64)>, StoreError> {
        let mut out = Vec::new();
        for item in self.db.range(msg_key(id, from)..=msg_key(id, u64::MAX)) {
            let (k, v) = item.map_err(engine)?;
            let (ts_ms, message) = split_value(&v)?;
            let m = rtc_proto::v1::Message::decode(message)
                .map_err(|e| StoreError::Corrupt(format!("stored message {k:?}: {e}")))?;
            if !m.msg_id.is_empty() {
                out.push((m.msg_id, seq_of(&k)?, ts_ms));
            }
        }
        Ok(out)
    }

    fn load_consumers(&self) -> Result<Vec<(TopicId, String, ConsumerRecord)>, StoreError> {
        let mut out = Vec::new();
        for item in self.db.scan_prefix([CONSUMER_PREFIX]) {
            let (k, v) = item.map_err(engine)?;
            let bad = || StoreError::Corrupt(format!("malformed consumer entry {k:?}"));
            let id =
                TopicId::from_be_bytes(k.get(1..5).ok_or_else(bad)?.try_into().expect("4 bytes"));
            let name = std::str::from_utf8(&k[5..]).map_err(|_| bad())?.to_string();
            out.push((id, name, ConsumerRecord::decode(&v).ok_or_else(bad)?));
        }
        Ok(out)
    }

    fn sizes(&self, id: TopicId, from: u64, to: u64) -> Result<Vec<(u64, u64)>, StoreError> {
        let mut out = Vec::new();
        if from >= to {
            return Ok(out);
        }
        for item in self.db.range(msg_key(id, from)..msg_key(id, to)) {
            let (k, v) = item.map_err(engine)?;
            out.push((seq_of(&k)?, v.len().saturating_sub(8) as u64));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
