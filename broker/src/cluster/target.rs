//! Which Redis the cluster talks to, and the connection to it: the `redis` URL of
//! `[cluster]`; with `sentinels`, the master that Redis Sentinel names; with
//! `redis_cluster`, a Redis Cluster (several shards, found from seed nodes).
//!
//! On Redis Cluster, commands go to the shard of their key (a topic's keys share one
//! hash tag, so its script runs on one shard), a pipeline must stay on one shard
//! ([`Target::sharded`] tells the writers to split theirs by topic). Pub/sub there is
//! sharded by default (`[cluster] pubsub`): the feed's connection of its own
//! ([`Target::sharded_subscriber`]) subscribes each topic's channel on the shard of its
//! slot. With classic pub/sub, which Redis Cluster carries to every node, the feed
//! subscribes on any one node (the seeds in turn).
//!
//! With Sentinel, the address is asked of the sentinels (`SENTINEL
//! get-master-addr-by-name`, the first that answers) at start and then every
//! [`WATCH_EVERY`]; when the master moves (a failover), a connection to the new one
//! replaces the old for every part of the engine, and the feed is told to reconnect.
//! The `redis` URL then gives the scheme, user, password and database for the master;
//! its host and port are replaced.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::RwLock;
use std::time::Duration;

use futures_util::future::FutureExt;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::config::{ClusterConfig, PubSubKind};

/// How long a command to Redis may take before it counts as unreachable.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the sentinels are asked where the master is.
pub const WATCH_EVERY: Duration = Duration::from_millis(500);

/// The Redis in use and the connection to it.
pub struct Target {
    config: ClusterConfig,
    current: RwLock<Current>,
    /// The seed the feed connects to next (Redis Cluster).
    next_seed: AtomicUsize,
}

struct Current {
    /// `host:port` (from the URL, or as Sentinel last said; the first seed of a Redis
    /// Cluster).
    addr: String,
    client: redis::Client,
    conn: Conn,
}

/// A connection to one Redis (reconnecting by itself) or to a Redis Cluster (routing
/// each command to its shard). A handle: clone per use.
#[derive(Clone)]
pub enum Conn {
    /// One Redis.
    One(ConnectionManager),
    /// A Redis Cluster.
    Sharded(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::One(c) => c.req_packed_command(cmd),
            Conn::Sharded(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::One(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Sharded(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::One(c) => c.get_db(),
            Conn::Sharded(c) => c.get_db(),
        }
    }
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("addr", &self.addr())
            .finish_non_exhaustive()
    }
}

impl Target {
    /// Connects to the configured Redis (through Sentinel if configured); fails if it
    /// cannot be reached now.
    pub async fn connect(config: &ClusterConfig) -> Result<Target, String> {
        let current = if !config.redis_cluster.is_empty() {
            open_cluster(config).await?
        } else {
            let addr = match config.sentinels.is_empty() {
                true => authority(&config.redis).to_string(),
                false => master_addr(config).await?,
            };
            let (client, conn) = open(config, &addr).await?;
            Current {
                addr,
                client,
                conn: Conn::One(conn),
            }
        };
        Ok(Target {
            config: config.clone(),
            current: RwLock::new(current),
            next_seed: AtomicUsize::new(0),
        })
    }

    /// Whether this is a Redis Cluster: a pipeline must then stay on one shard.
    pub fn sharded(&self) -> bool {
        !self.config.redis_cluster.is_empty()
    }

    /// The kind of pub/sub live messages go by.
    pub fn pubsub(&self) -> PubSubKind {
        self.config.pubsub_kind()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Current> {
        self.current.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The connection (a handle: clone per use).
    pub fn conn(&self) -> Conn {
        self.read().conn.clone()
    }

    /// The client for the feed's pub/sub connection: on a Redis Cluster each call the
    /// next seed, so that a feed whose node died connects to another.
    pub fn client(&self) -> redis::Client {
        let seeds = &self.config.redis_cluster;
        if !seeds.is_empty() {
            let i = self.next_seed.fetch_add(1, Ordering::Relaxed) % seeds.len();
            if let Ok(client) = client_for(&self.config, &seeds[i]) {
                return client;
            }
        }
        self.read().client.clone()
    }

    /// `host:port` of the Redis in use.
    pub fn addr(&self) -> String {
        self.read().addr.clone()
    }

    /// Whether the sentinels are to be watched.
    pub fn watched(&self) -> bool {
        !self.config.sentinels.is_empty()
    }

    /// Asks the sentinels where the master is; switches to it if it moved. Whether it
    /// did.
    pub async fn follow_master(&self) -> Result<bool, String> {
        let addr = master_addr(&self.config).await?;
        if addr == self.addr() {
            return Ok(false);
        }
        let (client, conn) = open(&self.config, &addr).await?;
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        tracing::warn!(from = %current.addr, to = %addr, "cluster: the Redis master moved");
        *current = Current {
            addr,
            client,
            conn: Conn::One(conn),
        };
        Ok(true)
    }
}

/// A client and a connection to the Redis at `addr`, with the `redis` URL's scheme,
/// credentials and database.
async fn open(
    config: &ClusterConfig,
    addr: &str,
) -> Result<(redis::Client, ConnectionManager), String> {
    let url = with_authority(&config.redis, addr);
    let client = client_for(config, &url)?;
    let manager = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(RESPONSE_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(1));
    let conn = tokio::time::timeout(
        RESPONSE_TIMEOUT * 2,
        client.get_connection_manager_with_config(manager),
    )
    .await
    .map_err(|_| format!("cannot reach Redis at {addr}: no answer"))?
    .map_err(|e| format!("cannot reach Redis at {addr}: {e}"))?;
    Ok((client, conn))
}

/// The certificates to trust instead of the system's roots (`tls_ca`), if any.
fn tls_certs(config: &ClusterConfig) -> Result<Option<redis::TlsCertificates>, String> {
    let Some(ca) = &config.tls_ca else {
        return Ok(None);
    };
    let root_cert =
        std::fs::read(ca).map_err(|e| format!("[cluster] tls_ca {}: {e}", ca.display()))?;
    Ok(Some(redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(root_cert),
    }))
}

/// A client for `url`, trusting `tls_ca` if given.
fn client_for(config: &ClusterConfig, url: &str) -> Result<redis::Client, String> {
    let client = match tls_certs(config)? {
        Some(certs) => redis::Client::build_with_tls(url, certs),
        None => redis::Client::open(url),
    };
    client.map_err(|e| format!("[cluster] redis {url:?}: {e}"))
}

/// A client for the Redis Cluster of the seeds, as `config` says; `pushes` (which
/// needs RESP3) gets what its subscriptions receive.
fn cluster_client(
    config: &ClusterConfig,
    pushes: Option<PushSender>,
) -> Result<redis::cluster::ClusterClient, String> {
    let seeds = &config.redis_cluster;
    let mut builder = redis::cluster::ClusterClient::builder(seeds.iter().map(String::as_str))
        .connection_timeout(RESPONSE_TIMEOUT)
        .response_timeout(RESPONSE_TIMEOUT);
    if let Some(certs) = tls_certs(config)? {
        builder = builder.certs(certs);
    }
    if let Some(pushes) = pushes {
        builder = builder
            .use_protocol(redis::ProtocolVersion::RESP3)
            .push_sender(pushes);
    }
    builder
        .build()
        .map_err(|e| format!("[cluster] redis_cluster {seeds:?}: {e}"))
}

/// A connection to the Redis Cluster of `client`, within a bounded time.
async fn cluster_conn(
    config: &ClusterConfig,
    client: &redis::cluster::ClusterClient,
) -> Result<ClusterConnection, String> {
    let seeds = &config.redis_cluster;
    tokio::time::timeout(RESPONSE_TIMEOUT * 2, client.get_async_connection())
        .await
        .map_err(|_| format!("cannot reach Redis Cluster at {seeds:?}: no answer"))?
        .map_err(|e| format!("cannot reach Redis Cluster at {seeds:?}: {e}"))
}

/// Where a sharded subscriber's messages arrive.
pub type PushSender = tokio::sync::mpsc::UnboundedSender<redis::PushInfo>;

/// A connection to the Redis Cluster the seeds belong to.
async fn open_cluster(config: &ClusterConfig) -> Result<Current, String> {
    let seeds = &config.redis_cluster;
    let client = cluster_client(config, None)?;
    let conn = cluster_conn(config, &client).await?;
    let first = &seeds[0];
    let pubsub = client_for(config, first)?;
    Ok(Current {
        addr: authority(first).to_string(),
        client: pubsub,
        conn: Conn::Sharded(conn),
    })
}

impl Target {
    /// A connection of its own to the Redis Cluster for sharded pub/sub: what its
    /// subscriptions receive goes to `pushes`, unbounded (so Redis never waits on this
    /// node). It follows the shards by itself: after a shard moves or reconnects it
    /// subscribes again, and says so with a push of each subscription.
    pub async fn sharded_subscriber(
        &self,
        pushes: PushSender,
    ) -> Result<ClusterConnection, String> {
        let client = cluster_client(&self.config, Some(pushes))?;
        cluster_conn(&self.config, &client).await
    }

    /// Sends `commands` (each with the key or channel it goes by), their replies
    /// ignored: as one pipeline, or on Redis Cluster as one per key, at once. The
    /// commands of one key keep their order. The first failure, if any.
    pub async fn send_all(&self, commands: Vec<(String, Cmd)>) -> redis::RedisResult<()> {
        let mut groups: Vec<(String, Pipeline)> = Vec::new();
        for (key, cmd) in commands {
            let at = match self.sharded() {
                false if !groups.is_empty() => 0,
                false => usize::MAX,
                true => groups
                    .iter()
                    .position(|(k, _)| *k == key)
                    .unwrap_or(usize::MAX),
            };
            if at == usize::MAX {
                groups.push((key, redis::pipe()));
            }
            let at = if at == usize::MAX {
                groups.len() - 1
            } else {
                at
            };
            groups[at].1.add_command(cmd).ignore();
        }
        let pipes = groups.into_iter().map(|(_, p)| p).collect();
        for answer in query_all(&self.conn(), pipes).await {
            answer?;
        }
        Ok(())
    }
}

/// Runs `pipes` (each on one shard) at once; their results in order.
pub async fn query_all(
    conn: &Conn,
    pipes: Vec<Pipeline>,
) -> Vec<redis::RedisResult<Vec<redis::RedisResult<Value>>>> {
    let runs = pipes.into_iter().map(|pipe| {
        let mut conn = conn.clone();
        async move {
            pipe.query_async::<Vec<redis::RedisResult<Value>>>(&mut conn)
                .await
        }
        .boxed()
    });
    futures_util::future::join_all(runs).await
}

/// The master's `host:port`, from the first sentinel that knows it.
async fn master_addr(config: &ClusterConfig) -> Result<String, String> {
    let mut last = String::from("no sentinel configured");
    for sentinel in &config.sentinels {
        let ask = async {
            let client = redis::Client::open(sentinel.as_str()).map_err(|e| e.to_string())?;
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| e.to_string())?;
            let reply: Option<(String, u16)> = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(&config.master)
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            reply
                .map(|(host, port)| format!("{host}:{port}"))
                .ok_or_else(|| format!("it knows no master {:?}", config.master))
        };
        match tokio::time::timeout(RESPONSE_TIMEOUT, ask).await {
            Ok(Ok(addr)) => return Ok(addr),
            Ok(Err(e)) => last = format!("sentinel {sentinel}: {e}"),
            Err(_) => last = format!("sentinel {sentinel}: no answer"),
        }
    }
    Err(format!(
        "cannot find the Redis master {:?}: {last}",
        config.master
    ))
}

/// The `host:port` of a `redis://[user:password@]host:port[/db]` URL.
fn authority(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.split('/').next().unwrap_or(rest);
    host.rsplit_once('@').map_or(host, |(_, h)| h)
}

/// `url` with its `host:port` replaced by `addr`.
fn with_authority(url: &str, addr: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("redis", url));
    let (host, path) = match rest.split_once('/') {
        Some((h, p)) => (h, Some(p)),
        None => (rest, None),
    };
    let user = host.rsplit_once('@').map(|(u, _)| u);
    let mut out = format!("{scheme}://");
    if let Some(user) = user {
        out.push_str(user);
        out.push('@');
    }
    out.push_str(addr);
    if let Some(path) = path {
        out.push('/');
        out.push_str(path);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_master_address_goes_into_the_url_with_its_credentials_and_database() {
        assert_eq!(authority("redis://:pw@10.0.0.2:6379/3"), "10.0.0.2:6379");
        assert_eq!(authority("rediss://h:1"), "h:1");
        assert_eq!(
            with_authority("redis://u:pw@old:1/3", "10.0.0.9:6380"),
            "redis://u:pw@10.0.0.9:6380/3"
        );
        assert_eq!(with_authority("rediss://old:1", "n:2"), "rediss://n:2");
    }
}
