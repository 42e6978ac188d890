//! What an operator asks of the store, each outside the passes of appends: deleting a
//! topic, purging its messages, deleting a durable consumer's state, new topic rules
//! from a reloaded config. Each is handled alone, after the requests that came before
//! it and before those after it (`Writer::process` cuts the batch there), written and
//! flushed before it is answered, so an answer means the data is gone from disk.
//!
//! They are allowed while the store is short of its disk reserve (that is when an
//! operator needs to free space) but not while it is failed with an I/O error.

use super::{Request, Writer};
use crate::engine::TopicView;
use crate::refusal::Refusal;
use crate::store::WriteOp;

impl<O> Writer<O> {
    /// Carries out one removal request and answers it.
    pub(super) fn remove(&mut self, request: Request<O>) {
        match request {
            Request::DeleteTopic { name, reply } => {
                let _ = reply.send(self.delete_topic(&name));
            }
            Request::PurgeTopic { name, keep, reply } => {
                let _ = reply.send(self.purge_topic(&name, keep));
            }
            Request::DeleteConsumer { topic, name, reply } => {
                let _ = reply.send(self.delete_consumer(&topic, &name));
            }
            Request::SetRules { rules, reply } => {
                let _ = reply.send(self.set_rules(rules));
            }
            other => debug_assert!(!other.is_removal(), "every removal is handled"),
        }
    }

    fn removable(&self) -> Result<(), Refusal> {
        if self.store_failed_io() {
            return Err(Refusal::Storage(
                "the store failed and is not back yet; nothing was removed".into(),
            ));
        }
        Ok(())
    }

    /// Writes `ops` and flushes them; a failure starts a failure episode.
    fn write_now(&mut self, ops: Vec<WriteOp>) -> Result<(), Refusal> {
        let result = self.storage.write(ops).and_then(|()| {
            self.dirty = true;
            self.flush()
        });
        result.map_err(|e| {
            self.store_failed(&e);
            Refusal::from(e)
        })
    }

    fn delete_topic(&mut self, name: &str) -> Result<(), Refusal> {
        self.removable()?;
        let id = self.topics.get(name).ok_or_else(|| not_found(name))?.id;
        self.write_now(vec![WriteOp::DeleteTopic {
            name: name.to_string(),
            id,
        }])?;
        // Its dedup window goes with it; its id is never handed out again.
        self.topics.remove(name);
        self.catalog.remove(name);
        tracing::info!(topic = %name, epoch = id, "topic deleted");
        Ok(())
    }

    fn purge_topic(&mut self, name: &str, keep: u64) -> Result<TopicView, Refusal> {
        self.removable()?;
        let log = self.topics.get(name).ok_or_else(|| not_found(name))?;
        let stats = log.stats;
        if log.id != 0 && stats.messages > keep {
            self.remove_before(name, stats.last_seq + 1 - keep)
                .and_then(|()| self.flush())
                .map_err(|e| {
                    self.store_failed(&e);
                    Refusal::from(e)
                })?;
            tracing::info!(topic = %name, keep, "topic purged");
        }
        Ok(self.topics[name].view())
    }

    fn delete_consumer(&mut self, topic: &str, name: &str) -> Result<(), Refusal> {
        self.removable()?;
        let id = self.topics.get(topic).ok_or_else(|| not_found(topic))?.id;
        if id != 0 {
            self.write_now(vec![WriteOp::DeleteConsumer {
                id,
                name: name.to_string(),
            }])?;
        }
        Ok(())
    }
}

impl<O> Writer<O> {
    /// New topic rules: the topics that follow the rules take their new settings, as
    /// they would on a restart (`Writer::recover`).
    fn set_rules(&mut self, rules: crate::topic::TopicRules) -> Result<usize, Refusal> {
        self.removable()?;
        let mut ops = Vec::new();
        for (name, log) in &self.topics {
            if log.explicit {
                continue;
            }
            let now = rules.configured(name);
            if now != log.settings {
                ops.push(WriteOp::PutTopic {
                    name: name.clone(),
                    id: log.id,
                    settings: now,
                    explicit: false,
                });
            }
        }
        let changed = ops.len();
        if changed > 0 {
            self.write_now(ops)?;
        }
        for (name, log) in self.topics.iter_mut() {
            if !log.explicit {
                log.settings = rules.configured(name);
            }
        }
        self.catalog.set_rules(rules);
        for (name, log) in &self.topics {
            self.catalog.set(name, log.id, log.view());
        }
        Ok(changed)
    }
}

fn not_found(name: &str) -> Refusal {
    Refusal::NotFound(format!("topic {name:?} does not exist"))
}
