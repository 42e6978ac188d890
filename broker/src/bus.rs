//! The seam to other brokers: what a node says to and wants from the rest of its
//! cluster about live messages. A broker on its own ([`Alone`]) has nobody to tell; in
//! cluster mode the Redis engine (`crate::cluster`) implements [`Bus`].
//!
//! Two directions:
//! - **interest** ([`Bus::listen`], [`Bus::unlisten`]): a session calls `listen` with a
//!   subscription's pattern before it confirms the subscription (`SubAck`), and
//!   `unlisten` when the subscription ends. A node asks the cluster only for the
//!   messages its own subscribers match; what arrives is fanned out here like a local
//!   publish (durable messages through the commit sink, in seq order; ephemeral ones
//!   through the router). `listen` resolves once messages published from then on are
//!   sure to arrive, so a client that has its `SubAck` misses nothing published after.
//! - **relay** ([`Bus::relay`]): an ephemeral message published on this node, already
//!   fanned out to this node's subscribers, goes to the other nodes. Durable messages
//!   need no relay: the engine stores them where every node reads.

use bytes::Bytes;
use futures_util::future::BoxFuture;

/// How a node reaches the other nodes of its cluster. See the module docs.
pub trait Bus: Send + Sync + std::fmt::Debug {
    /// Whether other nodes may exist: callers skip encoding for [`Bus::relay`] if not.
    fn relays(&self) -> bool;
    /// Sends an ephemeral message (an encoded `rtc.v1.Message`) of `topic` to the other
    /// nodes; `datagram` as the topic is configured. Never waits: while the cluster
    /// cannot be reached, live messages for other nodes are dropped and counted (local
    /// subscribers have theirs already).
    fn relay(&self, topic: &str, datagram: bool, message: Bytes);
    /// A subscription with `pattern` (validated) starts on this node; resolves once
    /// messages published anywhere from now on will reach it.
    fn listen(&self, pattern: &str) -> BoxFuture<'static, ()>;
    /// A subscription with `pattern` ended.
    fn unlisten(&self, pattern: &str);
    /// Whether [`Bus::listen`] takes patterns with wildcards (sharded pub/sub on Redis
    /// Cluster does not: sessions refuse them with `UNSUPPORTED`).
    fn wildcards(&self) -> bool {
        true
    }
    /// Sends a request (an encoded `rtc.v1.Message` with `reply_to`) of `topic` to the
    /// other nodes; resolves with how many nodes took it (0: nobody else listens, or the
    /// cluster cannot be reached).
    fn request(&self, _topic: &str, _message: Bytes) -> BoxFuture<'static, u64> {
        Box::pin(std::future::ready(0))
    }
    /// Forwards a reply to the node its `reply_to` names; resolves with whether that
    /// node listens.
    fn reply(&self, _node: &str, _reply: rtc_proto::v1::Reply) -> BoxFuture<'static, bool> {
        Box::pin(std::future::ready(false))
    }
    /// This node's id in its cluster; `None` on a broker of its own.
    fn node(&self) -> Option<&str> {
        None
    }
    /// The nodes of the cluster as last heard from (empty on a broker of its own).
    fn nodes(&self) -> BoxFuture<'static, Result<Vec<Node>, String>> {
        Box::pin(std::future::ready(Ok(Vec::new())))
    }
}

/// One node of a cluster, as its heartbeats tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Its id.
    pub node: String,
    /// Its connections at its last heartbeat.
    pub connections: u64,
    /// When that was (ms since the Unix epoch).
    pub seen_ms: i64,
    /// Heard from within the cluster's presence TTL.
    pub alive: bool,
}

/// A broker that is not part of a cluster.
#[derive(Debug, Default, Clone, Copy)]
pub struct Alone;

impl Bus for Alone {
    fn relays(&self) -> bool {
        false
    }

    fn relay(&self, _topic: &str, _datagram: bool, _message: Bytes) {}

    fn listen(&self, _pattern: &str) -> BoxFuture<'static, ()> {
        Box::pin(std::future::ready(()))
    }

    fn unlisten(&self, _pattern: &str) {}
}
