//! What `kumo.dns.configure_resolver { … }` may say, in KumoMTA's shapes: the plain
//! `{ name_servers, options }` form, the structured `{ Hickory = { … } }` form (the
//! same fields) and `{ Test = { zones, servfail } }` (fixed answers, for tests).
//! No I/O here: files named by options are read when the resolver is built.

use serde::de::{self, value::MapAccessDeserializer, DeserializeOwned, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// A declared resolver.
///
/// ```
/// use egress_dns::ResolverConfig;
/// let config: ResolverConfig = serde_json::from_str(
///     r#"{ "name_servers": ["127.0.0.1:5353"], "options": { "validate": true } }"#,
/// ).unwrap();
/// assert!(config.validates());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawResolverConfig")]
pub enum ResolverConfig {
    /// Name servers asked over UDP with TCP fallback, validating when
    /// `options.validate` says so.
    Hickory(Box<NameServersConfig>),
    /// Fixed zones answered in process; no server is asked.
    Test(TestConfig),
}

impl ResolverConfig {
    /// Whether answers can be DNSSEC-secure: a validating resolver, or `Test`
    /// zones declared `secure = true`. DANE needs it.
    pub fn validates(&self) -> bool {
        match self {
            ResolverConfig::Hickory(h) => h.options.validates(),
            ResolverConfig::Test(t) => t.zones.iter().any(|z| z.secure),
        }
    }
}

/// The `name_servers` form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameServersConfig {
    /// Servers to ask, in order.
    #[serde(deserialize_with = "name_servers")]
    pub name_servers: Vec<NameServer>,
    /// Accepted for KumoMTA's sake; names are always asked as absolute names.
    #[serde(default)]
    pub domain: Option<String>,
    /// Accepted for KumoMTA's sake; names are always asked as absolute names.
    #[serde(default)]
    pub search: Vec<String>,
    /// Resolver options (KumoMTA's `resolver_options`).
    #[serde(default)]
    pub options: ResolverOptions,
}

/// One name server: `'IP:PORT'` (or a bare IP: port 53), or KumoMTA's detailed
/// table `{ socket_addr, protocol, trust_negative_responses, bind_addr }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameServer {
    /// Where the server listens.
    #[serde(deserialize_with = "socket_addr")]
    pub socket_addr: SocketAddr,
    /// `udp_then_tcp` (default), `udp` or `tcp`.
    #[serde(default)]
    pub protocol: NameServerProtocol,
    /// Whether an NXDOMAIN from this server ends the lookup (default true).
    #[serde(default = "yes")]
    pub trust_negative_responses: bool,
    /// Local address queries are sent from.
    #[serde(default, deserialize_with = "optional_socket_addr")]
    pub bind_addr: Option<SocketAddr>,
}

impl std::str::FromStr for NameServer {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(NameServer {
            socket_addr: parse_socket_addr(s)?,
            protocol: NameServerProtocol::default(),
            trust_negative_responses: true,
            bind_addr: None,
        })
    }
}

/// How a name server is asked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NameServerProtocol {
    /// UDP, and TCP when an answer is truncated (what DNSSEC needs).
    #[default]
    UdpThenTcp,
    /// UDP only.
    Udp,
    /// TCP only.
    Tcp,
}

/// KumoMTA's resolver options (`kumo.dns` `resolver_options`); unknown names are
/// refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolverOptions {
    /// DNSSEC validation: answers say whether they are secure (DANE needs it).
    #[serde(default)]
    pub validate: bool,
    /// A file of DNSKEY records that replaces the built-in root anchors (as on
    /// KumoMTA's hickory backend). Implies `validate`.
    #[serde(default, deserialize_with = "trust_anchor_file")]
    pub trust_anchor_file: Option<PathBuf>,
    /// Per-query timeout (default 5 s).
    #[serde(default, with = "egress_source::serde_optional_duration")]
    pub timeout: Option<Duration>,
    /// Retries after a failed query (default 2).
    #[serde(default)]
    pub attempts: Option<usize>,
    /// Answers kept in the cache.
    #[serde(default)]
    pub cache_size: Option<usize>,
    /// EDNS(0); always on when validating.
    #[serde(default)]
    pub edns0: Option<bool>,
    /// Dots in a name before it is tried as absolute (unused: names are absolute).
    #[serde(default)]
    pub ndots: Option<usize>,
    /// Lower bound of a positive answer's lifetime in the cache.
    #[serde(default, with = "egress_source::serde_optional_duration")]
    pub positive_min_ttl: Option<Duration>,
    /// Upper bound of a positive answer's lifetime in the cache.
    #[serde(default, with = "egress_source::serde_optional_duration")]
    pub positive_max_ttl: Option<Duration>,
    /// Lower bound of a negative answer's lifetime in the cache.
    #[serde(default, with = "egress_source::serde_optional_duration")]
    pub negative_min_ttl: Option<Duration>,
    /// Upper bound of a negative answer's lifetime in the cache.
    #[serde(default, with = "egress_source::serde_optional_duration")]
    pub negative_max_ttl: Option<Duration>,
    /// Queries sent at once to different servers.
    #[serde(default)]
    pub num_concurrent_reqs: Option<usize>,
    /// Keep CNAME steps in answers.
    #[serde(default)]
    pub preserve_intermediates: Option<bool>,
    /// Ask with RD set (default true).
    #[serde(default)]
    pub recursion_desired: Option<bool>,
    /// Retry over TCP after a UDP error.
    #[serde(default)]
    pub try_tcp_on_error: Option<bool>,
    /// Randomise the case of names asked over UDP (0x20 anti-spoofing).
    #[serde(default)]
    pub case_randomization: Option<bool>,
    /// `Always`, `Auto` or `Never`: whether /etc/hosts is read.
    #[serde(default)]
    pub use_hosts_file: Option<UseHostsFile>,
    /// `QueryStatistics`, `RoundRobin` or `UserProvidedOrder`.
    #[serde(default)]
    pub server_ordering_strategy: Option<ServerOrdering>,
    /// Accepted and unused, as KumoMTA advises: a path's `ip_lookup_strategy`
    /// chooses between A and AAAA.
    #[serde(default)]
    pub ip_strategy: Option<String>,
}

impl ResolverOptions {
    /// Whether DNSSEC is validated: `validate`, or a trust anchor file given.
    pub fn validates(&self) -> bool {
        self.validate || self.trust_anchor_file.is_some()
    }
}

/// `use_hosts_file`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum UseHostsFile {
    Always,
    Auto,
    Never,
}

/// `server_ordering_strategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum ServerOrdering {
    QueryStatistics,
    RoundRobin,
    UserProvidedOrder,
}

/// The `Test` form: zones in master-file syntax, answered in process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestConfig {
    /// Each a zone text (insecure) or `{ zone = [[…]], secure = true }`.
    #[serde(deserialize_with = "test_zones")]
    pub zones: Vec<TestZone>,
    /// Owner names for which every lookup answers SERVFAIL.
    #[serde(default)]
    pub servfail: Vec<String>,
}

/// One `Test` zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestZone {
    /// The zone in master-file syntax (with `$ORIGIN`).
    pub zone: String,
    /// Whether its answers are reported DNSSEC-secure.
    #[serde(default)]
    pub secure: bool,
}

impl std::str::FromStr for TestZone {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(TestZone {
            zone: s.to_owned(),
            secure: false,
        })
    }
}

/// Every field any form may have; which form it is follows from which are set.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResolverConfig {
    #[serde(rename = "Hickory")]
    hickory: Option<NameServersConfig>,
    #[serde(rename = "Test")]
    test: Option<TestConfig>,
    #[serde(default, deserialize_with = "optional_name_servers")]
    name_servers: Option<Vec<NameServer>>,
    domain: Option<String>,
    #[serde(default)]
    search: Vec<String>,
    options: Option<ResolverOptions>,
}

impl TryFrom<RawResolverConfig> for ResolverConfig {
    type Error = String;
    fn try_from(raw: RawResolverConfig) -> Result<Self, String> {
        let plain = raw.name_servers.is_some() || raw.options.is_some() || raw.domain.is_some();
        match (raw.hickory, raw.test, plain) {
            (Some(h), None, false) => Ok(ResolverConfig::Hickory(Box::new(h))),
            (None, Some(t), false) => Ok(ResolverConfig::Test(t)),
            (None, None, true) => Ok(ResolverConfig::Hickory(Box::new(NameServersConfig {
                name_servers: raw.name_servers.ok_or(
                    "`name_servers` is required: a list of 'IP:PORT' (or use the system's \
                     configuration by not calling configure_resolver)",
                )?,
                domain: raw.domain,
                search: raw.search,
                options: raw.options.unwrap_or_default(),
            }))),
            (None, None, false) => Err("expected `name_servers = { 'IP:PORT', … }`, \
                 `Hickory = { … }` or `Test = { zones = { … } }`"
                .into()),
            _ => Err(
                "give one form: `name_servers`/`options`, `Hickory = { … }` or \
                 `Test = { … }`, not several"
                    .into(),
            ),
        }
    }
}

fn yes() -> bool {
    true
}

fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.trim()
        .parse::<SocketAddr>()
        .or_else(|_| s.trim().parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        .map_err(|_| format!("expected \"IP:PORT\" or an IP address, got {s:?}"))
}

fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    parse_socket_addr(&String::deserialize(d)?).map_err(de::Error::custom)
}

fn optional_socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|s| parse_socket_addr(&s).map_err(de::Error::custom))
        .transpose()
}

fn trust_anchor_file<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Anchor {
        Static(PathBuf),
        Managed { managed: PathBuf },
    }
    match Option::<Anchor>::deserialize(d)? {
        None => Ok(None),
        Some(Anchor::Static(p)) => Ok(Some(p)),
        Some(Anchor::Managed { managed }) => Err(de::Error::custom(format!(
            "trust_anchor_file = {{ managed = {managed:?} }} (RFC 5011) needs KumoMTA's \
             unbound backend, which egressd does not have: give a static file of DNSKEY \
             records instead (trust_anchor_file = '/path/to/anchors')"
        ))),
    }
}

fn name_servers<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<NameServer>, D::Error> {
    Vec::<StringOrTable<NameServer>>::deserialize(d).map(|v| v.into_iter().map(|x| x.0).collect())
}

fn optional_name_servers<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<NameServer>>, D::Error> {
    name_servers(d).map(Some)
}

fn test_zones<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<TestZone>, D::Error> {
    Vec::<StringOrTable<TestZone>>::deserialize(d).map(|v| v.into_iter().map(|x| x.0).collect())
}

/// A value written either as a string (its short form) or as a table — with the
/// table's own error messages, which `#[serde(untagged)]` would lose.
struct StringOrTable<T>(T);

impl<'de, T> Deserialize<'de> for StringOrTable<T>
where
    T: DeserializeOwned + std::str::FromStr<Err = String>,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T> Visitor<'de> for V<T>
        where
            T: DeserializeOwned + std::str::FromStr<Err = String>,
        {
            type Value = T;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a table")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<T, E> {
                s.parse().map_err(E::custom)
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_any(V(PhantomData)).map(StringOrTable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<ResolverConfig, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn plain_form_with_simple_and_detailed_servers() {
        let c = parse(
            r#"{"name_servers": ["127.0.0.1:5353", "::1",
                 {"socket_addr": "127.0.0.2:53", "protocol": "tcp"}]}"#,
        )
        .unwrap();
        let ResolverConfig::Hickory(h) = c else {
            panic!("not the name server form")
        };
        assert_eq!(h.name_servers[0].socket_addr.port(), 5353);
        assert_eq!(h.name_servers[1].socket_addr.port(), 53);
        assert_eq!(h.name_servers[2].protocol, NameServerProtocol::Tcp);
        assert!(!h.options.validate);
    }

    #[test]
    fn structured_forms() {
        let c = parse(r#"{"Hickory": {"name_servers": ["127.0.0.1"], "options": {"validate": true, "timeout": "2s"}}}"#).unwrap();
        assert!(c.validates());
        let t = parse(
            r#"{"Test": {"zones": ["$ORIGIN a.\n@ 60 IN A 127.0.0.1\n",
                 {"zone": "$ORIGIN b.\n", "secure": true}], "servfail": ["x.b"]}}"#,
        )
        .unwrap();
        let ResolverConfig::Test(t) = t else {
            panic!("not the Test form")
        };
        assert!(!t.zones[0].secure && t.zones[1].secure);
    }

    #[test]
    fn a_trust_anchor_file_alone_means_validation() {
        let c = parse(
            r#"{"name_servers": ["127.0.0.1"], "options": {"trust_anchor_file": "/etc/anchors"}}"#,
        )
        .unwrap();
        assert!(
            c.validates(),
            "the resolver validates, so DANE may be enabled"
        );
    }

    #[test]
    fn mistakes_are_named() {
        let e = parse(r#"{"name_servers": ["localhost"]}"#).unwrap_err();
        assert!(e.contains("expected \"IP:PORT\""), "{e}");
        let e =
            parse(r#"{"name_servers": ["127.0.0.1"], "options": {"validat": true}}"#).unwrap_err();
        assert!(e.contains("validat"), "{e}");
        let e = parse(r#"{"options": {"validate": true}}"#).unwrap_err();
        assert!(e.contains("`name_servers` is required"), "{e}");
        let e = parse(r#"{"name_servers": ["127.0.0.1"], "options": {"trust_anchor_file": {"managed": "/x"}}}"#).unwrap_err();
        assert!(e.contains("unbound"), "{e}");
        let e = parse(r#"{"Test": {"zones": []}, "name_servers": ["127.0.0.1"]}"#).unwrap_err();
        assert!(e.contains("one form"), "{e}");
    }
}
