//! What sessions, replays and consumers may read about topics without asking the
//! storage thread: each topic's id, settings and stats ([`TopicView`]), kept current by
//! the storage thread after every write ([`LogView`]), plus a watch of each topic's last
//! seq for the durable consumers that follow it.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};

use rtc_proto::v1::{self, TopicSettings};

use super::{TopicId, TopicStats};

/// What sessions and replays may read about a topic without asking the storage thread.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicView {
    /// Id in the store (0 for an ephemeral topic, which has no log).
    pub id: TopicId,
    /// Settings in force.
    pub settings: TopicSettings,
    /// Counters as of the last write.
    pub stats: TopicStats,
}

impl TopicView {
    /// The `TopicInfo` frame body for this topic.
    pub fn info(&self, req_id: u64, name: &str) -> v1::TopicInfo {
        v1::TopicInfo {
            req_id,
            name: name.to_string(),
            settings: Some(self.settings),
            first_seq: self.stats.first_seq,
            last_seq: self.stats.last_seq,
            messages: self.stats.messages,
            bytes: self.stats.bytes,
        }
    }
}

/// The topics known to the store, updated by the storage thread after every write.
#[derive(Debug, Default)]
pub struct LogView {
    topics: RwLock<HashMap<String, TopicView>>,
    /// Last seq of topics someone watches (durable consumers), sent after each write.
    watchers: Mutex<HashMap<String, tokio::sync::watch::Sender<u64>>>,
}

impl LogView {
    /// One topic.
    pub fn get(&self, name: &str) -> Option<TopicView> {
        self.read().get(name).cloned()
    }

    /// Every topic, sorted by name.
    pub fn list(&self) -> Vec<(String, TopicView)> {
        let mut v: Vec<_> = self
            .read()
            .iter()
            .map(|(k, t)| (k.clone(), t.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The durable topics (with a log) whose names match `pattern`.
    pub fn durable_matching(&self, pattern: &str) -> Vec<(String, TopicView)> {
        self.read()
            .iter()
            .filter(|(name, t)| t.id != 0 && rtc_proto::topic::pattern_matches(pattern, name))
            .map(|(k, t)| (k.clone(), t.clone()))
            .collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, TopicView>> {
        self.topics.read().unwrap_or_else(|p| p.into_inner())
    }

    /// A receiver of topic `name`'s last seq, updated after every write to it.
    pub fn watch(&self, name: &str) -> tokio::sync::watch::Receiver<u64> {
        let last = self.get(name).map_or(0, |t| t.stats.last_seq);
        self.watchers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_string())
            .or_insert_with(|| tokio::sync::watch::channel(last).0)
            .subscribe()
    }

    pub(super) fn set(&self, name: &str, view: TopicView) {
        let last = view.stats.last_seq;
        self.topics
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), view);
        if let Some(tx) = self
            .watchers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            tx.send_if_modified(|v| std::mem::replace(v, last) != last);
        }
    }
}
