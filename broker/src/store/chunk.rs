//! The value format of a log chunk: consecutive messages of one topic stored under one
//! sled key (`b"m" ++ id ++ first_seq`), so that a storage pass that appends a run of
//! messages to a topic costs one sled insert instead of one per message (sled's per-key
//! work — tree descent, node splits, page rewrites — was most of the storage thread's
//! time at 256 publishes in flight).
//!
//! A chunk is a sequence of records, one per message, seqs counting up from the key's
//! `first_seq` without gaps:
//!
//! ```text
//! record := ts_ms: i64 (big-endian) ++ len: u32 (big-endian) ++ message: [u8; len]
//! ```
//!
//! [`ChunkBuilder`] writes chunks; [`records`] reads them back, refusing a malformed
//! chunk as corrupt rather than panicking.

use super::StoreError;

/// Most messages in one chunk. Readers rely on it to find the chunk holding a seq (it
/// starts at most `MAX_MESSAGES - 1` before it): raising it needs a new format version.
pub const MAX_MESSAGES: usize = 128;
/// A chunk is closed once its records reach this many bytes (a larger message gets a
/// chunk of its own).
///
/// Why 6 KiB: sled keeps up to 17 keys in a leaf node, and writes a node larger than a
/// quarter of its 512 KiB segment as a separate blob file, which its cache then counts
/// as a few bytes — so blob nodes are never evicted, and every one read stays in memory.
/// With 32 KiB chunks every leaf was a blob: a replay of 3 million messages (590 MB)
/// left the broker at 693 MB resident, whatever `store_cache` said. 17 × 6 KiB stays
/// under the threshold; the same replay left it at 286 MB (sled still keeps more than
/// its cache setting; docs/benchmarks.md, "Long logs"). The cost is more sled inserts
/// per byte: a replay of 1 KiB messages is about a quarter slower (470–740 k against
/// 710–1 045 k msgs/s, six rounds); their acknowledged publish showed no consistent
/// change. Changing this needs no new format version: readers take chunks of any size.
pub const MAX_BYTES: usize = 6 * 1024;

const HEADER: usize = 8 + 4;

/// The bytes a message of `len` bytes takes in a chunk (with its record header).
pub fn record_len(len: usize) -> usize {
    HEADER + len
}

/// Whether `count` more messages of `len` bytes in all fit in a chunk that already holds
/// `held` messages in `held_len` bytes of records (an empty chunk always takes a single
/// message, however large).
pub fn run_fits(held: usize, held_len: usize, count: usize, len: usize) -> bool {
    (held == 0 && count == 1)
        || (held + count <= MAX_MESSAGES && held_len + count * HEADER + len <= MAX_BYTES)
}

/// Collects consecutive messages of one topic into a chunk.
#[derive(Debug)]
pub struct ChunkBuilder {
    first_seq: u64,
    next_seq: u64,
    buf: Vec<u8>,
}

impl ChunkBuilder {
    /// An empty chunk whose first message will be `first_seq`.
    pub fn new(first_seq: u64) -> Self {
        ChunkBuilder {
            first_seq,
            next_seq: first_seq,
            buf: Vec::new(),
        }
    }

    /// An empty chunk whose first message will be `first_seq`, with room for `len`
    /// bytes of records.
    pub fn with_capacity(first_seq: u64, len: usize) -> Self {
        ChunkBuilder {
            first_seq,
            next_seq: first_seq,
            buf: Vec::with_capacity(len),
        }
    }

    /// Whether message `seq` of `len` bytes belongs at the end of this chunk: it follows
    /// on, and the chunk has room.
    pub fn takes(&self, seq: u64, len: usize) -> bool {
        self.takes_run(seq, 1, len)
    }

    /// Whether `count` consecutive messages from `seq` on, of `len` bytes in all, belong
    /// at the end of this chunk: they follow on, and the chunk has room for all of them
    /// (an empty chunk always takes a single message, however large).
    pub fn takes_run(&self, seq: u64, count: usize, len: usize) -> bool {
        let held = (self.next_seq - self.first_seq) as usize;
        seq == self.next_seq && run_fits(held, self.buf.len(), count, len)
    }

    /// Appends the next message (the caller checked [`ChunkBuilder::takes`]).
    pub fn push(&mut self, ts_ms: i64, message: &[u8]) {
        if self.buf.is_empty() {
            self.buf.reserve(HEADER + message.len());
        }
        self.buf.extend_from_slice(&ts_ms.to_be_bytes());
        self.buf
            .extend_from_slice(&(message.len() as u32).to_be_bytes());
        self.buf.extend_from_slice(message);
        self.next_seq += 1;
    }

    /// The chunk's first seq and its encoded value.
    pub fn finish(self) -> (u64, Vec<u8>) {
        (self.first_seq, self.buf)
    }
}

/// One message in a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// Its sequence number.
    pub seq: u64,
    /// Broker timestamp.
    pub ts_ms: i64,
    /// Where its message starts in the chunk value.
    pub start: usize,
    /// Its message's length.
    pub len: usize,
}

/// The records of the chunk `value` whose first message is `first_seq`, in order.
pub fn records(first_seq: u64, value: &[u8]) -> Records<'_> {
    Records {
        value,
        at: 0,
        seq: first_seq,
    }
}

/// Iterator returned by [`records`].
#[derive(Debug)]
pub struct Records<'a> {
    value: &'a [u8],
    at: usize,
    seq: u64,
}

impl Iterator for Records<'_> {
    type Item = Result<Record, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.at == self.value.len() {
            return None;
        }
        let rest = &self.value[self.at..];
        let Some(header) = rest.get(..HEADER) else {
            self.at = self.value.len();
            return Some(Err(corrupt(self.seq, "a truncated record header")));
        };
        let ts_ms = i64::from_be_bytes(header[..8].try_into().expect("8 bytes"));
        let len = u32::from_be_bytes(header[8..].try_into().expect("4 bytes")) as usize;
        if rest.len() - HEADER < len {
            self.at = self.value.len();
            return Some(Err(corrupt(self.seq, "a record longer than its chunk")));
        }
        let record = Record {
            seq: self.seq,
            ts_ms,
            start: self.at + HEADER,
            len,
        };
        self.at += HEADER + len;
        self.seq += 1;
        Some(Ok(record))
    }
}

fn corrupt(seq: u64, what: &str) -> StoreError {
    StoreError::Corrupt(format!("log chunk at message {seq}: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut b = ChunkBuilder::new(5);
        for (i, m) in [&b"a"[..], b"", b"xyz"].iter().enumerate() {
            assert!(b.takes(5 + i as u64, m.len()));
            b.push(100 + i as i64, m);
        }
        assert!(!b.takes(9, 1), "a gap starts a new chunk");
        let (first, value) = b.finish();
        assert_eq!(first, 5);
        let got: Vec<(u64, i64, &[u8])> = records(first, &value)
            .map(|r| r.unwrap())
            .map(|r| (r.seq, r.ts_ms, &value[r.start..r.start + r.len]))
            .collect();
        assert_eq!(
            got,
            vec![
                (5, 100, &b"a"[..]),
                (6, 101, &b""[..]),
                (7, 102, &b"xyz"[..])
            ]
        );
    }

    #[test]
    fn chunks_close_at_their_limits() {
        let mut b = ChunkBuilder::new(1);
        for seq in 1..=MAX_MESSAGES as u64 {
            assert!(b.takes(seq, 1));
            b.push(0, b"x");
        }
        assert!(!b.takes(MAX_MESSAGES as u64 + 1, 1), "message cap");
        let mut b = ChunkBuilder::new(1);
        assert!(
            b.takes(1, MAX_BYTES * 2),
            "a large message gets its own chunk"
        );
        b.push(0, &vec![0; MAX_BYTES * 2]);
        assert!(!b.takes(2, 1), "byte cap");
    }

    #[test]
    fn runs_are_taken_whole_or_not_at_all() {
        let b = ChunkBuilder::new(1);
        assert!(ChunkBuilder::new(1).finish().1.is_empty());
        assert!(b.takes_run(1, MAX_MESSAGES, MAX_MESSAGES));
        assert!(!b.takes_run(1, MAX_MESSAGES + 1, 0), "message cap");
        assert!(!b.takes_run(2, 1, 1), "not the next seq");
        assert!(b.takes_run(1, 1, MAX_BYTES * 2), "one large message alone");
        assert!(!b.takes_run(1, 2, MAX_BYTES), "byte cap");
        let mut b = ChunkBuilder::new(1);
        b.push(0, b"x");
        assert!(b.takes_run(2, MAX_MESSAGES - 1, 0));
        assert!(
            !b.takes_run(2, MAX_MESSAGES, 0),
            "message cap with one held"
        );
        assert!(
            !b.takes_run(2, 1, MAX_BYTES - 2 * HEADER),
            "byte cap counts the held message"
        );
        assert!(run_fits(1, record_len(1), MAX_MESSAGES - 1, 0));
        assert!(!run_fits(1, record_len(1), 1, MAX_BYTES - 2 * HEADER));
        assert_eq!(
            b.finish(),
            (1, vec![0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, b'x'])
        );
    }

    #[test]
    fn malformed_chunks_are_corrupt_not_a_panic() {
        let mut b = ChunkBuilder::new(1);
        b.push(7, b"hello");
        let (_, value) = b.finish();
        for cut in 1..value.len() {
            let results: Vec<_> = records(1, &value[..cut]).collect();
            assert!(
                results.last().is_some_and(|r| r.is_err()),
                "cut at {cut}: {results:?}"
            );
        }
    }
}
