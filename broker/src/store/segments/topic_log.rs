//! [`TopicLog`]: one topic's messages as a directory of segment files
//! (`segment.rs`), the newest one taking appends, and a *floor* below which retention
//! has removed them.
//!
//! Appends are written with one `pwrite` per run at the active segment's end, outside
//! the state's lock; only then is the segment's length moved on, so a read (which takes
//! the lock just to copy a file handle and two offsets, and reads with `pread` after)
//! never sees a record being written. A full segment is synced, gets its index file,
//! and the log goes on in a new one named after its first seq. Removing messages moves
//! the floor (written to the `floor` file first, so that a crash keeps it or the old
//! one), and a segment is deleted once all of it is below the floor.
//!
//! ```text
//! floor file := "floor below_count below_bytes first_live first_segment\n" (decimal)
//! ```
//!
//! `below_*` count what the first kept segment holds under the floor, so that opening
//! does not read it to know the topic's totals; if `first_segment` does not name the
//! first kept segment, the segment is walked instead.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;

use super::segment::{self, encode_record, Segment, HEADER, INDEX_EVERY, SCAN_BLOCK};
use crate::store::{LogEntry, StoreError};

const FLOOR_FILE: &str = "floor";

/// One message of an append: `(seq, ts_ms, message)`.
pub type Run = (u64, i64, Bytes);

/// What a topic's log holds, for its stats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Seq of the first kept message; 0 when none is kept.
    pub first_seq: u64,
    /// Seq of the last message stored (kept or not); 0 if none ever was in these files.
    pub last_seq: u64,
    /// Messages kept, and their bytes.
    pub count: u64,
    /// Bytes of the kept messages.
    pub bytes: u64,
    /// Timestamp of the last message stored.
    pub last_ts: i64,
    /// The floor: messages below it are removed.
    pub floor: u64,
}

/// Where the floor stands in the first kept segment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Floor {
    /// Messages with a lower seq are removed.
    seq: u64,
    /// Records of the first kept segment below `seq`, and their message bytes.
    below_count: u64,
    below_bytes: u64,
    /// Seq of the first kept record (0 if none).
    first_live: u64,
    /// `first_seq` of the segment these describe.
    segment: u64,
}

#[derive(Debug, Default)]
struct State {
    /// Oldest first; the last takes appends.
    segs: Vec<Segment>,
    floor: Floor,
}

/// One topic's log. Internally synchronised: one writer (the storage thread), any
/// number of readers.
#[derive(Debug)]
pub struct TopicLog {
    dir: PathBuf,
    segment_bytes: u64,
    state: RwLock<State>,
    /// Held by whoever writes, for the whole write (appends write outside `state`'s lock).
    writer: Mutex<()>,
    /// A file was created or renamed since the last sync: the directory needs one too.
    created: std::sync::atomic::AtomicBool,
    /// Run once by the next read between its look at the state and its read of the file
    /// (tests: a cut under a read).
    #[cfg(test)]
    pub(super) after_snapshot: Mutex<Option<Hook>>,
}

/// A test's hook ([`TopicLog::after_snapshot`]).
#[cfg(test)]
pub(super) struct Hook(pub(super) Box<dyn FnOnce() + Send>);

#[cfg(test)]
impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hook")
    }
}

fn io(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Io(format!("{what} {}: {e}", path.display()))
}

impl TopicLog {
    /// Opens the log in `dir`, creating the directory if it does not exist.
    pub fn open(dir: &Path, segment_bytes: u64) -> Result<TopicLog, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| io("cannot create", dir, e))?;
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| io("cannot list", dir, e))? {
            let entry = entry.map_err(|e| io("cannot list", dir, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(first) = name.strip_suffix(".log").and_then(|n| n.parse::<u64>().ok()) {
                names.push(first);
            }
        }
        names.sort_unstable();
        let mut segs = Vec::with_capacity(names.len());
        for (i, &first) in names.iter().enumerate() {
            let full = i + 1 < names.len();
            let seg = Segment::open(&segment::segment_path(dir, first), first, full)?;
            if seg.count == 0 {
                // Created just before a crash, or emptied by a failed write.
                seg.remove_files()?;
                continue;
            }
            segs.push(seg);
        }
        let mut state = State {
            segs,
            floor: Floor::default(),
        };
        let saved = read_floor(&dir.join(FLOOR_FILE))?;
        state.floor = match saved {
            Some(f) if first_kept(&state.segs, f.seq).map(|s| s.first_seq) == Some(f.segment) => f,
            Some(f) => floor_at(&state.segs, f.seq, None)?,
            None => floor_at(&state.segs, 0, None)?,
        };
        Ok(TopicLog {
            dir: dir.to_path_buf(),
            segment_bytes,
            state: RwLock::new(state),
            writer: Mutex::new(()),
            created: std::sync::atomic::AtomicBool::new(false),
            #[cfg(test)]
            after_snapshot: Mutex::new(None),
        })
    }

    fn read_state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    fn writing(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends a run of messages, `(seq, ts_ms, message)` with rising seqs above every
    /// seq stored. On failure nothing of it is kept.
    pub fn append(&self, run: &[Run]) -> Result<(), StoreError> {
        let Some(&(first, _, _)) = run.first() else {
            return Ok(());
        };
        let _w = self.writing();
        let mut buf = Vec::with_capacity(run.iter().map(|r| HEADER + r.2.len()).sum());
        for (seq, ts, m) in run {
            encode_record(&mut buf, *seq, *ts, m);
        }
        let active = {
            let st = self.read_state();
            if let Some(last) = st.segs.last() {
                if first <= last.last_seq {
                    return Err(StoreError::Engine(format!(
                        "append of seq {first} to {} after seq {}",
                        self.dir.display(),
                        last.last_seq
                    )));
                }
            }
            match st.segs.last() {
                Some(s) if s.len + buf.len() as u64 <= self.segment_bytes => {
                    Some((s.writable()?, s.len))
                }
                Some(s) => {
                    // Full: make it durable and give it its index before going on.
                    s.handle()?
                        .sync_data()
                        .map_err(|e| io("cannot sync", &s.path, e))?;
                    s.write_index()?;
                    None
                }
                None => None,
            }
        };
        let (file, at, fresh) = match active {
            Some((file, at)) => (file, at, false),
            None => {
                let seg = Segment::create(&self.dir, first)?;
                let file = seg.handle()?;
                let mut st = self.write_state();
                if let Some(full) = st.segs.last_mut() {
                    // Reads open it again: no descriptor held per full segment.
                    full.file = None;
                }
                st.segs.push(seg);
                drop(st);
                self.created
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                (file, 0, true)
            }
        };
        if let Err(e) = std::os::unix::fs::FileExt::write_all_at(&*file, &buf, at) {
            let _ = file.set_len(at);
            if fresh {
                // The full segment before it takes the next appends again: it has no
                // file open, and `writable` opens one for them.
                let mut st = self.write_state();
                if let Some(seg) = st.segs.pop() {
                    let _ = seg.remove_files();
                }
            }
            return Err(StoreError::Io(format!(
                "cannot write to {}: {e}",
                self.dir.display()
            )));
        }
        let mut st = self.write_state();
        let seg = st.segs.last_mut().expect("the segment written to");
        let mut off = at;
        for (seq, ts, m) in run {
            seg.note(*seq, *ts, off, m.len() as u64);
            off += (HEADER + m.len()) as u64;
        }
        if st.floor.first_live == 0 {
            // The log kept nothing: where the floor stands is to be found again (usually
            // in this run alone; in a segment not yet released if it failed before).
            st.floor = floor_at(&st.segs, st.floor.seq, None)?;
        }
        Ok(())
    }

    /// Calls `each(seq, ts_ms, message)` for the kept messages with `seq >= from`, in
    /// order, until it breaks. Reads `block` bytes at a time (a small block for a lookup
    /// of one message). Messages appended during the walk may or may not be met.
    pub fn for_each(
        &self,
        from: u64,
        block: usize,
        each: &mut dyn FnMut(u64, i64, Bytes) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        let mut next = from;
        // Times the segment being read was cut under the read (a failed write taken
        // back); a few, then it is reported as damage.
        let mut cuts = 0;
        loop {
            let (file, path, start, end, last) = {
                let st = self.read_state();
                next = next.max(st.floor.seq);
                let Some(seg) = st
                    .segs
                    .iter()
                    .find(|s| s.last_seq >= next && s.count > 0)
                else {
                    return Ok(());
                };
                let start = if seg.first_seq <= next {
                    seg.offset_for(next)
                } else {
                    0
                };
                (seg.file.clone(), seg.path.clone(), start, seg.len, seg.last_seq)
            };
            #[cfg(test)]
            if let Some(hook) = self.after_snapshot.lock().ok().and_then(|mut h| h.take()) {
                (hook.0)();
            }
            let file = match file {
                Some(file) => file,
                None => match std::fs::File::open(&path) {
                    Ok(f) => std::sync::Arc::new(f),
                    // Released by a removal since (the floor has moved past it), or
                    // gone from under the log, which is damage.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        let still = self.read_state().segs.iter().any(|s| s.path == path);
                        if still {
                            return Err(io("cannot open", &path, e));
                        }
                        continue;
                    }
                    Err(e) => return Err(io("cannot open", &path, e)),
                },
            };
            let mut broke = false;
            let mut met = None;
            let stopped = segment::walk(&file, &path, start, end, block, &mut |seq, ts, _, m| {
                if seq < next {
                    return ControlFlow::Continue(());
                }
                met = Some(seq);
                let r = each(seq, ts, m);
                broke = r.is_break();
                r
            })?;
            if broke {
                return Ok(());
            }
            if stopped < end {
                let st = self.read_state();
                let cut = st
                    .segs
                    .iter()
                    .find(|s| s.path == path)
                    .is_none_or(|s| s.len < end);
                if cut && cuts < 3 {
                    // Read again from after the last message met, as the log is now.
                    cuts += 1;
                    next = met.map_or(next, |seq| seq + 1);
                    continue;
                }
                return Err(StoreError::Corrupt(format!(
                    "log segment {} is damaged at byte {stopped}",
                    path.display()
                )));
            }
            next = last + 1;
        }
    }

    /// Up to `max_msgs` kept messages with `seq >= from` (and about `max_bytes`, at least
    /// one), in order.
    ///
    /// Each message is a slice of the block it was read in, and keeps the whole block
    /// alive while it waits in an outbound queue: so the block is sized to what the batch
    /// needs (the log's average record times `max_msgs`), and a batch that used less than
    /// half of what was read is copied into a buffer of its own. Without both, a replay
    /// of 192-byte records in 544 KiB blocks kept 5× the queued bytes alive (a broker at
    /// 740 MB after two replays of 3 million messages).
    pub fn read(
        &self,
        from: u64,
        max_msgs: usize,
        max_bytes: usize,
    ) -> Result<Vec<LogEntry>, StoreError> {
        let avg = {
            let st = self.read_state();
            st.segs
                .last()
                .filter(|s| s.count > 0)
                .map_or(HEADER, |s| HEADER + (s.bytes / s.count) as usize)
        };
        let want = max_bytes.min(max_msgs.saturating_mul(avg));
        let block = want
            .saturating_add(INDEX_EVERY as usize)
            .clamp(4096, SCAN_BLOCK);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        self.for_each(from, block, &mut |seq, ts_ms, message| {
            if out.len() >= max_msgs || (bytes >= max_bytes && !out.is_empty()) {
                return ControlFlow::Break(());
            }
            bytes += message.len();
            out.push(LogEntry {
                seq,
                ts_ms,
                message,
            });
            ControlFlow::Continue(())
        })?;
        // Most batches come from one block: one that filled less than half of it is
        // copied out.
        if bytes.saturating_mul(2) < block {
            let mut buf = Vec::with_capacity(bytes);
            for e in &out {
                buf.extend_from_slice(&e.message);
            }
            let buf = Bytes::from(buf);
            let mut at = 0;
            for e in &mut out {
                let len = e.message.len();
                e.message = buf.slice(at..at + len);
                at += len;
            }
        }
        Ok(out)
    }

    /// What the log holds.
    pub fn totals(&self) -> Totals {
        let st = self.read_state();
        let f = st.floor;
        let kept = st.segs.iter().filter(|s| s.last_seq >= f.seq);
        let (count, bytes) = kept.fold((0, 0), |(c, b), s| (c + s.count, b + s.bytes));
        let count = count.saturating_sub(f.below_count);
        let last = st.segs.last();
        Totals {
            first_seq: if count == 0 { 0 } else { f.first_live },
            last_seq: last.map_or(0, |s| s.last_seq),
            count,
            bytes: bytes.saturating_sub(f.below_bytes),
            last_ts: last.map_or(0, |s| s.last_ts),
            floor: f.seq,
        }
    }

    /// Moves the floor up to `to` (messages below it are no longer read), writing it
    /// first. Returns the floor before, for [`TopicLog::set_floor`] to put back if the
    /// rest of the write fails; segments wholly below are deleted by
    /// [`TopicLog::release`].
    pub fn raise_floor(&self, to: u64) -> Result<Floor, StoreError> {
        let _w = self.writing();
        let before = self.read_state().floor;
        if to <= before.seq {
            return Ok(before);
        }
        let floor = {
            let st = self.read_state();
            floor_at(&st.segs, to, Some(before))?
        };
        self.set_floor_locked(floor)?;
        Ok(before)
    }

    /// Puts a floor back (see [`TopicLog::raise_floor`]).
    pub fn set_floor(&self, floor: Floor) -> Result<(), StoreError> {
        let _w = self.writing();
        self.set_floor_locked(floor)
    }

    fn set_floor_locked(&self, floor: Floor) -> Result<(), StoreError> {
        write_floor(&self.dir.join(FLOOR_FILE), floor)?;
        self.write_state().floor = floor;
        // The rename is durable once the directory is synced.
        self.created
            .store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// Deletes the segments wholly below the floor.
    pub fn release(&self) -> Result<(), StoreError> {
        let _w = self.writing();
        let gone: Vec<Segment> = {
            let mut st = self.write_state();
            let floor = st.floor.seq;
            let keep = st.segs.iter().position(|s| s.last_seq >= floor);
            let n = keep.unwrap_or(st.segs.len());
            st.segs.drain(..n).collect()
        };
        for seg in gone {
            seg.remove_files()?;
        }
        Ok(())
    }

    /// Removes every message with `seq >= from` (a write refused after it was made).
    pub fn truncate_from(&self, from: u64) -> Result<(), StoreError> {
        let _w = self.writing();
        let mut st = self.write_state();
        while st.segs.last().is_some_and(|s| s.first_seq >= from) {
            let seg = st.segs.pop().expect("checked");
            seg.remove_files()?;
        }
        let Some(last) = st.segs.last_mut() else {
            st.floor = Floor {
                seq: st.floor.seq,
                ..Floor::default()
            };
            return Ok(());
        };
        if last.last_seq < from {
            return Ok(());
        }
        let mut cut = last.len;
        last.walk(last.offset_for(from), last.len, SCAN_BLOCK, &mut |seq, _, at, _| {
            if seq >= from {
                cut = at;
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        })?;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&last.path)
            .and_then(|f| f.set_len(cut))
            .map_err(|e| io("cannot truncate", &last.path, e))?;
        let reopened = Segment::open(&last.path.clone(), last.first_seq, false)?;
        *last = reopened;
        if last.count == 0 {
            let seg = st.segs.pop().expect("checked");
            seg.remove_files()?;
        }
        Ok(())
    }

    /// Makes what was appended durable: the active segment's data, and the directory's
    /// entries if a segment was created since.
    pub fn sync(&self) -> Result<(), StoreError> {
        let file = self.read_state().segs.last().map(|s| (s.handle(), s.path.clone()));
        if let Some((file, path)) = file {
            file?.sync_data().map_err(|e| io("cannot sync", &path, e))?;
        }
        if self.created.swap(false, std::sync::atomic::Ordering::SeqCst) {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

/// Syncs a directory's entries (a file created or renamed in it).
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("cannot sync", dir, e))
}

/// The first segment holding a kept record (any with `seq >= floor`).
fn first_kept(segs: &[Segment], floor: u64) -> Option<&Segment> {
    segs.iter().find(|s| s.last_seq >= floor && s.count > 0)
}

/// Where floor `seq` stands: counts the first kept segment's records below it, going on
/// from `from` when it describes the same segment (only the newly removed part is read).
fn floor_at(segs: &[Segment], seq: u64, from: Option<Floor>) -> Result<Floor, StoreError> {
    let Some(seg) = first_kept(segs, seq) else {
        return Ok(Floor {
            seq,
            ..Floor::default()
        });
    };
    let mut floor = Floor {
        seq,
        segment: seg.first_seq,
        ..Floor::default()
    };
    let mut start = 0;
    let mut counted_from = 0;
    if let Some(f) = from.filter(|f| f.segment == seg.first_seq && f.seq <= seq) {
        floor.below_count = f.below_count;
        floor.below_bytes = f.below_bytes;
        start = seg.offset_for(f.seq);
        counted_from = f.seq;
    }
    seg.walk(start, seg.len, SCAN_BLOCK, &mut |s, _, _, m| {
        if s >= seq {
            floor.first_live = s;
            return ControlFlow::Break(());
        }
        if s >= counted_from {
            floor.below_count += 1;
            floor.below_bytes += m.len() as u64;
        }
        ControlFlow::Continue(())
    })?;
    Ok(floor)
}

fn write_floor(path: &Path, f: Floor) -> Result<(), StoreError> {
    let tmp = path.with_extension("tmp");
    let text = format!(
        "{} {} {} {} {}\n",
        f.seq, f.below_count, f.below_bytes, f.first_live, f.segment
    );
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| io("cannot write", path, e))
}

fn read_floor(path: &Path) -> Result<Option<Floor>, StoreError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("cannot read", path, e)),
    };
    let n: Option<Vec<u64>> = text.split_whitespace().map(|w| w.parse().ok()).collect();
    let Some([seq, below_count, below_bytes, first_live, segment]) =
        n.as_deref().and_then(|n| <[u64; 5]>::try_from(n).ok())
    else {
        // A rename not yet synced when the machine stopped can leave an empty file.
        // What it said is lost: the removed messages are read again (and retention
        // removes them again), which is better than refusing to start.
        tracing::warn!(file = %path.display(), "the log's floor file is malformed; ignoring it");
        return Ok(None);
    };
    Ok(Some(Floor {
        seq,
        below_count,
        below_bytes,
        first_live,
        segment,
    }))
}
