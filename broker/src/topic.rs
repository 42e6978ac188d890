//! Topic settings: storage class, retention limits and dedup window, and how a topic
//! name gets them.
//!
//! A topic's settings come from, in order: an explicit `topic create` (kept in the store),
//! the first `[[topic]]` rule in the config whose pattern matches the name, or the
//! defaults (durable, no retention limit, 2-minute dedup window). [`TopicRegistry`] answers
//! that question on every publish; it holds only the explicit topics and the rules, so it
//! does not grow with the number of topics published to.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::Duration;

use rtc_proto::topic::pattern_matches;
use rtc_proto::v1::{StorageClass, TopicSettings};
use serde::Deserialize;

/// Dedup window used when a topic does not set one.
pub const DEFAULT_DEDUP_WINDOW: Duration = Duration::from_secs(120);

/// A `[[topic]]` entry of the config file.
///
/// ```toml
/// [[topic]]
/// pattern = "game.>"
/// storage = "ephemeral"
///
/// [[topic]]
/// pattern = "orders.>"
/// max_age = "7d"
/// max_msgs = 1000000
/// max_bytes = 1073741824
/// dedup_window = "5m"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicRule {
    /// Topic pattern this rule applies to (same wildcards as subscriptions).
    pub pattern: String,
    /// `durable` (default) or `ephemeral`.
    #[serde(default)]
    pub storage: StorageName,
    /// Remove messages older than this (e.g. `"7d"`).
    #[serde(default, with = "opt_duration")]
    pub max_age: Option<Duration>,
    /// Keep at most this many messages.
    #[serde(default)]
    pub max_msgs: Option<u64>,
    /// Keep at most this many bytes of messages.
    #[serde(default)]
    pub max_bytes: Option<u64>,
    /// Dedup window (default 2 minutes).
    #[serde(default, with = "opt_duration")]
    pub dedup_window: Option<Duration>,
    /// Ephemeral topics: deliver as QUIC datagrams to subscribers that ask for it.
    #[serde(default)]
    pub datagram: bool,
}

/// Storage class as written in the config file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageName {
    /// Stored in the log.
    #[default]
    Durable,
    /// Live fan-out only.
    Ephemeral,
}

impl TopicRule {
    /// A rule making the topics `pattern` matches ephemeral, with no other setting.
    pub fn ephemeral(pattern: &str) -> Self {
        TopicRule {
            pattern: pattern.to_string(),
            storage: StorageName::Ephemeral,
            max_age: None,
            max_msgs: None,
            max_bytes: None,
            dedup_window: None,
            datagram: false,
        }
    }

    /// The settings this rule gives a topic.
    pub fn settings(&self) -> TopicSettings {
        normalize(TopicSettings {
            storage: match self.storage {
                StorageName::Durable => StorageClass::Durable,
                StorageName::Ephemeral => StorageClass::Ephemeral,
            } as i32,
            max_age_ms: self.max_age.map_or(0, |d| d.as_millis() as u64),
            max_msgs: self.max_msgs.unwrap_or(0),
            max_bytes: self.max_bytes.unwrap_or(0),
            dedup_window_ms: self.dedup_window.map_or(0, |d| d.as_millis() as u64),
            datagram: self.datagram,
        })
    }
}

/// Fills in defaults: unspecified storage is durable, a zero dedup window is 2 minutes.
pub fn normalize(mut s: TopicSettings) -> TopicSettings {
    if s.storage != StorageClass::Ephemeral as i32 {
        s.storage = StorageClass::Durable as i32;
    }
    if s.dedup_window_ms == 0 {
        s.dedup_window_ms = DEFAULT_DEDUP_WINDOW.as_millis() as u64;
    }
    s
}

/// Whether `s` describes a durable topic.
pub fn is_durable(s: &TopicSettings) -> bool {
    s.storage != StorageClass::Ephemeral as i32
}

/// Settings of a topic nobody configured: durable, no limits, default dedup window.
pub fn default_settings() -> TopicSettings {
    normalize(TopicSettings::default())
}

/// Answers "what are this topic's settings?" for every publish.
#[derive(Debug)]
pub struct TopicRegistry {
    explicit: RwLock<HashMap<String, TopicSettings>>,
    rules: Vec<(String, TopicSettings)>,
    /// Bumped by every change to `explicit`: settings a session cached at an older
    /// generation are stale (see [`crate::topic_cache`]).
    generation: AtomicU64,
}

impl TopicRegistry {
    /// A registry with the config's rules, in file order.
    pub fn new(rules: &[TopicRule]) -> Self {
        TopicRegistry {
            explicit: RwLock::new(HashMap::new()),
            generation: AtomicU64::new(0),
            rules: rules
                .iter()
                .map(|r| (r.pattern.clone(), r.settings()))
                .collect(),
        }
    }

    /// Settings from the config rules or the defaults, ignoring explicit topics.
    pub fn configured(&self, name: &str) -> TopicSettings {
        self.rules
            .iter()
            .find(|(pattern, _)| pattern_matches(pattern, name))
            .map(|(_, s)| *s)
            .unwrap_or_else(default_settings)
    }

    /// The settings in force for `name`.
    pub fn resolve(&self, name: &str) -> TopicSettings {
        if let Some(s) = self
            .explicit
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            return *s;
        }
        self.configured(name)
    }

    /// Records the settings of a topic created with `topic create`.
    pub fn set_explicit(&self, name: &str, settings: TopicSettings) {
        let mut explicit = self.explicit.write().unwrap_or_else(|p| p.into_inner());
        explicit.insert(name.to_string(), settings);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The current generation: it changes whenever a topic's settings may have.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

mod opt_duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Vec<TopicRule> {
        let text = r#"
            [[topic]]
            pattern = "game.>"
            storage = "ephemeral"
            [[topic]]
            pattern = "orders.*"
            max_age = "7d"
            max_msgs = 10
            dedup_window = "5m"
        "#;
        #[derive(Deserialize)]
        struct F {
            topic: Vec<TopicRule>,
        }
        toml::from_str::<F>(text).unwrap().topic
    }

    #[test]
    fn resolution_order() {
        let reg = TopicRegistry::new(&rules());
        assert!(!is_durable(&reg.resolve("game.pos")));
        let o = reg.resolve("orders.eu");
        assert!(is_durable(&o));
        assert_eq!(o.max_age_ms, 7 * 24 * 3600 * 1000);
        assert_eq!(o.max_msgs, 10);
        assert_eq!(o.dedup_window_ms, 300_000);
        let d = reg.resolve("anything");
        assert_eq!(d, default_settings());
        assert_eq!(d.dedup_window_ms, 120_000);
        reg.set_explicit("game.saved", default_settings());
        assert!(
            is_durable(&reg.resolve("game.saved")),
            "explicit beats rules"
        );
    }
}
