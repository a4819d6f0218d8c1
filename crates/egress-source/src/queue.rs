//! `QueueConfig`: which pool a queue uses and where its mail goes (subset of
//! `kumo.make_queue_config`).

use crate::fields::{split_host_port, Scalar};
use crate::keys::{deserialize_strict, strict_table, StrictTable};
use serde::de::value::MapAccessDeserializer;
use serde::de::{Deserializer, Error, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

/// The pool used when a queue config does not name one.
pub const DEFAULT_POOL: &str = "unspecified";

/// Per-queue settings: the egress pool, and an optional route override.
///
/// ```
/// use egress_source::{QueueConfig, MxListEntry};
/// let q: QueueConfig = serde_json::from_str(r#"{ "egress_pool": "bulk",
///     "protocol": { "smtp": { "mx_list": [ "[127.0.0.1]:2525",
///         { "name": "mx.example.com", "addr": "10.0.0.1" } ] } } }"#).unwrap();
/// assert_eq!(q.egress_pool, "bulk");
/// assert_eq!(q.mx_list()[0].port(), Some(2525));
/// assert_eq!(q.mx_list()[1].name(), "mx.example.com");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct QueueConfig {
    /// The pool whose sources carry this queue's mail.
    #[serde(default = "default_pool")]
    pub egress_pool: String,
    /// Delivery protocol settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<DeliveryProtocol>,
    /// For spooled messages: the wait before the first retry, doubled after each
    /// further failure; default 20 minutes (KumoMTA's).
    #[serde(default = "default_retry_interval", with = "crate::fields::duration")]
    pub retry_interval: Duration,
    /// The longest wait between retries; default none (doubling until `max_age`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::fields::optional_duration"
    )]
    pub max_retry_interval: Option<Duration>,
    /// How long a spooled message is tried before it bounces; default 7 days.
    #[serde(default = "default_max_age", with = "crate::fields::duration")]
    pub max_age: Duration,
}

fn default_retry_interval() -> Duration {
    Duration::from_secs(20 * 60)
}

fn default_max_age() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

fn default_pool() -> String {
    DEFAULT_POOL.into()
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            egress_pool: default_pool(),
            protocol: None,
            retry_interval: default_retry_interval(),
            max_retry_interval: None,
            max_age: default_max_age(),
        }
    }
}

impl QueueConfig {
    /// Mail through `pool`, every other setting at its default — for a policy
    /// written in Rust.
    pub fn for_pool(pool: impl Into<String>) -> QueueConfig {
        QueueConfig {
            egress_pool: pool.into(),
            ..QueueConfig::default()
        }
    }

    /// The same, delivered to `hosts` in order instead of the domain's MX hosts
    /// (KumoMTA's `protocol.smtp.mx_list`).
    ///
    /// ```
    /// use egress_source::QueueConfig;
    /// let q = QueueConfig::for_pool("main").with_mx_list(vec!["[10.0.0.9]:2525".parse().unwrap()]);
    /// assert_eq!(q.mx_list()[0].port(), Some(2525));
    /// ```
    pub fn with_mx_list(mut self, hosts: Vec<MxListEntry>) -> QueueConfig {
        let protocol = self.protocol.get_or_insert_with(DeliveryProtocol::default);
        protocol
            .smtp
            .get_or_insert_with(SmtpProtocol::default)
            .mx_list = hosts;
        self
    }

    /// The wait before retry number `attempt` (1 for the first retry): the retry
    /// interval doubled for each earlier failure, at most `max_retry_interval`.
    ///
    /// ```
    /// # use egress_source::QueueConfig;
    /// # use std::time::Duration;
    /// let q = QueueConfig { max_retry_interval: Some(Duration::from_secs(3600)), ..QueueConfig::default() };
    /// assert_eq!(q.retry_delay(1).as_secs(), 20 * 60);
    /// assert_eq!(q.retry_delay(2).as_secs(), 40 * 60);
    /// assert_eq!(q.retry_delay(3).as_secs(), 3600);
    /// ```
    pub fn retry_delay(&self, attempt: u32) -> Duration {
        let doubled = self
            .retry_interval
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        match self.max_retry_interval {
            Some(max) => doubled.min(max),
            None => doubled,
        }
    }

    /// Whether the `mx_list` counts as a secure choice of hosts for DANE.
    pub fn mx_list_is_secure(&self) -> bool {
        self.protocol
            .as_ref()
            .and_then(|p| p.smtp.as_ref())
            .is_some_and(|s| s.treat_mx_list_as_secure)
    }

    /// The route override; empty means "look up MX records".
    pub fn mx_list(&self) -> &[MxListEntry] {
        self.protocol
            .as_ref()
            .and_then(|p| p.smtp.as_ref())
            .map(|s| s.mx_list.as_slice())
            .unwrap_or_default()
    }
}

/// `protocol = { smtp = { ... } }`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct DeliveryProtocol {
    /// SMTP delivery settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp: Option<SmtpProtocol>,
}

/// `smtp = { mx_list = { ... } }`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct SmtpProtocol {
    /// Hosts to deliver to instead of the domain's MX records, tried in order.
    #[serde(default)]
    pub mx_list: Vec<MxListEntry>,
    /// The `mx_list` is a trusted choice of hosts, as a DNSSEC-secure MX answer
    /// would be: DANE (`enable_dane`) may apply to its hosts when their address
    /// records are secure. Never set it for a list built from an unvalidated
    /// lookup (KumoMTA's advice: `treat_mx_list_as_secure = mx.is_secure`).
    #[serde(default)]
    pub treat_mx_list_as_secure: bool,
}

strict_table!(
    QueueConfig,
    "queue config",
    [
        "egress_pool",
        "protocol",
        "retry_interval",
        "max_retry_interval",
        "max_age"
    ]
);
strict_table!(DeliveryProtocol, "queue config protocol", ["smtp"]);
strict_table!(
    SmtpProtocol,
    "queue config protocol.smtp",
    ["mx_list", "treat_mx_list_as_secure"]
);

/// One entry of `mx_list`.
///
/// Forms: `'host'`, `'host:port'`, `'[ip]'`, `'[ip]:port'`, or
/// `{ name = 'mx.example.com', addr = '10.0.0.1[:port]' }` (a name for logs and
/// TLS, with a fixed address).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MxListEntry {
    /// A host name or IP literal, optionally with a port.
    Host {
        /// Host name, or IP literal without brackets.
        host: String,
        /// Port, when given.
        port: Option<u16>,
    },
    /// A named host at a fixed address.
    Named {
        /// The host's name.
        name: String,
        /// Its address.
        addr: IpAddr,
        /// Port, when given.
        port: Option<u16>,
    },
}

impl MxListEntry {
    /// The host's name (or the IP literal's text).
    pub fn name(&self) -> &str {
        match self {
            MxListEntry::Host { host, .. } => host,
            MxListEntry::Named { name, .. } => name,
        }
    }

    /// The address, when it needs no lookup.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            MxListEntry::Host { host, .. } => host.parse().ok(),
            MxListEntry::Named { addr, .. } => Some(*addr),
        }
    }

    /// The port, when the entry gives one.
    pub fn port(&self) -> Option<u16> {
        match self {
            MxListEntry::Host { port, .. } | MxListEntry::Named { port, .. } => *port,
        }
    }
}

const MX_EXPECTED: &str = "an mx_list entry: 'host', 'host:port', '[ip]', '[ip]:port' or { name = 'mx.example.com', addr = '10.0.0.1' }";

impl std::str::FromStr for MxListEntry {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (host, port) = split_host_port(s)
            .ok_or_else(|| format!("expected {MX_EXPECTED}, got string {s:?}"))?;
        Ok(MxListEntry::Host {
            host: host.to_owned(),
            port,
        })
    }
}

fn ip_with_port(ip: IpAddr, port: Option<u16>) -> String {
    match (ip, port) {
        (IpAddr::V4(ip), None) => ip.to_string(),
        (IpAddr::V6(ip), None) => format!("[{ip}]"),
        (ip, Some(port)) => std::net::SocketAddr::new(ip, port).to_string(),
    }
}

impl fmt::Display for MxListEntry {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            MxListEntry::Host { host, port } => match (host.parse::<IpAddr>(), port) {
                (Ok(ip), Some(port)) => write!(f, "[{ip}]:{port}"),
                (Ok(ip), None) => write!(f, "[{ip}]"),
                (Err(_), Some(port)) => write!(f, "{host}:{port}"),
                (Err(_), None) => f.write_str(host),
            },
            MxListEntry::Named { name, addr, port } => {
                write!(f, "{name} ({})", ip_with_port(*addr, *port))
            }
        }
    }
}

impl Serialize for MxListEntry {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            MxListEntry::Host { .. } => s.collect_str(self),
            MxListEntry::Named { name, addr, port } => {
                let mut map = s.serialize_map(Some(2))?;
                map.serialize_entry("name", name)?;
                map.serialize_entry("addr", &ip_with_port(*addr, *port))?;
                map.end()
            }
        }
    }
}

/// The table form `{ name, addr }` before its `addr` is parsed.
#[derive(Deserialize)]
#[serde(remote = "Self")]
struct NamedTable {
    name: String,
    addr: String,
}

impl StrictTable for NamedTable {
    const WHAT: &'static str = "mx_list entry";
    const FIELDS: &'static [&'static str] = &["name", "addr"];
    fn deserialize_fields<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::deserialize(d)
    }
}

impl<'de> Deserialize<'de> for MxListEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(MxVisitor)
    }
}

struct MxVisitor;

impl<'de> Visitor<'de> for MxVisitor {
    type Value = MxListEntry;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(MX_EXPECTED)
    }
    fn visit_str<E: Error>(self, v: &str) -> Result<MxListEntry, E> {
        v.parse().map_err(E::custom)
    }
    fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<MxListEntry, E> {
        std::str::from_utf8(v)
            .map_err(E::custom)
            .and_then(|s| self.visit_str(s))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<MxListEntry, A::Error> {
        let table: NamedTable = deserialize_strict(MapAccessDeserializer::new(map))?;
        let bad = || {
            A::Error::custom(format_args!("addr: expected an IP address with an optional port such as \"10.0.0.1\" or \"[::1]:2525\", got string {:?}", table.addr))
        };
        let (host, port) = split_host_port(&table.addr).ok_or_else(bad)?;
        let addr = host.parse().map_err(|_| bad())?;
        Ok(MxListEntry::Named {
            name: table.name,
            addr,
            port,
        })
    }
    fn visit_i64<E: Error>(self, v: i64) -> Result<MxListEntry, E> {
        Err(Scalar::Int(v.into()).expected(MX_EXPECTED))
    }
    fn visit_u64<E: Error>(self, v: u64) -> Result<MxListEntry, E> {
        Err(Scalar::Int(v.into()).expected(MX_EXPECTED))
    }
    fn visit_f64<E: Error>(self, v: f64) -> Result<MxListEntry, E> {
        Err(Scalar::Float(v).expected(MX_EXPECTED))
    }
    fn visit_bool<E: Error>(self, v: bool) -> Result<MxListEntry, E> {
        Err(Scalar::Bool(v).expected(MX_EXPECTED))
    }
}
