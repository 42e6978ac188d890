//! The cluster's topics: their settings in the registry hash (`P:topics`), their
//! counters and epoch in each topic's meta hash, and this node's copy of both in the
//! engine's [`crate::store::catalog::Catalog`].
//!
//! A topic is registered the first time any node stores to it (with the settings the
//! rules give it) or when it is created explicitly; every change is announced on the
//! control channel, and each node rereads that topic. After the feed reconnects a node
//! rereads them all, and drops the topics deleted meanwhile.

use std::collections::HashSet;
use std::sync::Arc;

use prost::Message as _;
use redis::AsyncCommands;
use rtc_proto::v1::TopicSettings;

use super::{store_error, Inner};
use crate::engine::{StoreError, TopicView};
use crate::refusal::Refusal;
use crate::topic::{is_durable, normalize};

/// A registry value: `E` (created explicitly) or `R` (by the rules), then the settings.
fn encode(explicit: bool, settings: &TopicSettings) -> Vec<u8> {
    let mut v = vec![if explicit { b'E' } else { b'R' }];
    settings.encode(&mut v).expect("a Vec grows");
    v
}

fn decode(v: &[u8]) -> Option<(bool, TopicSettings)> {
    let (&flag, rest) = v.split_first()?;
    let settings = TopicSettings::decode(rest).ok()?;
    Some((flag == b'E', normalize(settings)))
}

impl Inner {
    /// Loads every topic of the registry, with counters, and forgets the ones gone.
    pub(super) async fn reload_all(&self) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let all: Vec<(String, Vec<u8>)> = conn
            .hgetall(self.keys.topics())
            .await
            .map_err(store_error)?;
        let mut names = HashSet::with_capacity(all.len());
        for (name, value) in all {
            let Some((explicit, settings)) = decode(&value) else {
                tracing::warn!(topic = %name, "cluster: unreadable settings in the registry");
                continue;
            };
            self.install(&name, explicit, settings).await?;
            names.insert(name);
        }
        for (name, _) in self.catalog.list() {
            if !names.contains(&name) {
                self.forget(&name);
            }
        }
        Ok(())
    }

    /// Rereads topic `name` (`""`: every topic) on another task.
    pub(super) fn spawn_reload(self: &Arc<Self>, name: String) {
        let inner = self.clone();
        self.tasks.spawn(async move {
            let done = if name.is_empty() {
                inner.reload_all().await
            } else {
                inner.reload(&name).await
            };
            if let Err(e) = done {
                tracing::warn!(topic = %name, "cluster: cannot reread topic settings: {e}");
            }
        });
    }

    /// Rereads topic `name`'s settings and counters.
    pub(super) async fn reload(&self, name: &str) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let value: Option<Vec<u8>> = conn
            .hget(self.keys.topics(), name)
            .await
            .map_err(store_error)?;
        match value.as_deref().and_then(decode) {
            Some((explicit, settings)) => self.install(name, explicit, settings).await,
            None => {
                self.forget(name);
                Ok(())
            }
        }
    }

    /// Puts a topic as the registry has it into the catalog, with fresh counters.
    async fn install(
        &self,
        name: &str,
        explicit: bool,
        settings: TopicSettings,
    ) -> Result<(), StoreError> {
        let durable = is_durable(&settings);
        let (epoch, stats) = if durable {
            self.stats(name).await?
        } else {
            Default::default()
        };
        {
            let mut set = self.explicit.lock().unwrap_or_else(|p| p.into_inner());
            if explicit {
                set.insert(name.to_string());
            } else {
                set.remove(name);
            }
        }
        let view = TopicView {
            settings,
            stats,
            epoch,
        };
        self.catalog.set(name, u32::from(durable), view);
        Ok(())
    }

    fn forget(&self, name: &str) {
        if self.catalog.get(name).is_some() {
            self.catalog.remove(name);
        }
        self.explicit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }

    /// Tells every node that topic `name` changed.
    async fn announce(&self, name: &str) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let _: i64 = conn
            .publish(self.keys.ctl(), name)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    /// The settings of durable topic `topic`, registering it (with the rules'
    /// settings) if no node has yet.
    pub(super) async fn ensure_durable(&self, topic: &str) -> Result<TopicSettings, Refusal> {
        if let Some(view) = self.catalog.get(topic) {
            return Ok(view.settings);
        }
        let durable = self
            .catalog
            .list()
            .iter()
            .filter(|(_, v)| v.is_durable())
            .count();
        if durable >= self.max_topics {
            return Err(Refusal::LimitExceeded(format!(
                "the cluster holds {durable} durable topics, this broker's limit"
            )));
        }
        let settings = normalize(self.catalog.settings(topic));
        let mut conn = self.conn();
        let added: bool = conn
            .hset_nx(self.keys.topics(), topic, encode(false, &settings))
            .await
            .map_err(store_error)?;
        if added {
            let _: bool = conn
                .hset_nx(self.keys.meta(topic), "epoch", self.new_epoch())
                .await
                .map_err(store_error)?;
            self.announce(topic).await?;
        }
        self.reload(topic).await?;
        Ok(self
            .catalog
            .get(topic)
            .map_or(settings, |view| view.settings))
    }

    /// Puts topic `name` back in the registry with the settings this node has for it,
    /// if the registry lost it.
    pub(super) async fn register_again(&self, name: &str) -> Result<(), StoreError> {
        let explicit = self
            .explicit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(name);
        let settings = self.catalog.settings(name);
        let mut conn = self.conn();
        let added: bool = conn
            .hset_nx(self.keys.topics(), name, encode(explicit, &settings))
            .await
            .map_err(store_error)?;
        if added {
            self.announce(name).await?;
        }
        Ok(())
    }

    /// Creates topic `name` with `settings`, or changes an existing one's.
    pub(super) async fn create(
        &self,
        name: &str,
        settings: TopicSettings,
    ) -> Result<TopicView, Refusal> {
        let settings = normalize(settings);
        self.reload(name).await?;
        if let Some(before) = self.catalog.get(name) {
            if before.is_durable() && !is_durable(&settings) {
                return Err(Refusal::Conflict(format!(
                    "topic {name:?} is durable and has a log; it cannot become ephemeral"
                )));
            }
        }
        let mut conn = self.conn();
        let _: i64 = conn
            .hset(self.keys.topics(), name, encode(true, &settings))
            .await
            .map_err(store_error)?;
        if is_durable(&settings) {
            let _: bool = conn
                .hset_nx(self.keys.meta(name), "epoch", self.new_epoch())
                .await
                .map_err(store_error)?;
        }
        self.announce(name).await?;
        self.reload(name).await?;
        self.catalog
            .get(name)
            .ok_or_else(|| Refusal::NotFound(format!("topic {name:?} was deleted meanwhile")))
    }

    /// Deletes topic `name`: its log, counters, dedup entries and registry entry.
    pub(super) async fn delete(&self, name: &str) -> Result<(), Refusal> {
        self.reload(name).await?;
        if self.catalog.get(name).is_none() {
            return Err(Refusal::NotFound(format!("no topic {name:?}")));
        }
        let mut conn = self.conn();
        let _: i64 = conn
            .del(&[self.keys.meta(name), self.keys.log(name)])
            .await
            .map_err(store_error)?;
        // Dedup entries expire by themselves; deleting them lets a new topic of the
        // name take the same IDs at once. (Not on Redis Cluster, where SCAN sees one
        // shard: there they expire; a new epoch makes them stale anyway.)
        let glob = self.keys.dedup_glob(name);
        let mut cursor: u64 = 0;
        let rounds = if self.target.sharded() { 0 } else { 100_000 };
        for _ in 0..rounds {
            let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&glob)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .map_err(store_error)?;
            if !found.is_empty() {
                let _: i64 = conn.del(&found).await.map_err(store_error)?;
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        let _: i64 = conn
            .hdel(self.keys.topics(), name)
            .await
            .map_err(store_error)?;
        self.forget(name);
        self.announce(name).await?;
        Ok(())
    }

    /// Removes all but the newest `keep` messages of `name`.
    pub(super) async fn purge(&self, name: &str, keep: u64) -> Result<TopicView, Refusal> {
        self.reload(name).await?;
        match self.catalog.get(name) {
            Some(view) if view.is_durable() => {}
            Some(_) => return Err(Refusal::Conflict(format!("topic {name:?} has no log"))),
            None => return Err(Refusal::NotFound(format!("no topic {name:?}"))),
        }
        self.trim(name, keep as i64, 0, 0).await?;
        self.refresh(name).await?;
        self.catalog
            .get(name)
            .ok_or_else(|| Refusal::NotFound(format!("no topic {name:?}")))
    }

    /// Removes `name`'s oldest messages while more than `max_msgs` (-1: any number),
    /// more than `max_bytes` (0: any) or older than `min_ts` (0: any), in steps that
    /// keep each script short.
    pub(super) async fn trim(
        &self,
        name: &str,
        max_msgs: i64,
        max_bytes: u64,
        min_ts: i64,
    ) -> Result<u64, StoreError> {
        const STEP: u64 = 10_000;
        let mut removed = 0;
        let mut conn = self.conn();
        for _ in 0..10_000 {
            let n: u64 = self
                .scripts
                .retain
                .key(self.keys.meta(name))
                .key(self.keys.log(name))
                .arg(max_msgs)
                .arg(max_bytes)
                .arg(min_ts)
                .arg(STEP)
                .invoke_async(&mut conn)
                .await
                .map_err(store_error)?;
            removed += n;
            if n < STEP {
                break;
            }
        }
        Ok(removed)
    }

    /// Applies the retention limits of every durable topic and refreshes counters.
    pub(super) async fn retain_all(&self) -> Result<(), StoreError> {
        let now = crate::clock::now_ms();
        for (name, view) in self.catalog.list() {
            if !view.is_durable() {
                continue;
            }
            let s = view.settings;
            let min_ts = if s.max_age_ms > 0 {
                now.saturating_sub(s.max_age_ms as i64)
            } else {
                0
            };
            if s.max_msgs > 0 || s.max_bytes > 0 || min_ts > 0 {
                let max_msgs = if s.max_msgs > 0 {
                    s.max_msgs as i64
                } else {
                    -1
                };
                self.trim(&name, max_msgs, s.max_bytes, min_ts).await?;
            }
            self.refresh(&name).await?;
        }
        Ok(())
    }

    /// Replaces the config's rules; the topics not created explicitly take the
    /// settings the new rules give them. How many changed.
    pub(super) async fn set_rules(
        &self,
        rules: crate::topic::TopicRules,
    ) -> Result<usize, Refusal> {
        self.catalog.set_rules(rules);
        let rules = self.catalog.rules();
        let explicit = self
            .explicit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut changed = 0;
        let mut conn = self.conn();
        for (name, view) in self.catalog.list() {
            if explicit.contains(&name) {
                continue;
            }
            let settings = normalize(rules.configured(&name));
            if settings == view.settings || (view.is_durable() && !is_durable(&settings)) {
                continue;
            }
            let _: i64 = conn
                .hset(self.keys.topics(), &name, encode(false, &settings))
                .await
                .map_err(store_error)?;
            self.announce(&name).await?;
            self.reload(&name).await?;
            changed += 1;
        }
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::default_settings;

    #[test]
    fn registry_values_keep_the_flag_and_the_settings() {
        let mut s = default_settings();
        s.max_msgs = 7;
        assert_eq!(decode(&encode(true, &s)), Some((true, normalize(s))));
        assert_eq!(decode(&encode(false, &s)), Some((false, normalize(s))));
        assert_eq!(decode(b""), None);
    }
}
