//! One accept path for every listener: the connection limit, the transport's own
//! handshake (TLS, QUIC) under the handshake timeout, and a session per connection, all
//! on the broker's task tracker so that shutdown waits for them.
//!
//! A transport plugs in by implementing [`Listener`] (where connections come from) and
//! [`Incoming`] (one connection before its transport handshake). [`Acceptor::serve`]
//! runs a listener's accept loop; [`Acceptor::admit`] takes one connection that arrived
//! some other way — the HTTP gateway's WebSocket upgrades will come in through it. The
//! broker's own TCP, TLS and QUIC listeners (`crate::transport`) use exactly this path,
//! and so can a listener an embedding program adds ([`crate::BrokerBuilder::listener`]).

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use rtc_proto::Frame;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::outbound::FrameSink;
use crate::refusal::Refusal;
use crate::session::{self, Connection, FrameSource, Shared};

/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Where connections come from (a bound socket).
pub trait Listener: Send + 'static {
    /// One accepted connection.
    type Incoming: Incoming;

    /// The transport's name in logs and the listening line (`tcp`, `tls`, `quic`, …).
    fn transport(&self) -> &'static str;
    /// The address it is bound to, as printed in the listening line.
    fn address(&self) -> String;
    /// The next connection: `None` once the listener is closed, an error for a failed
    /// accept that may succeed later (out of descriptors).
    fn accept(&mut self) -> impl Future<Output = Option<io::Result<Self::Incoming>>> + Send;
    /// The broker is stopping and no more connections are accepted: finish up (a QUIC
    /// endpoint lets its connections drain, then closes).
    fn close(self) -> impl Future<Output = ()> + Send
    where
        Self: Sized,
    {
        async {}
    }
}

/// One accepted connection, before the transport's own handshake.
pub trait Incoming: Send + 'static {
    /// Its frames from the client.
    type Source: FrameSource;
    /// Its frames to the client.
    type Sink: FrameSink;

    /// The peer's address, for logs.
    fn peer(&self) -> String;
    /// The transport's name, for the metrics' `transport` label (`tcp`, `tls`, `quic`,
    /// `ws`, `sse`, `poll`); a listener an embedding program adds may keep the default.
    fn transport(&self) -> &'static str {
        "custom"
    }
    /// Completes the transport's handshake (nothing for TCP; TLS; QUIC's connection and
    /// stream). The caller bounds it by the handshake timeout.
    fn open(
        self,
        max_frame_size: usize,
    ) -> impl Future<Output = io::Result<Connection<Self::Source, Self::Sink>>> + Send;
    /// Refuses the connection (the broker is at its connection limit), telling the
    /// client why with `error` where the transport can.
    fn refuse(self, error: Frame) -> impl Future<Output = ()> + Send;
}

/// The accept path: see the module docs. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Acceptor {
    shared: Arc<Shared>,
    limit: Arc<Semaphore>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Acceptor {
    /// Admits connections to sessions over `shared`, at most `shared.config.max_connections`
    /// at once, until `cancel`; every task goes on `tracker`.
    pub fn new(shared: Arc<Shared>, cancel: CancellationToken, tracker: TaskTracker) -> Self {
        Acceptor {
            limit: Arc::new(Semaphore::new(shared.config.max_connections)),
            shared,
            cancel,
            tracker,
        }
    }

    /// Takes one connection: a slot under the connection limit (or a refusal saying
    /// why), the transport handshake within the handshake timeout, then a session until
    /// the connection ends.
    pub fn admit<I: Incoming>(&self, incoming: I) {
        let Ok(permit) = self.limit.clone().try_acquire_owned() else {
            let max = self.shared.config.max_connections;
            let refusal =
                Refusal::LimitExceeded(format!("the broker serves at most {max} connections"));
            self.tracker.spawn(incoming.refuse(refusal.frame(0)));
            return;
        };
        let (shared, cancel) = (self.shared.clone(), self.cancel.clone());
        self.tracker.spawn(async move {
            let peer = incoming.peer();
            let transport = incoming.transport();
            shared.metrics.opened(transport);
            let limit = shared.config.handshake_timeout;
            let max_frame_size = shared.config.max_frame_size;
            match tokio::time::timeout(limit, incoming.open(max_frame_size)).await {
                Ok(Ok(conn)) => session::run(shared.clone(), conn, transport, cancel).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "transport handshake failed"),
                Err(_) => tracing::debug!(%peer, "transport handshake timed out"),
            }
            shared.metrics.closed(transport);
            drop(permit);
        });
    }

    /// Accepts from `listener` until the broker stops or the listener closes.
    pub async fn serve<L: Listener>(self, mut listener: L) {
        // Failed accepts in a row: logged when they start and when they end, not each retry.
        let mut failing = 0u64;
        loop {
            let accepted = tokio::select! {
                _ = self.cancel.cancelled() => break,
                a = listener.accept() => a,
            };
            match accepted {
                None => break,
                Some(Ok(incoming)) => {
                    if failing > 0 {
                        tracing::warn!(
                            transport = listener.transport(),
                            failed_attempts = failing,
                            "accepting connections again"
                        );
                        failing = 0;
                    }
                    self.admit(incoming);
                }
                Some(Err(e)) => {
                    // EMFILE/ENFILE and friends: keep serving the connections we have; new
                    // ones wait in the listen backlog until descriptors are free again.
                    if failing == 0 {
                        tracing::error!(transport = listener.transport(), error = %e, "cannot accept connections (out of file descriptors?): serving the open ones, retrying every {ACCEPT_BACKOFF:?}");
                    }
                    failing += 1;
                    tokio::select! {
                        _ = self.cancel.cancelled() => break,
                        _ = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                    }
                }
            }
        }
        listener.close().await;
    }

    /// Runs `listener`'s accept loop on the broker's tracker.
    pub fn spawn<L: Listener>(&self, listener: L) {
        self.tracker.spawn(self.clone().serve(listener));
    }
}

/// A listener whose type is known only when it is added ([`crate::BrokerBuilder::listener`]).
pub(crate) trait AnyListener: Send {
    fn transport(&self) -> &'static str;
    fn address(&self) -> String;
    fn spawn(self: Box<Self>, acceptor: &Acceptor);
}

impl<L: Listener> AnyListener for L {
    fn transport(&self) -> &'static str {
        Listener::transport(self)
    }

    fn address(&self) -> String {
        Listener::address(self)
    }

    fn spawn(self: Box<Self>, acceptor: &Acceptor) {
        acceptor.spawn(*self);
    }
}
