//! Topic settings: storage class, retention limits and dedup window, and how a topic
//! name gets them.
//!
//! A topic's settings come from, in order: an explicit `topic create` (kept in the store),
//! the first `[[topic]]` rule in the config whose pattern matches the name, or the
//! defaults (durable, no retention limit, 2-minute dedup window). [`TopicRules`] holds the
//! rules; the log engine, which owns the topics, answers the whole question.

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
/// presence_events = true     # rooms: join/leave events for watchers (false: none)
/// presence_events_max = 1000 # rooms: one by one up to this many members, counts above
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
    /// Rooms (topics with presence) this rule matches: `false` sends their watchers no
    /// presence events at all (queries still answer). Default true.
    #[serde(default = "yes")]
    pub presence_events: bool,
    /// Rooms this rule matches tell joins and leaves one by one up to this many members,
    /// and counts above it (default: the broker's `presence_events_max`).
    #[serde(default)]
    pub presence_events_max: Option<usize>,
}

fn yes() -> bool {
    true
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
            presence_events: true,
            presence_events_max: None,
        }
    }

    /// How a room this rule matches tells its watchers of changes: `None` not at all,
    /// `Some(n)` one by one up to `n` members (`default` when the rule says nothing).
    pub fn presence_events(&self, default: usize) -> Option<usize> {
        self.presence_events
            .then(|| self.presence_events_max.unwrap_or(default))
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

/// The config's `[[topic]]` rules, in file order: the settings a topic gets unless it was
/// created explicitly. Holds no state of its own; the topics themselves, explicit ones
/// included, belong to the log engine (`crate::store::catalog` in the local engine).
#[derive(Debug, Clone, Default)]
pub struct TopicRules {
    rules: Vec<(String, TopicSettings)>,
}

impl TopicRules {
    /// The rules of a config, in file order.
    pub fn new(rules: &[TopicRule]) -> Self {
        TopicRules {
            rules: rules
                .iter()
                .map(|r| (r.pattern.clone(), r.settings()))
                .collect(),
        }
    }

    /// The settings of the first rule whose pattern matches `name`, or the defaults.
    pub fn configured(&self, name: &str) -> TopicSettings {
        self.rules
            .iter()
            .find(|(pattern, _)| pattern_matches(pattern, name))
            .map(|(_, s)| *s)
            .unwrap_or_else(default_settings)
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
        let reg = TopicRules::new(&rules());
        assert!(!is_durable(&reg.configured("game.pos")));
        let o = reg.configured("orders.eu");
        assert!(is_durable(&o));
        assert_eq!(o.max_age_ms, 7 * 24 * 3600 * 1000);
        assert_eq!(o.max_msgs, 10);
        assert_eq!(o.dedup_window_ms, 300_000);
        let d = reg.configured("anything");
        assert_eq!(d, default_settings());
        assert_eq!(d.dedup_window_ms, 120_000);
    }
}
