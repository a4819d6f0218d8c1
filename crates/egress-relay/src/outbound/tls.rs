//! TLS for destination sessions: one rustls client configuration per kind of
//! check (verified against the system trust store, or not checked at all for the
//! `*Insecure` modes) and per client certificate, built once and shared.
//!
//! The trust store is the system's, read by rustls-native-certs, which honours
//! `SSL_CERT_FILE` and `SSL_CERT_DIR`: an operator's own CA works, and tests use
//! one they make.

use super::any_certificate::AcceptAnyCertificate;
use super::dane::verify::DaneVerifier;
use egress_source::EgressPathConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use tokio_rustls::TlsConnector;

/// The provider every TLS configuration here uses (see egress-tls).
pub use egress_tls::provider;

/// What a client configuration depends on: whether certificates are verified,
/// the client certificate and key paths, if any, and `rustls_cipher_suites`.
type ConfigKey = (bool, Option<(String, String)>, Vec<String>);

/// Connectors, by what their configuration depends on.
#[derive(Default)]
pub struct TlsClients {
    configs: Mutex<HashMap<ConfigKey, TlsConnector>>,
}

/// How a destination's certificate is checked.
#[derive(Clone)]
pub enum Check {
    /// Against the system trust store, for the MX host name.
    TrustStore,
    /// Not at all (the `*Insecure` modes, and DANE's "records, none usable").
    Nothing,
    /// Against the host's TLSA records (DANE); one verifier per connection, so
    /// the record that matched can be logged.
    Dane(Arc<DaneVerifier>),
}

impl TlsClients {
    /// The connector for `path`'s client certificate and cipher suites, checking
    /// certificates as `check` says.
    pub fn connector(
        &self,
        path: &EgressPathConfig,
        check: &Check,
    ) -> Result<TlsConnector, String> {
        let cert = path
            .tls_certificate
            .clone()
            .zip(path.tls_private_key.clone());
        let key = (
            matches!(check, Check::TrustStore),
            cert,
            path.rustls_cipher_suites.clone(),
        );
        let cacheable = !matches!(check, Check::Dane(_));
        let mut configs = self.configs.lock().unwrap_or_else(|e| e.into_inner());
        if let (true, Some(connector)) = (cacheable, configs.get(&key)) {
            return Ok(connector.clone());
        }
        let (suites, versions) = with_suites(&path.rustls_cipher_suites)?;
        let builder = ClientConfig::builder_with_provider(suites)
            .with_protocol_versions(&versions)
            .map_err(|e| format!("TLS setup: {e}"))?;
        let builder = match check {
            Check::TrustStore => builder.with_root_certificates(native_roots()),
            Check::Nothing => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider()))),
            Check::Dane(verifier) => builder
                .dangerous()
                .with_custom_certificate_verifier(verifier.clone()),
        };
        let config = match &key.1 {
            Some((cert, private)) => {
                let chain = load_chain(cert)?;
                let private = PrivateKeyDer::from_pem_file(private)
                    .map_err(|e| format!("tls_private_key {private:?}: {e}"))?;
                builder
                    .with_client_auth_cert(chain, private)
                    .map_err(|e| format!("tls_certificate {cert:?} with its key: {e}"))?
            }
            None => builder.with_no_client_auth(),
        };
        let connector = TlsConnector::from(Arc::new(config));
        if cacheable {
            configs.insert(key, connector.clone());
        }
        Ok(connector)
    }
}

/// The provider offering only `names` (all of ring's when empty), and the TLS
/// versions those suites serve — a list of TLS 1.3 suites alone means TLS 1.3.
fn with_suites(
    names: &[String],
) -> Result<
    (
        Arc<CryptoProvider>,
        Vec<&'static rustls::SupportedProtocolVersion>,
    ),
    String,
> {
    let mut provider = rustls::crypto::ring::default_provider();
    if !names.is_empty() {
        provider
            .cipher_suites
            .retain(|s| names.iter().any(|n| *n == format!("{:?}", s.suite())));
        if provider.cipher_suites.is_empty() {
            return Err(format!(
                "rustls_cipher_suites: none of {} is offered by this build's TLS (ring)",
                names.join(", ")
            ));
        }
    }
    let versions = rustls::ALL_VERSIONS
        .iter()
        .copied()
        .filter(|v| provider.cipher_suites.iter().any(|s| s.version() == *v))
        .collect();
    Ok((Arc::new(provider), versions))
}

/// A connector that verifies certificates against the system trust store, with
/// no client certificate (MTA-STS policy fetches).
pub fn verified_connector() -> Result<TlsConnector, String> {
    static CONNECTOR: OnceLock<Result<TlsConnector, String>> = OnceLock::new();
    CONNECTOR
        .get_or_init(|| {
            let config = ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS setup: {e}"))?
                .with_root_certificates(native_roots())
                .with_no_client_auth();
            Ok(TlsConnector::from(Arc::new(config)))
        })
        .clone()
}

/// The certificate chain in the PEM file at `path` (a client certificate).
pub fn load_chain(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    egress_tls::chain(&egress_source::KeySource::File(path.to_owned()))
}

/// The system trust store (read once).
fn native_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!("reading the system trust store: {e}");
            }
            let mut roots = RootCertStore::empty();
            let (added, ignored) = roots.add_parsable_certificates(found.certs);
            tracing::debug!(added, ignored, "trust store loaded");
            Arc::new(roots)
        })
        .clone()
}

/// The name a destination is checked against (and sent as SNI): the MX host name,
/// or its address when routing went to an address literal (no SNI then).
pub fn server_name(host: &str, ip: IpAddr) -> ServerName<'static> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<IpAddr>().is_ok() {
        return ServerName::IpAddress(ip.into());
    }
    ServerName::try_from(bare.to_owned()).unwrap_or(ServerName::IpAddress(ip.into()))
}
