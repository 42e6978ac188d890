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
//!
//! Certificate: the TLS certificate when one is configured; otherwise a self-signed one
//! generated at first start and kept in the data dir (`quic-cert.pem`, `quic-key.pem`),
//! whose SHA-256 fingerprint the binary prints. Clients trust it with `--ca` (the
//! certificate file) or, for development, `--insecure`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::BrokerError;
use crate::server::Shared;
use crate::tls::Identity;

/// The ALPN protocol id clients must offer.
pub const ALPN: &[u8] = b"rtc/1";
/// File names of the generated self-signed certificate, in the data dir.
pub const GENERATED_CERT: &str = "quic-cert.pem";
/// See [`GENERATED_CERT`].
pub const GENERATED_KEY: &str = "quic-key.pem";

/// The configured certificate, or the data dir's self-signed one (made if missing).
pub fn identity(tls: Option<(&Path, &Path)>, data_dir: &Path) -> Result<Identity, BrokerError> {
    if let Some((cert, key)) = tls {
        return crate::tls::load(cert, key);
    }
    let (cert, key) = (data_dir.join(GENERATED_CERT), data_dir.join(GENERATED_KEY));
    if cert.exists() && key.exists() {
        return crate::tls::load(&cert, &key);
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
    let mut tls = crate::tls::server_config(identity, true)?;
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

/// Accepts QUIC connections until `cancel`, running a session on each one's stream.
pub(crate) async fn accept(
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    limit: Arc<Semaphore>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let incoming = tokio::select! {
            _ = cancel.cancelled() => break,
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => break,
            },
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            incoming.refuse();
            continue;
        };
        let (shared, cancel) = (shared.clone(), cancel.clone());
        tracker.spawn(async move {
            let peer = incoming.remote_address().to_string();
            let handshake = shared.config.handshake_timeout;
            let opened = tokio::time::timeout(handshake, async {
                let conn = incoming.await?;
                let (send, recv) = conn.accept_bi().await?;
                Ok::<_, quinn::ConnectionError>((conn, send, recv))
            })
            .await;
            match opened {
                Ok(Ok((conn, send, recv))) => {
                    let datagrams: Arc<dyn crate::router::DatagramSink> = Arc::new(conn.clone());
                    crate::session::run(shared, recv, send, peer, cancel, Some(datagrams), None)
                        .await;
                    // Let the client read what was flushed before the connection goes.
                    let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "QUIC handshake failed"),
                Err(_) => tracing::debug!(%peer, "QUIC handshake timed out"),
            }
            drop(permit);
        });
    }
    // Sessions are telling their clients SHUTTING_DOWN and flushing; closing the
    // endpoint now would cut that off. Give the connections a moment to finish.
    let _ = tokio::time::timeout(DRAIN, endpoint.wait_idle()).await;
    endpoint.close(0u32.into(), b"broker shutting down");
}

/// How long a stopping QUIC listener waits for its connections to close.
const DRAIN: Duration = Duration::from_secs(3);
