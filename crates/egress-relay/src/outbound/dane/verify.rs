//! Checking a destination's certificate against its TLSA records (RFC 7672 §3):
//! DANE-EE(3) pins the end-entity certificate or key — no name, expiry or chain
//! check, as §3.1.1 says; DANE-TA(2) names a trust anchor in the presented chain,
//! from which the chain is validated and the MX host name checked (§3.1.2).
//! Pure matching is tested without I/O below.

use crate::outbound::any_certificate::AcceptAnyCertificate;
use egress_dns::Tlsa;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::sync::{Arc, OnceLock};

/// Usages a sender may act on (RFC 7672 §3.1): PKIX-TA(0) and PKIX-EE(1) are not.
pub const DANE_TA: u8 = 2;
/// See [`DANE_TA`].
pub const DANE_EE: u8 = 3;

/// A record a sender can use: DANE-TA or DANE-EE, a known selector (0 full
/// certificate, 1 SubjectPublicKeyInfo) and matching type (0 exact, 1 SHA-256,
/// 2 SHA-512), with data of the length the matching type implies.
pub fn usable(r: &Tlsa) -> bool {
    let length_ok = match r.matching {
        0 => !r.data.is_empty(),
        1 => r.data.len() == 32,
        2 => r.data.len() == 64,
        _ => false,
    };
    matches!(r.usage, DANE_TA | DANE_EE) && r.selector <= 1 && length_ok
}

/// Whether `record` matches `cert` (DER) by its selector and matching type.
pub fn matches(record: &Tlsa, cert: &CertificateDer<'_>) -> bool {
    let selected: Vec<u8> = match record.selector {
        0 => cert.as_ref().to_vec(),
        1 => match webpki::EndEntityCert::try_from(cert) {
            Ok(parsed) => parsed.subject_public_key_info().as_ref().to_vec(),
            Err(_) => return false,
        },
        _ => return false,
    };
    let digest = match record.matching {
        0 => return selected == record.data,
        1 => ring::digest::digest(&ring::digest::SHA256, &selected),
        2 => ring::digest::digest(&ring::digest::SHA512, &selected),
        _ => return false,
    };
    digest.as_ref() == record.data.as_slice()
}

/// A rustls verifier for one connection: passes a certificate that one of the
/// usable `records` authenticates, and remembers which record did (for the log).
#[derive(Debug)]
pub struct DaneVerifier {
    records: Arc<[Tlsa]>,
    provider: Arc<CryptoProvider>,
    signatures: AcceptAnyCertificate,
    matched: OnceLock<Tlsa>,
}

impl DaneVerifier {
    /// For `records` (only usable ones are consulted).
    pub fn new(records: Arc<[Tlsa]>, provider: Arc<CryptoProvider>) -> DaneVerifier {
        DaneVerifier {
            records,
            signatures: AcceptAnyCertificate(provider.clone()),
            provider,
            matched: OnceLock::new(),
        }
    }

    /// The record that authenticated the peer, once the handshake passed.
    pub fn matched(&self) -> Option<&Tlsa> {
        self.matched.get()
    }

    /// DANE-TA: `anchor` (a certificate of the presented chain) as the only root,
    /// the chain validated to it and the MX name checked.
    fn through_anchor(
        &self,
        anchor: &CertificateDer<'_>,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let mut roots = RootCertStore::empty();
        roots.add(anchor.clone().into_owned())?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(format!("DANE-TA: {e}")))?;
        verifier
            .verify_server_cert(end_entity, intermediates, server_name, &[], now)
            .map(|_| ())
    }
}

impl ServerCertVerifier for DaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut last_ta_error = None;
        for record in self.records.iter().filter(|r| usable(r)) {
            let passed = match record.usage {
                DANE_EE => matches(record, end_entity),
                _ => {
                    let anchor = intermediates.iter().find(|c| matches(record, c));
                    match anchor.map(|a| {
                        self.through_anchor(a, end_entity, intermediates, server_name, now)
                    }) {
                        Some(Ok(())) => true,
                        Some(Err(e)) => {
                            last_ta_error = Some(e);
                            false
                        }
                        None => false,
                    }
                }
            };
            if passed {
                let _ = self.matched.set(record.clone());
                return Ok(ServerCertVerified::assertion());
            }
        }
        let detail = last_ta_error
            .map(|e| format!("; the DANE-TA chain did not validate: {e}"))
            .unwrap_or_default();
        Err(rustls::Error::General(format!(
            "DANE: no TLSA record matches the certificate presented ({} usable record(s)){detail}",
            self.records.iter().filter(|r| usable(r)).count()
        )))
    }

    // The handshake's own signatures are checked as for any session.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert() -> (CertificateDer<'static>, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let spki = key.public_key_der();
        let cert = rcgen::CertificateParams::new(vec!["mx.dane.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.der().clone(), spki)
    }

    fn record(usage: u8, selector: u8, matching: u8, data: Vec<u8>) -> Tlsa {
        Tlsa {
            usage,
            selector,
            matching,
            data,
        }
    }

    #[test]
    fn selectors_and_matching_types() {
        let (der, spki) = cert();
        let sha256 = |b: &[u8]| {
            ring::digest::digest(&ring::digest::SHA256, b)
                .as_ref()
                .to_vec()
        };
        let sha512 = |b: &[u8]| {
            ring::digest::digest(&ring::digest::SHA512, b)
                .as_ref()
                .to_vec()
        };
        assert!(matches(&record(3, 1, 1, sha256(&spki)), &der));
        assert!(matches(&record(3, 1, 2, sha512(&spki)), &der));
        assert!(matches(&record(3, 1, 0, spki.clone()), &der));
        assert!(matches(&record(3, 0, 1, sha256(der.as_ref())), &der));
        assert!(matches(&record(3, 0, 0, der.as_ref().to_vec()), &der));
        let (other, _) = cert();
        assert!(!matches(&record(3, 1, 1, sha256(&spki)), &other));
        assert!(
            !matches(&record(3, 0, 1, sha256(&spki)), &der),
            "selector 0 is the whole certificate"
        );
    }

    #[test]
    fn only_dane_usages_with_sound_data_are_usable() {
        assert!(usable(&record(3, 1, 1, vec![0; 32])));
        assert!(usable(&record(2, 0, 2, vec![0; 64])));
        assert!(!usable(&record(1, 1, 1, vec![0; 32])), "PKIX-EE");
        assert!(!usable(&record(0, 1, 1, vec![0; 32])), "PKIX-TA");
        assert!(!usable(&record(3, 1, 1, vec![0; 31])), "short digest");
        assert!(!usable(&record(3, 2, 1, vec![0; 32])), "private selector");
        assert!(
            !usable(&record(3, 1, 3, vec![0; 32])),
            "unknown matching type"
        );
    }
}
