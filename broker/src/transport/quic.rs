//! The QUIC listener (quinn).
//!
//! Stream layout: a client opens **one bidirectional stream** per connection and speaks
//! exactly the TCP protocol on it — same frames, handshake, limits and errors — so the
//! session code is shared. This is the baseline the design names: it has TCP's
//! head-of-line blocking within the connection (live messages queue behind a replay on
//! the same stream). The way around it is datagrams: messages of ephemeral topics
//! configured `datagram = true` go to subscriptions that ask for it as QUIC datagrams
//! (one `Frame{deliver}` each, no length prefix; unreliable, unordered, never queued
//! behind anything), falling back to the stream for a message too large for a datagram.
//! That choice is made per message by `DatagramSubscriber`, this transport's
//! implementation of the router's subscriber seam, wrapped around the stream's.
//!
//! Certificate: the TLS certificate when one is configured; otherwise a self-signed one
//! generated at first start and kept in the data dir (`quic-cert.pem`, `quic-key.pem`),
//! whose SHA-256 fingerprint the binary prints. Clients trust it with `--ca` (the
//! certificate file) or, for development, `--insecure`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rtc_proto::codec::LEN_PREFIX;
use rtc_proto::Frame;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};

use super::tls::{self, Identity};
use crate::accept::{Incoming, Listener};
use crate::error::BrokerError;
use crate::outbound::{ByteStream, FrameSink};
use crate::router::{Flushes, Live, Subscriber};
use crate::session::{ByteStreamSource, Connection, Datagrams};

/// The ALPN protocol id clients must offer.
pub const ALPN: &[u8] = b"rtc/1";
/// File names of the generated self-signed certificate, in the data dir.
pub const GENERATED_CERT: &str = "quic-cert.pem";
/// See [`GENERATED_CERT`].
pub const GENERATED_KEY: &str = "quic-key.pem";

/// The configured certificate, or the data dir's self-signed one (made if missing).
pub fn identity(tls: Option<(&Path, &Path)>, data_dir: &Path) -> Result<Identity, BrokerError> {
    if let Some((cert, key)) = tls {
        return tls::load(cert, key);
    }
    let (cert, key) = (data_dir.join(GENERATED_CERT), data_dir.join(GENERATED_KEY));
    if cert.exists() && key.exists() {
        return tls::load(&cert, &key);
    }
    let made = rcgen::generate_simple_self_signed(vec![
        "localhost".into(),
        "127.0.0.1".into(),
        "::1".into(),
    ])
    .map_err(|e| BrokerError::Tls(format!("cannot generate a certificate: {e}")))?;
    let io = |p: &Path, e: std::io::Error| BrokerError::Tls(format!("{}: {e}", p.display()));
    std::fs::write(&cert, made.cert.pem()).map_err(|e| io(&cert, e))?;
    write_private(&key, made.signing_key.serialize_pem().as_bytes()).map_err(|e| io(&key, e))?;
    tracing::info!(cert = %cert.display(), "generated a self-signed certificate for QUIC");
    let der = PrivatePkcs8KeyDer::from(made.signing_key.serialize_der());
    Ok((vec![made.cert.der().clone()], PrivateKeyDer::Pkcs8(der)))
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)
}

/// `AB:CD:…`, the SHA-256 of the leaf certificate.
pub fn fingerprint(leaf: &CertificateDer<'_>) -> String {
    Sha256::digest(leaf.as_ref())
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A bound QUIC endpoint for `identity`.
pub fn endpoint(
    addr: SocketAddr,
    identity: Identity,
    idle: Duration,
) -> Result<quinn::Endpoint, BrokerError> {
    let mut tls = tls::server_config(identity, true)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| BrokerError::Tls(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(quinn::IdleTimeout::try_from(idle).ok());
    // One stream per connection is all a client uses.
    transport.max_concurrent_bidi_streams(1u32.into());
    transport.max_concurrent_uni_streams(0u32.into());
    config.transport_config(Arc::new(transport));
    quinn::Endpoint::server(config, addr).map_err(|source| BrokerError::Bind {
        transport: "quic",
        addr,
        source,
    })
}

/// How long a stopping QUIC listener waits for its connections to close.
const DRAIN: Duration = Duration::from_secs(3);
/// How long a closed session's connection stays up so the client can read what was
/// flushed last.
const LINGER: Duration = Duration::from_secs(2);

/// The QUIC listener: one bound endpoint.
#[derive(Debug)]
pub struct Quic {
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
}

impl Quic {
    /// Binds `addr` with `identity`; a connection idle for `idle` is closed.
    pub fn bind(addr: SocketAddr, identity: Identity, idle: Duration) -> Result<Quic, BrokerError> {
        let endpoint = endpoint(addr, identity, idle)?;
        let addr = endpoint.local_addr().map_err(|source| BrokerError::Bind {
            transport: "quic",
            addr,
            source,
        })?;
        Ok(Quic { endpoint, addr })
    }

    /// The address it is bound to (the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Listener for Quic {
    type Incoming = QuicIncoming;

    fn transport(&self) -> &'static str {
        "quic"
    }

    fn address(&self) -> String {
        self.addr.to_string()
    }

    async fn accept(&mut self) -> Option<std::io::Result<QuicIncoming>> {
        self.endpoint.accept().await.map(|i| Ok(QuicIncoming(i)))
    }

    async fn close(self) {
        // Sessions are telling their clients SHUTTING_DOWN and flushing; closing the
        // endpoint now would cut that off. Give the connections a moment to finish.
        let _ = tokio::time::timeout(DRAIN, self.endpoint.wait_idle()).await;
        self.endpoint.close(0u32.into(), b"broker shutting down");
    }
}

/// A QUIC connection attempt, before its handshake.
#[derive(Debug)]
pub struct QuicIncoming(quinn::Incoming);

impl Incoming for QuicIncoming {
    fn transport(&self) -> &'static str {
        "quic"
    }

    type Source = ByteStreamSource<quinn::RecvStream>;
    type Sink = QuicSink;

    fn peer(&self) -> String {
        self.0.remote_address().to_string()
    }

    async fn open(
        self,
        max_frame_size: usize,
    ) -> std::io::Result<Connection<Self::Source, Self::Sink>> {
        let peer = self.peer();
        let conn = self.0.await?;
        let (send, recv) = conn.accept_bi().await?;
        Ok(Connection {
            source: ByteStreamSource::new(recv, max_frame_size),
            sink: QuicSink {
                send: ByteStream(send),
                conn: conn.clone(),
            },
            peer,
            direct: None,
            datagrams: Some(Arc::new(QuicDatagrams(conn))),
        })
    }

    async fn refuse(self, _error: Frame) {
        // QUIC refuses before the handshake: there is no stream to say why on.
        self.0.refuse();
    }
}

/// The connection's one stream, closed by finishing it and then letting the client read
/// what was flushed before the connection goes.
#[derive(Debug)]
pub struct QuicSink {
    send: ByteStream<quinn::SendStream>,
    conn: quinn::Connection,
}

impl FrameSink for QuicSink {
    async fn write(&mut self, frames: &[u8]) -> std::io::Result<()> {
        self.send.write(frames).await
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        self.send.flush().await
    }

    async fn close(&mut self) {
        self.send.close().await;
        let _ = tokio::time::timeout(LINGER, self.conn.closed()).await;
    }
}

/// The datagram side of a QUIC connection.
#[derive(Debug)]
struct QuicDatagrams(quinn::Connection);

impl Datagrams for QuicDatagrams {
    fn subscriber(&self, sub_id: u64, stream: Arc<dyn Subscriber>) -> Arc<dyn Subscriber> {
        Arc::new(DatagramSubscriber {
            conn: self.0.clone(),
            sub_id,
            stream,
        })
    }
}

/// A subscription that asked for datagrams: a message of a datagram topic goes as one
/// `Frame{deliver}` datagram when it fits, anything else through the stream.
#[derive(Debug)]
struct DatagramSubscriber {
    conn: quinn::Connection,
    sub_id: u64,
    stream: Arc<dyn Subscriber>,
}

impl DatagramSubscriber {
    /// One `Frame{deliver}` without the length prefix, if it fits in a datagram.
    fn send_datagram(&self, message: &Bytes) -> bool {
        let len = rtc_proto::codec::deliver_frame_len(self.sub_id, message.len());
        if self.conn.max_datagram_size().is_none_or(|max| len > max) {
            return false;
        }
        let mut buf = BytesMut::with_capacity(LEN_PREFIX + len);
        rtc_proto::codec::encode_deliver(self.sub_id, message, &mut buf);
        self.conn
            .send_datagram(buf.split_off(LEN_PREFIX).freeze())
            .is_ok()
    }
}

impl Subscriber for DatagramSubscriber {
    fn deliver(&self, live: &Live<'_>, later: &mut Flushes) -> bool {
        if live.datagram && self.send_datagram(live.message) {
            return true;
        }
        self.stream.deliver(live, later)
    }

    fn is_backlogged(&self) -> bool {
        self.stream.is_backlogged()
    }
}
