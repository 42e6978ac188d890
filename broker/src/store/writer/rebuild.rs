//! The dedup index rebuilt after the broker is serving, not before.
//!
//! On start ([`Writer::recover`]) each durable topic's dedup window is found (a binary
//! search by time) but not read: the topic is marked pending from its first message in
//! the window. The broker then listens at once. The storage thread reads the pending
//! windows back when it has nothing else to do, [`REBUILD_STEP`] messages at a time, so
//! requests arriving meanwhile wait at most one step. Anything that needs a topic's index
//! complete completes it first, on the spot: an append with a message ID (its lookup
//! must see every ID of the window) and a removal of messages (retention or purge: the
//! IDs of removed messages must be indexed before they are gone). Appends without an ID,
//! subscriptions, replays and other topics never wait for it.
//!
//! Why: inserting millions of fingerprints into a large table costs a cache miss or two
//! each, about 0.2 µs here; a window holding 10 million messages made the restart 8–9 s
//! whatever else was done (docs/benchmarks.md, "Long logs").
//!
//! Order: until a topic's index is complete, no append of it has inserted an ID (the
//! first such append completes it first), so the index receives IDs in seq order, which
//! its expiry relies on.

use std::ops::ControlFlow;

use super::{Dedup, Writer};
use crate::store::StoreError;

/// Most messages read back per idle step of the storage thread (about 20 ms here).
pub(super) const REBUILD_STEP: usize = 100_000;

impl<O> Writer<O> {
    /// Whether some topic's index still waits to be read back by the storage thread.
    pub(super) fn rebuild_pending(&self) -> bool {
        !self.rebuilding.is_empty()
    }

    /// One idle step: reads back up to [`REBUILD_STEP`] messages of the oldest pending
    /// topic. A failed read is logged and left to the next append or removal that needs
    /// the topic, which retries it (and is refused if it fails again).
    pub(super) fn rebuild_step(&mut self) {
        let Some(name) = self.rebuilding.front().cloned() else {
            return;
        };
        match self.rebuild(&name, Some(REBUILD_STEP)) {
            Ok(true) => {
                self.rebuilding.pop_front();
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(topic = %name, error = %e, "dedup index not read back yet; retried when the topic needs it");
                self.rebuilding.pop_front();
            }
        }
    }

    /// Completes `name`'s index if it is pending.
    pub(super) fn complete_dedup(&mut self, name: &str) -> Result<(), StoreError> {
        if self.rebuild(name, None)? {
            self.rebuilding.retain(|n| n != name);
        }
        Ok(())
    }

    /// Reads back `name`'s pending index, all of it or up to `budget` messages; true
    /// when nothing of it is left pending (or the topic is gone).
    fn rebuild(&mut self, name: &str, budget: Option<usize>) -> Result<bool, StoreError> {
        let Some(log) = self.topics.get_mut(name) else {
            return Ok(true);
        };
        let Some(from) = log.dedup_from else {
            return Ok(true);
        };
        let (dedup, mut seen, mut next) = (&mut log.dedup, 0usize, from);
        let spent = |seen: usize| budget.is_some_and(|b| seen >= b);
        self.storage
            .for_each_message_id(log.id, from, &mut |id, seq, ts| {
                if !id.is_empty() {
                    dedup.insert(Dedup::fingerprint(id), seq, ts);
                }
                (next, seen) = (seq + 1, seen + 1);
                if spent(seen) {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })?;
        let done = !spent(seen);
        log.dedup_from = (!done).then_some(next);
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    use bytes::Bytes;

    use super::super::{Reply, Request, Writer, WriterConfig};
    use crate::config::FsyncPolicy;
    use crate::engine::{Append, CommitSink, Committed, Outcome};
    use crate::store::catalog::Catalog;
    use crate::store::sled_store::{BackgroundFlush, SledStorage};
    use crate::store::Storage;
    use crate::topic::TopicRules;

    /// Keeps each outcome with the number its append was given.
    #[derive(Default)]
    struct Outcomes(Mutex<Vec<(u64, Outcome)>>);

    impl CommitSink<u64> for Outcomes {
        fn committed(&self, pass: Vec<Committed<u64>>) {
            let mut seen = self.0.lock().unwrap();
            seen.extend(pass.into_iter().filter_map(|c| Some((c.origin?, c.outcome))));
        }
    }

    /// A writer over the store in `dir`, its topics loaded as on start.
    fn writer(dir: &std::path::Path) -> (Writer<u64>, Arc<Outcomes>) {
        let storage: Arc<dyn Storage> =
            Arc::new(SledStorage::open(dir, BackgroundFlush::Off).unwrap());
        let sink = Arc::new(Outcomes::default());
        let config = WriterConfig {
            fsync: FsyncPolicy::Never,
            max_topics: 10,
            store_reserve: 0,
            observer: None,
        };
        let catalog = Arc::new(Catalog::new(TopicRules::default()));
        let mut w = Writer::new(storage.clone(), sink.clone(), catalog, config).unwrap();
        w.recover(storage.load_topics().unwrap()).unwrap();
        (w, sink)
    }

    /// Publishes `ids` ("" for none) to `topic` in one pass; the outcomes' seqs, with
    /// `true` for a duplicate.
    fn publish(w: &mut Writer<u64>, sink: &Outcomes, topic: &str, ids: &[&str]) -> Vec<(u64, bool)> {
        let mut batch = (ids.iter().enumerate())
            .map(|(i, id)| {
                Request::Append(Append {
                    topic: topic.into(),
                    payload: Bytes::from_static(b"p"),
                    headers: BTreeMap::new(),
                    msg_id: (*id).into(),
                    origin: Reply::Origin(i as u64),
                })
            })
            .collect();
        w.process(&mut batch);
        let mut seen = std::mem::take(&mut *sink.0.lock().unwrap());
        seen.sort_by_key(|(i, _)| *i);
        (seen.into_iter())
            .map(|(_, outcome)| match outcome {
                Outcome::Stored { seq, .. } => (seq, false),
                Outcome::Duplicate { seq } => (seq, true),
                other => panic!("not stored: {other:?}"),
            })
            .collect()
    }

    /// 25 messages, every third without an ID, stored and the store closed.
    fn stored_log(dir: &std::path::Path) -> Vec<String> {
        let ids: Vec<String> = (1..=25)
            .map(|i| if i % 3 == 0 { String::new() } else { format!("m-{i}") })
            .collect();
        let (mut w, sink) = writer(dir);
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let seqs = publish(&mut w, &sink, "r.x", &refs);
        assert_eq!(seqs, (1..=25).map(|s| (s, false)).collect::<Vec<_>>());
        w.flush().unwrap();
        ids
    }

    #[test]
    fn an_index_read_back_in_steps_finds_every_id_of_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let ids = stored_log(dir.path());
        let (mut w, sink) = writer(dir.path());
        assert!(w.rebuild_pending(), "nothing is read back before the broker serves");
        let mut steps = 0;
        while !w.rebuild("r.x", Some(7)).unwrap() {
            steps += 1;
            assert!(steps < 10, "a step reads 7 messages: 4 steps cover 25");
        }
        assert_eq!(steps, 3);
        w.complete_dedup("r.x").unwrap();
        assert!(!w.rebuild_pending());
        // Each ID again: a duplicate of its own seq; one new ID stored after them.
        let mut again: Vec<&str> = ids.iter().map(String::as_str).filter(|i| !i.is_empty()).collect();
        again.push("m-new");
        let seqs = publish(&mut w, &sink, "r.x", &again);
        let expected: Vec<(u64, bool)> = (1..=25u64)
            .filter(|s| s % 3 != 0)
            .map(|s| (s, true))
            .chain([(26, false)])
            .collect();
        assert_eq!(seqs, expected);
    }

    #[test]
    fn an_append_with_an_id_completes_the_index_first_and_one_without_does_not() {
        let dir = tempfile::tempdir().unwrap();
        stored_log(dir.path());
        let (mut w, sink) = writer(dir.path());
        assert_eq!(publish(&mut w, &sink, "r.x", &[""]), vec![(26, false)]);
        assert!(w.rebuild_pending(), "an append without an ID needs no index");
        // The oldest and the newest IDs of the log, before any idle step ran.
        assert_eq!(publish(&mut w, &sink, "r.x", &["m-1", "m-25"]), vec![(1, true), (25, true)]);
        assert!(!w.rebuild_pending());
    }

    #[test]
    fn a_removal_keeps_the_ids_of_the_messages_it_removes() {
        let dir = tempfile::tempdir().unwrap();
        stored_log(dir.path());
        let (mut w, sink) = writer(dir.path());
        w.remove_before("r.x", 21).unwrap();
        assert_eq!(w.topics["r.x"].stats.first_seq, 21);
        // Removed from the log, still in the window: not stored twice.
        assert_eq!(publish(&mut w, &sink, "r.x", &["m-1", "m-20"]), vec![(1, true), (20, true)]);
    }
}
