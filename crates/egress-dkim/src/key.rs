//! Private keys from their KeySource's bytes: PEM (PKCS#1 `RSA PRIVATE KEY`,
//! PKCS#8 `PRIVATE KEY`) or DER, as KumoMTA accepts them.

use base64::Engine;
use ring::signature::{Ed25519KeyPair, RsaKeyPair};

/// A key ready to sign.
pub enum PrivateKey {
    /// `rsa-sha256`.
    Rsa(RsaKeyPair),
    /// `ed25519-sha256` (RFC 8463).
    Ed25519(Ed25519KeyPair),
}

/// What kind of key a signer wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// RSA (`kumo.dkim.rsa_sha256_signer`).
    Rsa,
    /// Ed25519 (`kumo.dkim.ed25519_signer`).
    Ed25519,
}

/// The DER inside PEM text, with its label; DER as it is.
fn der_of(data: &[u8]) -> Result<(Option<String>, Vec<u8>), String> {
    let Ok(text) = std::str::from_utf8(data) else {
        return Ok((None, data.to_vec()));
    };
    let Some(begin) = text.find("-----BEGIN ") else {
        return Ok((None, data.to_vec()));
    };
    let after = &text[begin + 11..];
    let label_end = after
        .find("-----")
        .ok_or("PEM: a BEGIN line without its closing dashes")?;
    let label = after[..label_end].to_owned();
    let body = &after[label_end + 5..];
    let end = body
        .find("-----END ")
        .ok_or_else(|| format!("PEM: no END line for {label}"))?;
    let b64: String = body[..end].chars().filter(|c| !c.is_whitespace()).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("PEM {label}: {e}"))?;
    Ok((Some(label), der))
}

impl PrivateKey {
    /// Parses `data` as a key of `kind`.
    pub fn parse(kind: KeyKind, data: &[u8]) -> Result<PrivateKey, String> {
        let (label, der) = der_of(data)?;
        match kind {
            KeyKind::Rsa => {
                let pkcs1 = label.as_deref() == Some("RSA PRIVATE KEY");
                let key = if pkcs1 {
                    RsaKeyPair::from_der(&der)
                } else {
                    RsaKeyPair::from_pkcs8(&der).or_else(|_| RsaKeyPair::from_der(&der))
                };
                key.map(PrivateKey::Rsa).map_err(|e| {
                    format!("not an RSA private key ({e}); expected PEM (RSA PRIVATE KEY or PRIVATE KEY) or DER, at least 1024 bits")
                })
            }
            KeyKind::Ed25519 => Ed25519KeyPair::from_pkcs8(&der)
                .or_else(|_| Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der))
                .map(PrivateKey::Ed25519)
                .map_err(|e| {
                    format!("not an Ed25519 private key ({e}); expected PKCS#8, PEM or DER (openssl genpkey -algorithm ed25519)")
                }),
        }
    }

    /// The `a=` tag.
    pub fn algorithm(&self) -> &'static str {
        match self {
            PrivateKey::Rsa(_) => "rsa-sha256",
            PrivateKey::Ed25519(_) => "ed25519-sha256",
        }
    }

    /// Signs the canonicalized header data: RSA over the data itself (PKCS#1
    /// v1.5, SHA-256), Ed25519 over its SHA-256 digest (RFC 8463 §3).
    pub fn sign(&self, data: &[u8]) -> Result<Vec<u8>, String> {
        match self {
            PrivateKey::Rsa(key) => {
                let mut sig = vec![0; key.public().modulus_len()];
                key.sign(
                    &ring::signature::RSA_PKCS1_SHA256,
                    &ring::rand::SystemRandom::new(),
                    data,
                    &mut sig,
                )
                .map_err(|e| format!("RSA signing failed: {e}"))?;
                Ok(sig)
            }
            PrivateKey::Ed25519(key) => {
                let digest = ring::digest::digest(&ring::digest::SHA256, data);
                Ok(key.sign(digest.as_ref()).as_ref().to_vec())
            }
        }
    }
}
