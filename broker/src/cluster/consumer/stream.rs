//! The Redis commands of a consumer's task: the consumer group's calls (`XGROUP`,
//! `XREADGROUP`, `XCLAIM`, `XAUTOCLAIM`, `XPENDING`, `XACK`, `XINFO GROUPS`) and the
//! parsing of their replies. The decisions stay in `mod.rs`.

use std::collections::HashMap;

use redis::{AsyncCommands, Value};
use rtc_proto::topic::dead_letter_topic;
use rtc_proto::v1;

use super::Group;
use crate::cluster::scripts::{entry, number, Entry};
use crate::cluster::store_error;
use crate::engine::StoreError;

impl Group {
    /// Takes entries other nodes have held for longer than `ack_wait`, with their
    /// delivery counts.
    pub(super) async fn claim_stale(&mut self) -> Result<(), StoreError> {
        let mut conn = self.inner.conn();
        let reply: Value = redis::cmd("XAUTOCLAIM")
            .arg(self.log_key())
            .arg(&self.name)
            .arg(&self.inner.node)
            .arg(self.ack_wait.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(self.room())
            .query_async(&mut conn)
            .await
            .map_err(store_error)?;
        let claimed = match &reply {
            Value::Array(parts) if parts.len() >= 2 => entries(&parts[1]),
            _ => Vec::new(),
        };
        for e in claimed {
            if let Some(h) = self.held.get(&e.0) {
                if h.member.is_some() || h.timer.is_some() {
                    // Ours, and our own deadline or delay will bring it back.
                    continue;
                }
            }
            let count = self.delivery_count(e.0).await?;
            self.offer(e, count).await?;
        }
        Ok(())
    }

    pub(super) async fn extend(&mut self, member: u64, seqs: &[u64]) -> Result<(), StoreError> {
        let mut ids = Vec::new();
        for &seq in seqs {
            let Some(h) = self.held.get_mut(&seq) else {
                continue;
            };
            if h.member != Some(member) {
                continue;
            }
            if let Some(key) = h.timer.take() {
                self.timers.remove(&key);
            }
            h.timer = Some(self.timers.insert(seq, self.ack_wait));
            ids.push(format!("{seq}-0"));
        }
        if ids.is_empty() {
            return Ok(());
        }
        // Resets the idle time other nodes judge it by; JUSTID counts no delivery.
        let mut conn = self.inner.conn();
        let _: Value = redis::cmd("XCLAIM")
            .arg(self.log_key())
            .arg(&self.name)
            .arg(&self.inner.node)
            .arg(0)
            .arg(&ids)
            .arg("JUSTID")
            .query_async(&mut conn)
            .await
            .map_err(store_error)?;
        Ok(())
    }
    pub(super) async fn xack(&self, seqs: &[u64]) -> Result<(), StoreError> {
        if seqs.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = seqs.iter().map(|s| format!("{s}-0")).collect();
        let mut conn = self.inner.conn();
        let _: i64 = conn
            .xack(self.log_key(), &self.name, &ids)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    /// `XCLAIM`s `seqs` for this node (idle at least `min_idle`); the entries still
    /// there.
    pub(super) async fn claim(
        &self,
        seqs: &[u64],
        min_idle: u64,
    ) -> Result<Vec<Entry>, StoreError> {
        let ids: Vec<String> = seqs.iter().map(|s| format!("{s}-0")).collect();
        let mut conn = self.inner.conn();
        let reply: Value = redis::cmd("XCLAIM")
            .arg(self.log_key())
            .arg(&self.name)
            .arg(&self.inner.node)
            .arg(min_idle)
            .arg(&ids)
            .query_async(&mut conn)
            .await
            .map_err(store_error)?;
        Ok(entries(&reply))
    }

    /// Redis's delivery count of pending entry `seq`.
    pub(super) async fn delivery_count(&self, seq: u64) -> Result<u32, StoreError> {
        let id = format!("{seq}-0");
        let mut conn = self.inner.conn();
        let reply: Value = redis::cmd("XPENDING")
            .arg(self.log_key())
            .arg(&self.name)
            .arg(&id)
            .arg(&id)
            .arg(1)
            .query_async(&mut conn)
            .await
            .map_err(store_error)?;
        let count = match &reply {
            Value::Array(rows) => match rows.first() {
                Some(Value::Array(row)) if row.len() == 4 => number(&row[3]),
                _ => None,
            },
            _ => None,
        };
        Ok(count.unwrap_or(1) as u32)
    }

    pub(super) async fn read_new(&self, n: usize) -> Result<Vec<Entry>, StoreError> {
        let mut conn = self.inner.conn();
        let reply: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&self.name)
            .arg(&self.inner.node)
            .arg("COUNT")
            .arg(n)
            .arg("STREAMS")
            .arg(self.log_key())
            .arg(">")
            .query_async(&mut conn)
            .await
            .map_err(store_error)?;
        // [[key, [entries]]], or nil when there is nothing new.
        Ok(match &reply {
            Value::Array(streams) => match streams.first() {
                Some(Value::Array(kv)) if kv.len() == 2 => entries(&kv[1]),
                _ => Vec::new(),
            },
            _ => Vec::new(),
        })
    }

    pub(super) async fn count(&self, field: &str) -> Result<(), StoreError> {
        let mut conn = self.inner.conn();
        let _: i64 = conn
            .hincr(self.counters_key(), field, 1)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    pub(super) async fn info(&self) -> Result<v1::ConsumerInfo, StoreError> {
        let mut conn = self.inner.conn();
        let summary: Value = redis::cmd("XPENDING")
            .arg(self.log_key())
            .arg(&self.name)
            .query_async(&mut conn)
            .await
            .map_err(store_error)?;
        // [count, smallest id, largest id, [[consumer, count]…]]
        let (pending, smallest) = match &summary {
            Value::Array(v) if v.len() >= 2 => (number(&v[0]).unwrap_or(0), seq_of_id(&v[1])),
            _ => (0, None),
        };
        let groups: redis::streams::StreamInfoGroupsReply = conn
            .xinfo_groups(self.log_key())
            .await
            .map_err(store_error)?;
        let last = groups
            .groups
            .iter()
            .find(|g| g.name == self.name)
            .and_then(|g| g.last_delivered_id.split('-').next()?.parse().ok())
            .unwrap_or(0);
        let counters: HashMap<String, u64> = conn
            .hgetall(self.counters_key())
            .await
            .map_err(store_error)?;
        Ok(v1::ConsumerInfo {
            req_id: 0,
            topic: self.topic.clone(),
            name: self.name.clone(),
            ack_floor: smallest.map_or(last, |s| s - 1),
            next_seq: last + 1,
            pending,
            redelivered: counters.get("redelivered").copied().unwrap_or(0),
            dead_lettered: counters.get("dead_lettered").copied().unwrap_or(0),
            members: self.members.len() as u32,
            dead_letter_topic: dead_letter_topic(&self.topic, &self.name),
        })
    }
}

/// The seq of a stream entry ID (`<seq>-0`) in a reply.
fn seq_of_id(v: &Value) -> Option<u64> {
    let Value::BulkString(b) = v else { return None };
    std::str::from_utf8(b).ok()?.split('-').next()?.parse().ok()
}

/// The entries of an `XCLAIM`/`XREADGROUP`/`XAUTOCLAIM` list (deleted ones skipped).
fn entries(v: &Value) -> Vec<Entry> {
    match v {
        Value::Array(items) => items.iter().filter_map(entry).collect(),
        _ => Vec::new(),
    }
}

pub(super) fn is_no_group(e: &StoreError) -> bool {
    e.to_string().contains("NOGROUP")
}
