//! Presence across nodes (the Redis side of `crate::presence::Roster`) and the
//! liveness of nodes.
//!
//! Each node keeps, per room, its own members in the room's hash `P:{R}:who` (field: its
//! node id) and announces each change on the channel of the same name, with a version
//! that grows, so that a list read from the hash never replaces a newer one that
//! arrived by the channel. A node with watchers in a room follows that channel, reads the
//! hash once, and hands every other node's list to `Presence::remote`.
//!
//! Every third of `presence_ttl` each node writes the time and its connection count in
//! `P:nodes`, and reads everyone's: a node silent for `presence_ttl` is dead, and its
//! lists are dropped (its members leave, for the watchers here) and removed from Redis.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use prost::Message as _;
use redis::AsyncCommands;
use rtc_proto::v1;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::keys::Interest;
use super::{feed, Inner};
use crate::clock::now_ms;
use crate::presence::{Presence, Roster};

/// This node's connection count.
type Count = Box<dyn Fn() -> usize + Send + Sync>;

/// The Redis engine's roster; see the module docs.
pub struct ClusterRoster {
    inner: Arc<Inner>,
    feed: mpsc::UnboundedSender<feed::Cmd>,
    tx: mpsc::UnboundedSender<(String, Vec<u8>)>,
    presence: OnceLock<Arc<Presence>>,
    followed: Mutex<HashSet<String>>,
    /// The newest version applied per (room, node).
    versions: Mutex<HashMap<(String, String), u64>>,
    version: AtomicU64,
    ttl: Duration,
    /// This node's connection count, for `P:nodes`.
    connections: OnceLock<Count>,
}

impl std::fmt::Debug for ClusterRoster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterRoster")
            .field("node", &self.inner.node)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// One node as `P:nodes` has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSeen {
    /// Its id.
    pub node: String,
    /// When it last said it was alive (ms since the Unix epoch).
    pub seen_ms: i64,
    /// Its connections then.
    pub connections: u64,
}

impl ClusterRoster {
    /// Starts the roster's writer and the liveness timer on `inner`'s tasks.
    pub fn start(
        inner: Arc<Inner>,
        feed: mpsc::UnboundedSender<feed::Cmd>,
        ttl: Duration,
        cancel: CancellationToken,
    ) -> Arc<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let roster = Arc::new(ClusterRoster {
            inner: inner.clone(),
            feed,
            tx,
            presence: OnceLock::new(),
            followed: Mutex::default(),
            versions: Mutex::default(),
            version: AtomicU64::new((now_ms().max(0) as u64) << 10),
            ttl,
            connections: OnceLock::new(),
        });
        inner.tasks.spawn(roster.clone().write(rx, cancel.clone()));
        inner.tasks.spawn(roster.clone().heartbeat(cancel));
        roster
    }

    /// The presence of this node, which other nodes' lists go to, and its connection
    /// count, which `P:nodes` shows.
    pub fn attach(&self, presence: Arc<Presence>, connections: Count) {
        let _ = self.presence.set(presence);
        let _ = self.connections.set(connections);
    }

    /// Writes each room's latest list (the ones queued meanwhile are superseded).
    async fn write(
        self: Arc<Self>,
        mut rx: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
        cancel: CancellationToken,
    ) {
        loop {
            let first = tokio::select! {
                first = rx.recv() => first,
                _ = cancel.cancelled() => None,
            };
            let Some(first) = first else { return };
            let mut latest: HashMap<String, Vec<u8>> = HashMap::from([first]);
            while let Ok((room, list)) = rx.try_recv() {
                latest.insert(room, list);
            }
            let mut commands = Vec::new();
            for (room, list) in &latest {
                let key = self.inner.keys.who(room);
                let mut write = if list.is_empty() {
                    redis::cmd("HDEL")
                } else {
                    redis::cmd("HSET")
                };
                write.arg(&key).arg(&self.inner.node);
                if !list.is_empty() {
                    write.arg(list);
                }
                let version = self.version.fetch_add(1, Ordering::Relaxed);
                let mut message = format!("{}:{version}:", self.inner.node).into_bytes();
                message.extend_from_slice(list);
                let mut publish = self.inner.publish_live();
                publish.arg(&key).arg(message);
                commands.push((key.clone(), write));
                commands.push((key, publish));
            }
            if let Err(e) = self.inner.target.send_all(commands).await {
                tracing::warn!("cluster: presence not shared: {e}");
            }
        }
    }

    /// Says this node is alive, and drops the nodes that stopped saying so.
    async fn heartbeat(self: Arc<Self>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(self.ttl / 3);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.beat().await {
                tracing::warn!("cluster: liveness: {e}");
            }
        }
    }

    async fn beat(&self) -> redis::RedisResult<()> {
        let connections = self.connections.get().map_or(0, |f| f());
        let mut conn = self.inner.conn();
        let key = self.inner.keys.nodes();
        let _: i64 = conn
            .hset(
                &key,
                &self.inner.node,
                format!("{}:{connections}", now_ms()),
            )
            .await?;
        let dead: Vec<String> = self
            .nodes()
            .await?
            .into_iter()
            .filter(|n| now_ms() - n.seen_ms > self.ttl.as_millis() as i64)
            .map(|n| n.node)
            .collect();
        for node in dead {
            tracing::info!(%node, "cluster: a node stopped answering; its presence goes");
            let _: i64 = conn.hdel(&key, &node).await?;
            let rooms: Vec<String> = self.lock_followed().iter().cloned().collect();
            for room in rooms {
                let _: i64 = conn.hdel(self.inner.keys.who(&room), &node).await?;
                self.apply(&room, &node, u64::MAX, Vec::new());
            }
        }
        Ok(())
    }

    /// How long a silent node is taken for alive.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Every node `P:nodes` knows, with when it last said it was alive.
    pub async fn nodes(&self) -> redis::RedisResult<Vec<NodeSeen>> {
        let mut conn = self.inner.conn();
        let all: HashMap<String, String> = conn.hgetall(self.inner.keys.nodes()).await?;
        let mut out: Vec<NodeSeen> = all
            .into_iter()
            .filter_map(|(node, v)| {
                let (ms, connections) = v.split_once(':')?;
                Some(NodeSeen {
                    node,
                    seen_ms: ms.parse().ok()?,
                    connections: connections.parse().ok()?,
                })
            })
            .collect();
        out.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(out)
    }

    fn lock_followed(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.followed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A list of `node` for `room` (from the channel, a read of the hash, or a death),
    /// applied if newer than the last one applied.
    fn apply(&self, room: &str, node: &str, version: u64, members: Vec<v1::PresenceMember>) {
        {
            let mut versions = self.versions.lock().unwrap_or_else(|p| p.into_inner());
            let key = (room.to_string(), node.to_string());
            if versions
                .get(&key)
                .is_some_and(|&v| v >= version && version != u64::MAX)
            {
                return;
            }
            if members.is_empty() {
                versions.remove(&key);
            } else {
                versions.insert(key, version);
            }
        }
        if let Some(presence) = self.presence.get() {
            presence.remote(room, node, members);
        }
    }

    /// A change on a room's channel: `<node>:<version>:<PresenceInfo>`.
    pub fn message(&self, room: &str, payload: &[u8]) {
        let mut parts = payload.splitn(3, |&b| b == b':');
        let (Some(node), Some(version), Some(list)) = (parts.next(), parts.next(), parts.next())
        else {
            return;
        };
        let Ok(node) = std::str::from_utf8(node) else {
            return;
        };
        if node == self.inner.node {
            return;
        }
        let Some(version) = std::str::from_utf8(version)
            .ok()
            .and_then(|v| v.parse().ok())
        else {
            return;
        };
        if let Some(members) = decode(list) {
            self.apply(room, node, version, members);
        }
    }

    /// The other live nodes' lists of `room`.
    async fn read(&self, room: &str) -> redis::RedisResult<Vec<(String, Vec<v1::PresenceMember>)>> {
        let live: HashSet<String> = self
            .nodes()
            .await?
            .into_iter()
            .filter(|n| now_ms() - n.seen_ms <= self.ttl.as_millis() as i64)
            .map(|n| n.node)
            .collect();
        let mut conn = self.inner.conn();
        let all: HashMap<String, Vec<u8>> = conn.hgetall(self.inner.keys.who(room)).await?;
        Ok(all
            .into_iter()
            .filter(|(node, _)| *node != self.inner.node && live.contains(node))
            .filter_map(|(node, v)| Some((node, decode(&v)?)))
            .collect())
    }
}

fn decode(list: &[u8]) -> Option<Vec<v1::PresenceMember>> {
    if list.is_empty() {
        return Some(Vec::new());
    }
    v1::PresenceInfo::decode(list).ok().map(|i| i.list)
}

impl Roster for ClusterRoster {
    fn publish(&self, room: &str, members: Vec<v1::PresenceMember>) {
        let list = if members.is_empty() {
            Vec::new()
        } else {
            v1::PresenceInfo {
                list: members,
                ..Default::default()
            }
            .encode_to_vec()
        };
        let _ = self.tx.send((room.to_string(), list));
    }

    fn follow(&self, room: &str) {
        self.lock_followed().insert(room.to_string());
        let (done, subscribed) = oneshot::channel();
        let interest = Interest::Channel(self.inner.keys.who(room));
        let _ = self.feed.send(feed::Cmd::Listen(interest, done));
        let room = room.to_string();
        let me = self.inner.roster();
        self.inner.tasks.spawn(async move {
            // Subscribed first, then read: what changes after the read arrives.
            let _ = subscribed.await;
            let Some(me) = me else { return };
            match me.read(&room).await {
                Ok(lists) => {
                    for (node, members) in lists {
                        // Version 0: any list from the channel is newer.
                        me.apply(&room, &node, 0, members);
                    }
                }
                Err(e) => tracing::warn!(%room, "cluster: presence of other nodes not read: {e}"),
            }
        });
    }

    fn unfollow(&self, room: &str) {
        self.lock_followed().remove(room);
        self.versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(r, _), _| r != room);
        let interest = Interest::Channel(self.inner.keys.who(room));
        let _ = self.feed.send(feed::Cmd::Unlisten(interest));
    }

    fn fetch(&self, room: &str) -> BoxFuture<'static, Vec<(String, Vec<v1::PresenceMember>)>> {
        let me = self.inner.roster();
        let room = room.to_string();
        async move {
            let Some(me) = me else { return Vec::new() };
            me.read(&room).await.unwrap_or_else(|e| {
                tracing::warn!(%room, "cluster: presence of other nodes not read: {e}");
                Vec::new()
            })
        }
        .boxed()
    }
}
