//! [`SegmentStorage`]: the [`Storage`] trait with each topic's messages in append-only
//! segment files of its own (`topic_log.rs`, `segment.rs`), and everything else —
//! topics, their settings and stats, consumer state, the next topic id — in a small
//! sled database ([`SledStorage`], which then holds no messages).
//!
//! Why: sled kept each version of its nodes until its segments were cleaned (the store
//! took 1.8× the messages' bytes on disk), held in memory about half of what a replay
//! read whatever its cache setting, and wrote its log of node versions on every flush
//! (docs/benchmarks.md, "Long logs"). Here a message is written once, as a record
//! appended to its topic's file; reads go through the OS page cache with `pread`, which
//! the kernel reclaims under pressure; a flush is one `fdatasync` per topic written;
//! retention deletes whole files.
//!
//! A write goes in this order: appends (one `pwrite` per topic's run), the floors of
//! removals, then the metadata ops in sled, then the files wholly removed. A failure on
//! the way takes back what went before it (appends truncated, floors put back), so a
//! refused write leaves nothing. After a crash the log is the authority on what is
//! stored: opening recounts each topic's stats from its files (sled's stats may be
//! older than its messages, or, after a power loss under fsync `never`, newer), and
//! only `last_seq` is taken as the larger of the two, so seqs are never reused.
//!
//! A flush syncs the segments written since the last one, then sled only if something
//! other than stats was written to it (consumer state, topics): stats are recounted
//! from the log on open, so a pass of publishes costs one `fdatasync` per topic.
//!
//! Layout under the data dir: `store/` (sled, as before) and `log/` with
//! [`LOG_MARKER`] and a directory per topic id holding its segments and `floor` file.

use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;


mod segment;
#[cfg(test)]
mod tests;
mod topic_log;

use super::sled_store::{BackgroundFlush, SledStorage};
use super::{
    ConsumerRecord, LogEntry, Reach, ScanFn, Storage, StoreError, StoredTopic, TopicId, TopicStats,
    WriteOp,
};
use topic_log::{sync_dir, TopicLog, Totals};

/// File in the log directory naming its format version.
pub const LOG_MARKER: &str = "rtc-log-format";
/// Version of the segment and index formats (`segment.rs`).
pub const LOG_FORMAT: u32 = 1;
/// Size at which a segment is full and the log goes on in a new one. Retention frees
/// disk a whole segment at a time, so this is also about how much more than the limits
/// a topic keeps on disk.
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Block a lookup of one message reads.
const LOOKUP_BLOCK: usize = 4096;

/// The segment-file store. Cloning is not offered: the broker holds it in an `Arc`.
#[derive(Debug)]
pub struct SegmentStorage {
    meta: SledStorage,
    root: PathBuf,
    segment_bytes: u64,
    logs: Arc<RwLock<HashMap<TopicId, Arc<TopicLog>>>>,
    /// Topics appended to (or whose floor moved) since the last flush.
    dirty: Arc<Mutex<HashSet<TopicId>>>,
    /// A topic directory was created since the last flush.
    root_dirty: AtomicBool,
    /// sled was written something that must be durable at the next flush.
    meta_dirty: AtomicBool,
}

fn io(what: &str, path: &Path, e: std::io::Error) -> String {
    format!("{what} {}: {e}", path.display())
}

impl SegmentStorage {
    /// Opens (or creates) the store: sled in `store_dir` (cache `cache_bytes`, see
    /// [`SledStorage::open_with_cache`]) and the topics' logs in `log_dir`. Errors name the
    /// path and say what is wrong.
    pub fn open(
        store_dir: &Path,
        log_dir: &Path,
        background: BackgroundFlush,
        cache_bytes: u64,
    ) -> Result<SegmentStorage, String> {
        Self::open_with(store_dir, log_dir, background, cache_bytes, SEGMENT_BYTES)
    }

    /// [`SegmentStorage::open`] with segments of `segment_bytes` (tests use small ones).
    pub fn open_with(
        store_dir: &Path,
        log_dir: &Path,
        background: BackgroundFlush,
        cache_bytes: u64,
        segment_bytes: u64,
    ) -> Result<SegmentStorage, String> {
        let marker = log_dir.join(LOG_MARKER);
        let fresh = match std::fs::read_to_string(&marker) {
            Ok(v) if v.trim() == LOG_FORMAT.to_string() => false,
            Ok(v) => {
                return Err(format!(
                    "log directory {} uses log format {}; this rtc-broker reads format {LOG_FORMAT}",
                    log_dir.display(),
                    v.trim()
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => return Err(io("cannot read", &marker, e)),
        };
        let meta = SledStorage::open_with_cache(store_dir, background, cache_bytes)?;
        if meta.holds_messages().map_err(|e| e.to_string())? {
            return Err(format!(
                "data directory {} keeps its messages in sled (store_engine = \"sled\"), but {} exists: remove one of them",
                store_dir.display(),
                log_dir.display()
            ));
        }
        if fresh {
            std::fs::create_dir_all(log_dir)
                .and_then(|()| std::fs::write(&marker, format!("{LOG_FORMAT}\n")))
                .map_err(|e| io("cannot create", &marker, e))?;
            sync_dir(log_dir).map_err(|e| e.to_string())?;
        }
        let mut logs = HashMap::new();
        for entry in std::fs::read_dir(log_dir).map_err(|e| io("cannot list", log_dir, e))? {
            let entry = entry.map_err(|e| io("cannot list", log_dir, e))?;
            let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<TopicId>().ok())
            else {
                continue;
            };
            let log = TopicLog::open(&entry.path(), segment_bytes).map_err(|e| e.to_string())?;
            logs.insert(id, Arc::new(log));
        }
        let logs = Arc::new(RwLock::new(logs));
        let dirty = Arc::new(Mutex::new(HashSet::new()));
        if let BackgroundFlush::EveryMs(ms) = background {
            background_sync(&logs, &dirty, std::time::Duration::from_millis(ms))
                .map_err(|e| format!("cannot start the log's sync thread: {e}"))?;
        }
        Ok(SegmentStorage {
            meta,
            root: log_dir.to_path_buf(),
            segment_bytes,
            logs,
            dirty,
            root_dirty: AtomicBool::new(false),
            meta_dirty: AtomicBool::new(false),
        })
    }

    fn log(&self, id: TopicId) -> Option<Arc<TopicLog>> {
        let logs = self.logs.read().unwrap_or_else(|p| p.into_inner());
        logs.get(&id).cloned()
    }

    fn log_or_create(&self, id: TopicId) -> Result<Arc<TopicLog>, StoreError> {
        if let Some(log) = self.log(id) {
            return Ok(log);
        }
        let log = Arc::new(TopicLog::open(
            &self.root.join(id.to_string()),
            self.segment_bytes,
        )?);
        self.root_dirty.store(true, Ordering::SeqCst);
        let mut logs = self.logs.write().unwrap_or_else(|p| p.into_inner());
        Ok(logs.entry(id).or_insert(log).clone())
    }

    fn mark_dirty(&self, id: TopicId) {
        self.dirty
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id);
    }

    /// Removes a topic's log directory (its topic is gone from sled).
    fn remove_log(&self, id: TopicId) {
        let log = {
            let mut logs = self.logs.write().unwrap_or_else(|p| p.into_inner());
            logs.remove(&id)
        };
        let dir = log.map_or_else(|| self.root.join(id.to_string()), |l| l.dir().to_path_buf());
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            // Its topic is gone: the next open removes what is left.
            Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a deleted topic's log"),
        }
        self.root_dirty.store(true, Ordering::SeqCst);
    }
}

/// Under fsync `never`, syncs the segments written to every `every`, as sled flushes its
/// own log (so a crash of the machine loses about that much, not the kernel's 30 s of
/// dirty pages). The thread ends once the store is dropped.
fn background_sync(
    logs: &Arc<RwLock<HashMap<TopicId, Arc<TopicLog>>>>,
    dirty: &Arc<Mutex<HashSet<TopicId>>>,
    every: std::time::Duration,
) -> std::io::Result<()> {
    let (logs, dirty) = (Arc::downgrade(logs), Arc::downgrade(dirty));
    std::thread::Builder::new()
        .name("rtc-log-sync".into())
        .spawn(move || loop {
            std::thread::sleep(every);
            let (Some(logs), Some(dirty)) = (logs.upgrade(), dirty.upgrade()) else {
                return;
            };
            let ids: Vec<TopicId> = dirty.lock().unwrap_or_else(|p| p.into_inner()).drain().collect();
            for id in ids {
                let log = logs.read().unwrap_or_else(|p| p.into_inner()).get(&id).cloned();
                if let Some(Err(e)) = log.map(|l| l.sync()) {
                    tracing::warn!(id, error = %e, "background sync of a topic's log failed");
                    dirty.lock().unwrap_or_else(|p| p.into_inner()).insert(id);
                }
            }
        })
        .map(drop)
}

/// Stats as the log has them: the log counts the messages; `last_seq` is the larger of
/// the two, so that a seq is never handed out twice.
fn reconcile(name: &str, stats: &mut TopicStats, log: Totals) {
    let recounted = TopicStats {
        first_seq: log.first_seq,
        last_seq: stats
            .last_seq
            .max(log.last_seq)
            .max(log.floor.saturating_sub(1)),
        messages: log.count,
        bytes: log.bytes,
        last_ts_ms: stats.last_ts_ms.max(log.last_ts),
    };
    if recounted != *stats {
        tracing::info!(
            topic = name,
            recorded = stats.messages,
            stored = log.count,
            "topic stats recounted from its log (the broker stopped before they were written)"
        );
    }
    *stats = recounted;
}

impl Storage for SegmentStorage {
    fn load_topics(&self) -> Result<Vec<StoredTopic>, StoreError> {
        let mut topics = self.meta.load_topics()?;
        let known: HashSet<TopicId> = topics.iter().map(|t| t.id).collect();
        let orphans: Vec<TopicId> = {
            let logs = self.logs.read().unwrap_or_else(|p| p.into_inner());
            logs.keys().filter(|id| !known.contains(id)).copied().collect()
        };
        for id in orphans {
            // A topic deleted, or created by a write cut off before its metadata.
            tracing::info!(id, "removing the log of a topic that no longer exists");
            self.remove_log(id);
        }
        for t in topics.iter_mut().filter(|t| t.id != 0) {
            let totals = self.log(t.id).map(|l| l.totals()).unwrap_or_default();
            reconcile(&t.name, &mut t.stats, totals);
        }
        Ok(topics)
    }

    fn next_topic_id(&self) -> Result<TopicId, StoreError> {
        self.meta.next_topic_id()
    }

    fn write(&self, ops: Vec<WriteOp>) -> Result<(), StoreError> {
        let mut runs: Vec<(TopicId, Vec<topic_log::Run>)> = Vec::new();
        let mut meta_ops = Vec::new();
        let mut raises = Vec::new();
        let mut deletes = Vec::new();
        for op in ops {
            match op {
                WriteOp::Append {
                    id,
                    seq,
                    ts_ms,
                    message,
                } => match runs.last_mut() {
                    Some((run_id, run)) if *run_id == id => run.push((seq, ts_ms, message)),
                    _ => runs.push((id, vec![(seq, ts_ms, message)])),
                },
                WriteOp::RemoveRange { id, from: _, to } => raises.push((id, to)),
                WriteOp::DeleteTopic { id, .. } => {
                    if id != 0 {
                        deletes.push(id);
                    }
                    meta_ops.push(op);
                }
                op => meta_ops.push(op),
            }
        }
        let mut appended: Vec<(Arc<TopicLog>, u64)> = Vec::with_capacity(runs.len());
        let mut raised = Vec::with_capacity(raises.len());
        let undo = |appended: &[(Arc<TopicLog>, u64)],
                    raised: &[(Arc<TopicLog>, topic_log::Floor)]| {
            for (log, first) in appended {
                if let Err(e) = log.truncate_from(*first) {
                    tracing::error!(error = %e, "cannot take back the appends of a failed write");
                }
            }
            for (log, floor) in raised {
                if let Err(e) = log.set_floor(*floor) {
                    tracing::error!(error = %e, "cannot put back the floor of a failed write");
                }
            }
        };
        for (id, run) in &runs {
            let result = self.log_or_create(*id).and_then(|log| {
                log.append(run)?;
                Ok(log)
            });
            match result {
                Ok(log) => appended.push((log, run[0].0)),
                Err(e) => {
                    undo(&appended, &raised);
                    return Err(e);
                }
            }
            self.mark_dirty(*id);
        }
        for (id, to) in raises {
            let Some(log) = self.log(id) else { continue };
            match log.raise_floor(to) {
                Ok(before) => raised.push((log, before)),
                Err(e) => {
                    undo(&appended, &raised);
                    return Err(e);
                }
            }
            self.mark_dirty(id);
        }
        if !meta_ops.is_empty() {
            let durable = meta_ops
                .iter()
                .any(|op| !matches!(op, WriteOp::PutStats(..)));
            if let Err(e) = self.meta.write(meta_ops) {
                undo(&appended, &raised);
                return Err(e);
            }
            if durable {
                self.meta_dirty.store(true, Ordering::SeqCst);
            }
        }
        for (log, _) in &raised {
            // The floor already hides what these files held; a file left behind is
            // removed by the next removal, or it stays as dead bytes.
            if let Err(e) = log.release() {
                tracing::warn!(error = %e, "cannot remove a log segment below the floor");
            }
        }
        for id in deletes {
            self.remove_log(id);
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        let ids: Vec<TopicId> = {
            let mut dirty = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
            dirty.drain().collect()
        };
        for (i, &id) in ids.iter().enumerate() {
            if let Some(log) = self.log(id) {
                if let Err(e) = log.sync() {
                    let mut dirty = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
                    dirty.extend(&ids[i..]);
                    return Err(e);
                }
            }
        }
        if self.root_dirty.swap(false, Ordering::SeqCst) {
            if let Err(e) = sync_dir(&self.root) {
                self.root_dirty.store(true, Ordering::SeqCst);
                return Err(e);
            }
        }
        if self.meta_dirty.swap(false, Ordering::SeqCst) {
            if let Err(e) = self.meta.flush() {
                self.meta_dirty.store(true, Ordering::SeqCst);
                return Err(e);
            }
        }
        Ok(())
    }

    fn seal_due(&self) -> Option<Instant> {
        self.meta.seal_due()
    }

    fn seal(&self) -> Result<(), StoreError> {
        self.meta.seal()
    }

    fn read(
        &self,
        id: TopicId,
        from: u64,
        max_msgs: usize,
        max_bytes: usize,
    ) -> Result<Vec<LogEntry>, StoreError> {
        match self.log(id) {
            Some(log) => log.read(from, max_msgs, max_bytes),
            None => Ok(Vec::new()),
        }
    }

    fn scan(
        &self,
        id: TopicId,
        from: u64,
        reach: Reach,
        each: &mut ScanFn<'_>,
    ) -> Result<(), StoreError> {
        let block = match reach {
            Reach::One => LOOKUP_BLOCK,
            Reach::Many => segment::SCAN_BLOCK,
        };
        let Some(log) = self.log(id) else {
            return Ok(());
        };
        let mut failed = None;
        log.for_each(from, block, &mut |seq, ts, m| match each(seq, ts, &m) {
            Ok(flow) => flow,
            Err(e) => {
                failed = Some(e);
                ControlFlow::Break(())
            }
        })?;
        failed.map_or(Ok(()), Err)
    }

    fn load_consumers(&self) -> Result<Vec<(TopicId, String, ConsumerRecord)>, StoreError> {
        self.meta.load_consumers()
    }

    fn drop_held(&self, id: TopicId, from: u64) {
        if let Some(log) = self.log(id) {
            if let Err(e) = log.truncate_from(from) {
                tracing::error!(id, from, error = %e, "cannot take back the appends of a failed flush");
            }
        }
    }

    fn reopen(&self) -> Result<(), StoreError> {
        self.meta.reopen()
    }

    fn free_space(&self) -> Option<u64> {
        self.meta.free_space()
    }
}
