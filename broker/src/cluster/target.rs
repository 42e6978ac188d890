//! Which Redis the cluster talks to, and the connection to it: the `redis` URL of
//! `[cluster]`, or, with `sentinels`, the master that Redis Sentinel names.
//!
//! With Sentinel, the address is asked of the sentinels (`SENTINEL
//! get-master-addr-by-name`, the first that answers) at start and then every
//! [`WATCH_EVERY`]; when the master moves (a failover), a connection to the new one
//! replaces the old for every part of the engine, and the feed is told to reconnect.
//! The `redis` URL then gives the scheme, user, password and database for the master;
//! its host and port are replaced.

use std::sync::RwLock;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::ClusterConfig;

/// How long a command to Redis may take before it counts as unreachable.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the sentinels are asked where the master is.
pub const WATCH_EVERY: Duration = Duration::from_millis(500);

/// The Redis in use and the connection to it.
pub struct Target {
    config: ClusterConfig,
    current: RwLock<Current>,
}

struct Current {
    /// `host:port` (from the URL, or as Sentinel last said).
    addr: String,
    client: redis::Client,
    conn: ConnectionManager,
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
        let addr = match config.sentinels.is_empty() {
            true => authority(&config.redis).to_string(),
            false => master_addr(config).await?,
        };
        let (client, conn) = open(config, &addr).await?;
        Ok(Target {
            config: config.clone(),
            current: RwLock::new(Current { addr, client, conn }),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Current> {
        self.current.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The connection (a handle: clone per use).
    pub fn conn(&self) -> ConnectionManager {
        self.read().conn.clone()
    }

    /// The client, for the feed's pub/sub connection.
    pub fn client(&self) -> redis::Client {
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
        *current = Current { addr, client, conn };
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
    let client = redis::Client::open(url.as_str())
        .map_err(|e| format!("[cluster] redis {:?}: {e}", config.redis))?;
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
