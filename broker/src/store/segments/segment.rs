//! One segment file of a topic's log: its record format, the scan that finds out what a
//! file holds (and where a torn write at its end begins), reads of records from an
//! offset, and the small index file written beside a segment once it is full.
//!
//! A segment is a sequence of records, seqs rising (not necessarily without gaps: a log
//! may start again after a lost store), all little-endian:
//!
//! ```text
//! record := len: u32 ++ crc: u32 ++ seq: u64 ++ ts_ms: i64 ++ message: [u8; len]
//! crc    := CRC-32 (IEEE) of seq ++ ts_ms ++ message
//! ```
//!
//! The message is the encoded `rtc.v1.Message` as delivered, so a replay sends the
//! bytes read without re-encoding them. The segment keeps a sparse index in memory:
//! the offset of its first record and of the first record at or after every
//! [`INDEX_EVERY`] bytes, so that a read from any seq scans at most that much before
//! the record it wants.
//!
//! ```text
//! index file := magic "RTCIDX01" ++ len: u64 ++ count: u64 ++ bytes: u64 ++ last_seq: u64
//!               ++ last_ts: i64 ++ n: u32 ++ n × (seq: u64 ++ offset: u64) ++ crc: u32
//! ```
//!
//! written once a segment is full (the log goes on in a new one), so that opening a
//! long log reads each full segment's index instead of the segment. An index that is
//! missing, damaged or does not match its segment's length is ignored and the segment
//! scanned instead.

use std::fs::File;
use std::ops::ControlFlow;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::store::StoreError;

/// Bytes of a record's header.
pub const HEADER: usize = 24;
/// Index granularity: a read from a seq scans at most about this many bytes before it.
/// 16 bytes of index per 32 KiB of log: 0.05 % of the log in memory.
pub const INDEX_EVERY: u64 = 32 * 1024;
/// Largest record the scan believes: anything claiming more is damage. A message is
/// bounded far below this by `max_frame_size`.
const MAX_RECORD: usize = 256 * 1024 * 1024;
/// Bytes read at a time by scans and long reads.
pub const SCAN_BLOCK: usize = 1024 * 1024;
const INDEX_MAGIC: &[u8; 8] = b"RTCIDX01";

/// Appends one record to `buf`.
pub fn encode_record(buf: &mut Vec<u8>, seq: u64, ts_ms: i64, message: &[u8]) {
    let start = buf.len();
    buf.extend_from_slice(&(message.len() as u32).to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&ts_ms.to_le_bytes());
    buf.extend_from_slice(message);
    let crc = crc32fast::hash(&buf[start + 8..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// What the bytes at some offset hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A whole record: its seq and timestamp, and its total length (header included).
    Whole { seq: u64, ts_ms: i64, len: usize },
    /// The start of a record of this total length, cut off.
    Short(usize),
    /// Not a record: a bad length or checksum.
    Bad,
}

/// Parses the record at the start of `buf`.
pub fn parse(buf: &[u8]) -> Parsed {
    if buf.len() < HEADER {
        return Parsed::Short(HEADER);
    }
    let u32_at = |i: usize| u32::from_le_bytes(buf[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |i: usize| u64::from_le_bytes(buf[i..i + 8].try_into().expect("8 bytes"));
    let body = u32_at(0) as usize;
    if body > MAX_RECORD {
        return Parsed::Bad;
    }
    let len = HEADER + body;
    if buf.len() < len {
        return Parsed::Short(len);
    }
    if crc32fast::hash(&buf[8..len]) != u32_at(4) {
        return Parsed::Bad;
    }
    Parsed::Whole {
        seq: u64_at(8),
        ts_ms: u64_at(16) as i64,
        len,
    }
}

/// One segment file and what is known of its records.
#[derive(Debug)]
pub struct Segment {
    /// Seq of its first record (also its file name).
    pub first_seq: u64,
    /// The file while the segment takes appends, shared with reads in progress (which
    /// may outlive the segment's removal). A full segment keeps none open, so that a long
    /// log or many topics do not hold a file descriptor per segment: reads open it
    /// ([`Segment::handle`]).
    pub file: Option<Arc<File>>,
    /// Its path.
    pub path: PathBuf,
    /// Bytes of whole records: reads never go past it.
    pub len: u64,
    /// Records in it, and their messages' bytes.
    pub count: u64,
    /// Bytes of the messages in it (without record headers).
    pub bytes: u64,
    /// Seq and timestamp of its last record.
    pub last_seq: u64,
    /// Timestamp of its last record.
    pub last_ts: i64,
    /// `(seq, offset)`: the first record, then the first at or after every
    /// [`INDEX_EVERY`] bytes.
    pub index: Vec<(u64, u64)>,
}

/// The file names of segment `first_seq`.
pub fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.log"))
}

fn index_path(log: &Path) -> PathBuf {
    log.with_extension("idx")
}

fn io(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Io(format!("{what} {}: {e}", path.display()))
}

impl Segment {
    /// Creates segment `first_seq` in `dir`, empty.
    pub fn create(dir: &Path, first_seq: u64) -> Result<Segment, StoreError> {
        let path = segment_path(dir, first_seq);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| io("cannot create", &path, e))?;
        Ok(Segment::empty(first_seq, Arc::new(file), path))
    }

    /// Segment `first_seq` in `file` at `path`, with nothing known of its records yet.
    fn empty(first_seq: u64, file: Arc<File>, path: PathBuf) -> Segment {
        Segment {
            first_seq,
            file: Some(file),
            path,
            len: 0,
            count: 0,
            bytes: 0,
            last_seq: 0,
            last_ts: 0,
            index: Vec::new(),
        }
    }

    /// Opens the segment at `path`: from its index file if `full` and the index matches,
    /// else by scanning it. A torn record at the end (a write cut off by a crash) is cut
    /// from the file, with a warning. A `full` segment is left without an open file.
    pub fn open(path: &Path, first_seq: u64, full: bool) -> Result<Segment, StoreError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| io("cannot open", path, e))?;
        let file_len = file
            .metadata()
            .map_err(|e| io("cannot stat", path, e))?
            .len();
        let file = Arc::new(file);
        let mut seg = Segment::empty(first_seq, file.clone(), path.to_path_buf());
        if full && seg.load_index(file_len) {
            seg.file = None;
            return Ok(seg);
        }
        seg.scan(&file, file_len)?;
        if seg.len < file_len {
            tracing::warn!(
                segment = %path.display(),
                kept = seg.len,
                cut = file_len - seg.len,
                "the end of a log segment is not a whole record (a write cut off by a crash); cutting it"
            );
            file.set_len(seg.len)
                .map_err(|e| io("cannot truncate", path, e))?;
        }
        if full {
            seg.file = None;
        }
        Ok(seg)
    }

    /// Reads the whole file, recording every record, up to the first that is not whole.
    fn scan(&mut self, file: &File, file_len: u64) -> Result<(), StoreError> {
        let path = self.path.clone();
        let end = walk(file, &path, 0, file_len, SCAN_BLOCK, &mut |seq, ts, at, body| {
            self.note(seq, ts, at, body.len() as u64);
            ControlFlow::Continue(())
        })?;
        self.len = end;
        Ok(())
    }

    /// The file to read: the open one, or the file opened again (a full segment).
    pub fn handle(&self) -> Result<Arc<File>, StoreError> {
        match &self.file {
            Some(f) => Ok(f.clone()),
            None => File::open(&self.path)
                .map(Arc::new)
                .map_err(|e| io("cannot open", &self.path, e)),
        }
    }

    /// The file to append to: the open one, or the file opened again for writing (a
    /// segment that takes appends again after the newer one was taken back).
    pub fn writable(&self) -> Result<Arc<File>, StoreError> {
        match &self.file {
            Some(f) => Ok(f.clone()),
            None => std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&self.path)
                .map(Arc::new)
                .map_err(|e| io("cannot open", &self.path, e)),
        }
    }

    /// Records that a record of `body` message bytes was stored at `at`.
    pub fn note(&mut self, seq: u64, ts_ms: i64, at: u64, body: u64) {
        let indexed = self.index.last().map(|&(_, off)| off);
        if indexed.is_none_or(|off| at >= off + INDEX_EVERY) {
            self.index.push((seq, at));
        }
        self.count += 1;
        self.bytes += body;
        self.last_seq = seq;
        self.last_ts = ts_ms;
        self.len = at + HEADER as u64 + body;
    }

    /// Where a read from `seq` starts: the indexed offset at or before it.
    pub fn offset_for(&self, seq: u64) -> u64 {
        let i = self.index.partition_point(|&(s, _)| s <= seq);
        i.checked_sub(1).map_or(0, |i| self.index[i].1)
    }

    /// Calls `each(seq, ts_ms, offset, message)` for the whole records of the segment in
    /// `from..to`, reading `block` bytes at a time, until it breaks. Returns where the
    /// walk stopped: `to`, the record it broke at, or the first bytes that are not a
    /// whole record.
    pub fn walk(
        &self,
        from: u64,
        to: u64,
        block: usize,
        each: &mut dyn FnMut(u64, i64, u64, Bytes) -> ControlFlow<()>,
    ) -> Result<u64, StoreError> {
        walk(&*self.handle()?, &self.path, from, to, block, each)
    }

    /// Writes the index file (the segment is full).
    pub fn write_index(&self) -> Result<(), StoreError> {
        let mut v = Vec::with_capacity(52 + self.index.len() * 16);
        v.extend_from_slice(INDEX_MAGIC);
        for x in [self.len, self.count, self.bytes, self.last_seq] {
            v.extend_from_slice(&x.to_le_bytes());
        }
        v.extend_from_slice(&self.last_ts.to_le_bytes());
        v.extend_from_slice(&(self.index.len() as u32).to_le_bytes());
        for &(seq, off) in &self.index {
            v.extend_from_slice(&seq.to_le_bytes());
            v.extend_from_slice(&off.to_le_bytes());
        }
        let crc = crc32fast::hash(&v);
        v.extend_from_slice(&crc.to_le_bytes());
        let path = index_path(&self.path);
        std::fs::write(&path, v).map_err(|e| io("cannot write", &path, e))
    }

    /// Reads the index file; false if it is missing or does not fit this segment.
    fn load_index(&mut self, file_len: u64) -> bool {
        let Ok(v) = std::fs::read(index_path(&self.path)) else {
            return false;
        };
        let Some(parsed) = parse_index(&v) else {
            return false;
        };
        if parsed.len != file_len || parsed.index.first().map(|e| e.0) != Some(self.first_seq) {
            return false;
        }
        self.len = parsed.len;
        self.count = parsed.count;
        self.bytes = parsed.bytes;
        self.last_seq = parsed.last_seq;
        self.last_ts = parsed.last_ts;
        self.index = parsed.index;
        true
    }

    /// Removes the segment's files (the index may not exist).
    pub fn remove_files(&self) -> Result<(), StoreError> {
        std::fs::remove_file(&self.path).map_err(|e| io("cannot remove", &self.path, e))?;
        let _ = std::fs::remove_file(index_path(&self.path));
        Ok(())
    }
}

/// What an index file says.
struct IndexFile {
    len: u64,
    count: u64,
    bytes: u64,
    last_seq: u64,
    last_ts: i64,
    index: Vec<(u64, u64)>,
}

fn parse_index(v: &[u8]) -> Option<IndexFile> {
    let body = v.len().checked_sub(4)?;
    let crc = u32::from_le_bytes(v[body..].try_into().ok()?);
    if v.len() < 52 || &v[..8] != INDEX_MAGIC || crc32fast::hash(&v[..body]) != crc {
        return None;
    }
    let u64_at = |i: usize| u64::from_le_bytes(v[i..i + 8].try_into().expect("8 bytes"));
    let n = u32::from_le_bytes(v[48..52].try_into().ok()?) as usize;
    if body != 52 + n * 16 {
        return None;
    }
    Some(IndexFile {
        len: u64_at(8),
        count: u64_at(16),
        bytes: u64_at(24),
        last_seq: u64_at(32),
        last_ts: u64_at(40) as i64,
        index: (0..n)
            .map(|i| (u64_at(52 + i * 16), u64_at(60 + i * 16)))
            .collect(),
    })
}

/// [`Segment::walk`] on a file alone (reads hold the file, not the segment).
pub fn walk(
    file: &File,
    path: &Path,
    from: u64,
    to: u64,
    block: usize,
    each: &mut dyn FnMut(u64, i64, u64, Bytes) -> ControlFlow<()>,
) -> Result<u64, StoreError> {
    let mut at = from;
    let mut want = block;
    while at < to {
        let n = want.max(HEADER).min((to - at) as usize);
        let mut buf = vec![0u8; n];
        match file.read_exact_at(&mut buf, at) {
            Ok(()) => {}
            // Shorter than `to` (cut by a failed write taken back): stop here, and let
            // the caller tell a cut from damage.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(at),
            Err(e) => return Err(io("cannot read", path, e)),
        }
        let buf = Bytes::from(buf);
        let mut pos = 0;
        while pos < buf.len() {
            match parse(&buf[pos..]) {
                Parsed::Whole { seq, ts_ms, len } => {
                    let body = buf.slice(pos + HEADER..pos + len);
                    if each(seq, ts_ms, at + pos as u64, body).is_break() {
                        return Ok(at + pos as u64);
                    }
                    pos += len;
                }
                Parsed::Short(len) => {
                    if pos == 0 {
                        if n as u64 == to - at {
                            // Cut off at `to`: a torn write.
                            return Ok(at);
                        }
                        // A record longer than the block: read it whole.
                        want = len;
                    }
                    break;
                }
                Parsed::Bad => return Ok(at + pos as u64),
            }
        }
        if pos > 0 {
            want = block;
        }
        at += pos as u64;
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse_back_and_damage_is_seen() {
        let mut buf = Vec::new();
        encode_record(&mut buf, 7, -3, b"hello");
        assert_eq!(
            parse(&buf),
            Parsed::Whole {
                seq: 7,
                ts_ms: -3,
                len: HEADER + 5
            }
        );
        assert_eq!(parse(&buf[..HEADER + 2]), Parsed::Short(HEADER + 5));
        assert_eq!(parse(&buf[..3]), Parsed::Short(HEADER));
        let mut bad = buf.clone();
        bad[HEADER + 1] ^= 1;
        assert_eq!(parse(&bad), Parsed::Bad);
        let mut huge = buf.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse(&huge), Parsed::Bad);
    }

    #[test]
    fn a_torn_end_is_cut_and_the_index_file_is_used_only_when_it_fits() {
        let dir = tempfile::tempdir().unwrap();
        let mut seg = Segment::create(dir.path(), 1).unwrap();
        let mut buf = Vec::new();
        let big = vec![9u8; 5000];
        for seq in 1..=40u64 {
            let at = buf.len() as u64;
            encode_record(&mut buf, seq, seq as i64 * 10, &big);
            seg.note(seq, seq as i64 * 10, at, big.len() as u64);
        }
        let file = seg.handle().unwrap();
        file.write_all_at(&buf, 0).unwrap();
        assert!(seg.index.len() > 1, "{:?}", seg.index);
        seg.write_index().unwrap();
        let path = seg.path.clone();
        let reopened = Segment::open(&path, 1, true).unwrap();
        assert_eq!(
            (reopened.count, reopened.last_seq, reopened.index.clone()),
            (40, 40, seg.index.clone())
        );
        assert!(reopened.file.is_none(), "a full segment holds no file open");
        // Half a record more: the index no longer fits; the scan cuts the torn end.
        let mut torn = Vec::new();
        encode_record(&mut torn, 41, 410, &big);
        file.write_all_at(&torn[..100], buf.len() as u64).unwrap();
        let reopened = Segment::open(&path, 1, true).unwrap();
        assert_eq!((reopened.count, reopened.last_seq), (40, 40));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), buf.len() as u64);
        assert_eq!(reopened.offset_for(1), 0);
        assert_eq!(reopened.offset_for(40), *reopened.index.last().map(|(_, o)| o).unwrap());
    }

    #[test]
    fn a_full_segment_opened_again_for_appends_is_writable() {
        let dir = tempfile::tempdir().unwrap();
        let seg = Segment::create(dir.path(), 1).unwrap();
        let mut buf = Vec::new();
        encode_record(&mut buf, 1, 10, b"one");
        seg.handle().unwrap().write_all_at(&buf, 0).unwrap();
        let full = Segment::open(&seg.path, 1, true).unwrap();
        assert!(full.file.is_none());
        // What a read opens is read-only; what an append opens takes the write.
        let mut more = Vec::new();
        encode_record(&mut more, 2, 20, b"two");
        assert!(full.handle().unwrap().write_all_at(&more, full.len).is_err());
        full.writable().unwrap().write_all_at(&more, full.len).unwrap();
        let again = Segment::open(&seg.path, 1, false).unwrap();
        assert_eq!((again.count, again.last_seq), (2, 2));
    }
}
