//! TLS for `tls://` and `quic://` URLs: the rustls client configuration, trusting either the
//! certificates in a PEM file (`ConnectOptions::ca_file`, e.g. the broker's self-signed
//! certificate) or — for development only — any certificate (`insecure`).

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::error::Error;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The ALPN protocol id of rtc over QUIC.
pub(crate) const QUIC_ALPN: &[u8] = b"rtc/1";

/// The client configuration for `tls://` connections, or for `quic://` ones (TLS 1.3
/// only, with rtc's ALPN id) when `quic`.
pub(crate) fn client_config(
    ca_file: Option<&Path>,
    insecure: bool,
    quic: bool,
) -> Result<Arc<rustls::ClientConfig>, Error> {
    let tls_err = |m: String| Error::Tls(m);
    let builder = rustls::ClientConfig::builder_with_provider(provider());
    let builder = if quic {
        builder.with_protocol_versions(&[&rustls::version::TLS13])
    } else {
        builder.with_safe_default_protocol_versions()
    }
    .map_err(|e| tls_err(e.to_string()))?;
    let config = if insecure {
        tracing::warn!("TLS certificate verification is OFF (insecure): for development only");
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider())))
            .with_no_client_auth()
    } else {
        let Some(path) = ca_file else {
            return Err(tls_err(
                "tls:// and quic:// need a CA certificate to trust (ConnectOptions::ca_file, rtc-cli --ca FILE) or insecure mode"
                    .into(),
            ));
        };
        let mut roots = rustls::RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| tls_err(format!("{}: {e}", path.display())))?;
        for cert in certs {
            let cert = cert.map_err(|e| tls_err(format!("{}: {e}", path.display())))?;
            roots
                .add(cert)
                .map_err(|e| tls_err(format!("{}: {e}", path.display())))?;
        }
        if roots.is_empty() {
            return Err(tls_err(format!("{}: no certificate found", path.display())));
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    let mut config = config;
    if quic {
        config.alpn_protocols = vec![QUIC_ALPN.to_vec()];
    }
    Ok(Arc::new(config))
}

/// The server name to verify for `host`.
pub(crate) fn server_name(host: &str) -> Result<ServerName<'static>, Error> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).map_err(|e| Error::Tls(format!("{host:?}: {e}")))
}

/// Accepts any certificate but still checks the handshake signatures: `insecure` mode.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
