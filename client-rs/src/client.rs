//! [`Client`]: the public API — publish, subscribe, close — over a connection the
//! supervisor keeps alive.
//!
//! Every request gets a fresh `req_id`, is registered in the shared pending map, handed to
//! the connection's writer, and completed by the reader task when the broker's answer (or
//! `Error`) with that `req_id` arrives — so each broker error reaches the call that caused
//! it. A publish that wants an acknowledgement is also kept in the outbox until it gets
//! one, and resent after a reconnect.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rtc_proto::v1::{self, frame::Op};
use rtc_proto::Frame;
use tokio::sync::watch;

use crate::connection;
use crate::error::Error;
use crate::message::{PubAck, PublishMessage};
use crate::options::{IdGen, SubscribeOptions};
use crate::outbox::Outbox;
use crate::outgoing::Outgoing;
use crate::publisher::Publisher;
use crate::queue;
use crate::requests::{unexpected, Inner};
use crate::state::{ConnectionState, Shared, SubEntry};
use crate::subscription::Subscription;
use crate::supervisor::{self, Dial, ReconnectPolicy};

/// Settings for [`Client::connect_with`]. `Default` gives the values listed per field.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Name sent in `Hello`, shown in broker logs. Default: `rtc-client`.
    pub client_name: String,
    /// Authentication token sent in `Hello`. Default: none.
    pub token: String,
    /// Time allowed to connect and complete the handshake. Default: 10 s.
    pub connect_timeout: Duration,
    /// Time a request (publish with ack, subscribe, …) waits for its answer. Default: 30 s.
    pub request_timeout: Duration,
    /// Messages buffered per subscription before the client stops reading from the
    /// socket (and the broker starts dropping for this connection). Default: 4096.
    pub subscription_capacity: usize,
    /// Frames queued for the writer before `publish` waits. Default: 1024.
    pub write_queue: usize,
    /// Reconnect after a lost connection; `None` closes the client instead. Default:
    /// [`ReconnectPolicy::default`]. (The first connection is not retried: `connect`
    /// reports its failure.)
    pub reconnect: Option<ReconnectPolicy>,
    /// Acknowledged publishes that may wait for their acknowledgement at once; beyond it
    /// a publish fails with [`Error::OutboxFull`]. Default: 65 536.
    pub outbox_capacity: usize,
    /// For `tls://` and `quic://` URLs: a PEM file with the certificate(s) to trust — the broker's own
    /// (self-signed) certificate or the CA that signed it. Default: none.
    pub ca_file: Option<std::path::PathBuf>,
    /// For `tls://` and `quic://` URLs: accept any server certificate. For development only: it makes
    /// the connection open to interception. Default: false.
    pub insecure: bool,
    /// Keep the outbox in this file too, so that publishes a crashed or restarted
    /// process had not had acknowledged are resent by the next client opened on the
    /// same file. Default: none (memory only). One client per file.
    pub outbox_file: Option<std::path::PathBuf>,
    /// Fsync the outbox file before each acknowledged publish is sent, so that the outbox
    /// survives a power loss, not only the process dying. Each such publish then waits
    /// for one fsync, one at a time per client. Default: false.
    pub outbox_fsync: bool,
    /// More brokers of the same cluster (URLs of the same scheme as the one given to
    /// `connect_with`): after a lost connection the client tries the next one in turn,
    /// so that it resumes on another node when its own is gone. Default: none.
    pub servers: Vec<String>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            client_name: "rtc-client".to_string(),
            token: String::new(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            subscription_capacity: 4096,
            write_queue: 1024,
            reconnect: Some(ReconnectPolicy::default()),
            outbox_capacity: 65_536,
            ca_file: None,
            insecure: false,
            outbox_file: None,
            outbox_fsync: false,
            servers: Vec::new(),
        }
    }
}

/// A connection to an rtc broker. Cheap to clone; clones share the connection.
///
/// ```no_run
/// # async fn demo() -> Result<(), rtc_client::Error> {
/// let client = rtc_client::Client::connect("tcp://127.0.0.1:7400").await?;
/// let mut sub = client.subscribe("demo.>").await?;
/// client.publish("demo.greeting", "hello").await?;
/// if let Some(msg) = sub.next().await {
///     println!("{}: {}", msg.topic, String::from_utf8_lossy(&msg.payload));
/// }
/// client.close().await;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

/// The broker's answer to an acknowledged publish, as a `PubAck`.
fn pub_ack(op: Op) -> Result<PubAck, Error> {
    match op {
        Op::PubAck(a) => Ok(PubAck {
            seq: a.seq,
            duplicate: a.duplicate,
        }),
        other => Err(unexpected("PubAck", other)),
    }
}

impl Client {
    /// Connects to `url` (`tcp://host:port`, or just `host:port`) with default options.
    pub async fn connect(url: &str) -> Result<Client, Error> {
        Self::connect_with(url, ConnectOptions::default()).await
    }

    /// Connects with explicit [`ConnectOptions`].
    pub async fn connect_with(url: &str, options: ConnectOptions) -> Result<Client, Error> {
        let endpoint = connection::parse_url(url)?;
        let mut endpoints = vec![endpoint.clone()];
        for other in &options.servers {
            let e = connection::parse_url(other)?;
            if e.scheme != endpoint.scheme {
                return Err(Error::InvalidUrl {
                    url: other.clone(),
                    reason: format!("every server must use the scheme of {url:?}"),
                });
            }
            endpoints.push(e);
        }
        let tls = match endpoint.scheme {
            connection::Scheme::Tcp => None,
            scheme => Some(crate::tls::client_config(
                options.ca_file.as_deref(),
                options.insecure,
                scheme == connection::Scheme::Quic,
            )?),
        };
        let (mut outbox, left) = match &options.outbox_file {
            Some(path) => Outbox::open(path, options.outbox_capacity, options.outbox_fsync)?,
            None => (Outbox::new(options.outbox_capacity), Vec::new()),
        };
        let session = connection::handshake(
            &endpoint,
            tls.as_ref(),
            &options.client_name,
            &options.token,
            options.connect_timeout,
        )
        .await?;
        let welcome = session.welcome.clone();
        // Publishes a previous run left unacknowledged get this client's req_ids; the
        // first connection resends them (nobody waits for their answers).
        let next_id = AtomicU64::new(1);
        for p in left {
            outbox.restore(next_id.fetch_add(1, Ordering::Relaxed), p);
        }
        let shared = Arc::new(Shared::new(outbox));
        shared.state.send_replace(ConnectionState::Connected);
        let (tx, rx) = queue::bounded(options.write_queue);
        let dial = Dial {
            endpoints,
            tls,
            client_name: options.client_name,
            token: options.token,
            connect_timeout: options.connect_timeout,
            reconnect: options.reconnect,
        };
        // Computed now, before the application can queue anything: what the first
        // connection must resend is exactly what a previous run left.
        let restore = shared.restore_frames();
        let supervisor = tokio::spawn(supervisor::supervise(
            shared.clone(),
            rx,
            (session, restore),
            dial,
        ));
        Ok(Client {
            inner: Arc::new(Inner {
                shared,
                tx,
                quiet: crate::direct::QuietSpell::new(),
                next_id,
                max_frame_size: welcome.max_frame_size as usize,
                request_timeout: options.request_timeout,
                subscription_capacity: options.subscription_capacity.max(1),
                server_version: welcome.server_version,
                connection_id: welcome.connection_id,
                ids: IdGen::new(),
                supervisor: Mutex::new(Some(supervisor)),
            }),
        })
    }

    /// Publishes `payload` to `topic` and waits for the broker's acknowledgement. An
    /// invalid topic or oversized payload comes back as [`Error::Server`].
    pub async fn publish(&self, topic: &str, payload: impl Into<Bytes>) -> Result<PubAck, Error> {
        self.publish_message(PublishMessage::new(topic, payload))
            .await
    }

    /// Publishes a message with headers and/or message ID and waits for the
    /// acknowledgement.
    pub async fn publish_message(&self, message: PublishMessage) -> Result<PubAck, Error> {
        let (req_id, rx) = self.inner.start_publish(self.with_id(message)).await?;
        pub_ack(self.inner.answer(req_id, rx).await?)
    }

    /// Queues an acknowledged publish and returns as soon as it is queued, with a
    /// future of its acknowledgement: for keeping many publishes in flight from one task
    /// without a large future per publish (the returned one holds little more than a
    /// channel). The publish is in the outbox from the moment this returns, exactly as
    /// with [`Client::publish_message`]; dropping the future does not withdraw it. The
    /// request timeout runs from the first poll of the future.
    ///
    /// ```no_run
    /// # async fn f(client: rtc_client::Client) -> Result<(), rtc_client::Error> {
    /// use rtc_client::PublishMessage;
    /// let mut acks = Vec::new();
    /// for i in 0..100u32 {
    ///     let m = PublishMessage::new("orders.created", i.to_be_bytes().to_vec());
    ///     acks.push(client.publish_queued(m).await?);
    /// }
    /// for ack in acks {
    ///     println!("stored as {}", ack.await?.seq);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn publish_queued(
        &self,
        message: PublishMessage,
    ) -> Result<impl Future<Output = Result<PubAck, Error>> + Send + 'static, Error> {
        let (req_id, rx) = self.inner.start_publish(self.with_id(message)).await?;
        let inner = self.inner.clone();
        Ok(async move { pub_ack(inner.answer(req_id, rx).await?) })
    }

    /// Publishes without asking for an acknowledgement (fire-and-forget, at most once).
    /// Returns once the frame is queued for the socket; a broker error for it is only
    /// logged. Unlike the acknowledged publishes, no message ID is added: the client never
    /// sends a fire-and-forget publish twice, so there is nothing to deduplicate (an ID the
    /// message carries is kept).
    pub async fn publish_nowait(&self, message: PublishMessage) -> Result<(), Error> {
        let len = message.as_publish(0).frame_len();
        self.inner.send(Outgoing::Publish(message), len).await
    }

    /// A [`Publisher`] for a stream of fire-and-forget publishes: encoded into a buffer of
    /// its own and sent a batch at a time, cheaper per message than
    /// [`Client::publish_nowait`] at the cost of waiting in the batch until it is full or
    /// flushed.
    ///
    /// ```no_run
    /// # async fn f(client: rtc_client::Client) -> Result<(), rtc_client::Error> {
    /// use rtc_client::PublishMessage;
    /// let mut publisher = client.publisher();
    /// for i in 0..100_000u32 {
    ///     publisher.publish(&PublishMessage::new("ticks", i.to_be_bytes().to_vec())).await?;
    /// }
    /// publisher.flush().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn publisher(&self) -> Publisher {
        Publisher::new(self.inner.clone())
    }

    fn with_id(&self, mut message: PublishMessage) -> PublishMessage {
        if message.msg_id.is_empty() {
            message.msg_id = self.inner.ids.next();
        }
        message
    }

    /// Subscribes to `pattern` (`*` matches one token, `>` the rest) for messages
    /// published from now on. The returned [`Subscription`] is a `Stream` of messages;
    /// the subscription is active on the broker when this returns.
    pub async fn subscribe(&self, pattern: &str) -> Result<Subscription, Error> {
        self.subscribe_with(pattern, SubscribeOptions::default())
            .await
    }

    /// Subscribes with options, e.g. to replay stored messages first:
    /// `SubscribeOptions { start: StartAt::First, ..Default::default() }` delivers every stored message of the
    /// durable topics the pattern matches, in order, then live ones, with no gap and no
    /// duplicate between the two.
    pub async fn subscribe_with(
        &self,
        pattern: &str,
        options: SubscribeOptions,
    ) -> Result<Subscription, Error> {
        let sub_id = self.inner.next_id();
        let consumer = options.consumer.as_ref();
        let (tx, rx) = queue::bounded(self.inner.subscription_capacity);
        let request = v1::Subscribe {
            req_id: 0,
            sub_id,
            pattern: pattern.to_string(),
            start: options.start.to_wire(),
            consumer: consumer.map_or_else(String::new, |c| c.name.clone()),
            ack_mode: match consumer {
                Some(c) if !c.explicit_ack => v1::AckMode::None,
                Some(_) => v1::AckMode::Explicit,
                None => v1::AckMode::Unspecified,
            } as i32,
            ack_wait_ms: consumer
                .and_then(|c| c.ack_wait)
                .map_or(0, |d| d.as_millis() as u64),
            max_in_flight: consumer.and_then(|c| c.max_in_flight).unwrap_or(0),
            max_deliver: consumer.and_then(|c| c.max_deliver).unwrap_or(0),
            datagrams: options.datagrams,
            resume_after: Default::default(),
            group: options.group.clone().unwrap_or_default(),
            presence: options.presence.clone(),
            epochs: options
                .epoch
                .map(|e| [(pattern.to_string(), e)].into())
                .unwrap_or_default(),
        };
        self.inner
            .shared
            .add_sub(sub_id, SubEntry::new(tx, request.clone()))?;
        let reply = self
            .inner
            .request(|req_id| Frame::from_op(Op::Subscribe(v1::Subscribe { req_id, ..request })))
            .await;
        match reply {
            Ok(Op::SubAck(_)) => {
                self.inner.shared.activate_sub(sub_id);
                Ok(Subscription::new(
                    self.inner.clone(),
                    sub_id,
                    pattern.to_string(),
                    rx,
                ))
            }
            Ok(other) => {
                self.inner.shared.remove_sub(sub_id);
                Err(unexpected("SubAck", other))
            }
            Err(e) => {
                self.inner.shared.remove_sub(sub_id);
                Err(e)
            }
        }
    }

    /// Messages received as QUIC datagrams (see `SubscribeOptions::datagrams`).
    pub fn datagrams_received(&self) -> u64 {
        self.inner.shared.datagrams.load(Ordering::Relaxed)
    }

    /// Messages the broker reported dropping because this client read too slowly.
    pub fn dropped_by_broker(&self) -> u64 {
        self.inner.shared.dropped.load(Ordering::Relaxed)
    }

    /// `Some(reason)` once the connection has closed.
    pub fn closed_reason(&self) -> Option<String> {
        self.inner.shared.closed_reason()
    }

    /// The broker's software version, from the handshake.
    pub fn server_version(&self) -> &str {
        &self.inner.server_version
    }

    /// The id the broker gave this connection (it appears in broker logs).
    pub fn connection_id(&self) -> u64 {
        self.inner.connection_id
    }

    /// The connection's state now; `changed().await` on the receiver waits for the next
    /// change (connecting, connected, reconnecting, closed).
    pub fn state(&self) -> watch::Receiver<ConnectionState> {
        self.inner.shared.state.subscribe()
    }

    /// Acknowledged publishes still waiting for their acknowledgement (in the outbox).
    pub fn outbox_len(&self) -> usize {
        crate::state::lock(&self.inner.shared.outbox).len()
    }

    /// Sends what is queued, closes the connection and waits (at most a few seconds)
    /// for it to finish. Subscriptions end; waiting requests fail. Publishes still in a
    /// journal file (`ConnectOptions::outbox_file`) stay there for the next client. Other
    /// clones of this client see it closed.
    pub async fn close(&self) {
        let supervisor = self
            .inner
            .supervisor
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(supervisor) = supervisor else { return };
        self.inner.shared.closing.cancel();
        let grace = Duration::from_secs(5);
        let _ = tokio::time::timeout(grace, self.inner.tx.send(Outgoing::Close)).await;
        let abort = supervisor.abort_handle();
        if tokio::time::timeout(grace, supervisor).await.is_err() {
            abort.abort();
        }
        self.inner
            .shared
            .close("closed by the application".to_string());
    }
}
