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
use redis::{ErrorKind, ServerErrorKind};
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
    // Told to the observer once per outage: Redis refused or did not answer.
    let mut down = false;
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
        let started = std::time::Instant::now();
        let n = batch.len();
        let pass = append_all(&inner, std::mem::take(&mut batch)).await;
        if let Some(observer) = &inner.observer {
            let outage = pass.iter().find_map(|c| match &c.outcome {
                Outcome::Refused(Refusal::Unavailable(why)) => Some(why.clone()),
                _ => None,
            });
            match outage {
                Some(why) if !down => {
                    down = true;
                    observer.failed(&why);
                }
                None if down
                    && pass
                        .iter()
                        .any(|c| !matches!(c.outcome, Outcome::Refused(_))) =>
                {
                    down = false;
                    observer.recovered();
                }
                _ => {}
            }
            observer.pass(n, started.elapsed());
        }
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
            Ok((Appended::Stored { seq, epoch }, ts)) => {
                let known = inner.catalog.get(&p.topic).map_or(0, |v| v.epoch);
                if known != 0 && known != epoch && !lost.contains(&p.topic) {
                    lost.push(p.topic.clone());
                }
                inner.saw(&p.topic, epoch, seq, ts, p.body.len());
                Outcome::Accepted { seq }
            }
            Ok((Appended::Duplicate { seq, epoch }, _)) => {
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

/// Most messages of one topic in one run of the append script, so that no script
/// holds Redis long.
const MAX_RUN: usize = 256;

/// The runs of `ready`: consecutive appends to one topic, at most [`MAX_RUN`] each, as
/// index ranges. Only consecutive ones: a connection's publishes to several topics stay
/// in the order it sent them.
fn runs(ready: &[(usize, Prepared)]) -> Vec<std::ops::Range<usize>> {
    let mut out: Vec<std::ops::Range<usize>> = Vec::new();
    for (i, (_, p)) in ready.iter().enumerate() {
        match out.last_mut() {
            Some(r) if r.len() < MAX_RUN && ready[r.start].1.topic == p.topic => r.end = i + 1,
            _ => out.push(i..i + 1),
        }
    }
    out
}

/// The runs to send together: all of them, or on Redis Cluster those of each topic
/// (in the order topics first appear).
fn shards(
    inner: &Inner,
    ready: &[(usize, Prepared)],
    todo: Vec<std::ops::Range<usize>>,
) -> Vec<Vec<std::ops::Range<usize>>> {
    if !inner.target.sharded() {
        return vec![todo];
    }
    let mut groups: Vec<Vec<std::ops::Range<usize>>> = Vec::new();
    for run in todo {
        let topic = &ready[run.start].1.topic;
        match groups
            .iter_mut()
            .find(|g| &ready[g[0].start].1.topic == topic)
        {
            Some(g) => g.push(run),
            None => groups.push(vec![run]),
        }
    }
    groups
}

/// The `EVALSHA` of one run.
fn run_command(inner: &Inner, run: &[(usize, Prepared)], now: i64, epoch: u64) -> redis::Cmd {
    let keys = &inner.keys;
    let first = &run[0].1;
    let ids: Vec<String> = run
        .iter()
        .filter(|(_, p)| !p.msg_id.is_empty())
        .map(|(_, p)| keys.dedup(&p.topic, &p.msg_id))
        .collect();
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(inner.scripts.append.get_hash())
        .arg(2 + ids.len())
        .arg(keys.meta(&first.topic))
        .arg(keys.log(&first.topic))
        .arg(&ids)
        .arg(now)
        .arg(epoch)
        .arg(first.dedup_ms)
        .arg(first.max_msgs)
        .arg(first.max_bytes)
        .arg(keys.live(&first.topic))
        .arg(run.len());
    for (_, p) in run {
        cmd.arg(if p.msg_id.is_empty() { "0" } else { "1" })
            .arg(&p.body);
    }
    cmd
}

/// Runs the append script for each run of `ready` in one pipeline, loading the script
/// and running again the runs Redis did not have it for (after a Redis restart). Each
/// append's outcome, with the timestamp it was stored under.
async fn run_pipeline(
    inner: &Inner,
    ready: &[(usize, Prepared)],
) -> Vec<Result<(Appended, i64), Refusal>> {
    let mut results: Vec<Result<(Appended, i64), Refusal>> = (0..ready.len())
        .map(|_| Err(Refusal::Unavailable(String::new())))
        .collect();
    let mut todo = runs(ready);
    for attempt in 0..2 {
        if todo.is_empty() {
            break;
        }
        let (now, epoch) = (now_ms(), inner.new_epoch());
        // One pipeline, or on Redis Cluster one per topic (a pipeline stays on one
        // shard); a topic's runs keep their order inside its pipeline.
        let groups = shards(inner, ready, todo);
        let pipes = groups
            .iter()
            .map(|group| {
                let mut pipe = redis::pipe();
                pipe.ignore_errors();
                for run in group {
                    pipe.add_command(run_command(inner, &ready[run.clone()], now, epoch));
                }
                pipe
            })
            .collect();
        let answers = super::target::query_all(&inner.conn(), pipes).await;
        let mut again = Vec::new();
        for (group, answer) in groups.into_iter().zip(answers) {
            let replies = match answer {
                Ok(replies) => replies,
                Err(e) => {
                    let refusal = unavailable(&e);
                    for run in group {
                        run.for_each(|i| results[i] = Err(refusal.clone()));
                    }
                    continue;
                }
            };
            for (run, reply) in group.into_iter().zip(replies) {
                let outcome = match reply {
                    Ok(v) => appended(&v, run.len()).map_err(|e| Refusal::Storage(e.to_string())),
                    Err(e)
                        if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript)
                            && attempt == 0 =>
                    {
                        again.push(run);
                        continue;
                    }
                    Err(e) => Err(Refusal::Storage(format!("Redis refused the append: {e}"))),
                };
                match outcome {
                    Ok((each, ts)) => {
                        for (i, a) in run.zip(each) {
                            results[i] = Ok((a, ts));
                        }
                    }
                    Err(refusal) => run.for_each(|i| results[i] = Err(refusal.clone())),
                }
            }
        }
        if !again.is_empty() {
            let mut conn = inner.conn();
            if let Err(e) = inner
                .scripts
                .append
                .prepare_invoke()
                .load_async(&mut conn)
                .await
            {
                let refusal = unavailable(&e);
                for run in &again {
                    run.clone().for_each(|i| results[i] = Err(refusal.clone()));
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
