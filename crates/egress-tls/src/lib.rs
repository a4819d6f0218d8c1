//! The server side of TLS for every listener egress runs — the ESMTP listener's
//! STARTTLS (egress-relay), egressd's HTTPS admin API and egress-proxy's SOCKS5
//! over TLS — made one way: the certificate chain and key as KumoMTA key sources
//! (a PEM file path, or `{ key_data = … }` with the PEM itself), or, with neither,
//! a self-signed certificate made at start for the host name (as KumoMTA does, so
//! TLS is always on offer). rustls on the ring provider.
//!
//! ```
//! // No certificate given: a self-signed one for the host name.
//! let acceptor = egress_tls::acceptor(None, None, "mta.example.test", "kumo.start_esmtp_listener");
//! assert!(acceptor.is_ok());
//! // Half a pair is a mistake, named.
//! let cert = egress_source::KeySource::File("/etc/tls/cert.pem".into());
//! let err = egress_tls::acceptor(Some(&cert), None, "mta.example.test", "listener 0.0.0.0:25")
//!     .err().unwrap();
//! assert!(err.contains("listener 0.0.0.0:25") && err.contains("tls_private_key"));
//! ```
//!
//! Invariants: no I/O but reading the key sources; no sockets.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use egress_source::KeySource;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// The provider every TLS configuration of egress uses: ring (it builds in a
/// fraction of aws-lc-rs's time; see the workspace Cargo.toml).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The acceptor for a listener (`declared_by` names it in messages): the chain
/// in `certificate` and the key in `private_key`, or a self-signed certificate for
/// `hostname` when neither is given.
pub fn acceptor(
    certificate: Option<&KeySource>,
    private_key: Option<&KeySource>,
    hostname: &str,
    declared_by: &str,
) -> Result<TlsAcceptor, String> {
    let (chain, key) = match (certificate, private_key) {
        (Some(cert), Some(key)) => (
            chain(cert).map_err(|e| format!("{declared_by}: {e}"))?,
            private(key).map_err(|e| format!("{declared_by}: {e}"))?,
        ),
        (None, None) => self_signed(hostname)?,
        (Some(_), None) => {
            return Err(format!("{declared_by}: `tls_certificate` is set but `tls_private_key` is not; set both, or neither for a self-signed certificate"))
        }
        (None, Some(_)) => {
            return Err(format!("{declared_by}: `tls_private_key` is set but `tls_certificate` is not; set both, or neither for a self-signed certificate"))
        }
    };
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("{declared_by}: the certificate and key do not go together: {e}"))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The certificates (PEM) `source` holds, in order; an error names the source
/// when it holds none.
pub fn chain(source: &KeySource) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = source.load().map_err(|e| format!("tls_certificate: {e}"))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls_certificate {source:?}: {e}"))?;
    if chain.is_empty() {
        return Err(format!(
            "tls_certificate {source:?}: no PEM certificate in it"
        ));
    }
    Ok(chain)
}

/// The private key (PEM) `source` holds.
pub fn private(source: &KeySource) -> Result<PrivateKeyDer<'static>, String> {
    let pem = source.load().map_err(|e| format!("tls_private_key: {e}"))?;
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| format!("tls_private_key {source:?}: {e}"))
}

fn self_signed(
    hostname: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let key = rcgen::KeyPair::generate().map_err(|e| format!("self-signed key: {e}"))?;
    let mut params = rcgen::CertificateParams::new(vec![hostname.to_owned()])
        .map_err(|e| format!("self-signed certificate for {hostname:?}: {e}"))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, hostname);
    let cert = params
        .self_signed(&key)
        .map_err(|e| format!("self-signed certificate for {hostname:?}: {e}"))?;
    Ok((
        vec![CertificateDer::from(cert.der().to_vec())],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    ))
}
