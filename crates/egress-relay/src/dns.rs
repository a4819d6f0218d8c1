//! DNS for routing: a domain's destination hosts (MX, an `mx_list`, or the domain
//! itself), whether DNSSEC vouches for each (DANE's precondition), names for
//! proxies, on [`egress_dns::Resolver`] — the resolver
//! `kumo.dns.configure_resolver` declared.

use egress_connect::{Resolve, ResolveFuture};
use egress_dns::{Answer, DnsError, DnsErrorKind, Resolver, ResolverConfig, Security, Tlsa};
use egress_source::MxListEntry;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

/// A host to try, in order: its name (for logs and EHLO decisions), its address,
/// and the mx_list entry it came from (which may carry a port).
#[derive(Debug, Clone)]
pub struct Destination {
    /// MX host name, or the domain for an implicit MX, or the IP literal.
    pub host: String,
    /// Where to connect (the port is decided later, by precedence).
    pub ip: IpAddr,
    /// The mx_list entry, when routing came from one.
    pub entry: Option<MxListEntry>,
    /// DNSSEC vouches for choosing this host (a secure MX answer, or an
    /// `mx_list` declared secure) and for its address: DANE may apply
    /// (RFC 7672 §2.2). Never for an IP literal.
    pub secure_chain: bool,
}

/// Where mail for a domain goes, and until when the DNS answers behind that hold.
#[derive(Debug, Clone)]
pub struct Destinations {
    /// The hosts, in the order they are tried.
    pub hosts: Vec<Destination>,
    /// When the first DNS answer used expires; none when no lookup was made (an
    /// mx_list of addresses).
    pub valid_until: Option<Instant>,
}

/// The resolver egressd uses for everything.
#[derive(Clone)]
pub struct Dns {
    resolver: Resolver,
}

impl Dns {
    /// From the policy's `kumo.dns.configure_resolver`, or the system's configuration.
    pub fn new(config: Option<&ResolverConfig>) -> io::Result<Dns> {
        Ok(Dns {
            resolver: Resolver::new(config).map_err(io::Error::other)?,
        })
    }

    /// Addresses of `host` (A and AAAA), in the resolver's order.
    pub async fn addresses(&self, host: &str) -> io::Result<Vec<IpAddr>> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        Ok(self
            .resolver
            .ip(host)
            .await
            .map_err(io::Error::other)?
            .records)
    }

    /// The TXT records of `name` (each record's strings joined) and until when DNS
    /// says they hold (their TTL); none, and `None`, when it has none.
    pub async fn txt(&self, name: &str) -> io::Result<(Vec<String>, Option<Instant>)> {
        match self.resolver.txt(name).await {
            Ok(found) => Ok((found.records, Some(found.valid_until))),
            Err(e) if e.is_no_records() => Ok((Vec::new(), None)),
            Err(e) => Err(io::Error::other(e)),
        }
    }

    /// The TLSA records of `host` for SMTP (`_25._tcp.HOST`; RFC 7672 §2.2 uses
    /// port 25 whatever port is dialled).
    pub async fn tlsa(&self, host: &str) -> Result<Answer<Tlsa>, DnsError> {
        self.resolver
            .tlsa(&format!("_25._tcp.{}", host.trim_end_matches('.')))
            .await
    }

    /// Where mail for `domain` goes: the mx_list when given (in order), else its MX
    /// records by preference, else (no MX at all) the domain's own A/AAAA (RFC 5321
    /// §5.1). `mx_list_is_secure`: the mx_list counts as a DNSSEC-secure choice.
    pub async fn destinations(
        &self,
        domain: &str,
        mx_list: &[MxListEntry],
        mx_list_is_secure: bool,
    ) -> io::Result<Destinations> {
        let mut out = Vec::new();
        let mut last_error = None;
        let mut until = None;
        if !mx_list.is_empty() {
            for entry in mx_list {
                if let Some(ip) = entry.ip() {
                    out.push(Destination {
                        host: entry.name().to_owned(),
                        ip,
                        entry: Some(entry.clone()),
                        secure_chain: false,
                    });
                    continue;
                }
                match self.host(entry.name(), mx_list_is_secure, &mut until).await {
                    Ok(found) => out.extend(found.into_iter().map(|mut d| {
                        d.entry = Some(entry.clone());
                        d
                    })),
                    Err(e) => last_error = Some(e),
                }
            }
        } else if let Ok(ip) = domain.parse::<IpAddr>() {
            out.push(Destination {
                host: domain.to_owned(),
                ip,
                entry: None,
                secure_chain: false,
            });
        } else {
            match self.resolver.mx(domain).await {
                Ok(mx) => {
                    expires(&mut until, mx.valid_until);
                    let mx_secure = mx.security == Security::Secure;
                    let mut records = mx.records;
                    records.sort();
                    for (_, host) in records {
                        match self.host(&host, mx_secure, &mut until).await {
                            Ok(found) => out.extend(found),
                            Err(e) => last_error = Some(e),
                        }
                    }
                }
                Err(e) if e.is_no_records() => {
                    // No MX: the domain is its own host (RFC 5321 §5.1), and its
                    // name is where TLSA records would be (RFC 7672 §2.2.1).
                    out = self
                        .host(domain, true, &mut until)
                        .await
                        .map_err(|e| match e.kind {
                            DnsErrorKind::NoRecords { .. } => {
                                io::Error::other(format!("{domain}: no MX and no address record"))
                            }
                            _ => io::Error::other(e),
                        })?;
                }
                Err(e) => return Err(io::Error::other(e)),
            }
        }
        if out.is_empty() {
            return Err(last_error
                .map(io::Error::other)
                .unwrap_or_else(|| io::Error::other(format!("no address for {domain}"))));
        }
        Ok(Destinations {
            hosts: out,
            valid_until: until,
        })
    }

    /// `host`'s addresses as destinations; `chosen_securely`: the choice of the
    /// host itself is DNSSEC-secure.
    async fn host(
        &self,
        host: &str,
        chosen_securely: bool,
        until: &mut Option<Instant>,
    ) -> Result<Vec<Destination>, DnsError> {
        let found = self.resolver.ip(host).await?;
        expires(until, found.valid_until);
        let secure_chain = chosen_securely && found.security == Security::Secure;
        Ok(found
            .records
            .into_iter()
            .map(|ip| Destination {
                host: host.trim_end_matches('.').to_owned(),
                ip,
                entry: None,
                secure_chain,
            })
            .collect())
    }
}

/// Lowers `until` to `at`.
fn expires(until: &mut Option<Instant>, at: Instant) {
    *until = Some(until.map_or(at, |u| u.min(at)));
}

impl Resolve for Dns {
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> ResolveFuture<'a> {
        Box::pin(async move {
            Ok(self
                .addresses(host)
                .await?
                .into_iter()
                .map(|ip| SocketAddr::new(ip, port))
                .collect())
        })
    }
}
