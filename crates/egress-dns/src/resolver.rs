//! The resolver: hickory (the system's configuration, or the declared name servers,
//! validating DNSSEC when asked) or fixed `Test` zones, behind one set of typed
//! lookups that report each answer's [`Security`].

use crate::answer::{Answer, DnsError, DnsErrorKind, Security, Tlsa};
use crate::config::{NameServerProtocol, NameServersConfig, ResolverConfig, ServerOrdering};
use crate::test_zones::TestZones;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_proto::ProtoErrorKind;
use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig as HickoryConfig,
    ResolverOpts, ServerOrderingStrategy,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{ResolveError, ResolveErrorKind, TokioResolver};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// How egress resolves names. Cheap to clone (shared cache).
#[derive(Clone)]
pub struct Resolver {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Hickory(Box<TokioResolver>, Anchors),
    Test(Arc<TestZones>),
}

/// The zones whose trust anchors a validating resolver holds: the names DNSSEC
/// can vouch for, or fail, are those at or under one of them. `None`: the
/// built-in root anchors, which cover every name.
#[derive(Clone, Default)]
struct Anchors(Option<Arc<[Name]>>);

impl Anchors {
    /// Whether a trust anchor covers `name`. For one that none covers, RFC 4035
    /// §4.3 says *indeterminate*: nothing could vouch for it, so what the
    /// validator makes of it is not a verdict, and it counts as insecure.
    fn cover(&self, name: &Name) -> bool {
        match &self.0 {
            None => true,
            Some(zones) => zones.iter().any(|zone| zone.zone_of(name)),
        }
    }
}

/// Why a resolver could not be built, naming the setting.
#[derive(Debug, thiserror::Error)]
#[error("kumo.dns.configure_resolver: {0}")]
pub struct ResolverBuildError(String);

impl Resolver {
    /// The resolver `config` declares, or the system's (`/etc/resolv.conf`) when
    /// none is declared. Either looks up A and AAAA: a path's
    /// `ip_lookup_strategy` chooses among them.
    ///
    /// ```
    /// let resolver = egress_dns::Resolver::new(None);
    /// assert!(resolver.is_ok());
    /// ```
    pub fn new(config: Option<&ResolverConfig>) -> Result<Resolver, ResolverBuildError> {
        let backend = match config {
            None => {
                let (hickory, mut opts) = hickory_resolver::system_conf::read_system_conf()
                    .map_err(|e| {
                        ResolverBuildError(format!("reading the system DNS configuration: {e}"))
                    })?;
                opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
                Backend::Hickory(
                    Box::new(
                        TokioResolver::builder_with_config(
                            hickory,
                            TokioConnectionProvider::default(),
                        )
                        .with_options(opts)
                        .build(),
                    ),
                    Anchors::default(),
                )
            }
            Some(ResolverConfig::Hickory(cfg)) => hickory_backend(cfg)?,
            Some(ResolverConfig::Test(cfg)) => {
                Backend::Test(Arc::new(TestZones::new(cfg).map_err(ResolverBuildError)?))
            }
        };
        Ok(Resolver { backend })
    }

    /// A and AAAA records of `host` (an absolute name is asked: no search list).
    pub async fn ip(&self, host: &str) -> Result<Answer<IpAddr>, DnsError> {
        const WHAT: &str = "address record";
        match &self.backend {
            Backend::Hickory(resolver, anchors) => {
                let name = absolute(host, WHAT)?;
                let covered = anchors.cover(&name);
                let found = resolver
                    .lookup_ip(name.clone())
                    .await
                    .map_err(|e| hickory_error(host, WHAT, &e, covered))?;
                let lookup = found.as_lookup();
                Ok(Answer {
                    records: found.iter().collect(),
                    security: security_at(&name, lookup.records(), host, WHAT, covered)?,
                    valid_until: lookup.valid_until(),
                })
            }
            Backend::Test(zones) => {
                let v4 = zones.lookup(host, RecordType::A, WHAT);
                let v6 = zones.lookup(host, RecordType::AAAA, WHAT);
                let (records, security, valid_until) = match (v4, v6) {
                    (Ok(a), Ok(b)) => (
                        [a.records, b.records].concat(),
                        a.security,
                        a.valid_until.min(b.valid_until),
                    ),
                    (Ok(a), Err(e)) | (Err(e), Ok(a)) if e.is_no_records() => {
                        (a.records, a.security, a.valid_until)
                    }
                    (Err(e), _) | (_, Err(e)) => return Err(e),
                };
                Ok(Answer {
                    records: records.iter().filter_map(address).collect(),
                    security,
                    valid_until,
                })
            }
        }
    }

    /// MX records of `domain`: (preference, exchange without the final dot).
    pub async fn mx(&self, domain: &str) -> Result<Answer<(u16, String)>, DnsError> {
        self.typed(domain, RecordType::MX, "MX record", |d| match d {
            RData::MX(mx) => Some((
                mx.preference(),
                mx.exchange().to_utf8().trim_end_matches('.').to_owned(),
            )),
            _ => None,
        })
        .await
    }

    /// TXT records of `name`, each record's strings joined.
    pub async fn txt(&self, name: &str) -> Result<Answer<String>, DnsError> {
        self.typed(name, RecordType::TXT, "TXT record", |d| match d {
            RData::TXT(t) => Some(
                t.txt_data()
                    .iter()
                    .map(|s| String::from_utf8_lossy(s))
                    .collect::<String>(),
            ),
            _ => None,
        })
        .await
    }

    /// TLSA records at `name` (for SMTP: `_25._tcp.MXHOST`, RFC 7672 §2.2).
    pub async fn tlsa(&self, name: &str) -> Result<Answer<Tlsa>, DnsError> {
        self.typed(name, RecordType::TLSA, "TLSA record", |d| match d {
            RData::TLSA(t) => Some(Tlsa {
                usage: t.cert_usage().into(),
                selector: t.selector().into(),
                matching: t.matching().into(),
                data: t.cert_data().to_vec(),
            }),
            _ => None,
        })
        .await
    }

    /// PTR records of `ip` (names without the final dot).
    pub async fn ptr(&self, ip: IpAddr) -> Result<Answer<String>, DnsError> {
        let name = Name::from(ip).to_utf8();
        self.typed(&name, RecordType::PTR, "PTR record", |d| match d {
            RData::PTR(p) => Some(p.0.to_utf8().trim_end_matches('.').to_owned()),
            _ => None,
        })
        .await
        .map_err(|e| DnsError::new(&ip.to_string(), "PTR record", e.kind.clone(), ""))
    }

    async fn typed<T>(
        &self,
        name: &str,
        rtype: RecordType,
        what: &str,
        pick: impl Fn(&RData) -> Option<T>,
    ) -> Result<Answer<T>, DnsError> {
        let (records, security, valid_until) = match &self.backend {
            Backend::Hickory(resolver, anchors) => {
                let asked = absolute(name, what)?;
                let covered = anchors.cover(&asked);
                let found = resolver
                    .lookup(asked.clone(), rtype)
                    .await
                    .map_err(|e| hickory_error(name, what, &e, covered))?;
                let security = security_at(&asked, found.records(), name, what, covered)?;
                (found.records().to_vec(), security, found.valid_until())
            }
            Backend::Test(zones) => {
                let a = zones.lookup(name, rtype, what)?;
                (a.records, a.security, a.valid_until)
            }
        };
        Ok(Answer {
            records: records
                .iter()
                .filter(|r| r.record_type() == rtype)
                .filter_map(|r| pick(r.data()))
                .collect(),
            security,
            valid_until,
        })
    }
}

fn address(r: &Record) -> Option<IpAddr> {
    match r.data() {
        RData::A(a) => Some(IpAddr::V4(a.0)),
        RData::AAAA(a) => Some(IpAddr::V6(a.0)),
        _ => None,
    }
}

/// `name` as an absolute DNS name: envelope domains are never completed with
/// search domains.
fn absolute(name: &str, what: &str) -> Result<Name, DnsError> {
    let mut n = Name::from_utf8(name.trim()).map_err(|e| {
        DnsError::new(
            name,
            what,
            DnsErrorKind::Failed,
            &format!("not a valid DNS name: {e}"),
        )
    })?;
    n.set_fqdn(true);
    Ok(n)
}

/// What DNSSEC says of an answer: an error if any record is bogus (a bogus answer
/// is never returned as records), else what the records owned by the name asked
/// say (so a secure CNAME into an unsigned zone is secure, as RFC 7672 §2.2.2 has
/// it). A name no trust anchor `covered` is insecure whatever the validator
/// thought of it (RFC 4035 §4.3, indeterminate).
fn security_at(
    asked: &Name,
    records: &[Record],
    name: &str,
    what: &str,
    covered: bool,
) -> Result<Security, DnsError> {
    use hickory_proto::dnssec::Proof;
    if !covered {
        return Ok(Security::Insecure);
    }
    let data = records
        .iter()
        .filter(|r| r.record_type() != RecordType::RRSIG);
    if data.clone().any(|r| r.proof() == Proof::Bogus) {
        return Err(DnsError::new(name, what, DnsErrorKind::Bogus, ""));
    }
    let mut at_name = data.filter(|r| r.name() == asked).peekable();
    if at_name.peek().is_some() && at_name.all(|r| r.proof() == Proof::Secure) {
        Ok(Security::Secure)
    } else {
        Ok(Security::Insecure)
    }
}

/// A failed lookup in words; a denial the validator found bogus is plainly "no
/// records" for a name no trust anchor `covered` (indeterminate, as above).
fn hickory_error(name: &str, what: &str, e: &ResolveError, covered: bool) -> DnsError {
    let proto = match e.kind() {
        ResolveErrorKind::Proto(p) => p,
        ResolveErrorKind::Message(m) => {
            return DnsError::new(name, what, DnsErrorKind::Failed, m);
        }
        ResolveErrorKind::Msg(m) => return DnsError::new(name, what, DnsErrorKind::Failed, m),
        _ => return DnsError::new(name, what, DnsErrorKind::Failed, &e.to_string()),
    };
    let (kind, detail) = match proto.kind() {
        ProtoErrorKind::NoRecordsFound { response_code, .. } => match *response_code {
            ResponseCode::NXDomain => (DnsErrorKind::NoRecords { nxdomain: true }, String::new()),
            ResponseCode::NoError => (DnsErrorKind::NoRecords { nxdomain: false }, String::new()),
            code => (DnsErrorKind::ServerFailure, code.to_string()),
        },
        ProtoErrorKind::Nsec { proof, .. } if proof.is_bogus() && covered => (
            DnsErrorKind::Bogus,
            "the denial of existence does not validate".to_owned(),
        ),
        // An unsigned (or unanchored) zone's denial: plainly no records.
        ProtoErrorKind::Nsec { .. } => (DnsErrorKind::NoRecords { nxdomain: false }, String::new()),
        ProtoErrorKind::Timeout => (DnsErrorKind::Timeout, String::new()),
        ProtoErrorKind::NoConnections => (
            DnsErrorKind::Failed,
            "no DNS server could be reached".to_owned(),
        ),
        _ => (DnsErrorKind::Failed, proto.to_string()),
    };
    DnsError::new(name, what, kind, &detail)
}

fn hickory_backend(cfg: &NameServersConfig) -> Result<Backend, ResolverBuildError> {
    let mut hickory = HickoryConfig::new();
    for server in &cfg.name_servers {
        let protocols: &[Protocol] = match server.protocol {
            NameServerProtocol::UdpThenTcp => &[Protocol::Udp, Protocol::Tcp],
            NameServerProtocol::Udp => &[Protocol::Udp],
            NameServerProtocol::Tcp => &[Protocol::Tcp],
        };
        for protocol in protocols {
            let mut ns = NameServerConfig::new(server.socket_addr, *protocol);
            ns.trust_negative_responses = server.trust_negative_responses;
            ns.bind_addr = server.bind_addr;
            hickory.add_name_server(ns);
        }
    }
    let o = &cfg.options;
    let mut opts = ResolverOpts::default();
    opts.timeout = o.timeout.unwrap_or(Duration::from_secs(5));
    opts.attempts = o.attempts.unwrap_or(2);
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    let validates = o.validates();
    opts.validate = validates;
    opts.edns0 = o.edns0.unwrap_or(false) || validates;
    set(&mut opts.cache_size, o.cache_size);
    set(&mut opts.ndots, o.ndots);
    opts.positive_min_ttl = o.positive_min_ttl;
    opts.positive_max_ttl = o.positive_max_ttl;
    opts.negative_min_ttl = o.negative_min_ttl;
    opts.negative_max_ttl = o.negative_max_ttl;
    set(&mut opts.num_concurrent_reqs, o.num_concurrent_reqs);
    set(&mut opts.preserve_intermediates, o.preserve_intermediates);
    set(&mut opts.recursion_desired, o.recursion_desired);
    set(&mut opts.try_tcp_on_error, o.try_tcp_on_error);
    set(&mut opts.case_randomization, o.case_randomization);
    if let Some(hosts) = o.use_hosts_file {
        opts.use_hosts_file = match hosts {
            crate::config::UseHostsFile::Always => ResolveHosts::Always,
            crate::config::UseHostsFile::Auto => ResolveHosts::Auto,
            crate::config::UseHostsFile::Never => ResolveHosts::Never,
        };
    }
    if let Some(order) = o.server_ordering_strategy {
        opts.server_ordering_strategy = match order {
            ServerOrdering::QueryStatistics => ServerOrderingStrategy::QueryStatistics,
            ServerOrdering::RoundRobin => ServerOrderingStrategy::RoundRobin,
            ServerOrdering::UserProvidedOrder => ServerOrderingStrategy::UserProvidedOrder,
        };
    }
    let mut builder =
        TokioResolver::builder_with_config(hickory, TokioConnectionProvider::default())
            .with_options(opts);
    let mut zones = Anchors::default();
    if let Some(path) = &o.trust_anchor_file {
        let (keys, anchored) = trust_anchors(path)?;
        zones = anchored;
        builder = builder.with_trust_anchor(Arc::new(keys));
    }
    Ok(Backend::Hickory(Box::new(builder.build()), zones))
}

/// The keys of a trust anchor file (DNSKEY records in zone-file syntax) and the
/// zones they anchor — hickory keeps only the keys; the zones say which names
/// DNSSEC can speak for. The file is read and parsed once, with hickory's own
/// parser for it; a key that does not decode is an error, as hickory's loader has it.
fn trust_anchors(
    path: &std::path::Path,
) -> Result<(hickory_proto::dnssec::TrustAnchors, Anchors), ResolverBuildError> {
    use hickory_proto::dnssec::{TrustAnchors, Verifier};
    use hickory_proto::serialize::txt::trust_anchor::{Entry, Parser};
    let failed = |e: &dyn std::fmt::Display| {
        ResolverBuildError(format!(
            "options.trust_anchor_file {}: {e} (expected DNSKEY records in zone-file \
             syntax, such as a key file written by ldns-keygen or dnssec-keygen)",
            path.display()
        ))
    };
    let text = std::fs::read_to_string(path).map_err(|e| failed(&e))?;
    let entries = Parser::new(text).parse().map_err(|e| failed(&e))?;
    let mut keys = TrustAnchors::empty();
    let mut zones = Vec::new();
    for entry in &entries {
        #[allow(unreachable_patterns)] // the enum is non-exhaustive
        let Entry::DNSKEY(record) = entry
        else {
            continue;
        };
        let key = record.data().key().map_err(|e| failed(&e))?;
        keys.insert(&*key);
        let mut zone = record.name().clone();
        zone.set_fqdn(true);
        zones.push(zone);
    }
    if keys.is_empty() {
        return Err(ResolverBuildError(format!(
            "options.trust_anchor_file {}: no DNSKEY record in it",
            path.display()
        )));
    }
    Ok((keys, Anchors(Some(zones.into()))))
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}
