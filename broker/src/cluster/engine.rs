//! [`RedisEngine`] as the layers above see it: the engine seam ([`Log`], [`Appender`])
//! and the bus ([`Bus`]). Metadata is answered from the catalog; everything else is a
//! round trip to Redis or a message to the writer, the feed or the relay.

use std::collections::BTreeMap;

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt};
use rtc_proto::v1::TopicSettings;
use tokio::sync::{oneshot, watch};

use std::sync::Arc;

use redis::AsyncCommands;

use super::consumer::GroupRunner;
use super::{feed, store_error, writer, RedisEngine};
use crate::bus::Bus;
use crate::config::PubSubKind;
use crate::consumer::Runner;
use crate::engine::{
    Append, Appender, ConsumerRecord, Log, LogEntry, Outcome, Stopped, StoreError, StoredConsumer,
    TopicView,
};
use crate::refusal::Refusal;
use crate::topic::{is_durable, TopicRules};

/// Subscriptions whose topics' counters a `listen` refreshes at most.
const REFRESH_MAX: usize = 100;

impl<O: Send + 'static> Appender<O> for RedisEngine<O> {
    fn append(&self, append: Append<O>, _lone: bool) -> Result<(), Stopped> {
        self.appends.send(append).map_err(|_| Stopped)
    }
}

impl<O: Send + 'static> RedisEngine<O> {
    /// Shares `presence` with the other nodes (and this node's connection count, from
    /// `connections`, in the list of nodes); the roster `presence` is to be given.
    pub fn share_presence(
        &self,
        presence: Arc<crate::presence::Presence>,
        connections: Box<dyn Fn() -> usize + Send + Sync>,
    ) -> Arc<dyn crate::presence::Roster> {
        self.roster.attach(presence, connections);
        self.roster.clone()
    }

    /// Takes the replies other nodes forward to `requests` (this node's waiting
    /// requests), and gives it this node's id for the tokens.
    pub fn share_requests(&self, requests: Arc<crate::request::Requests>) {
        requests.set_node(&self.inner.node);
        let _ = self.inner.requests.set(requests);
    }

    /// Where this node's connection ids start: a range of 2^32 of its own, picked at
    /// random among 2^20 (below 2^52, so JavaScript reads them exactly).
    pub fn first_connection_id(&self) -> u64 {
        let range = u64::from_str_radix(&self.inner.node[..5], 16).unwrap_or(1) | 1;
        range << 32
    }

    /// The runner of this node's durable consumers (`consumer.rs`).
    pub fn consumer_runner(self: &Arc<Self>) -> Arc<dyn Runner> {
        Arc::new(GroupRunner {
            inner: self.inner.clone(),
            feed: self.feed.clone(),
            log: self.clone(),
        })
    }
}

impl<O: Send + 'static> Log for RedisEngine<O> {
    fn settings(&self, name: &str) -> TopicSettings {
        self.inner.catalog.settings(name)
    }

    fn settings_generation(&self) -> u64 {
        self.inner.catalog.generation()
    }

    fn topic(&self, name: &str) -> Option<TopicView> {
        self.inner.catalog.get(name)
    }

    fn topic_now(&self, name: &str) -> BoxFuture<'static, Option<TopicView>> {
        let inner = self.inner.clone();
        let name = name.to_string();
        async move {
            if let Err(e) = inner.reload(&name).await {
                tracing::debug!(topic = %name, "cluster: topic not refreshed: {e}");
            }
            inner.catalog.get(&name)
        }
        .boxed()
    }

    fn topics(&self) -> Vec<(String, TopicView)> {
        self.inner.catalog.list()
    }

    fn durable_matching(&self, pattern: &str) -> Vec<(String, TopicView)> {
        self.inner.catalog.durable_matching(pattern)
    }

    fn create_topic(
        &self,
        name: String,
        settings: TopicSettings,
    ) -> BoxFuture<'static, Result<TopicView, Refusal>> {
        let inner = self.inner.clone();
        async move { inner.create(&name, settings).await }.boxed()
    }

    fn ensure_topic(&self, name: String) -> BoxFuture<'static, Result<TopicView, Refusal>> {
        let inner = self.inner.clone();
        async move {
            if let Some(view) = inner.catalog.get(&name) {
                return Ok(view);
            }
            let settings = inner.catalog.settings(&name);
            if !is_durable(&settings) {
                return Ok(TopicView {
                    settings,
                    stats: Default::default(),
                    epoch: 0,
                });
            }
            inner.ensure_durable(&name).await?;
            inner
                .catalog
                .get(&name)
                .ok_or_else(|| Refusal::NotFound(format!("topic {name:?} was deleted meanwhile")))
        }
        .boxed()
    }

    fn delete_topic(&self, name: String) -> BoxFuture<'static, Result<(), Refusal>> {
        let inner = self.inner.clone();
        async move { inner.delete(&name).await }.boxed()
    }

    fn purge_topic(
        &self,
        name: String,
        keep: u64,
    ) -> BoxFuture<'static, Result<TopicView, Refusal>> {
        let inner = self.inner.clone();
        async move { inner.purge(&name, keep).await }.boxed()
    }

    fn delete_consumer(
        &self,
        topic: String,
        name: String,
    ) -> BoxFuture<'static, Result<(), Refusal>> {
        let inner = self.inner.clone();
        async move {
            // The other nodes' tasks of it meet NOGROUP and tell their members.
            let mut conn = inner.conn();
            let destroyed: i64 = redis::cmd("XGROUP")
                .arg("DESTROY")
                .arg(inner.keys.log(&topic))
                .arg(&name)
                .query_async(&mut conn)
                .await
                .map_err(store_error)?;
            let _: i64 = redis::cmd("DEL")
                .arg(inner.keys.consumer(&topic, &name))
                .query_async(&mut conn)
                .await
                .map_err(store_error)?;
            if destroyed == 0 {
                return Err(Refusal::NotFound(format!(
                    "topic {topic:?} has no durable consumer {name:?}"
                )));
            }
            Ok(())
        }
        .boxed()
    }

    fn set_topic_rules(&self, rules: TopicRules) -> BoxFuture<'static, Result<usize, Refusal>> {
        let inner = self.inner.clone();
        async move { inner.set_rules(rules).await }.boxed()
    }

    fn append_internal(
        &self,
        topic: String,
        payload: Bytes,
        headers: BTreeMap<String, String>,
    ) -> BoxFuture<'static, Result<u64, Refusal>> {
        let inner = self.inner.clone();
        async move {
            let append = Append {
                topic,
                payload,
                headers,
                msg_id: String::new(),
                origin: (),
            };
            let pass = writer::append_all(&inner, vec![append]).await;
            match pass.into_iter().next().map(|c| c.outcome) {
                Some(Outcome::Accepted { seq } | Outcome::Duplicate { seq }) => Ok(seq),
                Some(Outcome::Stored { seq, .. }) => Ok(seq),
                Some(Outcome::Refused(refusal)) => Err(refusal),
                None => Err(Refusal::Storage("the append had no outcome".into())),
            }
        }
        .boxed()
    }

    fn read(
        &self,
        topic: &str,
        from: u64,
        max_msgs: usize,
        max_bytes: usize,
    ) -> BoxFuture<'static, Result<Vec<LogEntry>, StoreError>> {
        let inner = self.inner.clone();
        let topic = topic.to_string();
        async move {
            if !inner.catalog.get(&topic).is_some_and(|v| v.is_durable()) {
                return Ok(Vec::new());
            }
            let (epoch, entries) = inner.read_entries(&topic, from, max_msgs).await?;
            let mut out = Vec::with_capacity(entries.len());
            let mut bytes = 0;
            for (seq, ts, body) in entries {
                if !out.is_empty() && bytes + body.len() > max_bytes {
                    break;
                }
                bytes += body.len();
                let message = super::message(seq, ts, epoch, 0, &body);
                out.push(LogEntry {
                    seq,
                    ts_ms: ts,
                    message,
                });
            }
            Ok(out)
        }
        .boxed()
    }

    fn first_at_or_after(
        &self,
        topic: &str,
        ts_ms: i64,
    ) -> BoxFuture<'static, Result<u64, StoreError>> {
        let inner = self.inner.clone();
        let topic = topic.to_string();
        async move {
            let mut conn = inner.conn();
            let seq: u64 = inner
                .scripts
                .seek
                .key(inner.keys.log(&topic))
                .arg(ts_ms)
                .invoke_async(&mut conn)
                .await
                .map_err(store_error)?;
            if seq != 0 {
                return Ok(seq);
            }
            let (_, stats) = inner.stats(&topic).await?;
            Ok(stats.last_seq + 1)
        }
        .boxed()
    }

    fn watch(&self, topic: &str) -> watch::Receiver<u64> {
        self.inner.catalog.watch(topic)
    }

    fn consumers(&self) -> Result<Vec<StoredConsumer>, StoreError> {
        Ok(Vec::new())
    }

    fn save_consumer(
        &self,
        _topic: &str,
        _name: &str,
        _record: ConsumerRecord,
        stored: Option<oneshot::Sender<()>>,
    ) -> Result<(), Stopped> {
        // A consumer's state is its group in Redis, kept by its tasks (`consumer.rs`);
        // a new one's start goes to the task that creates the group.
        if let Some(stored) = stored {
            let _ = stored.send(());
        }
        Ok(())
    }

    fn enforce_retention(&self) {
        // Once a second; a pass that takes longer is not overlapped by the next.
        if self
            .retaining
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        let inner = self.inner.clone();
        let retaining = self.retaining.clone();
        self.tasks.spawn(async move {
            if let Err(e) = inner.retain_all().await {
                tracing::warn!("cluster: retention and counters: {e}");
            }
            retaining.store(false, std::sync::atomic::Ordering::Release);
        });
    }

    fn shutdown(&self) -> BoxFuture<'static, ()> {
        self.cancel.cancel();
        self.tasks.close();
        let tasks = self.tasks.clone();
        async move { tasks.wait().await }.boxed()
    }
}

impl<O: Send + 'static> Bus for RedisEngine<O> {
    fn relays(&self) -> bool {
        true
    }

    fn relay(&self, topic: &str, datagram: bool, message: Bytes) {
        self.relay
            .send(self.inner.keys.live(topic), datagram, message);
    }

    fn listen(&self, pattern: &str) -> BoxFuture<'static, ()> {
        let (done, subscribed) = oneshot::channel();
        let interest = self.inner.keys.interest(pattern);
        let sent = self.feed.send(feed::Cmd::Listen(interest, done)).is_ok();
        let inner = self.inner.clone();
        let pattern = pattern.to_string();
        async move {
            if !sent {
                return;
            }
            let _ = subscribed.await;
            // The counters a start position is taken from: fresh, now that messages
            // stored from here on will arrive.
            let topics = inner.catalog.durable_matching(&pattern);
            for (name, _) in topics.into_iter().take(REFRESH_MAX) {
                if let Err(e) = inner.refresh(&name).await {
                    tracing::debug!(topic = %name, "cluster: counters not refreshed: {e}");
                    break;
                }
            }
        }
        .boxed()
    }

    fn node(&self) -> Option<&str> {
        Some(&self.inner.node)
    }

    fn request(&self, topic: &str, message: Bytes) -> BoxFuture<'static, u64> {
        let inner = self.inner.clone();
        let channel = inner.keys.live(topic);
        let mut payload = super::wire::relayed_header(&inner.node);
        super::wire::relayed_push(&mut payload, false, &message);
        async move {
            let mut publish = inner.publish_live();
            publish.arg(channel).arg(payload);
            let taken: redis::RedisResult<u64> = publish.query_async(&mut inner.conn()).await;
            taken.unwrap_or_else(|e| {
                tracing::debug!("cluster: a request not sent to other nodes: {e}");
                0
            })
        }
        .boxed()
    }

    fn reply(&self, node: &str, reply: rtc_proto::v1::Reply) -> BoxFuture<'static, bool> {
        let inner = self.inner.clone();
        let channel = inner.keys.replies(node);
        let payload = prost::Message::encode_to_vec(&reply);
        async move {
            let mut conn = inner.conn();
            let taken: redis::RedisResult<u64> = conn.publish(channel, payload).await;
            taken.is_ok_and(|n| n > 0)
        }
        .boxed()
    }

    fn nodes(&self) -> BoxFuture<'static, Result<Vec<crate::bus::Node>, String>> {
        let roster = self.roster.clone();
        async move {
            let ttl = roster.ttl().as_millis() as i64;
            let now = crate::clock::now_ms();
            Ok(roster
                .nodes()
                .await
                .map_err(|e| e.to_string())?
                .into_iter()
                .map(|n| crate::bus::Node {
                    alive: now - n.seen_ms <= ttl,
                    node: n.node,
                    connections: n.connections,
                    seen_ms: n.seen_ms,
                })
                .collect())
        }
        .boxed()
    }

    fn wildcards(&self) -> bool {
        self.inner.target.pubsub() == PubSubKind::Classic
    }

    fn unlisten(&self, pattern: &str) {
        let interest = self.inner.keys.interest(pattern);
        let _ = self.feed.send(feed::Cmd::Unlisten(interest));
    }
}
