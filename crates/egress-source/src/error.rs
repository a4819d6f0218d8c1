//! Validation errors. Each names the thing, the field(s), and what to do.

use std::fmt;
use std::net::IpAddr;

/// A definition that parsed but does not make sense.
///
/// The `Display` text is meant for the operator who wrote the policy: it names
/// the source or pool, the field(s) at fault, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ValidationError {
    /// `name` is empty or contains control characters.
    BadName {
        /// "egress source", "egress pool", …
        what: &'static str,
        /// The offending name.
        name: String,
    },
    /// One field of a pair is set without the other.
    MissingPartner {
        /// The source.
        source: String,
        /// The field that is set.
        present: &'static str,
        /// The field it needs.
        missing: &'static str,
    },
    /// A setting outside a source that needs a partner (`tls_certificate` and
    /// `tls_private_key` on a path config).
    MissingPair {
        /// What holds the settings (`egress path config`).
        owner: String,
        /// The field that is set.
        present: &'static str,
        /// The field it needs.
        missing: &'static str,
    },
    /// `socks5_proxy_source_address` without `socks5_proxy_server`.
    Socks5SourceWithoutServer {
        /// The source.
        source: String,
    },
    /// SOCKS5 credentials without `socks5_proxy_server`.
    CredentialsWithoutSocks5 {
        /// The source.
        source: String,
    },
    /// Both an HAProxy and a SOCKS5 route on one source.
    ConflictingProxies {
        /// The source.
        source: String,
    },
    /// A SOCKS5 credential is 256 bytes or longer (RFC 1929 allows 255).
    CredentialTooLong {
        /// The source.
        source: String,
        /// `socks5_proxy_username` or `socks5_proxy_password`.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// A port field is 0.
    ZeroPort {
        /// The source or path.
        owner: String,
        /// The field.
        field: &'static str,
    },
    /// `ehlo_domain` is not a host name or address literal.
    BadEhloDomain {
        /// The source or path config.
        owner: String,
        /// The value given.
        value: String,
    },
    /// Two addresses that must share a family do not.
    FamilyMismatch {
        /// The source.
        source: String,
        /// The first field and its value.
        first: (&'static str, IpAddr),
        /// The second field and its value.
        second: (&'static str, IpAddr),
    },
    /// A field's value is out of range or unknown.
    Invalid {
        /// The source or path config.
        owner: String,
        /// The field.
        field: &'static str,
        /// What is wrong and what would do.
        problem: String,
    },
    /// A pool lists an entry with an empty name.
    EmptyPoolEntry {
        /// The pool.
        pool: String,
    },
    /// A pool lists one source twice.
    DuplicatePoolEntry {
        /// The pool.
        pool: String,
        /// The source listed twice.
        entry: String,
    },
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        use ValidationError::*;
        match self {
            BadName { what, name } => write!(
                f,
                "{what} name {name:?} is not usable: `name` must be a non-empty string without control characters"
            ),
            MissingPartner { source, present, missing } => write!(
                f,
                "egress source '{source}': `{present}` is set but `{missing}` is not; set both, or remove `{present}`"
            ),
            MissingPair { owner, present, missing } => write!(
                f,
                "{owner}: `{present}` is set but `{missing}` is not; set both, or remove `{present}`"
            ),
            Socks5SourceWithoutServer { source } => write!(
                f,
                "egress source '{source}': `socks5_proxy_source_address` needs `socks5_proxy_server` (the proxy that owns that address); add it, or remove the source address"
            ),
            CredentialsWithoutSocks5 { source } => write!(
                f,
                "egress source '{source}': `socks5_proxy_username`/`socks5_proxy_password` are set but `socks5_proxy_server` is not; add the proxy, or remove the credentials"
            ),
            ConflictingProxies { source } => write!(
                f,
                "egress source '{source}': both an HAProxy (`ha_proxy_server`) and a SOCKS5 proxy (`socks5_proxy_server`) are set; a source leaves through one route, so keep one and make another source for the other"
            ),
            CredentialTooLong { source, field, len } => write!(
                f,
                "egress source '{source}': `{field}` is {len} bytes; SOCKS5 (RFC 1929) allows at most 255"
            ),
            ZeroPort { owner, field } => write!(
                f,
                "{owner}: `{field}` is 0; use a port number 1-65535, or leave it unset"
            ),
            BadEhloDomain { owner, value } => write!(
                f,
                "{owner}: `ehlo_domain` {value:?} is not a host name (letters, digits, '-', '.') or an address literal such as \"[10.0.0.1]\""
            ),
            FamilyMismatch { source, first, second } => write!(
                f,
                "egress source '{source}': `{}` ({}) and `{}` ({}) are of different address families; use two IPv4 or two IPv6 addresses",
                first.0, first.1, second.0, second.1
            ),
            Invalid { owner, field, problem } => write!(f, "{owner}: `{field}`: {problem}"),
            EmptyPoolEntry { pool } => write!(
                f,
                "egress pool '{pool}': an entry has an empty `name`; each entry is `{{ name = 'source-name', weight = N }}`"
            ),
            DuplicatePoolEntry { pool, entry } => write!(
                f,
                "egress pool '{pool}': source '{entry}' is listed twice; list it once and give it the combined `weight`"
            ),
        }
    }
}

impl std::error::Error for ValidationError {}

/// Checks a `name` field.
pub(crate) fn check_name(what: &'static str, name: &str) -> Result<(), ValidationError> {
    if name.is_empty() || name.chars().any(char::is_control) {
        return Err(ValidationError::BadName {
            what,
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// Checks an `ehlo_domain`: a host name or an address literal (`[10.0.0.1]`,
/// `[IPv6:::1]`). Anything else could smuggle spaces or CR LF into the EHLO line.
pub(crate) fn check_ehlo_domain(owner: &str, value: &str) -> Result<(), ValidationError> {
    let literal = value
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .map(|inner| inner.strip_prefix("IPv6:").unwrap_or(inner));
    let ok = match literal {
        Some(ip) => ip.parse::<IpAddr>().is_ok(),
        None => crate::fields::is_host_name(value),
    };
    if ok {
        Ok(())
    } else {
        Err(ValidationError::BadEhloDomain {
            owner: owner.to_owned(),
            value: value.to_owned(),
        })
    }
}
