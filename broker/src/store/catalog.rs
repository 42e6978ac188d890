//! The local engine's topics as everyone may read them ([`Catalog`]): each topic's id in
//! the store, settings, stats and whether it was created explicitly, plus the config's
//! rules for names not yet known, and a watch of the last seq of each topic someone
//! follows. The storage thread's writer owns topic state and is the only one to change
//! it; it publishes each topic here after every pass that touched it, so sessions,
//! replays and consumers read it without asking the thread.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use rtc_proto::v1::TopicSettings;
use tokio::sync::watch;

use super::TopicId;
use crate::engine::TopicView;
use crate::topic::TopicRules;

/// One topic as published by the writer.
#[derive(Debug, Clone)]
struct Entry {
    /// Id in the store (0 for an ephemeral topic, which has no log).
    id: TopicId,
    view: TopicView,
}

/// The topics of the local engine; see the module docs.
#[derive(Debug)]
pub struct Catalog {
    /// Replaced whole when the config is reloaded.
    rules: RwLock<Arc<TopicRules>>,
    topics: RwLock<HashMap<String, Entry>>,
    /// Bumped whenever the settings in force for some name change.
    generation: AtomicU64,
    /// Last seq of topics someone watches (durable consumers), sent after each write.
    watchers: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl Catalog {
    /// An empty catalog over the config's rules.
    pub fn new(rules: TopicRules) -> Self {
        Catalog {
            rules: RwLock::new(Arc::new(rules)),
            topics: RwLock::new(HashMap::new()),
            generation: AtomicU64::new(0),
            watchers: Mutex::new(HashMap::new()),
        }
    }

    /// The config's rules.
    pub fn rules(&self) -> Arc<TopicRules> {
        self.rules.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the rules (the writer only, which then applies them to the topics that
    /// follow the rules); the settings of names not yet known may change.
    pub(crate) fn set_rules(&self, rules: TopicRules) {
        *self.rules.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(rules);
        self.generation.fetch_add(1, Ordering::Release);
    }

    fn read(&self) -> RwLockReadGuard<'_, HashMap<String, Entry>> {
        self.topics.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The settings in force for `name`: the topic's own, else the rules'.
    pub fn settings(&self, name: &str) -> TopicSettings {
        match self.read().get(name) {
            Some(e) => e.view.settings,
            None => self.rules().configured(name),
        }
    }

    /// See [`crate::engine::Log::settings_generation`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// One topic.
    pub fn get(&self, name: &str) -> Option<TopicView> {
        self.read().get(name).map(|e| e.view.clone())
    }

    /// Its id in the store and view, if it has a log.
    pub fn durable(&self, name: &str) -> Option<(TopicId, TopicView)> {
        self.read()
            .get(name)
            .filter(|e| e.id != 0)
            .map(|e| (e.id, e.view.clone()))
    }

    /// Every topic, sorted by name.
    pub fn list(&self) -> Vec<(String, TopicView)> {
        let mut v: Vec<_> = self
            .read()
            .iter()
            .map(|(k, e)| (k.clone(), e.view.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The durable topics (with a log) whose names match `pattern`.
    pub fn durable_matching(&self, pattern: &str) -> Vec<(String, TopicView)> {
        self.read()
            .iter()
            .filter(|(name, e)| e.id != 0 && rtc_proto::topic::pattern_matches(pattern, name))
            .map(|(k, e)| (k.clone(), e.view.clone()))
            .collect()
    }

    /// The names of the durable topics by id.
    pub fn names_by_id(&self) -> HashMap<TopicId, String> {
        self.read()
            .iter()
            .filter(|(_, e)| e.id != 0)
            .map(|(name, e)| (e.id, name.clone()))
            .collect()
    }

    /// A receiver of topic `name`'s last seq, updated after every write to it.
    pub fn watch(&self, name: &str) -> watch::Receiver<u64> {
        let last = self.get(name).map_or(0, |t| t.stats.last_seq);
        self.watchers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_string())
            .or_insert_with(|| watch::channel(last).0)
            .subscribe()
    }

    /// Forgets topic `name`, deleted (the engine's writer only). Sessions' cached settings for it
    /// are stale from here on, and its watchers see its last seq go to 0.
    pub(crate) fn remove(&self, name: &str) {
        self.topics
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        self.generation.fetch_add(1, Ordering::Release);
        self.tell_watchers(name, 0);
    }

    /// Sends topic `name`'s watchers its last seq, if it changed.
    fn tell_watchers(&self, name: &str, last: u64) {
        if let Some(tx) = self
            .watchers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            tx.send_if_modified(|v| std::mem::replace(v, last) != last);
        }
    }

    /// Publishes topic `name` as the writer now has it (the engine's writer only).
    pub(crate) fn set(&self, name: &str, id: TopicId, view: TopicView) {
        let last = view.stats.last_seq;
        {
            let mut topics = self.topics.write().unwrap_or_else(|p| p.into_inner());
            let before = match topics.get(name) {
                Some(e) => e.view.settings,
                None => self.rules().configured(name),
            };
            let changed = before != view.settings;
            match topics.get_mut(name) {
                // Replaced in place: no new key per pass.
                Some(e) => *e = Entry { id, view },
                None => {
                    topics.insert(name.to_string(), Entry { id, view });
                }
            }
            if changed {
                self.generation.fetch_add(1, Ordering::Release);
            }
        }
        self.tell_watchers(name, last);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::TopicStats;
    use crate::topic::{default_settings, is_durable, TopicRule};

    #[test]
    fn a_topic_own_settings_beat_the_rules_and_bump_the_generation() {
        let catalog = Catalog::new(TopicRules::new(&[TopicRule::ephemeral("game.>")]));
        assert!(!is_durable(&catalog.settings("game.saved")));
        let before = catalog.generation();
        let view = TopicView {
            settings: default_settings(),
            stats: TopicStats::default(),
            epoch: 1,
        };
        catalog.set("game.saved", 1, view.clone());
        assert!(
            is_durable(&catalog.settings("game.saved")),
            "explicit beats rules"
        );
        assert_ne!(catalog.generation(), before);
        // Stats alone change nothing a session caches.
        let at = catalog.generation();
        let mut more = view;
        more.stats.last_seq = 5;
        catalog.set("game.saved", 1, more);
        assert_eq!(catalog.generation(), at);
        assert_eq!(catalog.get("game.saved").unwrap().stats.last_seq, 5);
    }
}
