//! The broker put together, and the public embedding API ([`Broker`], [`BrokerBuilder`],
//! [`BrokerHandle`]).
//!
//! [`BrokerBuilder::start`] validates the [`Config`], prepares the data directory, binds
//! every listener (so the caller learns the real addresses, port 0 included), opens the
//! log engine with delivery as its commit sink, and hands each listener to the one
//! accept path ([`Acceptor`]). Every task — accept loops, sessions, replays, durable
//! consumers, the retention timer — runs on one [`TaskTracker`].
//! [`BrokerHandle::shutdown`] cancels one [`CancellationToken`]: accept loops stop, each
//! session sends `Error{SHUTTING_DOWN}` and lets its writer flush; once every task has
//! finished (or after a grace period) the engine finishes its reads, flushes and stops.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::accept::{Acceptor, AnyListener, Listener};
use crate::auth::Auth;
use crate::bus::{Alone, Bus};
use crate::cluster::RedisEngine;
use crate::config::{Config, FsyncPolicy, StoreEngine};
use crate::consumer::{self, Consumers, Runner};
use crate::delivery::{Delivery, Publishes};
use crate::engine::Log;
use crate::error::BrokerError;
use crate::gateway::{Gateway, Http};
use crate::metrics::Metrics;
use crate::router::Router;
use crate::session::Shared;
use crate::settings::{Live, LogHook};
use crate::store::segments::{SegmentStorage, LOG_MARKER};
use crate::store::sled_store::{BackgroundFlush, SledStorage, MARKER_FILE};
use crate::store::{LocalEngine, Storage, WriterConfig};
use crate::topic::TopicRules;
use crate::transport::quic::{self, Quic};
use crate::transport::tcp::{Tcp, Tls};

/// How long `shutdown` waits for connections to finish before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How often retention limits are applied.
const RETENTION_EVERY: Duration = Duration::from_secs(1);
/// Subdirectory of the data dir holding the sled database.
pub const STORE_DIR: &str = "store";
/// Directory under the data dir holding the topics' segment files
/// ([`StoreEngine::Segments`]).
pub const LOG_DIR: &str = "log";

/// Entry point of the embeddable broker.
///
/// ```no_run
/// # async fn demo() -> Result<(), rtc_broker::BrokerError> {
/// let broker = rtc_broker::Broker::builder()
///     .tcp("127.0.0.1:0".parse().unwrap())
///     .http(Some("127.0.0.1:0".parse().unwrap()))
///     .data_dir("/tmp/rtc-demo")
///     .start()
///     .await?;
/// println!("listening on {}", broker.tcp_addr());
/// broker.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Broker;

impl Broker {
    /// A builder starting from [`Config::default`].
    pub fn builder() -> BrokerBuilder {
        BrokerBuilder::new(Config::default())
    }
}

/// Configures and starts a broker. Setters override single fields of the [`Config`].
pub struct BrokerBuilder {
    config: Config,
    storage: Option<Arc<dyn Storage>>,
    listeners: Vec<Box<dyn AnyListener>>,
    log_hook: Option<LogHook>,
    config_file: Option<PathBuf>,
}

impl std::fmt::Debug for BrokerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerBuilder")
            .field("config", &self.config)
            .field("storage", &self.storage)
            .field("listeners", &self.listeners.len())
            .finish()
    }
}

impl BrokerBuilder {
    /// A builder starting from `config`.
    pub fn new(config: Config) -> Self {
        BrokerBuilder {
            config,
            storage: None,
            listeners: Vec::new(),
            log_hook: None,
            config_file: None,
        }
    }

    /// How the broker changes the process's log filter at run time (the admin API's
    /// `log` setting): the binary installs one over its tracing subscriber.
    pub fn log_hook(mut self, hook: LogHook) -> Self {
        self.log_hook = Some(hook);
        self
    }

    /// The file the config came from, reread by [`BrokerHandle::reload`] and the admin
    /// API's reload.
    pub fn config_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.config_file = Some(path.into());
        self
    }

    /// Uses `storage` under the local engine instead of opening sled in the data
    /// directory: for tests that inject faults.
    #[cfg(feature = "internals")]
    pub fn storage(mut self, storage: Arc<dyn Storage>) -> Self {
        self.storage = Some(storage);
        self
    }

    /// Serves `listener` too, through the same accept path as the broker's own
    /// (connection limit, handshake timeout, sessions): a transport of the embedding
    /// program's, such as a Unix socket. See [`crate::transport`].
    pub fn listener(mut self, listener: impl Listener) -> Self {
        self.listeners.push(Box::new(listener));
        self
    }

    /// TCP listen address (port 0 for any free port).
    pub fn tcp(mut self, addr: SocketAddr) -> Self {
        self.config.tcp = addr;
        self
    }

    /// HTTP gateway address (port 0 for any free port), or `None` for no gateway.
    pub fn http(mut self, addr: Option<SocketAddr>) -> Self {
        self.config.http = addr;
        self
    }

    /// Data directory (created if missing).
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.data_dir = dir.into();
        self
    }

    /// Replaces every setting with `config`.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Changes settings in place, e.g. `.configure(|c| c.heartbeat_interval = d)`.
    pub fn configure(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(&mut self.config);
        self
    }

    /// Validates the settings, binds the listeners and starts serving. Must be called
    /// inside a tokio runtime.
    pub async fn start(self) -> Result<BrokerHandle, BrokerError> {
        let config = self.config;
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir).map_err(|source| BrokerError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        // The TCP listener speaks TLS when a certificate is configured.
        let tcp = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => {
                let acceptor = crate::transport::tls::acceptor(cert, key)?;
                TcpListener::Tls(Tls::bind(config.tcp, acceptor).await?)
            }
            _ => TcpListener::Plain(Tcp::bind(config.tcp).await?),
        };
        let http = match config.http {
            None => None,
            Some(addr) => {
                let tls = match (&config.tls_cert, &config.tls_key) {
                    (Some(cert), Some(key)) => Some(crate::transport::tls::acceptor(cert, key)?),
                    _ => None,
                };
                Some(Http::bind(addr, tls).await?)
            }
        };
        let in_data_dir = |e: crate::engine::StoreError| {
            BrokerError::Storage(format!("data directory {}: {e}", config.data_dir.display()))
        };
        let router = Arc::new(Router::new());
        let metrics = Arc::new(Metrics::new());
        let delivery = Arc::new(Delivery::new(router.clone(), metrics.clone()));
        let rules = TopicRules::new(&config.topic);
        type Parts = (Arc<dyn Log>, Arc<Publishes>, Arc<dyn Bus>, Arc<dyn Runner>);
        let mut cluster_engine = None;
        let (log, publishes, bus, runner): Parts = match &config.cluster {
            Some(cluster) => {
                let engine = RedisEngine::open(
                    cluster,
                    rules,
                    config.max_topics,
                    delivery.clone(),
                    router.clone(),
                    Some(metrics.clone()),
                )
                .await
                .map_err(BrokerError::Cluster)?;
                let runner = engine.consumer_runner();
                cluster_engine = Some(engine.clone());
                (engine.clone(), engine.clone(), engine, runner)
            }
            None => {
                let engine = Arc::new(
                    LocalEngine::open(
                        storage(&config, self.storage)?,
                        delivery.clone(),
                        rules,
                        WriterConfig {
                            fsync: config.fsync,
                            max_topics: config.max_topics,
                            store_reserve: config.store_reserve,
                            observer: Some(metrics.clone()),
                        },
                    )
                    .map_err(in_data_dir)?,
                );
                let runner = Arc::new(consumer::Local(engine.clone()));
                (engine.clone(), engine, Arc::new(Alone), runner)
            }
        };
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let stored_consumers = log.consumers().map_err(in_data_dir)?;
        let consumers = Consumers::new(
            log.clone(),
            runner,
            tracker.clone(),
            cancel.clone(),
            stored_consumers,
        );
        let auth = Auth::with_jwt(&config.user, config.jwt.as_ref())
            .map_err(BrokerError::InvalidConfig)?;
        let quic_config = config.quic;
        let live = Live::new(&config, auth, self.log_hook, self.config_file);
        let shared = Arc::new(Shared::new(
            config,
            router,
            log,
            publishes,
            bus,
            delivery,
            consumers,
            live,
            tracker.clone(),
            metrics,
        ));
        if let Some(engine) = cluster_engine {
            let connections = shared.connections.clone();
            let count = Box::new(move || connections.len());
            let roster = engine.share_presence(shared.presence.clone(), count);
            shared.presence.set_roster(roster);
            shared.number_connections_from(engine.first_connection_id());
            engine.share_requests(shared.requests.clone());
        }
        tracker.spawn(shared.requests.clone().expire(cancel.clone()));
        tracker.spawn(shared.presence.clone().run(cancel.clone()));
        let acceptor = Acceptor::new(shared.clone(), cancel.clone(), tracker.clone());
        let quic = match quic_config {
            None => None,
            Some(addr) => {
                let c = &shared.config;
                let tls_files = c.tls_cert.as_deref().zip(c.tls_key.as_deref());
                let identity = quic::identity(tls_files, &c.data_dir)?;
                let fingerprint = quic::fingerprint(&identity.0[0]);
                let listener = Quic::bind(
                    addr,
                    identity,
                    c.heartbeat_interval * 3 + Duration::from_secs(5),
                )?;
                let bound = listener.local_addr();
                acceptor.spawn(listener);
                Some((bound, fingerprint))
            }
        };
        let http = match http {
            None => None,
            Some(http) => {
                let bound = (http.scheme(), http.local_addr());
                let gateway = Gateway::new(shared.clone(), acceptor.clone(), cancel.clone());
                http.spawn(gateway, cancel.clone(), &tracker);
                Some(bound)
            }
        };
        let (scheme, tcp_addr) = match tcp {
            TcpListener::Plain(l) => {
                let addr = l.local_addr();
                acceptor.spawn(l);
                ("tcp", addr)
            }
            TcpListener::Tls(l) => {
                let addr = l.local_addr();
                acceptor.spawn(l);
                ("tls", addr)
            }
        };
        let mut listeners = Vec::new();
        for listener in self.listeners {
            listeners.push((listener.transport(), listener.address()));
            listener.spawn(&acceptor);
        }
        tracker.spawn(retention_timer(shared.clone(), cancel.clone()));
        tracing::info!(%tcp_addr, fsync = %shared.config.fsync, "broker started");
        Ok(BrokerHandle {
            tcp_addr,
            scheme,
            quic,
            http,
            listeners,
            cancel,
            tracker,
            shared: Some(shared),
        })
    }
}

/// The broker's own TCP listener, with or without TLS.
enum TcpListener {
    Plain(Tcp),
    Tls(Tls),
}

/// The local engine's store: the one given (tests), else the one in the data directory.
/// A data directory keeps the engine it was created with; `store_engine` chooses for a
/// new one.
fn storage(
    config: &Config,
    given: Option<Arc<dyn Storage>>,
) -> Result<Arc<dyn Storage>, BrokerError> {
    if let Some(s) = given {
        return Ok(s);
    }
    let store = config.data_dir.join(STORE_DIR);
    let log = config.data_dir.join(LOG_DIR);
    let engine = if log.join(LOG_MARKER).exists() {
        StoreEngine::Segments
    } else if store.join(MARKER_FILE).exists() {
        StoreEngine::Sled
    } else {
        config.store_engine
    };
    if engine != config.store_engine {
        tracing::info!(
            data_dir = %config.data_dir.display(),
            "this data directory keeps its messages with store_engine = \"{engine}\"; the setting \"{}\" applies to new data directories",
            config.store_engine
        );
    }
    let background = match config.fsync {
        FsyncPolicy::Never => BackgroundFlush::EveryMs(1000),
        _ => BackgroundFlush::Off,
    };
    let storage: Arc<dyn Storage> = match engine {
        StoreEngine::Segments => Arc::new(
            SegmentStorage::open(&store, &log, background, config.store_cache)
                .map_err(BrokerError::Storage)?,
        ),
        StoreEngine::Sled => Arc::new(
            SledStorage::open_with_cache(&store, background, config.store_cache)
                .map_err(BrokerError::Storage)?,
        ),
    };
    Ok(storage)
}

pub use crate::store::convert::Converted;

/// Copies data directory `from`, whose messages are in sled (`store_engine = "sled"`),
/// into the new data directory `to` of the segment store (`rtc-broker convert-store`;
/// see `crate::store::convert`). `from` is only read.
pub fn convert_store(from: &std::path::Path, to: &std::path::Path) -> Result<Converted, String> {
    crate::store::convert::convert(
        from,
        to,
        STORE_DIR,
        LOG_DIR,
        crate::config::DEFAULT_STORE_CACHE,
    )
}

/// Asks the engine to apply retention limits every second.
async fn retention_timer(shared: Arc<Shared>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(RETENTION_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => shared.log.enforce_retention(),
        }
    }
}

/// A running broker. Dropping it stops the broker without waiting; prefer
/// [`BrokerHandle::shutdown`].
#[derive(Debug)]
pub struct BrokerHandle {
    tcp_addr: SocketAddr,
    scheme: &'static str,
    /// The QUIC address and its certificate's SHA-256 fingerprint.
    quic: Option<(SocketAddr, String)>,
    /// The HTTP gateway's scheme (`http`, `https`) and address.
    http: Option<(&'static str, SocketAddr)>,
    /// The listeners added with [`BrokerBuilder::listener`]: transport and address.
    listeners: Vec<(&'static str, String)>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    shared: Option<Arc<Shared>>,
}

impl BrokerHandle {
    /// The address the TCP listener is bound to (the real port when 0 was asked for).
    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp_addr
    }

    /// `tls` when the TCP listener speaks TLS, else `tcp`.
    pub fn tcp_scheme(&self) -> &'static str {
        self.scheme
    }

    /// The QUIC listener's address, when QUIC is on.
    pub fn quic_addr(&self) -> Option<SocketAddr> {
        self.quic.as_ref().map(|(a, _)| *a)
    }

    /// The HTTP gateway's address, when it is on.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.map(|(_, a)| a)
    }

    /// `http` or `https` (with TLS), when the HTTP gateway is on.
    pub fn http_scheme(&self) -> Option<&'static str> {
        self.http.map(|(s, _)| s)
    }

    /// The SHA-256 fingerprint of the QUIC certificate, when QUIC is on.
    pub fn quic_fingerprint(&self) -> Option<&str> {
        self.quic.as_ref().map(|(_, f)| f.as_str())
    }

    /// The listeners added with [`BrokerBuilder::listener`]: `(transport, address)`.
    pub fn extra_listeners(&self) -> &[(&'static str, String)] {
        &self.listeners
    }

    /// The URL clients use: `tcp://ADDR` or `tls://ADDR`.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.tcp_addr)
    }

    /// Rereads the config file ([`BrokerBuilder::config_file`]) and applies what can
    /// change at run time: users and JWT, topic rules, limits, log filter
    /// (docs/admin.md, "Reload"). A bad file is refused whole and the old settings stay;
    /// the error says why. On success, what changed.
    pub async fn reload(&self) -> Result<Vec<String>, String> {
        let Some(shared) = &self.shared else {
            return Err("the broker is stopping".into());
        };
        shared.reload_file().await.map_err(|r| r.to_string())
    }

    /// Stops accepting, tells every client `SHUTTING_DOWN`, lets each connection flush
    /// what is queued, then flushes and closes the store. Returns when all of that is
    /// done (connections get at most ~10 s), so the data directory can be reopened.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        self.tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("some connections did not finish within {SHUTDOWN_GRACE:?}");
        }
        if let Some(shared) = self.shared.take() {
            // Every task is done (or given up on): the engine's reads finish, then its
            // thread flushes and stops.
            shared.log.shutdown().await;
            if Arc::strong_count(&shared) > 1 {
                tracing::warn!("the store closes only when the last unfinished connection ends");
            }
            // The last reference closes the store, which flushes: off the runtime.
            let _ = tokio::task::spawn_blocking(move || drop(shared)).await;
        }
        tracing::info!("broker stopped");
    }
}

impl Drop for BrokerHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
