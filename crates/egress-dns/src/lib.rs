//! DNS for egress, with KumoMTA's resolver surface.
//!
//! [`ResolverConfig`] is what `kumo.dns.configure_resolver { … }` declares: name
//! servers with KumoMTA's `options` (among them `validate` and
//! `trust_anchor_file`, DNSSEC validation on hickory), or the `Test` form's fixed
//! zones. [`Resolver`] looks up A/AAAA, MX, TXT, TLSA and PTR records and says of
//! every answer whether DNSSEC vouches for it ([`Security`]) — what DANE (RFC 7672)
//! decides on — and until when it holds. Errors name the name, the record and what
//! went wrong ([`DnsError`]).
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use egress_dns::{Resolver, ResolverConfig, Security};
//! let config: ResolverConfig = serde_json::from_str(r#"{ "Test": { "zones": [
//!     { "zone": "$ORIGIN dane.test.\n_25._tcp.mx 300 IN TLSA 3 1 1 00ff\n", "secure": true }
//! ] } }"#).unwrap();
//! let resolver = Resolver::new(Some(&config)).unwrap();
//! let tlsa = resolver.tlsa("_25._tcp.mx.dane.test").await.unwrap();
//! assert_eq!(tlsa.security, Security::Secure);
//! assert_eq!(tlsa.records[0].to_string(), "3 1 1 00ff");
//! # });
//! ```
//!
//! Invariant: no policy and no SMTP here — only names in, records out.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod answer;
mod config;
mod resolver;
mod test_zones;

pub use answer::{Answer, DnsError, DnsErrorKind, Security, Tlsa};
pub use config::{
    NameServer, NameServerProtocol, NameServersConfig, ResolverConfig, ResolverOptions,
    ServerOrdering, TestConfig, TestZone, UseHostsFile,
};
pub use resolver::{Resolver, ResolverBuildError};

/// `name` as an absolute name (with the final dot): envelope domains are never
/// completed with search domains.
///
/// ```
/// assert_eq!(egress_dns::fqdn("example.com"), "example.com.");
/// assert_eq!(egress_dns::fqdn("example.com."), "example.com.");
/// ```
pub fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_owned()
    } else {
        format!("{name}.")
    }
}
