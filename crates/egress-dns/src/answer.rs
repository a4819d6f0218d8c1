//! What a lookup returns: the records, whether DNSSEC vouches for them, and until
//! when they hold — or an error that names the name, the record and what went wrong.

use std::fmt;
use std::time::{Duration, Instant};

/// What DNSSEC says of an answer (RFC 4033 §5). A *bogus* answer is not an
/// answer: the lookup fails with [`DnsErrorKind::Bogus`].
///
/// RFC 4035's *indeterminate* (no trust anchor covers the name, or the resolver
/// does not validate) is reported as [`Insecure`](Security::Insecure): for a
/// sender both mean "nothing vouches for this", and only *bogus* must stop it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// A chain of signatures from a trust anchor vouches for the answer.
    Secure,
    /// The answer is not signed, or nothing is known to sign it.
    Insecure,
}

/// Records of one lookup.
#[derive(Debug, Clone)]
pub struct Answer<T> {
    /// The records, in the server's order.
    pub records: Vec<T>,
    /// What DNSSEC says of the records at the name asked (a CNAME there counts:
    /// its target may live in another zone, RFC 7672 §2.2.2).
    pub security: Security,
    /// When the shortest-lived record expires.
    pub valid_until: Instant,
}

/// A TLSA record (RFC 6698), as numbers: deciding what is usable is the sender's
/// business (RFC 7672 §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlsa {
    /// 0 PKIX-TA, 1 PKIX-EE, 2 DANE-TA, 3 DANE-EE.
    pub usage: u8,
    /// 0 the whole certificate, 1 its SubjectPublicKeyInfo.
    pub selector: u8,
    /// 0 exact, 1 SHA-256, 2 SHA-512.
    pub matching: u8,
    /// What is matched.
    pub data: Vec<u8>,
}

impl fmt::Display for Tlsa {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{} {} {} ", self.usage, self.selector, self.matching)?;
        for b in &self.data {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Why a lookup gave no records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsErrorKind {
    /// The name has no records of the type (`nxdomain`: the name does not exist).
    NoRecords {
        /// NXDOMAIN rather than NODATA.
        nxdomain: bool,
    },
    /// The answer's DNSSEC signatures do not hold: never act on it.
    Bogus,
    /// The server answered SERVFAIL (or another failure code).
    ServerFailure,
    /// No answer in time.
    Timeout,
    /// Anything else (no server reachable, a malformed answer, …).
    Failed,
}

/// A lookup that gave no records, in words.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct DnsError {
    /// What kind of failure.
    pub kind: DnsErrorKind,
    message: String,
}

impl DnsError {
    /// An error about `name`'s `what` ("MX record", "TLSA record", …).
    pub fn new(name: &str, what: &str, kind: DnsErrorKind, detail: &str) -> DnsError {
        let message = match &kind {
            DnsErrorKind::NoRecords { nxdomain: true } => {
                format!("{name}: no such domain (no {what})")
            }
            DnsErrorKind::NoRecords { nxdomain: false } => format!("{name}: no {what}"),
            DnsErrorKind::Bogus => format!(
                "{name}: the {what} failed DNSSEC validation (bogus{}{detail})",
                if detail.is_empty() { "" } else { ": " }
            ),
            DnsErrorKind::ServerFailure => {
                format!("{name}: the DNS server failed to answer for its {what} ({detail})")
            }
            DnsErrorKind::Timeout => format!("{name}: DNS lookup for its {what} timed out"),
            DnsErrorKind::Failed if detail.is_empty() => {
                format!("{name}: DNS lookup for its {what} failed")
            }
            DnsErrorKind::Failed => format!("{name}: DNS lookup for its {what} failed: {detail}"),
        };
        DnsError { kind, message }
    }

    /// Whether the name securely or plainly has no such records (as opposed to a
    /// failure to find out).
    pub fn is_no_records(&self) -> bool {
        matches!(self.kind, DnsErrorKind::NoRecords { .. })
    }
}

/// When an answer with `ttl` seconds expires.
pub(crate) fn expiry(ttl: u32) -> Instant {
    Instant::now() + Duration::from_secs(u64::from(ttl))
}
