//! TLS for the TCP listener: loads the certificate chain and private key named by
//! `tls_cert` / `tls_key` (PEM) into a rustls server configuration. With them, the TCP
//! listener speaks TLS only (clients use `tls://` URLs); without them, plain TCP.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::BrokerError;

fn tls_err(path: &Path, e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Tls(format!("{}: {e}", path.display()))
}

/// A certificate chain (leaf first) and its private key.
pub type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// Reads a PEM certificate chain and a PEM private key.
pub fn load(cert: &Path, key: &Path) -> Result<Identity, BrokerError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| tls_err(cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| tls_err(cert, e))?;
    if chain.is_empty() {
        return Err(tls_err(cert, "no certificate found"));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| tls_err(key, e))?;
    Ok((chain, key))
}

/// A rustls server configuration for `identity`; `tls13_only` for QUIC.
pub fn server_config(
    identity: Identity,
    tls13_only: bool,
) -> Result<rustls::ServerConfig, BrokerError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider);
    let builder = if tls13_only {
        builder.with_protocol_versions(&[&rustls::version::TLS13])
    } else {
        builder.with_safe_default_protocol_versions()
    }
    .map_err(|e| BrokerError::Tls(e.to_string()))?;
    builder
        .with_no_client_auth()
        .with_single_cert(identity.0, identity.1)
        .map_err(|e| BrokerError::Tls(e.to_string()))
}

/// The TLS acceptor for `cert` (PEM chain, leaf first) and `key` (PEM private key).
pub fn acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, BrokerError> {
    let config = server_config(load(cert, key)?, false)?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
