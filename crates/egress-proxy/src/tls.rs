//! TLS around the SOCKS5 exchange (`use_tls`, KumoProxy's): the listener's
//! certificate and key as key sources (a PEM file path, or `{ key_data = … }`),
//! or a self-signed certificate made at start for `hostname`.

use egress_source::KeySource;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// The acceptor for a listener on `listen` (named in messages).
pub fn acceptor(
    certificate: Option<&KeySource>,
    private_key: Option<&KeySource>,
    hostname: &str,
    listen: &str,
) -> Result<TlsAcceptor, String> {
    let (chain, key) = match (certificate, private_key) {
        (Some(cert), Some(key)) => {
            let pem = cert
                .load()
                .map_err(|e| format!("listener {listen}: tls_certificate: {e}"))?;
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| format!("listener {listen}: tls_certificate: {e}"))?;
            if chain.is_empty() {
                return Err(format!("listener {listen}: tls_certificate holds no PEM certificate"));
            }
            let pem = key
                .load()
                .map_err(|e| format!("listener {listen}: tls_private_key: {e}"))?;
            let key = PrivateKeyDer::from_pem_slice(pem.as_bytes())
                .map_err(|e| format!("listener {listen}: tls_private_key: {e}"))?;
            (chain, key)
        }
        (None, None) => self_signed(hostname)?,
        _ => {
            return Err(format!(
                "listener {listen}: set both tls_certificate and tls_private_key, or neither for a self-signed certificate"
            ))
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| {
            format!("listener {listen}: the certificate and key do not go together: {e}")
        })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn self_signed(
    hostname: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let key = rcgen::KeyPair::generate().map_err(|e| format!("self-signed key: {e}"))?;
    let cert = rcgen::CertificateParams::new(vec![hostname.to_owned()])
        .and_then(|params| params.self_signed(&key))
        .map_err(|e| format!("self-signed certificate for {hostname:?}: {e}"))?;
    Ok((
        vec![CertificateDer::from(cert.der().to_vec())],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    ))
}
