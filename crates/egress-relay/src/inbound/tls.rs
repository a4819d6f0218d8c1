//! The listener's side of STARTTLS: its certificate (the policy's PEM files, or a
//! self-signed one made at start for the host name, as KumoMTA does, so STARTTLS
//! is always offered).

use crate::outbound::tls::{load_chain, provider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// The acceptor for a listener (SMTP or HTTP, `declared_by` names which in
/// messages): from `tls_certificate`/`tls_private_key`, or a self-signed
/// certificate for `hostname`.
pub fn acceptor(
    certificate: Option<&str>,
    private_key: Option<&str>,
    hostname: &str,
    declared_by: &str,
) -> Result<TlsAcceptor, String> {
    let (chain, key) = match (certificate, private_key) {
        (Some(cert), Some(key_path)) => {
            let chain = load_chain(cert)?;
            let key = PrivateKeyDer::from_pem_file(key_path)
                .map_err(|e| format!("tls_private_key {key_path:?}: {e}"))?;
            (chain, key)
        }
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
        .map_err(|e| format!("the listener's certificate and key do not go together: {e}"))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
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
