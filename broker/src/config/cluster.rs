//! `[cluster]`: the settings of cluster mode on Redis (see `crate::cluster` and
//! docs/cluster.md), validated with the rest of the config.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::duration_str;

/// Cluster mode: every broker given the same Redis and prefix acts as one broker
/// (`crate::cluster`; docs/cluster.md). Durable topics live in Redis then, not in the
/// data directory.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// `redis://HOST:PORT`, `rediss://HOST:PORT` for TLS; a password as
    /// `redis://:PASSWORD@HOST:PORT` (or with a user, `redis://USER:PASSWORD@…`), a
    /// database as `/N` at the end.
    pub redis: String,
    /// Starts every key and channel the cluster uses, so that several clusters can share
    /// one Redis.
    pub prefix: String,
    /// A node that has not told Redis it is alive for this long is taken for dead: its
    /// presence entries are dropped on the other nodes. Nodes say so every third of it.
    #[serde(with = "duration_str")]
    pub presence_ttl: Duration,
    /// Redis Sentinel: the sentinels to ask where the master named `master` is
    /// (`redis://HOST:PORT` each). With them, `redis` gives only the scheme, credentials
    /// and database; the master's address comes from Sentinel, and is followed through
    /// failovers.
    pub sentinels: Vec<String>,
    /// The master's name in Sentinel (`sentinel monitor NAME …`).
    pub master: String,
    /// Redis Cluster: seed nodes (`redis://HOST:PORT` each, a password as in `redis`);
    /// the shards are found from them. `redis` is then not used.
    pub redis_cluster: Vec<String>,
    /// Which pub/sub carries live messages between nodes. Only Redis Cluster has a
    /// choice, and there the default is [`PubSubKind::Sharded`]; with one Redis (or
    /// Sentinel) it is always [`PubSubKind::Classic`].
    pub pubsub: Option<PubSubKind>,
    /// For `rediss://`: a PEM file with the certificate(s) to trust for Redis (its own
    /// self-signed one, or a private CA) instead of the system's roots.
    pub tls_ca: Option<PathBuf>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            redis: "redis://127.0.0.1:6379".to_string(),
            prefix: "rtc".to_string(),
            presence_ttl: Duration::from_secs(30),
            sentinels: Vec::new(),
            master: "mymaster".to_string(),
            redis_cluster: Vec::new(),
            pubsub: None,
            tls_ca: None,
        }
    }
}

/// Redis's two kinds of pub/sub, as `[cluster] pubsub` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PubSubKind {
    /// `PUBLISH`/`SUBSCRIBE`/`PSUBSCRIBE`. On Redis Cluster every message is copied to
    /// every shard, whoever subscribed: simple, and its cost grows with the shards.
    Classic,
    /// `SPUBLISH`/`SSUBSCRIBE` (Redis 7): a topic's messages stay on the shard of its
    /// keys, so pub/sub grows with the shards. Sharded pub/sub has no patterns:
    /// subscriptions with wildcards are refused (`UNSUPPORTED`).
    Sharded,
}

impl ClusterConfig {
    /// The cluster at `redis` with the default prefix.
    pub fn at(redis: &str) -> Self {
        ClusterConfig {
            redis: redis.to_string(),
            ..ClusterConfig::default()
        }
    }

    pub(super) fn validate(&self) -> Result<(), String> {
        if !(self.redis.starts_with("redis://") || self.redis.starts_with("rediss://")) {
            return Err(format!(
                "[cluster] redis must be a redis:// or rediss:// URL, got {:?}",
                self.redis
            ));
        }
        let ok = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
        if self.prefix.is_empty() || self.prefix.len() > 64 || !self.prefix.chars().all(ok) {
            return Err(format!(
                "[cluster] prefix must be 1 to 64 letters, digits, '-', '_' or '.', got {:?}",
                self.prefix
            ));
        }
        if !self.sentinels.is_empty() && !self.redis_cluster.is_empty() {
            return Err("[cluster] takes sentinels or redis_cluster, not both".to_string());
        }
        if let Some(bad) = self
            .redis_cluster
            .iter()
            .find(|s| !(s.starts_with("redis://") || s.starts_with("rediss://")))
        {
            return Err(format!(
                "[cluster] redis_cluster must be redis:// URLs, got {bad:?}"
            ));
        }
        if let Some(bad) = self.sentinels.iter().find(|s| !s.starts_with("redis://")) {
            return Err(format!(
                "[cluster] sentinels must be redis:// URLs, got {bad:?}"
            ));
        }
        if self.presence_ttl < Duration::from_secs(1) {
            return Err("[cluster] presence_ttl must be at least 1s".to_string());
        }
        if self.pubsub == Some(PubSubKind::Sharded) && self.redis_cluster.is_empty() {
            return Err(
                "[cluster] pubsub = \"sharded\" is for Redis Cluster: it needs redis_cluster"
                    .to_string(),
            );
        }
        Ok(())
    }

    /// The pub/sub in use: the configured one, else sharded on Redis Cluster.
    pub fn pubsub_kind(&self) -> PubSubKind {
        match (self.pubsub, self.redis_cluster.is_empty()) {
            (Some(kind), _) => kind,
            (None, true) => PubSubKind::Classic,
            (None, false) => PubSubKind::Sharded,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn redis_cluster_defaults_to_sharded_pubsub_which_needs_it() {
        let seeds = "[cluster]\nredis_cluster = [\"redis://127.0.0.1:7000\"]\n";
        let c = Config::from_toml_str(seeds).unwrap();
        c.validate().unwrap();
        let cluster = c.cluster.unwrap();
        assert_eq!(cluster.pubsub_kind(), PubSubKind::Sharded);
        let c = Config::from_toml_str(&format!("{seeds}pubsub = \"classic\"\n")).unwrap();
        assert_eq!(c.cluster.unwrap().pubsub_kind(), PubSubKind::Classic);
        let one = Config::from_toml_str("[cluster]\nredis = \"redis://127.0.0.1:1\"\n").unwrap();
        assert_eq!(one.cluster.unwrap().pubsub_kind(), PubSubKind::Classic);
        let c = Config::from_toml_str("[cluster]\npubsub = \"sharded\"\n").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("needs redis_cluster"), "{e}");
        assert!(Config::from_toml_str("[cluster]\npubsub = \"fast\"\n").is_err());
    }
}
