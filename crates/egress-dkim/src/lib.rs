//! DKIM signing (RFC 6376, RFC 8463) with KumoMTA's signer parameters:
//! `kumo.dkim.rsa_sha256_signer { … }` and `kumo.dkim.ed25519_signer { … }`
//! become a [`Signer`] (keys loaded once and kept per `ttl` by [`Signers`]) whose
//! [`sign`](Signer::sign) returns the `DKIM-Signature:` field to prepend.
//!
//! Written here on ring rather than taken from mail-auth (the Stalwart authors'
//! DKIM library), having tried it: its releases that sign with ring either hash the
//! body with the *header* canonicalization (0.7; `relaxed/simple` then fails
//! verification) or bring a second hickory resolver and the platform verifier into a
//! tree built on hickory 0.25 (0.11–0.13), and its pure-Rust backend signs RSA
//! with the `rsa` crate, which is not constant-time (RUSTSEC-2023-0071) and about
//! half ring's speed. What is written here is the canonicalization (`canon.rs`,
//! pure) and the field's assembly; the cryptography is ring's, and tests check
//! every mode with an independent verifier (dkimpy).
//!
//! ```
//! use egress_dkim::{KeyKind, Signer, SignerParams};
//! # let pem = egress_dkim::test_key_pem();
//! let params: SignerParams = serde_json::from_value(serde_json::json!({
//!     "domain": "example.com", "selector": "s1", "headers": ["From", "Subject"],
//!     "key": { "key_data": pem },
//! })).unwrap();
//! let signer = Signer::new(KeyKind::Rsa, params).unwrap();
//! let field = signer.sign(b"From: a@example.com\r\nSubject: hi\r\n\r\nhello\r\n").unwrap();
//! assert!(field.starts_with("DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.com; s=s1;"));
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod canon;
mod key;

/// A header field's name.
pub use canon::name_of as field_name;
/// A message's header fields (each whole: name, value, folding, CR LF) and its
/// body, as DKIM reads them.
pub use canon::split as message_fields;
pub use canon::Canon;
pub use key::{KeyKind, PrivateKey};

use base64::Engine;
use egress_source::KeySource;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The hash of an `atpsh=` tag (KumoMTA's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HashAlgo {
    /// `sha1`.
    Sha1,
    /// `sha256`.
    Sha256,
}

/// `kumo.dkim.rsa_sha256_signer { … }` / `ed25519_signer { … }`: KumoMTA's keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignerParams {
    /// `d=`: the signing domain.
    pub domain: String,
    /// `s=`: the selector.
    pub selector: String,
    /// `h=`: the headers signed (From must be one).
    pub headers: Vec<String>,
    /// `atps=` (RFC 6541).
    #[serde(default)]
    pub atps: Option<String>,
    /// `atpsh=`.
    #[serde(default)]
    pub atpsh: Option<HashAlgo>,
    /// `i=`: the agent or user identifier.
    #[serde(default)]
    pub agent_user_identifier: Option<String>,
    /// `x=`: the signature expires this many seconds after it is made.
    #[serde(default)]
    pub expiration: Option<u64>,
    /// `l=`: the body length is signed.
    #[serde(default)]
    pub body_length: bool,
    /// `r=y`: reports are asked for.
    #[serde(default)]
    pub reporting: bool,
    /// Header canonicalization; default `Relaxed`.
    #[serde(default)]
    pub header_canonicalization: Canon,
    /// Body canonicalization; default `Relaxed`.
    #[serde(default)]
    pub body_canonicalization: Canon,
    /// The private key.
    pub key: KeySource,
    /// Each listed header is signed once more than the message has it, so
    /// another cannot be added without breaking the signature.
    #[serde(default)]
    pub over_sign: bool,
    /// How long the signer (and its key) is kept; default 300 s. A number of
    /// seconds or a duration (`"5 mins"`).
    #[serde(default = "five_minutes", deserialize_with = "seconds_or_duration")]
    #[serde(serialize_with = "egress_source::serde_duration::serialize")]
    pub ttl: Duration,
}

fn five_minutes() -> Duration {
    Duration::from_secs(300)
}

fn seconds_or_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Seconds(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Seconds(s) => Ok(Duration::from_secs(s)),
        Raw::Text(t) => egress_source::parse_duration(&t).map_err(serde::de::Error::custom),
    }
}

/// Why a signer could not be made, or a message not signed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("DKIM signer for {domain} (selector {selector}): {problem}")]
pub struct DkimError {
    /// `d=`.
    pub domain: String,
    /// `s=`.
    pub selector: String,
    /// What went wrong and what to do.
    pub problem: String,
}

/// A signer: its parameters and its key.
pub struct Signer {
    params: SignerParams,
    key: PrivateKey,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("domain", &self.params.domain)
            .field("selector", &self.params.selector)
            .field("algorithm", &self.key.algorithm())
            .finish()
    }
}

impl Signer {
    /// Checks `params` and loads the key.
    pub fn new(kind: KeyKind, params: SignerParams) -> Result<Signer, DkimError> {
        let fail = |problem: String| DkimError {
            domain: params.domain.clone(),
            selector: params.selector.clone(),
            problem,
        };
        if !params
            .headers
            .iter()
            .any(|h| h.eq_ignore_ascii_case("From"))
        {
            return Err(fail(
                "headers: From must be signed (RFC 6376 §5.4); add 'From' to the list".into(),
            ));
        }
        if let Some(bad) = params.headers.iter().find(|h| {
            h.is_empty()
                || h.bytes()
                    .any(|b| b == b':' || b.is_ascii_whitespace() || !b.is_ascii_graphic())
        }) {
            return Err(fail(format!("headers: {bad:?} is not a header name")));
        }
        for (name, value) in [("domain", &params.domain), ("selector", &params.selector)] {
            if value.is_empty() || value.bytes().any(|b| b == b';' || b.is_ascii_whitespace()) {
                return Err(fail(format!("{name}: expected a name, got {value:?}")));
            }
        }
        let data = params
            .key
            .load_bytes()
            .map_err(|e| fail(format!("key: {e}")))?;
        let key = PrivateKey::parse(kind, &data).map_err(|e| fail(format!("key: {e}")))?;
        Ok(Signer { params, key })
    }

    /// The parameters.
    pub fn params(&self) -> &SignerParams {
        &self.params
    }

    /// Signs `message` (its header section, a blank line, its body; CR LF line
    /// ends, not dot-stuffed): the `DKIM-Signature:` field to prepend, ending
    /// in CR LF.
    pub fn sign(&self, message: &[u8]) -> Result<String, DkimError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        self.sign_at(message, now)
    }

    fn sign_at(&self, message: &[u8], now: u64) -> Result<String, DkimError> {
        let p = &self.params;
        let (fields, body) = canon::split(message);
        let names = self.signed_names(&fields);
        // Bottom-up: each name takes the last instance not taken yet (§5.4.2).
        let mut taken = vec![false; fields.len()];
        let mut hashed = Vec::new();
        for name in &names {
            let found = (0..fields.len()).rev().find(|&i| {
                !taken[i] && canon::name_of(fields[i]).eq_ignore_ascii_case(name.as_bytes())
            });
            if let Some(i) = found {
                taken[i] = true;
                hashed.extend(canon::header(p.header_canonicalization, fields[i]));
            }
        }
        let body = canon::body(p.body_canonicalization, body);
        let b64 = base64::engine::general_purpose::STANDARD;
        let bh = b64.encode(ring::digest::digest(&ring::digest::SHA256, &body));
        let mut tags = vec![
            "v=1".to_owned(),
            format!("a={}", self.key.algorithm()),
            format!(
                "c={}/{}",
                p.header_canonicalization.tag(),
                p.body_canonicalization.tag()
            ),
            format!("d={}", p.domain),
            format!("s={}", p.selector),
            format!("t={now}"),
        ];
        if let Some(x) = p.expiration {
            tags.push(format!("x={}", now + x));
        }
        if let Some(i) = &p.agent_user_identifier {
            tags.push(format!("i={i}"));
        }
        if p.body_length {
            tags.push(format!("l={}", body.len()));
        }
        if p.reporting {
            tags.push("r=y".into());
        }
        if let Some(atps) = &p.atps {
            tags.push(format!("atps={atps}"));
            let hash = match p.atpsh.unwrap_or(HashAlgo::Sha256) {
                HashAlgo::Sha1 => "sha1",
                HashAlgo::Sha256 => "sha256",
            };
            tags.push(format!("atpsh={hash}"));
        }
        tags.push(format!("h={}", names.join(":")));
        tags.push(format!("bh={bh}"));
        // Folded so no line comes near 998 octets; the signature is made over the
        // field as sent, with b= empty (§3.5).
        let mut field = String::from("DKIM-Signature: ");
        let mut line = field.len();
        for tag in tags {
            if line + tag.len() + 2 > 78 && line > 16 {
                field.push_str("\r\n\t");
                line = 1;
            }
            field.push_str(&tag);
            field.push_str("; ");
            line += tag.len() + 2;
        }
        field.push_str("\r\n\tb=");
        let mut signed_field =
            canon::header(p.header_canonicalization, format!("{field}\r\n").as_bytes());
        // The field is hashed without its final CR LF.
        signed_field.truncate(signed_field.len() - 2);
        hashed.extend(signed_field);
        let signature = self.key.sign(&hashed).map_err(|problem| DkimError {
            domain: p.domain.clone(),
            selector: p.selector.clone(),
            problem,
        })?;
        let b = b64.encode(signature);
        for (i, chunk) in b.as_bytes().chunks(72).enumerate() {
            if i > 0 {
                field.push_str("\r\n\t ");
            }
            // Base64 is ASCII.
            field.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        }
        field.push_str("\r\n");
        Ok(field)
    }

    /// `h=`: the names as configured, each `N+1` times with `over_sign` (N the
    /// times the message has it).
    fn signed_names(&self, fields: &[&[u8]]) -> Vec<String> {
        let mut names = Vec::new();
        for name in &self.params.headers {
            if !self.params.over_sign {
                names.push(name.clone());
                continue;
            }
            if names.iter().any(|n: &String| n.eq_ignore_ascii_case(name)) {
                continue;
            }
            let n = fields
                .iter()
                .filter(|f| canon::name_of(f).eq_ignore_ascii_case(name.as_bytes()))
                .count();
            names.extend(std::iter::repeat_n(name.clone(), n + 1));
        }
        names
    }
}

/// Signers kept per their `ttl` (KumoMTA's signer cache): a policy that makes the
/// same signer for every message loads its key once.
#[derive(Default)]
pub struct Signers {
    kept: Mutex<HashMap<(KeyKind, SignerParams), Kept>>,
}

/// A signer and until when it is kept.
type Kept = (Instant, Arc<Signer>);

impl Signers {
    /// The signer for `params`: kept, or made (and kept for its `ttl`).
    pub fn get(&self, kind: KeyKind, params: SignerParams) -> Result<Arc<Signer>, DkimError> {
        let key = (kind, params);
        {
            let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((until, signer)) = kept.get(&key) {
                if *until > Instant::now() {
                    return Ok(signer.clone());
                }
            }
        }
        let signer = Arc::new(Signer::new(kind, key.1.clone())?);
        let until = Instant::now() + key.1.ttl;
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        kept.retain(|_, (until, _)| *until > now);
        kept.insert(key, (until, signer.clone()));
        Ok(signer)
    }
}

/// A 2048-bit RSA key in PKCS#8 PEM, made once per process: for examples and
/// tests only (never use it to sign real mail).
#[doc(hidden)]
pub fn test_key_pem() -> String {
    static PEM: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PEM.get_or_init(|| {
        let out = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ])
            .output()
            .expect("openssl genpkey (apt-get install openssl)");
        String::from_utf8(out.stdout).expect("PEM is text")
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(extra: serde_json::Value) -> SignerParams {
        let mut v = serde_json::json!({
            "domain": "example.com", "selector": "s1",
            "headers": ["From", "To", "Subject"],
            "key": { "key_data": test_key_pem() },
        });
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        serde_json::from_value(v).unwrap()
    }

    const MESSAGE: &[u8] =
        b"From: a@example.com\r\nTo: b@example.net\r\nSubject: hi\r\n\r\nhello\r\n";

    #[test]
    fn over_sign_lists_each_name_once_more_than_present() {
        let s = Signer::new(
            KeyKind::Rsa,
            params(serde_json::json!({ "over_sign": true })),
        )
        .unwrap();
        let field = s.sign_at(MESSAGE, 1000).unwrap();
        let unfolded = field.replace("\r\n\t", "");
        assert!(
            unfolded.contains("h=From:From:To:To:Subject:Subject;"),
            "{unfolded}"
        );
    }

    #[test]
    fn tags_for_every_parameter() {
        let s = Signer::new(
            KeyKind::Rsa,
            params(serde_json::json!({
                "expiration": 3600, "agent_user_identifier": "@example.com", "body_length": true,
                "reporting": true, "atps": "example.org", "atpsh": "Sha256",
                "header_canonicalization": "Simple", "body_canonicalization": "Relaxed",
                "ttl": "5 mins"
            })),
        )
        .unwrap();
        let field = s.sign_at(MESSAGE, 1000).unwrap().replace("\r\n\t", "");
        for tag in [
            "c=simple/relaxed",
            "t=1000",
            "x=4600",
            "i=@example.com",
            "l=7",
            "r=y",
            "atps=example.org",
            "atpsh=sha256",
        ] {
            assert!(field.contains(&format!("{tag};")), "{tag}: {field}");
        }
        assert!(field.lines().all(|l| l.len() < 998));
    }

    #[test]
    fn bad_parameters_are_named() {
        let err = Signer::new(
            KeyKind::Rsa,
            params(serde_json::json!({ "headers": ["Subject"] })),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("From must be signed"), "{err}");
        let err = Signer::new(KeyKind::Ed25519, params(serde_json::json!({})))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not an Ed25519 private key") && err.contains("example.com"),
            "{err}"
        );
        let missing = serde_json::json!({ "key": "/nonexistent/key.pem" });
        let err = Signer::new(KeyKind::Rsa, params(missing))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/key.pem"), "{err}");
    }

    #[test]
    fn signers_are_kept_for_their_ttl() {
        let signers = Signers::default();
        let a = signers
            .get(KeyKind::Rsa, params(serde_json::json!({})))
            .unwrap();
        let b = signers
            .get(KeyKind::Rsa, params(serde_json::json!({})))
            .unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let c = signers
            .get(KeyKind::Rsa, params(serde_json::json!({ "ttl": 0 })))
            .unwrap();
        let d = signers
            .get(KeyKind::Rsa, params(serde_json::json!({ "ttl": 0 })))
            .unwrap();
        assert!(!Arc::ptr_eq(&c, &d));
    }
}
