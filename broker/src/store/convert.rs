//! Converting a data directory of `store_engine = "sled"` (messages in sled) into one of
//! the segment store, for `rtc-broker convert-store`. The source is only read; the
//! target must be new. What is copied: the topics with their settings and ids (so epochs
//! stay), every stored message with its seq, timestamp and bytes, the stats (so seqs go
//! on where they were, retention included), and every durable consumer's state. The
//! dedup window is not copied: the broker reads it back from the new log on start.
//!
//! Flow: `SledStorage` → `Storage::read` in batches → `SegmentStorage::write` of the
//! same ops the writer would have written, then one flush.

use std::path::Path;

use super::segments::SegmentStorage;
use super::sled_store::{BackgroundFlush, SledStorage, MARKER_FILE};
use super::{Storage, WriteOp};

/// What a conversion copied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Converted {
    /// Topics, durable and ephemeral.
    pub topics: usize,
    /// Messages, over all topics.
    pub messages: u64,
    /// Durable consumers.
    pub consumers: usize,
}

/// Messages read and written per step.
const BATCH_MSGS: usize = 4096;
const BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Copies the sled store of data directory `from` into a new segment store in data
/// directory `to` (`store/` and `log/` under it), which must not exist or be empty.
/// `store_dir` and `log_dir` name those subdirectories (the server's `STORE_DIR` and
/// `LOG_DIR`). Errors say which side failed and why.
pub fn convert(
    from: &Path,
    to: &Path,
    store_dir: &str,
    log_dir: &str,
    cache_bytes: u64,
) -> Result<Converted, String> {
    let source = from.join(store_dir);
    if !source.join(MARKER_FILE).exists() {
        return Err(format!(
            "{} holds no rtc store to convert (no {})",
            from.display(),
            source.join(MARKER_FILE).display()
        ));
    }
    if from.join(log_dir).exists() {
        return Err(format!(
            "{} already keeps its messages in segment files ({} exists): nothing to convert",
            from.display(),
            from.join(log_dir).display()
        ));
    }
    let empty = std::fs::read_dir(to).map_or(true, |mut d| d.next().is_none());
    if !empty {
        return Err(format!(
            "{} is not empty: convert into a new data directory",
            to.display()
        ));
    }
    let src = SledStorage::open_with_cache(&source, BackgroundFlush::Off, cache_bytes)?;
    let dst = SegmentStorage::open(
        &to.join(store_dir),
        &to.join(log_dir),
        BackgroundFlush::Off,
        cache_bytes,
    )?;
    let read = |e: super::StoreError| format!("reading {}: {e}", source.display());
    let write = |e: super::StoreError| format!("writing {}: {e}", to.display());
    let topics = src.load_topics().map_err(read)?;
    let mut ops = vec![WriteOp::PutNextTopicId(src.next_topic_id().map_err(read)?)];
    for t in &topics {
        ops.push(WriteOp::PutTopic {
            name: t.name.clone(),
            id: t.id,
            settings: t.settings,
            explicit: t.explicit,
        });
    }
    dst.write(ops).map_err(write)?;
    let mut done = Converted {
        topics: topics.len(),
        ..Converted::default()
    };
    for t in topics.iter().filter(|t| t.id != 0) {
        let mut next = t.stats.first_seq.max(1);
        loop {
            let batch = src
                .read(t.id, next, BATCH_MSGS, BATCH_BYTES)
                .map_err(read)?;
            let Some(last) = batch.last() else { break };
            next = last.seq + 1;
            done.messages += batch.len() as u64;
            let appends = batch
                .into_iter()
                .map(|e| WriteOp::Append {
                    id: t.id,
                    seq: e.seq,
                    ts_ms: e.ts_ms,
                    message: e.message,
                })
                .collect();
            dst.write(appends).map_err(write)?;
        }
        dst.write(vec![WriteOp::PutStats(t.id, t.stats)])
            .map_err(write)?;
    }
    let consumers = src.load_consumers().map_err(read)?;
    done.consumers = consumers.len();
    let ops = consumers
        .into_iter()
        .map(|(id, name, record)| WriteOp::PutConsumer { id, name, record })
        .collect::<Vec<_>>();
    if !ops.is_empty() {
        dst.write(ops).map_err(write)?;
    }
    dst.flush().map_err(write)?;
    Ok(done)
}
