//! The outbox: publishes that asked for an acknowledgement and have not had one yet.
//!
//! Every such publish is kept here, by req_id in publish order, until its `PubAck` (or
//! an `Error`) arrives. When the connection drops, the supervisor resends all of them on
//! the new connection with the same message IDs, so the broker's dedup stores each one
//! exactly once. The outbox is bounded: when it is full, a publish fails at once with
//! [`crate::Error::OutboxFull`] instead of growing memory.
//!
//! With a journal file the outbox also survives a restart of the application: each entry
//! is appended to the file before its publish is sent, and each acknowledgement appends a
//! removal. A client opened on the same file resends what was left (compacting the file
//! first). Records: `b'A' ++ len: u32 ++ rtc.v1.Publish` and `b'R' ++ len: u32 ++ msg_id`.
//! By default the file is written, not fsynced, per record: it survives the process
//! dying, not the machine losing power. With `sync` (`ConnectOptions::outbox_fsync`)
//! each added entry is fsynced before its publish is sent, and each rewrite of the file
//! is made durable with its directory, so the outbox survives a power loss too; a
//! publish then costs one fsync, under the outbox lock (one at a time per client).
//! Removals are never fsynced: a removal lost to a power cut only makes the next client
//! resend a publish the broker already has, which its dedup answers as a duplicate.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use prost::Message as _;
use rtc_proto::v1;

use crate::error::Error;

/// Appends between compactions, beyond twice the live entries.
const COMPACT_SLACK: usize = 1024;

#[derive(Debug)]
struct Journal {
    path: PathBuf,
    file: File,
    /// Records written since the last compaction.
    records: usize,
    /// Fsync each added entry (see the module docs).
    sync: bool,
}

/// Unacknowledged publishes, resent after a reconnect.
#[derive(Debug)]
pub(crate) struct Outbox {
    /// Shared with the writer while it is being sent.
    entries: BTreeMap<u64, Arc<v1::Publish>>,
    capacity: usize,
    journal: Option<Journal>,
}

fn journal_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Outbox(format!("{}: {e}", path.display()))
}

fn record(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(5 + body.len());
    r.push(kind);
    r.extend_from_slice(&(body.len() as u32).to_be_bytes());
    r.extend_from_slice(body);
    r
}

impl Outbox {
    /// An in-memory outbox of at most `capacity` entries.
    pub(crate) fn new(capacity: usize) -> Self {
        Outbox {
            entries: BTreeMap::new(),
            capacity: capacity.max(1),
            journal: None,
        }
    }

    /// An outbox kept in `path` as well; returns it with the publishes a previous run
    /// left unacknowledged (to be resent, in their original order).
    /// With `sync`, every added entry is on disk before [`Outbox::add`] returns.
    pub(crate) fn open(
        path: &Path,
        capacity: usize,
        sync: bool,
    ) -> Result<(Self, Vec<v1::Publish>), Error> {
        let left = load(path)?;
        // Compact: rewrite the file with what is left, then append from there.
        let tmp = path.with_extension("tmp");
        {
            let mut f = File::create(&tmp).map_err(|e| journal_err(&tmp, e))?;
            for p in &left {
                f.write_all(&record(b'A', &p.encode_to_vec()))
                    .map_err(|e| journal_err(&tmp, e))?;
            }
            f.sync_all().map_err(|e| journal_err(&tmp, e))?;
        }
        std::fs::rename(&tmp, path).map_err(|e| journal_err(path, e))?;
        if sync {
            sync_dir(path).map_err(|e| journal_err(path, e))?;
        }
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| journal_err(path, e))?;
        let outbox = Outbox {
            entries: BTreeMap::new(),
            capacity: capacity.max(1),
            journal: Some(Journal {
                path: path.to_path_buf(),
                file,
                records: left.len(),
                sync,
            }),
        };
        Ok((outbox, left))
    }

    /// Keeps `publish` (sent with `req_id`) until it is acknowledged.
    pub(crate) fn add(&mut self, req_id: u64, publish: Arc<v1::Publish>) -> Result<(), Error> {
        if self.entries.len() >= self.capacity {
            return Err(Error::OutboxFull(self.capacity));
        }
        if let Some(j) = &mut self.journal {
            j.file
                .write_all(&record(b'A', &publish.encode_to_vec()))
                .and_then(|()| if j.sync { j.file.sync_data() } else { Ok(()) })
                .map_err(|e| journal_err(&j.path, e))?;
            j.records += 1;
        }
        self.entries.insert(req_id, publish);
        Ok(())
    }

    /// Puts back an entry loaded by [`Outbox::open`] (already in the journal).
    pub(crate) fn restore(&mut self, req_id: u64, publish: v1::Publish) {
        self.entries.insert(req_id, Arc::new(publish));
    }

    /// Whether the publish sent with `req_id` is waiting for its acknowledgement.
    pub(crate) fn contains(&self, req_id: u64) -> bool {
        self.entries.contains_key(&req_id)
    }

    /// Forgets the publish sent with `req_id` (it was answered).
    pub(crate) fn remove(&mut self, req_id: u64) {
        let Some(p) = self.entries.remove(&req_id) else {
            return;
        };
        let live = self.entries.len();
        if let Some(j) = &mut self.journal {
            if let Err(e) = j.file.write_all(&record(b'R', p.msg_id.as_bytes())) {
                tracing::error!(path = %j.path.display(), error = %e, "outbox journal write failed");
            }
            j.records += 1;
            if j.records > 2 * live + COMPACT_SLACK {
                self.compact();
            }
        }
    }

    fn compact(&mut self) {
        let Some(j) = &mut self.journal else { return };
        let tmp = j.path.with_extension("tmp");
        let written = (|| -> std::io::Result<File> {
            let mut f = File::create(&tmp)?;
            for p in self.entries.values() {
                f.write_all(&record(b'A', &p.encode_to_vec()))?;
            }
            f.sync_all()?;
            std::fs::rename(&tmp, &j.path)?;
            if j.sync {
                sync_dir(&j.path)?;
            }
            OpenOptions::new().append(true).open(&j.path)
        })();
        match written {
            Ok(file) => {
                j.file = file;
                j.records = self.entries.len();
            }
            Err(e) => {
                tracing::error!(path = %j.path.display(), error = %e, "outbox journal compaction failed")
            }
        }
    }

    /// The frames to resend, in publish order.
    pub(crate) fn pending(&self) -> Vec<(u64, v1::Publish)> {
        self.entries
            .iter()
            .map(|(id, p)| (*id, (**p).clone()))
            .collect()
    }

    /// Entries waiting for an acknowledgement.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Makes a rename of `path` durable: fsyncs the directory holding it.
fn sync_dir(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// Reads a journal: the publishes added and not removed, in the order added.
fn load(path: &Path) -> Result<Vec<v1::Publish>, Error> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(journal_err(path, e)),
    };
    let mut r = BufReader::new(file);
    let mut order = Vec::new();
    let mut live: HashMap<String, v1::Publish> = HashMap::new();
    loop {
        let mut head = [0u8; 5];
        match r.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(journal_err(path, e)),
        }
        let len = u32::from_be_bytes(head[1..].try_into().expect("4 bytes")) as usize;
        let mut body = vec![0u8; len.min(64 << 20)];
        if len > body.len() || r.read_exact(&mut body).is_err() {
            // A torn last record (the process died mid-write): ignore it.
            tracing::warn!(path = %path.display(), "outbox journal ends in a partial record; ignored");
            break;
        }
        match head[0] {
            b'A' => {
                let p = v1::Publish::decode(&body[..]).map_err(|e| journal_err(path, e))?;
                order.push(p.msg_id.clone());
                live.insert(p.msg_id.clone(), p);
            }
            b'R' => {
                live.remove(String::from_utf8_lossy(&body).as_ref());
            }
            other => return Err(journal_err(path, format!("unknown record type {other}"))),
        }
    }
    Ok(order
        .into_iter()
        .filter_map(|id| live.remove(&id))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(id: &str) -> v1::Publish {
        v1::Publish {
            req_id: 0,
            topic: "t".into(),
            payload: bytes::Bytes::from_static(b"p"),
            headers: Default::default(),
            msg_id: id.into(),
        }
    }

    #[test]
    fn bounded() {
        let mut o = Outbox::new(2);
        o.add(1, Arc::new(publish("a"))).unwrap();
        o.add(2, Arc::new(publish("b"))).unwrap();
        assert!(matches!(
            o.add(3, Arc::new(publish("c"))),
            Err(Error::OutboxFull(2))
        ));
        o.remove(1);
        o.add(3, Arc::new(publish("c"))).unwrap();
        assert_eq!(
            o.pending().iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            vec![2, 3]
        );
    }

    #[test]
    fn journal_survives_a_restart_and_a_torn_tail() {
        journal_restart_and_torn_tail(false);
    }

    #[test]
    fn an_fsynced_journal_reads_back_the_same() {
        journal_restart_and_torn_tail(true);
    }

    fn journal_restart_and_torn_tail(sync: bool) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox");
        {
            let (mut o, left) = Outbox::open(&path, 10, sync).unwrap();
            assert!(left.is_empty());
            for (i, id) in ["a", "b", "c"].iter().enumerate() {
                o.add(i as u64 + 1, Arc::new(publish(id))).unwrap();
            }
            o.remove(2);
        }
        // A record cut short by a crash.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[b'A', 0, 0, 0, 50, 1, 2]).unwrap();
        let (o, left) = Outbox::open(&path, 10, sync).unwrap();
        assert_eq!(
            left.iter().map(|p| p.msg_id.as_str()).collect::<Vec<_>>(),
            vec!["a", "c"]
        );
        assert_eq!(
            o.len(),
            0,
            "loaded entries are added back by the client with new req_ids"
        );
        // Compacted: only the live entries remain.
        assert_eq!(load(&path).unwrap().len(), 2);
    }
}
