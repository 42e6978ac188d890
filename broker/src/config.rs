//! Broker settings: defaults, the optional TOML file, and validation.
//!
//! Precedence is flag > file > default: the binary loads [`Config::from_toml_file`] (or
//! starts from [`Config::default`]) and then applies its command-line flags on top. An
//! embedding program builds a `Config` directly or through [`crate::BrokerBuilder`].
//! [`Config::validate`] runs before the broker starts, so a bad setting stops it with one
//! clear line instead of surfacing later.
//!
//! Example file (every key optional):
//! ```toml
//! tcp = "127.0.0.1:7400"
//! http = "127.0.0.1:7401"    # or "off"
//! allowed_origins = ["https://app.example.com"]
//! data_dir = "./rtc-data"
//! log = "info"
//! max_frame_size = 1048576
//! heartbeat_interval = "15s"
//! handshake_timeout = "10s"
//! outbound_queue_bytes = 67108864
//! outbound_queue_frames = 1048576
//! max_connections = 65536
//! max_subscriptions_per_connection = 10000
//! fsync = "always"          # or "interval:50" (ms) or "never"
//! max_topics = 100000
//! replay_buffer = 10000
//! max_payload = 1000000
//! max_msg_id = 256          # bytes
//! store_engine = "segments" # a new data dir's messages: "segments" (files per topic) or "sled"
//! store_cache = 33554432    # bytes of sled's cache (with "segments" it holds only metadata)
//! store_reserve = 67108864  # bytes kept free on the store's disk; 0 = none
//! publish_rate = 1000000    # per connection, per second; 0 = no limit
//! publish_burst = 100000
//! request_timeout = "5s"    # a Request's timeout when it gives none
//! max_request_timeout = "5m"
//! max_requests_per_connection = 10000   # requests waiting for a reply at once
//! max_presence_info = 1024  # bytes of a presence member's info
//! presence_events_max = 1000   # above this many members a room's events are counts
//! presence_update_rate = 2  # state updates (typing) per second per member; 0 = no limit
//!
//! [jwt]                     # tokens from the app's backend; see `crate::auth::jwt`
//! hs256_secret = "at least 32 bytes of secret shared with the backend"
//!
//! [[user]]                  # with none (and no [jwt]), the broker is open; see `crate::auth`
//! name = "billing"
//! token_hash = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! publish = ["orders.>"]
//! subscribe = ["orders.>"]
//!
//! [[topic]]                 # first matching rule wins; see `crate::topic::TopicRule`
//! pattern = "game.>"
//! storage = "ephemeral"
//!
//! [cluster]                 # many brokers as one on Redis; see docs/cluster.md
//! redis = "redis://127.0.0.1:6379"   # rediss:// for TLS; redis://:PASSWORD@HOST:PORT
//! prefix = "rtc"            # of every key and channel: clusters may share a Redis
//! presence_ttl = "30s"      # a node silent this long is dead: its presence entries go
//! sentinels = ["redis://10.0.0.5:26379"]   # Redis Sentinel: follow master `master`
//! master = "mymaster"
//! redis_cluster = ["redis://10.0.0.7:7000", "redis://10.0.0.8:7000"]   # Redis Cluster seeds
//! pubsub = "sharded"        # Redis Cluster's live messages: "sharded" (default) or "classic"
//! tls_ca = "redis-ca.pem"   # rediss://: trust this PEM instead of the system's roots
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::auth::UserConfig;
use crate::error::BrokerError;
use crate::topic::TopicRule;

mod cluster;
pub use cluster::{ClusterConfig, PubSubKind};

/// Everything the broker needs to start. See the module docs for the file format.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// TCP listen address. Port 0 picks a free port (see `BrokerHandle::tcp_addr`).
    pub tcp: SocketAddr,
    /// Directory for durable data; created if missing.
    pub data_dir: PathBuf,
    /// Log filter for the binary (`error`, `warn`, `info`, `debug`, `trace` or a
    /// tracing-subscriber directive). The library itself does not install a subscriber.
    pub log: String,
    /// Largest frame accepted or sent, in bytes (the length prefix value).
    pub max_frame_size: usize,
    /// Clients must send something at least this often; the broker closes a connection
    /// silent for three intervals.
    #[serde(with = "duration_str")]
    pub heartbeat_interval: Duration,
    /// Time a new connection has to send `Hello`.
    #[serde(with = "duration_str")]
    pub handshake_timeout: Duration,
    /// Per-connection outbound queue cap in bytes (each queued delivery is charged its
    /// encoded message plus its queue entry). Deliveries beyond it are dropped and
    /// counted, and the client is told with `Error{SLOW_CONSUMER}`.
    pub outbound_queue_bytes: usize,
    /// Per-connection outbound queue cap in frames (same policy as the byte cap).
    pub outbound_queue_frames: usize,
    /// Connections served at once; further ones get `Error{LIMIT_EXCEEDED}` and a close.
    pub max_connections: usize,
    /// Active subscriptions one connection may hold.
    pub max_subscriptions_per_connection: usize,
    /// When stored messages are forced to disk; see [`FsyncPolicy`].
    pub fsync: FsyncPolicy,
    /// Durable topics the broker will create; publishing to a new topic beyond this gets
    /// `LIMIT_EXCEEDED`.
    pub max_topics: usize,
    /// Live messages held for a subscription while it replays history; past this it
    /// drops them and re-reads the log instead (see `crate::replay`).
    pub replay_buffer: usize,
    /// Largest payload a publish may carry, in bytes (a message must also fit in
    /// `max_frame_size` once delivered). Announced in `Welcome`.
    pub max_payload: usize,
    /// Longest message ID a publish may carry, in bytes. The dedup index keeps every ID
    /// of a topic's dedup window in memory, so this bounds what one ID costs. Announced
    /// in `Welcome`.
    pub max_msg_id: usize,
    /// Where a new data directory keeps its messages (an existing one goes on with
    /// the engine it was created with; see `crate::store::segments`).
    pub store_engine: StoreEngine,
    /// Bytes of sled's page cache (`cache_capacity`). With [`StoreEngine::Sled`] it is
    /// what the broker may keep of the log in memory beyond what it is writing, and
    /// sled's real use is several times this under writes (see [`DEFAULT_STORE_CACHE`]);
    /// with [`StoreEngine::Segments`] sled holds only topics, stats and consumer state,
    /// and messages are read through the OS page cache, outside the broker's memory.
    pub store_cache: u64,
    /// Bytes the filesystem holding the store must keep free. Below it, writes are
    /// refused with `STORAGE` before they reach the storage engine, and taken again once
    /// there is room; reads go on (see `store/writer/failure.rs`). 0 turns it off, and a
    /// full disk is then met as an I/O error, after which the store is reopened.
    pub store_reserve: u64,
    /// Publishes per second one connection may make; beyond it (after `publish_burst`)
    /// the broker reads its publishes more slowly and tells it `RATE_LIMITED`. Nothing
    /// is dropped. 0 turns the limit off.
    pub publish_rate: u32,
    /// Publishes a connection may make at once above its rate (the token bucket's size).
    pub publish_burst: u32,
    /// How long a `Request` that gives no timeout waits for a reply.
    #[serde(with = "duration_str")]
    pub request_timeout: Duration,
    /// The longest timeout a `Request` may ask for; a longer one is cut to this.
    #[serde(with = "duration_str")]
    pub max_request_timeout: Duration,
    /// Requests one connection may have waiting for a reply at once; beyond it a
    /// `Request` gets `LIMIT_EXCEEDED`.
    pub max_requests_per_connection: usize,
    /// Bytes of JSON a presence member's info may have (`PresenceJoin.info`).
    pub max_presence_info: usize,
    /// Members a room may have and still tell each join and leave; above it, its
    /// watchers get the count instead, twice a second at most (see `crate::presence`).
    pub presence_events_max: usize,
    /// Presence state updates (`PresenceUpdate`: typing, away) per second a member may
    /// make in a room, with bursts of twice that; beyond it they are refused
    /// `RATE_LIMITED`. 0 turns the limit off.
    pub presence_update_rate: u32,
    /// Per-topic settings by pattern (`[[topic]]` in the file).
    pub topic: Vec<TopicRule>,
    /// Users; with none, the broker is open (`[[user]]` in the file, see `crate::auth`).
    pub user: Vec<UserConfig>,
    /// QUIC listen address (UDP); none unless given.
    pub quic: Option<SocketAddr>,
    /// PEM certificate chain; with `tls_key`, the TCP listener speaks TLS only.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// HTTP gateway address (WebSocket, health); `"off"` in the file for none. With
    /// `tls_cert` it speaks HTTPS. See `crate::gateway`.
    #[serde(with = "addr_or_off")]
    pub http: Option<SocketAddr>,
    /// Origins (`https://app.example.com`) whose pages may use the HTTP gateway, besides
    /// the broker's own host; `"*"` for any. Default: none.
    pub allowed_origins: Vec<String>,
    /// JSON Web Tokens from the application's backend (`[jwt]`, see `crate::auth::jwt`).
    pub jwt: Option<crate::auth::jwt::JwtConfig>,
    /// Cluster mode on Redis (`[cluster]`, or `--cluster URL`); none: the broker is on
    /// its own, with the embedded store.
    pub cluster: Option<ClusterConfig>,
}

/// When the broker forces stored messages to disk before acknowledging them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Flush before every acknowledgement (group commit shares one flush among all the
    /// publishes waiting). Nothing acknowledged is lost on a crash or power loss.
    Always,
    /// Acknowledge once written to the storage engine; flush at most this many ms later.
    /// A crash of the machine can lose the last interval's acknowledged messages.
    IntervalMs(u64),
    /// Never force; the storage engine writes in the background (about every second).
    /// A crash can lose roughly the last second of acknowledged messages.
    Never,
}

/// Where messages are stored ([`Config::store_engine`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreEngine {
    /// Each topic's messages in append-only segment files (`crate::store::segments`);
    /// the default.
    Segments,
    /// Messages in sled with everything else (`crate::store::sled_store`); the engine
    /// of data directories made before the segment files.
    Sled,
}

impl std::fmt::Display for StoreEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StoreEngine::Segments => "segments",
            StoreEngine::Sled => "sled",
        })
    }
}

impl std::str::FromStr for FsyncPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(FsyncPolicy::Always),
            "never" => Ok(FsyncPolicy::Never),
            _ => match s.strip_prefix("interval:").map(str::parse::<u64>) {
                Some(Ok(ms)) if ms > 0 => Ok(FsyncPolicy::IntervalMs(ms)),
                _ => Err(format!(
                    "invalid fsync policy {s:?}: expected always, interval:MS (MS > 0) or never"
                )),
            },
        }
    }
}

impl std::fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FsyncPolicy::Always => write!(f, "always"),
            FsyncPolicy::IntervalMs(ms) => write!(f, "interval:{ms}"),
            FsyncPolicy::Never => write!(f, "never"),
        }
    }
}

impl<'de> Deserialize<'de> for FsyncPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Default TCP address: loopback, port 7400.
pub const DEFAULT_TCP: &str = "127.0.0.1:7400";
/// Default HTTP gateway address: loopback, port 7401.
pub const DEFAULT_HTTP: &str = "127.0.0.1:7401";
/// Default data directory, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "./rtc-data";
/// Default [`Config::max_msg_id`]: room for a UUID, a ULID or a hash with a prefix.
pub const DEFAULT_MAX_MSG_ID: usize = 256;
/// The largest [`Config::max_msg_id`] allowed.
pub const MAX_MSG_ID_LIMIT: usize = 64 * 1024;
/// Default [`Config::store_cache`]: 32 MiB. sled 0.34 holds several times its cache
/// setting under a stream of writes: with 256 MiB the broker grew by ~230 MB per million
/// stored messages (2.5 GB at 10 million, still growing); with 32 MiB it stayed at
/// 284–314 MB for all 10 million, with no cost to publish, consume or replay rates
/// (docs/benchmarks.md, "Long logs").
pub const DEFAULT_STORE_CACHE: u64 = 32 * 1024 * 1024;
/// The smallest [`Config::store_cache`] allowed.
pub const MIN_STORE_CACHE: u64 = 1024 * 1024;
/// Default [`Config::store_reserve`]: 64 MiB, room for the engine to keep serving reads
/// and to reopen.
pub const DEFAULT_STORE_RESERVE: u64 = 64 * 1024 * 1024;

impl Default for Config {
    fn default() -> Self {
        Config {
            tcp: DEFAULT_TCP.parse().expect("constant address parses"),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            log: "info".to_string(),
            max_frame_size: rtc_proto::DEFAULT_MAX_FRAME_SIZE,
            heartbeat_interval: Duration::from_secs(15),
            handshake_timeout: Duration::from_secs(10),
            // 64 MiB, NATS's default `max_pending`: a burst to a subscriber that reads a
            // little slower than the publisher sends is absorbed rather than dropped
            // (docs/benchmarks.md, "Figures behind the code"). Only a backlog uses the
            // memory.
            outbound_queue_bytes: 64 * 1024 * 1024,
            outbound_queue_frames: 1 << 20,
            max_connections: 65_536,
            max_subscriptions_per_connection: 10_000,
            fsync: FsyncPolicy::Always,
            max_topics: 100_000,
            replay_buffer: 10_000,
            max_payload: 1_000_000,
            max_msg_id: DEFAULT_MAX_MSG_ID,
            store_engine: StoreEngine::Segments,
            store_cache: DEFAULT_STORE_CACHE,
            store_reserve: DEFAULT_STORE_RESERVE,
            publish_rate: 1_000_000,
            publish_burst: 100_000,
            request_timeout: Duration::from_secs(5),
            max_request_timeout: Duration::from_secs(300),
            max_requests_per_connection: 10_000,
            max_presence_info: 1024,
            presence_events_max: 1000,
            presence_update_rate: 2,
            topic: Vec::new(),
            user: Vec::new(),
            quic: None,
            tls_cert: None,
            tls_key: None,
            http: Some(DEFAULT_HTTP.parse().expect("constant address parses")),
            allowed_origins: Vec::new(),
            jwt: None,
            cluster: None,
        }
    }
}

impl Config {
    /// Reads a TOML file; keys left out keep their defaults, unknown keys are an error.
    pub fn from_toml_file(path: &Path) -> Result<Config, BrokerError> {
        let text = std::fs::read_to_string(path).map_err(|source| BrokerError::ConfigRead {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml_str(&text).map_err(|message| BrokerError::ConfigParse {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses TOML text; the error is a one-line explanation.
    pub fn from_toml_str(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string().replace('\n', " ").trim().to_string())
    }

    /// Checks that the settings make sense together.
    pub fn validate(&self) -> Result<(), BrokerError> {
        let bad = |msg: String| Err(BrokerError::InvalidConfig(msg));
        if self.max_frame_size < 1024 || self.max_frame_size > 64 * 1024 * 1024 {
            return bad(format!(
                "max_frame_size must be between 1024 and 67108864 bytes, got {}",
                self.max_frame_size
            ));
        }
        if self.heartbeat_interval < Duration::from_millis(100) {
            return bad("heartbeat_interval must be at least 100ms".into());
        }
        if self.handshake_timeout.is_zero() {
            return bad("handshake_timeout must be above zero".into());
        }
        if self.outbound_queue_bytes < self.max_frame_size {
            return bad(format!(
                "outbound_queue_bytes ({}) must be at least max_frame_size ({})",
                self.outbound_queue_bytes, self.max_frame_size
            ));
        }
        if self.outbound_queue_frames == 0 || self.max_connections == 0 || self.replay_buffer == 0 {
            return bad(
                "outbound_queue_frames, max_connections and replay_buffer must be above zero"
                    .into(),
            );
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return bad("tls_cert and tls_key must be given together".into());
        }
        if self.max_payload == 0 {
            return bad("max_payload must be above zero".into());
        }
        if self.request_timeout.is_zero() || self.request_timeout > self.max_request_timeout {
            return bad(
                "request_timeout must be above zero and at most max_request_timeout".into(),
            );
        }
        if self.max_requests_per_connection == 0 {
            return bad("max_requests_per_connection must be above zero".into());
        }
        if !(1..=MAX_MSG_ID_LIMIT).contains(&self.max_msg_id) {
            return bad(format!(
                "max_msg_id must be from 1 to {MAX_MSG_ID_LIMIT} bytes, got {}",
                self.max_msg_id
            ));
        }
        if self.store_cache < MIN_STORE_CACHE {
            return bad(format!(
                "store_cache must be at least {MIN_STORE_CACHE} bytes, got {}",
                self.store_cache
            ));
        }
        if self.publish_rate > 0 && self.publish_burst == 0 {
            return bad("publish_burst must be above zero when publish_rate is set".into());
        }
        if let Some(jwt) = &self.jwt {
            crate::auth::jwt::Verifier::new(jwt).map_err(BrokerError::InvalidConfig)?;
        }
        if let Some(cluster) = &self.cluster {
            cluster.validate().map_err(BrokerError::InvalidConfig)?;
        }
        for user in &self.user {
            user.validate().map_err(BrokerError::InvalidConfig)?;
        }
        for rule in &self.topic {
            if let Err(e) = rtc_proto::topic::validate_pattern(&rule.pattern) {
                return bad(format!("[[topic]] pattern {:?}: {e}", rule.pattern));
            }
        }
        Ok(())
    }
}

/// Durations in the file are human strings: `"15s"`, `"500ms"`, `"2m"`, `"1h 30m"`.
mod duration_str {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}")))
    }
}

/// A listen address, or `"off"` for none.
pub mod addr_or_off {
    use serde::{Deserialize, Deserializer};
    use std::net::SocketAddr;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }

    /// `ADDR` or `off`.
    pub fn parse(s: &str) -> Result<Option<SocketAddr>, String> {
        if s == "off" {
            return Ok(None);
        }
        s.parse()
            .map(Some)
            .map_err(|e| format!("{s:?}: {e}; expected HOST:PORT or off"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn file_overrides_only_given_keys() {
        let c =
            Config::from_toml_str("tcp = \"127.0.0.1:0\"\nheartbeat_interval = \"2s\"").unwrap();
        assert_eq!(c.tcp.port(), 0);
        assert_eq!(c.heartbeat_interval, Duration::from_secs(2));
        assert_eq!(c.max_frame_size, Config::default().max_frame_size);
    }

    #[test]
    fn unknown_key_and_bad_duration_are_errors() {
        let e = Config::from_toml_str("tcpp = \"127.0.0.1:0\"").unwrap_err();
        assert!(e.contains("tcpp"), "{e}");
        let e = Config::from_toml_str("heartbeat_interval = \"soon\"").unwrap_err();
        assert!(e.contains("soon"), "{e}");
    }

    #[test]
    fn fsync_policies_and_topic_rules() {
        let c = Config::from_toml_str(
            "fsync = \"interval:50\"\n[[topic]]\npattern = \"game.>\"\nstorage = \"ephemeral\"\n",
        )
        .unwrap();
        assert_eq!(c.fsync, FsyncPolicy::IntervalMs(50));
        assert_eq!(c.topic.len(), 1);
        c.validate().unwrap();
        for bad in [
            "fsync = \"sometimes\"",
            "fsync = \"interval:0\"",
            "[[topic]]\npattern = \"a\"\nstorage = \"disk\"",
        ] {
            assert!(Config::from_toml_str(bad).is_err(), "{bad}");
        }
        let c = Config::from_toml_str("[[topic]]\npattern = \"a.>.b\"").unwrap();
        assert!(c.validate().is_err());
        assert_eq!("never".parse::<FsyncPolicy>().unwrap().to_string(), "never");
    }

    #[test]
    fn validation_catches_nonsense() {
        let c = Config {
            max_frame_size: 10,
            ..Config::default()
        };
        assert!(c.validate().is_err());
        let c = Config {
            outbound_queue_bytes: 1,
            ..Config::default()
        };
        assert!(c.validate().is_err());
    }
}
