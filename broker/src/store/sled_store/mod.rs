//! [`SledStorage`]: the [`Storage`] trait on sled 0.34, with the key layout documented in
//! the parent module. Opening checks the format version and turns sled's lock, corruption
//! and version errors into one clear message naming the path.
//!
//! A write of appends only holds each topic's newest messages in an open chunk
//! (`open_chunks`), sealed into sled later as one insert; every other write, and every
//! flush, seals them first. Reads walk sled, then the held messages (`log.rs`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use prost::Message as _;

mod fail_point;
#[cfg(test)]
mod fault_tests;
mod log;
mod open_chunks;
mod slot;
#[cfg(test)]
mod tests;

use fail_point::FailPoint;
use slot::{close, within, DbSlot, CLOSE_WAIT, STUCK};

use super::{
    ConsumerRecord, LogEntry, Reach, ScanFn, Storage, StoreError, StoredTopic, TopicId, TopicStats,
    WriteOp, FORMAT_VERSION,
};
use log::{Entry, Walk};
use open_chunks::OpenChunks;

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

/// Key and value of an op that puts one entry (stats, consumer state).
fn encode_single(op: WriteOp) -> (Vec<u8>, Vec<u8>) {
    match op {
        WriteOp::PutStats(id, stats) => (stats_key(id).to_vec(), stats.encode().to_vec()),
        WriteOp::PutConsumer { id, name, record } => (consumer_key(id, &name), record.encode()),
        WriteOp::PutTopic {
            name,
            id,
            settings,
            explicit,
        } => {
            let mut v = id.to_be_bytes().to_vec();
            v.push(u8::from(explicit));
            settings.encode(&mut v).expect("Vec grows");
            (topic_key(&name), v)
        }
        WriteOp::PutNextTopicId(id) => (NEXT_ID_KEY.to_vec(), id.to_be_bytes().to_vec()),
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

/// The sled-backed store. Cloning shares the same database and open chunks.
///
/// Every write to sled holds the open chunks' lock exclusively, and every walk of the
/// log holds it shared: sled 0.34's range scans are not safe against inserts running
/// while they scan. A test racing reads against writes saw a scan come back without the
/// chunk holding its first seq, so the read started at the next chunk (a replay missing
/// messages); with the scans shared against writes it did not happen in 100 runs on a
/// loaded machine. A writer thus waits for the walk in progress — except a replay's
/// reads ([`Storage::read`]), which scan without the lock and walk again with it only
/// when the batch they got is not whole (`log::Walk`), so that a long replay does not
/// hold publishes off batch after batch.
#[derive(Debug, Clone)]
pub struct SledStorage {
    db: Arc<DbSlot>,
    open: Arc<RwLock<OpenChunks>>,
    fail: Arc<FailPoint>,
    /// How it was opened, to open it again ([`Storage::reopen`]).
    how: Arc<HowOpened>,
}

/// Where the store lives and how sled was set up, for a reopen.
#[derive(Debug)]
struct HowOpened {
    dir: PathBuf,
    background: BackgroundFlush,
    cache_bytes: u64,
    /// sled could not be closed: no reopen is tried again.
    stuck: std::sync::atomic::AtomicBool,
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
    /// [`SledStorage::open_with_cache`] with the default cache (tests and tools).
    #[cfg(any(test, feature = "internals"))]
    pub fn open(dir: &Path, background: BackgroundFlush) -> Result<SledStorage, String> {
        Self::open_with_cache(dir, background, crate::config::DEFAULT_STORE_CACHE)
    }

    /// Opens (or creates) the store in `dir`, with a page cache of `cache_bytes`
    /// (`Config::store_cache`). Errors name `dir` and say what is wrong.
    ///
    /// Besides sled's files, `dir` holds [`MARKER_FILE`], written once the store has been
    /// created. sled recovers from a damaged log by dropping what it cannot read, which
    /// for a badly damaged file can be everything; a marker without a store behind it is
    /// therefore reported as corruption instead of starting on an empty store.
    pub fn open_with_cache(
        dir: &Path,
        background: BackgroundFlush,
        cache_bytes: u64,
    ) -> Result<SledStorage, String> {
        let every = background.every_ms();
        let marker = dir.join(MARKER_FILE);
        let marked = read_marker(&marker)?;
        let db = open_sled(dir, every, cache_bytes).map_err(|e| describe_open_error(dir, e))?;
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
        let fail = Arc::new(FailPoint::new());
        let db = Arc::new(DbSlot(RwLock::new(Some(db))));
        Ok(SledStorage {
            open: Arc::new(RwLock::new(OpenChunks::new(db.clone(), fail.clone()))),
            db,
            fail,
            how: Arc::new(HowOpened {
                dir: dir.to_path_buf(),
                background,
                cache_bytes,
                stuck: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }

    /// Whether any message is stored in sled (a store of `store_engine = "sled"`).
    pub fn holds_messages(&self) -> Result<bool, StoreError> {
        self.seal()?;
        Ok(self.db()?.scan_prefix([MSG_PREFIX]).next().is_some())
    }

    /// Makes every sled write after the next `ok` fail (`usize::MAX`: none), for the
    /// tests of stores built on this one.
    #[cfg(test)]
    pub(in crate::store) fn fail_writes_after(&self, ok: usize) {
        if ok == usize::MAX {
            self.fail.off();
        } else {
            self.fail.fail_after(ok);
        }
    }

    /// A handle on the database for one operation.
    pub(super) fn db(&self) -> Result<sled::Db, StoreError> {
        self.db.get()
    }

    /// The open chunks, for a write to sled.
    fn open_chunks(&self) -> RwLockWriteGuard<'_, OpenChunks> {
        self.open.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The open chunks, for a read of sled.
    fn open_chunks_shared(&self) -> RwLockReadGuard<'_, OpenChunks> {
        self.open.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `ops` to sled as they are, none held: in order, or as one atomic batch
    /// when any of them must be all-or-nothing (see [`Storage::write`]).
    fn write_through(&self, ops: Vec<WriteOp>) -> Result<(), StoreError> {
        let in_order = ops.iter().all(WriteOp::is_in_order_safe);
        let entries = self.entries(ops)?;
        let db = self.db()?;
        if in_order {
            // In order, without a sled batch: a batch rolls sled's IO buffer twice (two
            // buffer writes per pass, which cost more CPU than the appends themselves
            // at one message per pass). sled recovers a prefix of what was written, so a
            // crash keeps the chunks of a prefix of this pass, maybe without the stats
            // that follow them; `load_topics` counts such messages back in.
            let mut written = Vec::new();
            for entry in entries {
                let Entry::Put(k, v) = entry else {
                    unreachable!("in-order writes only put")
                };
                if let Err(e) = self.fail.check().and_then(|()| db.insert(&k, v)) {
                    // The writer reuses these seqs after a failed pass: take back what
                    // this pass wrote (best effort; sled refuses all writes after an IO
                    // error, so then none of it reaches the disk either).
                    for k in written {
                        let _ = db.remove::<Vec<u8>>(k);
                    }
                    return Err(engine(e));
                }
                written.push(k);
            }
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for entry in entries {
            match entry {
                Entry::Put(k, v) => batch.insert(k, v),
                Entry::Remove(k) => batch.remove(k),
            }
        }
        self.fail
            .check()
            .and_then(|()| db.apply_batch(batch))
            .map_err(engine)
    }
}

impl BackgroundFlush {
    fn every_ms(self) -> Option<u64> {
        match self {
            BackgroundFlush::Off => None,
            BackgroundFlush::EveryMs(ms) => Some(ms),
        }
    }
}

/// Opens sled in `dir`. sled releases its file lock from a background thread after the
/// database is dropped, so a store closed a moment ago (a restart or a reopen in the same
/// process) can still look locked: this waits for that briefly before calling it locked.
fn open_sled(dir: &Path, every: Option<u64>, cache_bytes: u64) -> Result<sled::Db, sled::Error> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .flush_every_ms(every);
        match config.open() {
            Ok(db) => return Ok(db),
            Err(e) if is_lock_error(&e) && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Bytes available to unprivileged writers on the filesystem holding `dir`.
fn free_space(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string and `st` is large enough for the struct
    // statvfs fills in; it is read only when the call succeeded.
    let r = unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) };
    if r != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it initialized `st`.
    let st = unsafe { st.assume_init() };
    // The field types differ between platforms (u32 or u64); `as` widens either.
    #[allow(clippy::unnecessary_cast)]
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// File beside sled's, holding the rtc format version of the store (see [`SledStorage::open_with_cache`]).
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
        // The reconciliation below reads sled alone.
        self.seal()?;
        let mut topics = Vec::new();
        let db = self.db()?;
        for item in db.scan_prefix([TOPIC_PREFIX]) {
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
                if let Some(raw) = db.get(stats_key(id)).map_err(engine)? {
                    stats = TopicStats::decode(&raw).ok_or_else(|| {
                        StoreError::Corrupt(format!("topic {name:?} stats malformed"))
                    })?;
                }
                // The log itself is the authority on the highest sequence number.
                self.count_unrecorded(&name, id, &mut stats)?;
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
        match self.db()?.get(NEXT_ID_KEY).map_err(engine)? {
            None => Ok(1),
            Some(v) => {
                Ok(TopicId::from_be_bytes(v.as_ref().try_into().map_err(
                    |_| StoreError::Corrupt("next topic id malformed".into()),
                )?))
            }
        }
    }

    fn write(&self, ops: Vec<WriteOp>) -> Result<(), StoreError> {
        let mut open = self.open_chunks();
        let Some(runs) = log::append_runs(&ops) else {
            // Stats, consumer state, topics and removals never get ahead of the
            // messages written before them.
            open.seal_all()?;
            return self.write_through(ops);
        };
        // A topic's run is held when its open chunk (sealed first if full, so that its
        // messages reach sled in seq order) takes all of it; otherwise it is written
        // through as chunks of its own. Seals and write-through come before anything
        // is held, so a failed write leaves nothing of itself behind.
        let mut held = Vec::with_capacity(runs.len());
        for run in &runs {
            let takes = |open: &OpenChunks| {
                run.contiguous && open.takes(run.id, run.first, run.count, run.len)
            };
            if !takes(&open) {
                open.seal(run.id)?;
            }
            if takes(&open) {
                held.push(run.id);
            }
        }
        // Usually every run is held: then the ops need no sorting out.
        let hold = if held.len() == runs.len() {
            ops
        } else {
            let (hold, through): (Vec<WriteOp>, Vec<WriteOp>) = ops
                .into_iter()
                .partition(|op| matches!(op, WriteOp::Append { id, .. } if held.contains(id)));
            if !through.is_empty() {
                self.write_through(through)?;
            }
            hold
        };
        for op in hold {
            if let WriteOp::Append {
                id,
                seq,
                ts_ms,
                message,
            } = op
            {
                open.hold(id, seq, ts_ms, message);
            }
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.seal()?;
        self.fail.check().map_err(engine)?;
        self.db()?.flush().map(|_| ()).map_err(engine)
    }

    fn seal_due(&self) -> Option<Instant> {
        self.open_chunks_shared().due()
    }

    fn seal(&self) -> Result<(), StoreError> {
        self.open_chunks().seal_all()
    }

    /// First without holding writes off, as a replay reads batch after batch of a long
    /// log and every write would wait for each (an acknowledged publish's p99 went from
    /// 0.4-0.6 ms to 6.5-7.8 ms during a replay; docs/benchmarks.md). A batch that is not
    /// whole — not starting at `from`, or with a seq missing or repeated — is read again
    /// with writes held off: a scan racing a write can miss a chunk, and a log may also
    /// start after `from` or have a hole (seqs a lost store never stored), which the
    /// second read returns as they are.
    fn read(
        &self,
        id: TopicId,
        from: u64,
        max_msgs: usize,
        max_bytes: usize,
    ) -> Result<Vec<LogEntry>, StoreError> {
        let batch = self.read_walk(id, from, max_msgs, max_bytes, Walk::Optimistic)?;
        let whole = batch.first().is_some_and(|e| e.seq == from)
            && batch.windows(2).all(|w| w[1].seq == w[0].seq + 1);
        if whole {
            return Ok(batch);
        }
        self.read_walk(id, from, max_msgs, max_bytes, Walk::Shared)
    }

    fn scan(
        &self,
        id: TopicId,
        from: u64,
        _reach: Reach,
        each: &mut ScanFn<'_>,
    ) -> Result<(), StoreError> {
        self.for_each_record(id, from, |at| each(at.seq(), at.ts_ms(), at.message()))
    }

    fn load_consumers(&self) -> Result<Vec<(TopicId, String, ConsumerRecord)>, StoreError> {
        let mut out = Vec::new();
        for item in self.db()?.scan_prefix([CONSUMER_PREFIX]) {
            let (k, v) = item.map_err(engine)?;
            let bad = || StoreError::Corrupt(format!("malformed consumer entry {k:?}"));
            let id =
                TopicId::from_be_bytes(k.get(1..5).ok_or_else(bad)?.try_into().expect("4 bytes"));
            let name = std::str::from_utf8(&k[5..]).map_err(|_| bad())?.to_string();
            out.push((id, name, ConsumerRecord::decode(&v).ok_or_else(bad)?));
        }
        Ok(out)
    }

    fn drop_held(&self, id: TopicId, from: u64) {
        self.open_chunks().forget(id, from);
    }

    fn reopen(&self) -> Result<(), StoreError> {
        if self.how.stuck.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Engine(STUCK.into()));
        }
        // sled flushes when its last handle is dropped, and after some I/O errors that
        // flush waits for ever for a write that failed. So it is tried first on a thread
        // of its own, with a handle the store keeps serving reads from: a flush that does
        // not end in time means the database cannot be closed in this process.
        if !within(CLOSE_WAIT, {
            let db = self.db.get()?;
            move || drop(db.flush())
        }) {
            self.how.stuck.store(true, std::sync::atomic::Ordering::SeqCst);
            tracing::error!("{STUCK}");
            return Err(StoreError::Engine(STUCK.into()));
        }
        // Under the open chunks' write lock no walk of sled is in progress, so the old
        // database's last handle goes here, and its file lock with it.
        let _open = self.open_chunks();
        if !self.db.take().is_none_or(close) {
            self.how.stuck.store(true, std::sync::atomic::Ordering::SeqCst);
            tracing::error!("{STUCK}");
            return Err(StoreError::Engine(STUCK.into()));
        }
        let how = &self.how;
        let db = open_sled(&how.dir, how.background.every_ms(), how.cache_bytes).map_err(engine)?;
        self.db.replace(Some(db));
        self.fail.reopened();
        Ok(())
    }

    fn free_space(&self) -> Option<u64> {
        self.fail.free_space().or_else(|| free_space(&self.how.dir))
    }
}
