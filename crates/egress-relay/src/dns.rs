//! DNS: MX routing for destinations and name resolution for proxies, on hickory,
//! honouring `kumo.dns.configure_resolver`.

use egress_connect::{Resolve, ResolveFuture};
use egress_lua::{describe_resolve_error, fqdn, ResolverConfig};
use egress_source::MxListEntry;
use hickory_resolver::error::ResolveErrorKind;
use hickory_resolver::TokioAsyncResolver;
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
    resolver: TokioAsyncResolver,
}

impl Dns {
    /// From the policy's `kumo.dns.configure_resolver`, or the system's configuration.
    pub fn new(config: Option<&ResolverConfig>) -> io::Result<Dns> {
        Ok(Dns {
            resolver: egress_lua::resolver(config)?,
        })
    }

    /// Addresses of `host` (A and AAAA), in the resolver's order.
    pub async fn addresses(&self, host: &str) -> io::Result<Vec<IpAddr>> {
        self.addresses_until(host, &mut None).await
    }

    /// [`addresses`](Self::addresses), lowering `until` to when the answer expires.
    async fn addresses_until(
        &self,
        host: &str,
        until: &mut Option<Instant>,
    ) -> io::Result<Vec<IpAddr>> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        self.lookup_ip(host, until)
            .await
            .map_err(|e| io::Error::other(describe_resolve_error(host, "address record", &e)))
    }

    /// A and AAAA records of `host`, with the resolver's own error.
    async fn lookup_ip(
        &self,
        host: &str,
        until: &mut Option<Instant>,
    ) -> Result<Vec<IpAddr>, hickory_resolver::error::ResolveError> {
        let found = self.resolver.lookup_ip(fqdn(host)).await?;
        expires(until, found.valid_until());
        Ok(found.iter().collect())
    }

    /// The TXT records of `name` (each record's strings joined); none when it has
    /// none.
    pub async fn txt(&self, name: &str) -> io::Result<Vec<String>> {
        match self.resolver.txt_lookup(fqdn(name)).await {
            Ok(found) => Ok(found
                .iter()
                .map(|r| {
                    r.txt_data()
                        .iter()
                        .map(|d| String::from_utf8_lossy(d))
                        .collect::<String>()
                })
                .collect()),
            Err(e) if matches!(e.kind(), ResolveErrorKind::NoRecordsFound { .. }) => Ok(Vec::new()),
            Err(e) => Err(io::Error::other(describe_resolve_error(
                name,
                "TXT record",
                &e,
            ))),
        }
    }

    /// Where mail for `domain` goes: the mx_list when given (in order), else its MX
    /// records by preference, else (no MX at all) the domain's own A/AAAA (RFC 5321 §5.1).
    pub async fn destinations(
        &self,
        domain: &str,
        mx_list: &[MxListEntry],
    ) -> io::Result<Destinations> {
        let mut out = Vec::new();
        let mut last_error = None;
        let mut until = None;
        if !mx_list.is_empty() {
            for entry in mx_list {
                let ips = match entry.ip() {
                    Some(ip) => vec![ip],
                    None => match self.addresses_until(entry.name(), &mut until).await {
                        Ok(ips) => ips,
                        Err(e) => {
                            last_error = Some(e);
                            continue;
                        }
                    },
                };
                out.extend(ips.into_iter().map(|ip| Destination {
                    host: entry.name().to_owned(),
                    ip,
                    entry: Some(entry.clone()),
                }));
            }
        } else {
            match self.resolver.mx_lookup(fqdn(domain)).await {
                Ok(mx) => {
                    expires(&mut until, mx.valid_until());
                    let mut records: Vec<(u16, String)> = mx
                        .iter()
                        .map(|r| {
                            (
                                r.preference(),
                                r.exchange().to_utf8().trim_end_matches('.').to_owned(),
                            )
                        })
                        .collect();
                    records.sort();
                    for (_, host) in records {
                        match self.addresses_until(&host, &mut until).await {
                            Ok(ips) => out.extend(ips.into_iter().map(|ip| Destination {
                                host: host.clone(),
                                ip,
                                entry: None,
                            })),
                            Err(e) => last_error = Some(e),
                        }
                    }
                }
                Err(e) if matches!(e.kind(), ResolveErrorKind::NoRecordsFound { .. }) => {
                    let ips = match domain.parse::<IpAddr>() {
                        Ok(ip) => vec![ip],
                        Err(_) => self
                            .lookup_ip(domain, &mut until)
                            .await
                            .map_err(|e| match e.kind() {
                                ResolveErrorKind::NoRecordsFound { .. } => io::Error::other(
                                    format!("{domain}: no MX and no address record"),
                                ),
                                _ => io::Error::other(describe_resolve_error(
                                    domain,
                                    "address record",
                                    &e,
                                )),
                            })?,
                    };
                    out.extend(ips.into_iter().map(|ip| Destination {
                        host: domain.to_owned(),
                        ip,
                        entry: None,
                    }));
                }
                Err(e) => {
                    return Err(io::Error::other(describe_resolve_error(
                        domain,
                        "MX record",
                        &e,
                    )))
                }
            }
        }
        if out.is_empty() {
            return Err(
                last_error.unwrap_or_else(|| io::Error::other(format!("no address for {domain}")))
            );
        }
        Ok(Destinations {
            hosts: out,
            valid_until: until,
        })
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
