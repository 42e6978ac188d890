//! Cluster mode: many brokers as one on Redis. [`RedisEngine`] is the log engine
//! (`crate::engine::Log`, `Appender`) and the bus to the other nodes
//! (`crate::bus::Bus`) of a broker started with `[cluster]`.
//!
//! How data flows. A durable publish goes to the writer (`writer.rs`), which sends
//! every append waiting as one pipeline of append scripts (`scripts.rs`: dedup, next
//! seq, `XADD`, trim, `PUBLISH` — one atomic step in Redis), and answers each
//! publisher from the reply. The message itself comes back, to this node as to every
//! node that listens to its topic, through the feed (`feed.rs`): one pub/sub
//! connection per node, subscribed only to what this node's clients want, which hands
//! each durable message to the commit sink in seq order (filling any gap from the
//! stream) and each ephemeral one from another node to the router. An ephemeral
//! publish is fanned out here first and then relayed (`relay.rs`). Topic settings and
//! counters are cached in a [`Catalog`], as the local engine's are, and kept current
//! from Redis (`topics.rs`): the control channel announces changes, every node
//! rereads them after a reconnect and refreshes the counters every few seconds.
//!
//! Durable consumers are Redis Streams consumer groups (`consumer.rs`), one Redis
//! consumer per node, so members on every node share one position. Keys and channels
//! are named in `keys.rs`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{ClusterConfig, PubSubKind};
use crate::engine::{Append, CommitSink, StorageObserver, StoreError, TopicStats};
use crate::router::Router;
use crate::store::catalog::Catalog;
use crate::topic::TopicRules;

mod consumer;
mod engine;
mod feed;
mod keys;
mod presence;
mod relay;
mod scripts;
mod subscriber;
mod target;
mod topics;
mod wire;
mod writer;

use keys::Keys;
use scripts::{Entry, Scripts};

/// The Redis engine and bus; see the module docs. `O` is delivery's origin type.
pub struct RedisEngine<O> {
    inner: Arc<Inner>,
    appends: mpsc::UnboundedSender<Append<O>>,
    feed: mpsc::UnboundedSender<feed::Cmd>,
    relay: relay::Relay,
    roster: Arc<presence::ClusterRoster>,
    /// A retention pass is running.
    retaining: Arc<AtomicBool>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl<O> std::fmt::Debug for RedisEngine<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisEngine")
            .field("node", &self.inner.node)
            .finish_non_exhaustive()
    }
}

/// What the engine's parts share.
pub struct Inner {
    keys: Keys,
    /// The Redis in use (the configured one, or Sentinel's master).
    target: target::Target,
    scripts: Scripts,
    catalog: Catalog,
    /// Topics created explicitly (the others follow the config's rules).
    explicit: Mutex<std::collections::HashSet<String>>,
    /// This node's id, random per process: its relayed messages carry it.
    node: String,
    max_topics: usize,
    /// Whether the feed is subscribed.
    feed_up: AtomicBool,
    epochs: AtomicU64,
    tasks: TaskTracker,
    /// Presence across nodes (a weak handle: the roster holds this).
    roster: OnceLock<Weak<presence::ClusterRoster>>,
    /// This node's waiting requests, for replies forwarded from other nodes.
    requests: OnceLock<Arc<crate::request::Requests>>,
    /// Told each pass's size and time, and when Redis stops (and starts again) taking
    /// appends: the metrics' storage figures.
    observer: Option<Arc<dyn StorageObserver>>,
}

impl<O: Send + 'static> RedisEngine<O> {
    /// Connects to the cluster's Redis, loads its topics, and starts the writer, the
    /// feed and the relay. Fails if Redis cannot be reached now.
    pub async fn open(
        config: &ClusterConfig,
        rules: TopicRules,
        max_topics: usize,
        sink: Arc<dyn CommitSink<O>>,
        router: Arc<Router>,
        observer: Option<Arc<dyn StorageObserver>>,
    ) -> Result<Arc<Self>, String> {
        let target = target::Target::connect(config).await?;
        let tasks = TaskTracker::new();
        let inner = Arc::new(Inner {
            keys: Keys::new(&config.prefix),
            target,
            scripts: Scripts::new(config.pubsub_kind()),
            catalog: Catalog::new(rules),
            explicit: Mutex::default(),
            node: node_id(),
            max_topics,
            feed_up: AtomicBool::new(false),
            epochs: AtomicU64::new(0),
            tasks: tasks.clone(),
            roster: OnceLock::new(),
            requests: OnceLock::new(),
            observer,
        });
        inner
            .reload_all()
            .await
            .map_err(|e| format!("cannot load the cluster's topics from Redis: {e}"))?;
        let cancel = CancellationToken::new();
        let (appends, rx) = mpsc::unbounded_channel();
        tasks.spawn(writer::run(inner.clone(), sink.clone(), rx, cancel.clone()));
        let (feed_tx, feed_rx) = mpsc::unbounded_channel();
        let feed = feed::Feed::new(inner.clone(), sink, router);
        tasks.spawn(feed.run(feed_rx, cancel.clone()));
        let relay = relay::Relay::start(inner.clone(), &tasks, cancel.clone());
        let roster = presence::ClusterRoster::start(
            inner.clone(),
            feed_tx.clone(),
            config.presence_ttl,
            cancel.clone(),
        );
        let _ = inner.roster.set(Arc::downgrade(&roster));
        if inner.target.watched() {
            tasks.spawn(follow_master(
                inner.clone(),
                feed_tx.clone(),
                cancel.clone(),
            ));
        }
        tracing::info!(node = %inner.node, prefix = %config.prefix, "cluster mode on Redis");
        Ok(Arc::new(RedisEngine {
            inner,
            appends,
            feed: feed_tx,
            relay,
            roster,
            retaining: Arc::default(),
            cancel,
            tasks,
        }))
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl Inner {
    /// The connection to Redis (it reconnects by itself; a handle: clone per use).
    fn conn(&self) -> target::Conn {
        self.target.conn()
    }

    /// The client, for a pub/sub connection.
    fn client(&self) -> redis::Client {
        self.target.client()
    }

    /// A publish to a live channel (a topic's or a room's), of the kind of pub/sub in
    /// use; the channel and message are for the caller to add.
    fn publish_live(&self) -> redis::Cmd {
        match self.target.pubsub() {
            PubSubKind::Classic => redis::cmd("PUBLISH"),
            PubSubKind::Sharded => redis::cmd("SPUBLISH"),
        }
    }

    /// The roster, while the engine runs.
    fn roster(&self) -> Option<Arc<presence::ClusterRoster>> {
        self.roster.get().and_then(Weak::upgrade)
    }

    fn set_feed_up(&self, up: bool) {
        self.feed_up.store(up, Ordering::Release);
    }

    /// An epoch for a log created now: the time in ms with 10 bits that differ per
    /// call, below 2^53 (JavaScript's exact integers) until the year 2248.
    fn new_epoch(&self) -> u64 {
        let n = self.epochs.fetch_add(1, Ordering::Relaxed);
        let salt = (n ^ seed()) & 0x3ff;
        ((crate::clock::now_ms().max(0) as u64) << 10) | salt
    }

    /// Notes that `topic` has message `seq` (this node stored it, or the feed brought
    /// it), so that its counters and watchers move without a round trip. Each seq is
    /// counted once.
    fn saw(&self, topic: &str, epoch: u64, seq: u64, ts: i64, len: usize) {
        let Some(mut view) = self.catalog.get(topic) else {
            return;
        };
        if view.epoch != epoch {
            view.epoch = epoch;
            view.stats = TopicStats::default();
        } else if seq <= view.stats.last_seq {
            return;
        }
        let s = &mut view.stats;
        if s.first_seq == 0 {
            s.first_seq = seq;
        }
        s.last_seq = seq;
        s.last_ts_ms = s.last_ts_ms.max(ts);
        s.messages += 1;
        s.bytes += len as u64;
        self.catalog.set(topic, 1, view);
    }

    /// Notes `topic`'s epoch as Redis has it.
    fn saw_epoch(&self, topic: &str, epoch: u64) {
        if let Some(mut view) = self.catalog.get(topic) {
            if view.epoch != epoch {
                view.epoch = epoch;
                self.catalog.set(topic, 1, view);
            }
        }
    }

    /// Up to `n` entries of `topic` from seq `from`, with its epoch.
    async fn read_entries(
        &self,
        topic: &str,
        from: u64,
        n: usize,
    ) -> Result<(u64, Vec<Entry>), StoreError> {
        let mut conn = self.conn();
        let reply: redis::Value = self
            .scripts
            .read
            .key(self.keys.meta(topic))
            .key(self.keys.log(topic))
            .arg(from.max(1))
            .arg(n.max(1))
            .invoke_async(&mut conn)
            .await
            .map_err(store_error)?;
        scripts::read(&reply).map_err(|e| StoreError::Corrupt(e.to_string()))
    }

    /// `topic`'s epoch (0: it has no counters) and stats, from Redis.
    async fn stats(&self, topic: &str) -> Result<(u64, TopicStats), StoreError> {
        let mut conn = self.conn();
        let reply: redis::Value = self
            .scripts
            .stats
            .key(self.keys.meta(topic))
            .key(self.keys.log(topic))
            .invoke_async(&mut conn)
            .await
            .map_err(store_error)?;
        scripts::stats(&reply).map_err(|e| StoreError::Corrupt(e.to_string()))
    }

    /// The view of `topic` with fresh counters from Redis.
    async fn refresh(&self, topic: &str) -> Result<(), StoreError> {
        let (epoch, stats) = self.stats(topic).await?;
        if let Some(mut view) = self.catalog.get(topic) {
            if view.epoch != epoch || view.stats != stats {
                view.epoch = epoch;
                view.stats = stats;
                self.catalog.set(topic, 1, view);
            }
        }
        Ok(())
    }
}

/// With Sentinel: follows the master, and has the feed reconnect when it moves.
async fn follow_master(
    inner: Arc<Inner>,
    feed: mpsc::UnboundedSender<feed::Cmd>,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(target::WATCH_EVERY);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        match inner.target.follow_master().await {
            Ok(true) => {
                let _ = feed.send(feed::Cmd::Reconnect);
            }
            Ok(false) => {}
            Err(e) => tracing::debug!("cluster: {e}"),
        }
    }
}

/// A Redis failure as the engine reports it.
fn store_error(e: redis::RedisError) -> StoreError {
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
        StoreError::Unavailable(format!("the cluster's Redis cannot be reached: {e}"))
    } else {
        StoreError::Engine(format!("Redis: {e}"))
    }
}

/// The `rtc.v1.Message` of a stored body: seq, timestamp, delivery count (a durable
/// consumer's; 0 for none) and epoch (fields 4, 5, 7, 9), then the body, which holds the
/// other fields. Protobuf takes fields in any order.
fn message(seq: u64, ts: i64, epoch: u64, delivery_count: u32, body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(body.len() + 40);
    prost::encoding::uint64::encode(4, &seq, &mut out);
    if ts != 0 {
        prost::encoding::int64::encode(5, &ts, &mut out);
    }
    if delivery_count != 0 {
        prost::encoding::uint32::encode(7, &delivery_count, &mut out);
    }
    if epoch != 0 {
        prost::encoding::uint64::encode(9, &epoch, &mut out);
    }
    out.put_slice(body);
    out.freeze()
}

/// Random bits, different per process.
fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish()
}

/// A node id: 16 hex digits, random per process.
fn node_id() -> String {
    format!("{:016x}", seed())
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;
    use rtc_proto::v1;

    #[test]
    fn a_stored_body_becomes_the_whole_message() {
        let body = v1::Message {
            topic: "a.b".into(),
            payload: bytes::Bytes::from_static(b"hi"),
            msg_id: "m1".into(),
            ..Default::default()
        }
        .encode_to_vec();
        let m = v1::Message::decode(message(7, 1_700_000_000_000, 42, 3, &body)).unwrap();
        assert_eq!(
            (
                m.topic.as_str(),
                &m.payload[..],
                m.seq,
                m.timestamp_ms,
                m.epoch,
                m.msg_id.as_str()
            ),
            ("a.b", &b"hi"[..], 7, 1_700_000_000_000, 42, "m1")
        );
    }
}
