//! Appends to Redis: one task takes every append waiting and sends them as one
//! pipeline of append scripts, waits for the replies, and reports them to the commit
//! sink as one pass, then takes what arrived meanwhile. One pipeline at a time keeps
//! each connection's publishes in the order it sent them (Redis runs a pipeline's
//! scripts in order), and the batch grows with the load, as a group commit does.
//!
//! A stored append is reported as [`Outcome::Accepted`]: its publisher is answered,
//! and its fan-out comes through the feed like every other node's messages, so that
//! every node fans a topic out in seq order. If Redis cannot be reached, or does not
//! answer within the response timeout, every append of the pipeline is refused with
//! `UNAVAILABLE`: never acknowledged without Redis's reply. (An append whose reply was
//! lost may have been stored; a retry with its message ID is then a duplicate.)

use std::sync::Arc;

use prost::Message as _;
use redis::{ErrorKind, ServerErrorKind, Value};
use rtc_proto::v1;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::scripts::{appended, Appended};
use super::Inner;
use crate::clock::now_ms;
use crate::engine::{Append, CommitSink, Committed, Outcome};
use crate::refusal::Refusal;

/// Most appends in one pipeline.
const MAX_BATCH: usize = 1024;

/// Runs until every sender is gone: batches appends from `rx` into pipelines.
/// After `cancel`, what is still queued is stored, and then the task ends.
pub async fn run<O: Send + 'static>(
    inner: Arc<Inner>,
    sink: Arc<dyn CommitSink<O>>,
    mut rx: mpsc::UnboundedReceiver<Append<O>>,
    cancel: CancellationToken,
) {
    let mut batch = Vec::new();
    loop {
        let first = tokio::select! {
            first = rx.recv() => first,
            _ = cancel.cancelled() => rx.try_recv().ok(),
        };
        let Some(first) = first else { return };
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(a) => batch.push(a),
                Err(_) => break,
            }
        }
        let pass = append_all(&inner, std::mem::take(&mut batch)).await;
        sink.committed(pass);
    }
}

/// One append ready for its script.
struct Prepared {
    topic: String,
    msg_id: String,
    body: Vec<u8>,
    dedup_ms: u64,
    /// -1 for no limit.
    max_msgs: i64,
    max_bytes: u64,
}

/// Stores `batch` with one pipeline; the outcomes in order.
pub async fn append_all<O>(inner: &Inner, batch: Vec<Append<O>>) -> Vec<Committed<O>> {
    let mut out: Vec<Committed<O>> = Vec::with_capacity(batch.len());
    let mut ready: Vec<(usize, Prepared)> = Vec::with_capacity(batch.len());
    for append in batch {
        let Append {
            topic,
            payload,
            headers,
            msg_id,
            origin,
        } = append;
        let settings = match inner.ensure_durable(&topic).await {
            Ok(settings) => settings,
            Err(refusal) => {
                out.push(refused(topic, origin, refusal));
                continue;
            }
        };
        let body = v1::Message {
            topic: topic.clone(),
            payload,
            headers: headers.into_iter().collect(),
            msg_id: msg_id.clone(),
            ..v1::Message::default()
        }
        .encode_to_vec();
        ready.push((
            out.len(),
            Prepared {
                topic: topic.clone(),
                msg_id,
                body,
                dedup_ms: settings.dedup_window_ms.max(1),
                max_msgs: if settings.max_msgs > 0 {
                    settings.max_msgs as i64
                } else {
                    -1
                },
                max_bytes: settings.max_bytes,
            },
        ));
        // Filled in below.
        out.push(Committed {
            topic,
            outcome: Outcome::Refused(Refusal::Unavailable(String::new())),
            origin: Some(origin),
        });
    }
    let results = run_pipeline(inner, &ready).await;
    let mut lost = Vec::new();
    for ((at, p), result) in ready.iter().zip(results) {
        out[*at].outcome = match result {
            Ok(Appended::Stored { seq, epoch }) => {
                let known = inner.catalog.get(&p.topic).map_or(0, |v| v.epoch);
                if known != 0 && known != epoch && !lost.contains(&p.topic) {
                    lost.push(p.topic.clone());
                }
                inner.saw(&p.topic, epoch, seq, now_ms(), p.body.len());
                Outcome::Accepted { seq }
            }
            Ok(Appended::Duplicate { seq, epoch }) => {
                inner.saw_epoch(&p.topic, epoch);
                Outcome::Duplicate { seq }
            }
            Err(refusal) => Outcome::Refused(refusal),
        };
    }
    for topic in lost {
        // The script started a new epoch: the topic's keys were lost (a flush, an
        // eviction, a failover), its registry entry perhaps too.
        tracing::warn!(
            topic,
            "cluster: a topic's history was lost in Redis; it starts again with a new epoch"
        );
        if let Err(e) = inner.register_again(&topic).await {
            tracing::warn!(topic, "cluster: cannot register the topic again: {e}");
        }
    }
    out
}

fn refused<O>(topic: String, origin: O, refusal: Refusal) -> Committed<O> {
    Committed {
        topic,
        outcome: Outcome::Refused(refusal),
        origin: Some(origin),
    }
}

/// Runs the append script for each of `ready`, loading the script and running again
/// those Redis did not have it for (after a Redis restart).
async fn run_pipeline(
    inner: &Inner,
    ready: &[(usize, Prepared)],
) -> Vec<Result<Appended, Refusal>> {
    let mut results: Vec<Result<Appended, Refusal>> = Vec::with_capacity(ready.len());
    let mut todo: Vec<usize> = (0..ready.len()).collect();
    for attempt in 0..2 {
        if todo.is_empty() {
            break;
        }
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let now = now_ms();
        let epoch = inner.new_epoch();
        for &i in &todo {
            let p = &ready[i].1;
            let keys = &inner.keys;
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(inner.scripts.append.get_hash());
            if p.msg_id.is_empty() {
                cmd.arg(2).arg(keys.meta(&p.topic)).arg(keys.log(&p.topic));
            } else {
                cmd.arg(3)
                    .arg(keys.meta(&p.topic))
                    .arg(keys.log(&p.topic))
                    .arg(keys.dedup(&p.topic, &p.msg_id));
            }
            cmd.arg(now)
                .arg(epoch)
                .arg(&p.body)
                .arg(p.dedup_ms)
                .arg(p.max_msgs)
                .arg(p.max_bytes)
                .arg(keys.live(&p.topic));
            pipe.add_command(cmd);
        }
        let mut conn = inner.conn.clone();
        let replies: Vec<redis::RedisResult<Value>> = match pipe.query_async(&mut conn).await {
            Ok(replies) => replies,
            Err(e) => {
                let refusal = unavailable(&e);
                results.resize_with(ready.len(), || Err(refusal.clone()));
                for &i in &todo {
                    results[i] = Err(refusal.clone());
                }
                return results;
            }
        };
        results.resize_with(ready.len(), || Err(Refusal::Unavailable(String::new())));
        let mut again = Vec::new();
        for (&i, reply) in todo.iter().zip(replies) {
            results[i] = match reply {
                Ok(v) => appended(&v).map_err(|e| Refusal::Storage(e.to_string())),
                Err(e)
                    if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) && attempt == 0 =>
                {
                    again.push(i);
                    continue;
                }
                Err(e) => Err(Refusal::Storage(format!("Redis refused the append: {e}"))),
            };
        }
        if !again.is_empty() {
            let mut conn = inner.conn.clone();
            if let Err(e) = inner
                .scripts
                .append
                .prepare_invoke()
                .load_async(&mut conn)
                .await
            {
                let refusal = unavailable(&e);
                for i in again {
                    results[i] = Err(refusal.clone());
                }
                return results;
            }
        }
        todo = again;
    }
    results
}

/// The refusal for a request Redis did not answer.
pub fn unavailable(e: &redis::RedisError) -> Refusal {
    Refusal::Unavailable(format!(
        "the cluster's Redis cannot be reached: {e}; nothing was stored"
    ))
}
