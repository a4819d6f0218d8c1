//! Field types and their table forms: IP addresses, ports, durations, `host:port`.
//!
//! Each reads any scalar first, so a wrong type can be reported as
//! "expected an IP address string, got number 10" rather than serde's generic text.

use ipnet::IpNet;
use serde::de::{Deserializer, Error, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

/// Any value, kept just long enough to check it or to say what it was.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Scalar {
    Str(String),
    Int(i128),
    Float(f64),
    Bool(bool),
    Table,
    Nil,
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Scalar::Str(s) => write!(f, "string {s:?}"),
            Scalar::Int(n) => write!(f, "number {n}"),
            Scalar::Float(n) => write!(f, "number {n}"),
            Scalar::Bool(b) => write!(f, "boolean {b}"),
            Scalar::Table => f.write_str("a table"),
            Scalar::Nil => f.write_str("nil"),
        }
    }
}

impl Scalar {
    pub(crate) fn expected<E: Error>(&self, what: &str) -> E {
        E::custom(format_args!("expected {what}, got {self}"))
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a value")
    }
    fn visit_str<E: Error>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar::Str(v.to_owned()))
    }
    fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Scalar, E> {
        // Lua strings are bytes; a non-UTF-8 one is reported, not guessed at.
        match std::str::from_utf8(v) {
            Ok(s) => Ok(Scalar::Str(s.to_owned())),
            Err(_) => Err(E::custom("expected a UTF-8 string, got bytes")),
        }
    }
    fn visit_i64<E: Error>(self, v: i64) -> Result<Scalar, E> {
        Ok(Scalar::Int(v.into()))
    }
    fn visit_u64<E: Error>(self, v: u64) -> Result<Scalar, E> {
        Ok(Scalar::Int(v.into()))
    }
    fn visit_f64<E: Error>(self, v: f64) -> Result<Scalar, E> {
        // Lua and JSON may carry whole numbers as floats.
        if v.fract() == 0.0 && v.abs() < 1e18 {
            Ok(Scalar::Int(v as i128))
        } else {
            Ok(Scalar::Float(v))
        }
    }
    fn visit_bool<E: Error>(self, v: bool) -> Result<Scalar, E> {
        Ok(Scalar::Bool(v))
    }
    fn visit_unit<E: Error>(self) -> Result<Scalar, E> {
        Ok(Scalar::Nil)
    }
    fn visit_none<E: Error>(self) -> Result<Scalar, E> {
        Ok(Scalar::Nil)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Scalar, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Table)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Table)
    }
}

const IP_EXPECTED: &str = "an IP address string such as \"10.0.0.1\" or \"::1\"";

/// Serde helpers for `Option<IpAddr>` fields.
pub(crate) mod opt_ip {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpAddr>, D::Error> {
        match Scalar::deserialize(d)? {
            Scalar::Nil => Ok(None),
            Scalar::Str(s) => parse_ip(&s).map(Some).map_err(D::Error::custom),
            other => Err(other.expected(IP_EXPECTED)),
        }
    }

    pub fn serialize<S: Serializer>(v: &Option<IpAddr>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(ip) => s.collect_str(ip),
            None => s.serialize_none(),
        }
    }
}

/// Parses an IP address; `[::1]` (bracketed) is accepted for IPv6.
pub(crate) fn parse_ip(s: &str) -> Result<IpAddr, String> {
    let bare = s
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(s);
    bare.parse()
        .map_err(|_| format!("expected {IP_EXPECTED}, got string {s:?}"))
}

const PORT_EXPECTED: &str = "a port number 1-65535";

/// Reads a port from any scalar, rejecting 0 and values above 65535.
pub(crate) fn port_from_scalar<E: Error>(v: Scalar) -> Result<u16, E> {
    match v {
        Scalar::Int(n) if (1..=65535).contains(&n) => Ok(n as u16),
        other => Err(other.expected(PORT_EXPECTED)),
    }
}

/// Serde helpers for `Option<u16>` port fields.
pub(crate) mod opt_port {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
        match Scalar::deserialize(d)? {
            Scalar::Nil => Ok(None),
            other => port_from_scalar(other).map(Some),
        }
    }

    pub fn serialize<S: Serializer>(v: &Option<u16>, s: S) -> Result<S::Ok, S::Error> {
        v.serialize(s)
    }
}

/// Serde helpers for plain `u16` port fields.
pub(crate) mod port {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
        port_from_scalar(Scalar::deserialize(d)?)
    }

    pub fn serialize<S: Serializer>(v: &u16, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u16(*v)
    }
}

const DURATION_EXPECTED: &str =
    "a duration: a number of seconds or a string such as \"90s\", \"5 mins\", \"1h\"";

/// Parses a duration from a number of seconds or a humantime string.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("expected {DURATION_EXPECTED}, got string {s:?} ({e})"))
}

/// Serde helpers for `Duration` fields: seconds or a humantime string in,
/// a humantime string out (`"5m"`), so JSON round-trips. Use with
/// `#[serde(with = "egress_source::serde_duration")]`.
pub mod duration {
    use super::*;

    /// Reads a number of seconds or a string such as `"90s"`, `"5 mins"`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        match Scalar::deserialize(d)? {
            Scalar::Int(n) if (0..=i128::from(u64::MAX)).contains(&n) => {
                Ok(Duration::from_secs(n as u64))
            }
            Scalar::Float(f) if (0.0..1e15).contains(&f) => Ok(Duration::from_secs_f64(f)),
            Scalar::Str(s) => parse_duration(&s).map_err(D::Error::custom),
            other => Err(other.expected(DURATION_EXPECTED)),
        }
    }

    /// Writes a humantime string (`"5m"`).
    pub fn serialize<S: Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*v))
    }
}

/// As [`duration`], for an optional field (absent or `nil`: none).
pub mod optional_duration {
    use super::*;

    /// Reads what [`duration::deserialize`] reads.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        duration::deserialize(d).map(Some)
    }

    /// Writes a humantime string, or nothing.
    pub fn serialize<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => duration::serialize(v, s),
            None => s.serialize_none(),
        }
    }
}

/// A CIDR (`10.0.0.0/8`) or a bare address (`10.0.0.1`, a /32 or /128), as KumoMTA
/// accepts them in host and network lists.
///
/// ```
/// let net = egress_source::parse_network("127.0.0.0/8").unwrap();
/// assert!(net.contains(&"127.0.0.9".parse::<std::net::IpAddr>().unwrap()));
/// assert_eq!(egress_source::parse_network("::1").unwrap().prefix_len(), 128);
/// assert!(egress_source::parse_network("localhost").unwrap_err().contains("CIDR"));
/// ```
pub fn parse_network(s: &str) -> Result<IpNet, String> {
    s.trim()
        .parse::<IpNet>()
        .or_else(|_| s.trim().parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("expected a CIDR such as \"10.0.0.0/8\" or an IP address, got {s:?}"))
}

/// Serde helpers for a list of networks ([`parse_network`]'s forms); written back
/// as CIDR strings.
pub mod networks {
    use super::*;

    /// Reads a list of CIDR or address strings.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
        let items = Vec::<String>::deserialize(d).map_err(|_| {
            D::Error::custom(
                "expected a list of CIDRs or IP addresses, such as { '10.0.0.0/8', '::1' }",
            )
        })?;
        items
            .iter()
            .map(|s| parse_network(s).map_err(D::Error::custom))
            .collect()
    }

    /// Writes CIDR strings.
    pub fn serialize<S: Serializer>(v: &[IpNet], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|n| n.to_string()))
    }
}

/// As [`networks`], for an optional list (absent: none).
pub mod optional_networks {
    use super::*;

    /// Reads what [`networks::deserialize`] reads.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<IpNet>>, D::Error> {
        networks::deserialize(d).map(Some)
    }

    /// Writes CIDR strings, or nothing.
    pub fn serialize<S: Serializer>(v: &Option<Vec<IpNet>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => networks::serialize(v, s),
            None => s.serialize_none(),
        }
    }
}

/// A `host:port` address: an IP literal (IPv6 in brackets) or a DNS name, and a port.
///
/// ```
/// use egress_source::HostPort;
/// let hp: HostPort = "[::1]:1080".parse().unwrap();
/// assert_eq!(hp.port, 1080);
/// assert_eq!(hp.ip(), Some("::1".parse().unwrap()));
/// let named: HostPort = "proxy.example.com:5000".parse().unwrap();
/// assert_eq!(named.host, "proxy.example.com");
/// assert_eq!(named.ip(), None);
/// assert_eq!(named.to_string(), "proxy.example.com:5000");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// The host: an IP literal without brackets, or a DNS name.
    pub host: String,
    /// The TCP port.
    pub port: u16,
}

impl HostPort {
    /// The host as an IP address, when it is a literal.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.ip() {
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            _ => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

const HOST_PORT_EXPECTED: &str =
    "a \"host:port\" string such as \"10.0.0.1:5000\", \"[::1]:5000\" or \"proxy.example.com:5000\"";

impl FromStr for HostPort {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("expected {HOST_PORT_EXPECTED}, got string {s:?}");
        let (host, port) = split_host_port(s).ok_or_else(bad)?;
        let port = port.ok_or_else(bad)?;
        Ok(HostPort {
            host: host.to_owned(),
            port,
        })
    }
}

/// Splits `host`, `host:port`, `[ip]`, `[ip]:port` (and a bare IPv6 literal).
/// Returns `None` when the text is not of that shape or the host is not valid.
pub(crate) fn split_host_port(s: &str) -> Option<(&str, Option<u16>)> {
    let port_of = |p: &str| p.parse::<u16>().ok().filter(|p| *p != 0);
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        ip.parse::<IpAddr>().ok()?;
        match after {
            "" => (ip, None),
            _ => (ip, Some(port_of(after.strip_prefix(':')?)?)),
        }
    } else if s.parse::<IpAddr>().is_ok() {
        (s, None)
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(port_of(p)?)),
            None => (s, None),
        }
    };
    (is_host_name(host) || host.parse::<IpAddr>().is_ok()).then_some((host, port))
}

/// A DNS name as it may appear in an address or EHLO: letters, digits, `-`, `_`, `.`.
pub(crate) fn is_host_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl<'de> Deserialize<'de> for HostPort {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Scalar::deserialize(d)? {
            Scalar::Str(s) => s.parse().map_err(D::Error::custom),
            other => Err(other.expected(HOST_PORT_EXPECTED)),
        }
    }
}

impl Serialize for HostPort {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        assert_eq!(
            split_host_port("mx.example.com"),
            Some(("mx.example.com", None))
        );
        assert_eq!(
            split_host_port("mx.example.com:2525"),
            Some(("mx.example.com", Some(2525)))
        );
        assert_eq!(split_host_port("[10.0.0.1]"), Some(("10.0.0.1", None)));
        assert_eq!(split_host_port("[::1]:25"), Some(("::1", Some(25))));
        assert_eq!(split_host_port("10.0.0.1:25"), Some(("10.0.0.1", Some(25))));
        assert_eq!(split_host_port("::1"), Some(("::1", None)));
        assert_eq!(split_host_port("host:0"), None);
        assert_eq!(split_host_port("host:99999"), None);
        assert_eq!(split_host_port("bad host:25"), None);
        assert_eq!(split_host_port("[nonsense]:25"), None);
        assert_eq!(split_host_port(""), None);
    }

    #[test]
    fn proxy_address_needs_a_port() {
        let err = "10.0.0.1".parse::<HostPort>().unwrap_err();
        assert!(err.contains("host:port"), "{err}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5 mins").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("45").unwrap(), Duration::from_secs(45));
        let err = parse_duration("soon").unwrap_err();
        assert!(err.contains("\"5 mins\""), "{err}");
    }
}
