//! Listeners, the accept loop, the connection limit and graceful shutdown, and the public
//! embedding API ([`Broker`], [`BrokerBuilder`], [`BrokerHandle`]).
//!
//! [`BrokerBuilder::start`] validates the [`Config`], prepares the data directory, binds
//! every listener (so the caller learns the real addresses, port 0 included) and spawns
//! one accept loop per listener. Each accepted connection runs a
//! `crate::session` on a shared [`TaskTracker`]. [`BrokerHandle::shutdown`] cancels one
//! [`CancellationToken`]: accept loops stop, each session sends
//! `Error{SHUTTING_DOWN}` and lets its writer flush, and `shutdown` returns once every
//! task has finished (or after a grace period).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rtc_proto::codec::encode_frame;
use rtc_proto::{ErrorCode, Frame};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Auth;
use crate::config::{Config, FsyncPolicy};
use crate::consumer::Consumers;
use crate::error::BrokerError;
use crate::router::Router;
use crate::store::sled_store::{BackgroundFlush, SledStorage};
use crate::store::writer::{self, LogHandle, Request};
use crate::store::Storage;
use crate::topic::TopicRegistry;

/// How long `shutdown` waits for connections to finish before giving up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How often retention limits are applied.
const RETENTION_EVERY: Duration = Duration::from_secs(1);
/// Subdirectory of the data dir holding the sled database.
pub const STORE_DIR: &str = "store";

/// State shared by every connection.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) router: Arc<Router>,
    pub(crate) topics: Arc<TopicRegistry>,
    pub(crate) log: Arc<LogHandle>,
    pub(crate) consumers: Consumers,
    pub(crate) auth: Auth,
    next_conn_id: AtomicU64,
}

impl Shared {
    pub(crate) fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// Entry point of the embeddable broker.
///
/// ```no_run
/// # async fn demo() -> Result<(), rtc_broker::BrokerError> {
/// let broker = rtc_broker::Broker::builder()
///     .tcp("127.0.0.1:0".parse().unwrap())
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
#[derive(Debug, Clone)]
pub struct BrokerBuilder {
    config: Config,
    storage: Option<Arc<dyn Storage>>,
}

impl BrokerBuilder {
    /// A builder starting from `config`.
    pub fn new(config: Config) -> Self {
        BrokerBuilder {
            config,
            storage: None,
        }
    }

    /// Uses `storage` instead of opening sled in the data directory. For other storage
    /// engines and for tests that inject faults.
    pub fn storage(mut self, storage: Arc<dyn Storage>) -> Self {
        self.storage = Some(storage);
        self
    }

    /// TCP listen address (port 0 for any free port).
    pub fn tcp(mut self, addr: SocketAddr) -> Self {
        self.config.tcp = addr;
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
        let listener = TcpListener::bind(config.tcp)
            .await
            .map_err(|source| BrokerError::Bind {
                transport: "tcp",
                addr: config.tcp,
                source,
            })?;
        let tcp_addr = listener.local_addr().map_err(|source| BrokerError::Bind {
            transport: "tcp",
            addr: config.tcp,
            source,
        })?;
        let storage: Arc<dyn Storage> = match self.storage {
            Some(s) => s,
            None => {
                let dir = config.data_dir.join(STORE_DIR);
                let background = match config.fsync {
                    FsyncPolicy::Never => BackgroundFlush::EveryMs(1000),
                    _ => BackgroundFlush::Off,
                };
                Arc::new(SledStorage::open(&dir, background).map_err(BrokerError::Storage)?)
            }
        };
        let router = Arc::new(Router::new());
        let topics = Arc::new(TopicRegistry::new(&config.topic));
        let log = Arc::new(
            writer::start(
                storage,
                router.clone(),
                topics.clone(),
                config.fsync,
                config.max_topics,
            )
            .map_err(|e| {
                BrokerError::Storage(format!("data directory {}: {e}", config.data_dir.display()))
            })?,
        );
        let limit = Arc::new(Semaphore::new(config.max_connections));
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let stored_consumers = log.storage.load_consumers().map_err(|e| {
            BrokerError::Storage(format!("data directory {}: {e}", config.data_dir.display()))
        })?;
        let consumers = Consumers::new(
            log.clone(),
            tracker.clone(),
            cancel.clone(),
            stored_consumers,
        );
        let auth = Auth::new(&config.user);
        let shared = Arc::new(Shared {
            auth,
            config,
            router,
            topics,
            log,
            consumers,
            next_conn_id: AtomicU64::new(1),
        });
        let tls = match (&shared.config.tls_cert, &shared.config.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::acceptor(cert, key)?),
            _ => None,
        };
        let scheme = if tls.is_some() { "tls" } else { "tcp" };
        let quic = match shared.config.quic {
            None => None,
            Some(addr) => {
                let c = &shared.config;
                let tls_files = c.tls_cert.as_deref().zip(c.tls_key.as_deref());
                let identity = crate::quic::identity(tls_files, &c.data_dir)?;
                let fingerprint = crate::quic::fingerprint(&identity.0[0]);
                let endpoint = crate::quic::endpoint(
                    addr,
                    identity,
                    c.heartbeat_interval * 3 + Duration::from_secs(5),
                )?;
                let bound = endpoint.local_addr().map_err(|source| BrokerError::Bind {
                    transport: "quic",
                    addr,
                    source,
                })?;
                tracker.spawn(crate::quic::accept(
                    endpoint,
                    shared.clone(),
                    limit.clone(),
                    cancel.clone(),
                    tracker.clone(),
                ));
                Some((bound, fingerprint))
            }
        };
        tracker.spawn(accept_tcp(
            listener,
            tls,
            shared.clone(),
            limit,
            cancel.clone(),
            tracker.clone(),
        ));
        tracker.spawn(retention_timer(shared.clone(), cancel.clone()));
        tracing::info!(%tcp_addr, fsync = %shared.config.fsync, "broker started");
        Ok(BrokerHandle {
            tcp_addr,
            scheme,
            quic,
            cancel,
            tracker,
            shared: Some(shared),
        })
    }
}

/// Asks the storage thread to apply retention limits every second.
async fn retention_timer(shared: Arc<Shared>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(RETENTION_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {
                if shared.log.send(Request::Enforce).is_err() {
                    return;
                }
            }
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

    /// The SHA-256 fingerprint of the QUIC certificate, when QUIC is on.
    pub fn quic_fingerprint(&self) -> Option<&str> {
        self.quic.as_ref().map(|(_, f)| f.as_str())
    }

    /// The URL clients use: `tcp://ADDR` or `tls://ADDR`.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.tcp_addr)
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
            let store = Arc::downgrade(&shared.log.storage);
            let _ = tokio::task::spawn_blocking(move || shared.log.shutdown()).await;
            // Replay reads still running on blocking threads hold the store briefly.
            let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
            while store.strong_count() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        tracing::info!("broker stopped");
    }
}

impl Drop for BrokerHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn accept_tcp(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    limit: Arc<Semaphore>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    // Failed accepts in a row: logged when they start and when they end, not each retry.
    let mut failing = 0u64;
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE/ENFILE and friends: keep serving the connections we have; new
                // ones wait in the listen backlog until descriptors are free again.
                if failing == 0 {
                    tracing::error!(error = %e, "cannot accept connections (out of file descriptors?): serving the open ones, retrying every {ACCEPT_BACKOFF:?}");
                }
                failing += 1;
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                }
            }
        };
        if failing > 0 {
            tracing::warn!(failed_attempts = failing, "accepting connections again");
            failing = 0;
        }
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracker.spawn(refuse(stream, shared.config.max_connections));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (shared, cancel) = (shared.clone(), cancel.clone());
        let peer = peer.to_string();
        match tls.clone() {
            None => {
                let (reader, writer) = stream.into_split();
                let writer = crate::outbound::TcpWriter::new(writer);
                let direct: Option<Arc<dyn crate::outbound::DirectWrite>> =
                    Some(writer.half().clone());
                tracker.spawn(async move {
                    crate::session::run(shared, reader, writer, peer, cancel, None, direct).await;
                    drop(permit);
                });
            }
            Some(acceptor) => {
                tracker.spawn(async move {
                    // The TLS handshake gets the same time limit as rtc's own.
                    let limit = shared.config.handshake_timeout;
                    match tokio::time::timeout(limit, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let (reader, writer) = tokio::io::split(tls);
                            crate::session::run(shared, reader, writer, peer, cancel, None, None)
                                .await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                    drop(permit);
                });
            }
        }
    }
}

/// Tells a connection over the limit why it is closed.
async fn refuse(mut stream: TcpStream, max: usize) {
    let frame = Frame::error(
        0,
        ErrorCode::LimitExceeded,
        format!("the broker serves at most {max} connections"),
    );
    let mut buf = bytes::BytesMut::new();
    if encode_frame(&frame, usize::MAX, &mut buf).is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&buf)).await;
    }
    let _ = stream.shutdown().await;
}
