//! The feed's pub/sub connection, of the kind `[cluster] pubsub` chose
//! (`crate::config::PubSubKind`): what the feed subscribes to, and what arrives.
//!
//! - **Classic**: one `redis::aio::PubSub` on one Redis (or any node of a Redis
//!   Cluster, which copies classic messages to every node). Channels with `SUBSCRIBE`,
//!   globs with `PSUBSCRIBE`. When it drops, the feed connects again and catches up.
//! - **Sharded** (Redis Cluster): a cluster connection of its own in RESP3. A topic's
//!   channel (or a room's) goes with `SSUBSCRIBE` to the shard of its slot. The node's
//!   own channels (control, replies) are classic: few messages, and Redis Cluster
//!   copies them to every shard anyway. When any shard's connection drops, the whole
//!   connection counts as lost ([`Event::Closed`]) and the feed connects again,
//!   subscribes to everything and reads what it missed, as with classic pub/sub.
//!   redis-rs would subscribe again by itself, but that was seen to lose shard
//!   subscriptions when connections were cut several times in a row
//!   (`cluster_sharded.rs` cuts them five times), and the feed could not tell which
//!   topics missed messages. A shard that stops serving a channel (its slot moved)
//!   says so with an unsubscribe push: [`Event::Dropped`].
//!   Sharded pub/sub has no patterns: a glob is refused (sessions refuse wildcard
//!   subscriptions before it comes to that, see `Bus::wildcards`).
//!
//! Either way what Redis sends lands in an unbounded queue read by the feed, so Redis
//! never sees a slow reader.

use futures_util::future::FutureExt;
use futures_util::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use redis::cluster_async::ClusterConnection;
use redis::{Msg, PushInfo, PushKind, RedisResult};
use tokio::sync::mpsc;

use super::keys::Interest;
use super::Inner;
use crate::config::PubSubKind;

/// A pub/sub connection; see the module docs.
pub enum Subscriber {
    /// One Redis's pub/sub.
    Classic {
        sink: PubSubSink,
        stream: PubSubStream,
    },
    /// A Redis Cluster's, shard by shard.
    Sharded {
        conn: ClusterConnection,
        pushes: mpsc::UnboundedReceiver<PushInfo>,
    },
}

/// What arrives on a [`Subscriber`].
pub enum Event {
    /// A message on a channel subscribed to.
    Message(Msg),
    /// Redis unsubscribed the connection from `channel`: by request, or (sharded) on
    /// its own because the channel's slot moved to another shard.
    Dropped(String),
    /// The connection is lost: connect again.
    Closed,
}

impl Subscriber {
    /// Connects with the kind of pub/sub `inner`'s cluster uses.
    pub async fn connect(inner: &Inner) -> Result<Subscriber, String> {
        match inner.target.pubsub() {
            PubSubKind::Classic => {
                let pubsub = inner
                    .client()
                    .get_async_pubsub()
                    .await
                    .map_err(|e| e.to_string())?;
                let (sink, stream) = pubsub.split();
                Ok(Subscriber::Classic { sink, stream })
            }
            PubSubKind::Sharded => {
                let (tx, pushes) = mpsc::unbounded_channel();
                let conn = inner.target.sharded_subscriber(tx).await?;
                Ok(Subscriber::Sharded { conn, pushes })
            }
        }
    }

    /// Subscribes to one of the node's own channels (classic on either kind).
    pub async fn subscribe_own(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            Subscriber::Classic { sink, .. } => sink.subscribe(channel).await,
            Subscriber::Sharded { conn, .. } => conn.subscribe(channel).await,
        }
    }

    /// Subscribes (`on`) to `interest`, or unsubscribes.
    pub async fn change(&mut self, interest: &Interest, on: bool) -> RedisResult<()> {
        match (self, interest, on) {
            (Subscriber::Classic { sink, .. }, Interest::Channel(c), true) => {
                sink.subscribe(c).await
            }
            (Subscriber::Classic { sink, .. }, Interest::Channel(c), false) => {
                sink.unsubscribe(c).await
            }
            (Subscriber::Classic { sink, .. }, Interest::Glob(g), true) => sink.psubscribe(g).await,
            (Subscriber::Classic { sink, .. }, Interest::Glob(g), false) => {
                sink.punsubscribe(g).await
            }
            (Subscriber::Sharded { conn, .. }, Interest::Channel(c), true) => {
                conn.ssubscribe(c).await
            }
            (Subscriber::Sharded { conn, .. }, Interest::Channel(c), false) => {
                conn.sunsubscribe(c).await
            }
            (Subscriber::Sharded { .. }, Interest::Glob(g), _) => {
                // Never asked for: sessions refuse wildcards on sharded pub/sub.
                tracing::warn!(glob = %g, "cluster: sharded pub/sub has no patterns");
                Ok(())
            }
        }
    }

    /// Asks Redis for an answer, to tell a live connection from a dead one.
    pub async fn ping(&mut self) -> RedisResult<()> {
        match self {
            Subscriber::Classic { sink, .. } => sink.ping::<redis::Value>().await.map(drop),
            Subscriber::Sharded { conn, .. } => redis::cmd("PING")
                .query_async::<redis::Value>(conn)
                .await
                .map(drop),
        }
    }

    /// The next event, waiting for it.
    pub async fn next(&mut self) -> Event {
        loop {
            let event = match self {
                Subscriber::Classic { stream, .. } => {
                    Some(stream.next().await.map_or(Event::Closed, Event::Message))
                }
                Subscriber::Sharded { pushes, .. } => match pushes.recv().await {
                    Some(push) => event_of(push),
                    None => Some(Event::Closed),
                },
            };
            if let Some(event) = event {
                return event;
            }
        }
    }

    /// The next event if one is there already.
    pub fn try_next(&mut self) -> Option<Event> {
        loop {
            let event = match self {
                Subscriber::Classic { stream, .. } => match stream.next().now_or_never()? {
                    Some(msg) => Some(Event::Message(msg)),
                    None => Some(Event::Closed),
                },
                Subscriber::Sharded { pushes, .. } => match pushes.try_recv() {
                    Ok(push) => event_of(push),
                    Err(mpsc::error::TryRecvError::Empty) => return None,
                    Err(mpsc::error::TryRecvError::Disconnected) => Some(Event::Closed),
                },
            };
            if event.is_some() {
                return event;
            }
        }
    }
}

/// What a RESP3 push means to the feed; `None` for what it ignores (subscribe
/// confirmations).
fn event_of(push: PushInfo) -> Option<Event> {
    match push.kind {
        PushKind::Message | PushKind::SMessage | PushKind::PMessage => {
            Msg::from_push_info(push).map(Event::Message)
        }
        PushKind::Disconnection => Some(Event::Closed),
        PushKind::SUnsubscribe => {
            let channel = push.data.first()?;
            let channel: String = redis::from_redis_value_ref(channel).ok()?;
            Some(Event::Dropped(channel))
        }
        _ => None,
    }
}
