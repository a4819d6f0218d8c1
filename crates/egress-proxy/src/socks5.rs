//! The SOCKS5 wire, server side (RFC 1928, RFC 1929): pure parsers over bytes
//! received so far and encoders for the replies. No I/O, so the parsers are
//! fuzzed and tested alone.
//!
//! Written here rather than taken from a crate: the server crates on crates.io
//! bundle their own accept loop and connect policy, and what egress-proxy needs
//! is exactly the part they hide — answering KumoProxy's BIND-then-CONNECT with
//! the address really bound, and refusing by rule with the right code.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// The protocol version byte.
pub const VERSION: u8 = 0x05;
/// No authentication (RFC 1928 §3).
pub const NO_AUTH: u8 = 0x00;
/// Username/password (RFC 1929).
pub const USER_PASS: u8 = 0x02;
/// No acceptable method.
pub const NO_ACCEPTABLE: u8 = 0xff;

/// Reply codes (RFC 1928 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ReplyCode {
    /// Succeeded.
    Succeeded = 0x00,
    /// General SOCKS server failure.
    ServerFailure = 0x01,
    /// Connection not allowed by ruleset.
    NotAllowed = 0x02,
    /// Network unreachable.
    NetworkUnreachable = 0x03,
    /// Host unreachable.
    HostUnreachable = 0x04,
    /// Connection refused.
    ConnectionRefused = 0x05,
    /// TTL expired (used for timeouts, as KumoProxy does).
    TtlExpired = 0x06,
    /// Command not supported.
    CommandNotSupported = 0x07,
    /// Address type not supported.
    AddressTypeNotSupported = 0x08,
}

/// A request's command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// CONNECT.
    Connect,
    /// BIND — in KumoProxy's convention, "send from this address".
    Bind,
    /// UDP ASSOCIATE (refused).
    UdpAssociate,
    /// Anything else (refused).
    Other(u8),
}

/// Where a request points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An address and port.
    Addr(SocketAddr),
    /// A host name the proxy resolves, and a port.
    Name(String, u16),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Addr(a) => write!(f, "{a}"),
            Target::Name(n, p) => write!(f, "{n}:{p}"),
        }
    }
}

/// A request (RFC 1928 §4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// What is asked.
    pub command: Command,
    /// Of where.
    pub target: Target,
}

/// Bytes that cannot be a SOCKS5 message; the session ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// The version byte is not 5 (or 1 for RFC 1929).
    Version(u8),
    /// An address type other than 1, 3, 4 (answer 0x08).
    AddressType(u8),
    /// A greeting offering no method at all.
    NoMethods,
    /// A host name that is not UTF-8 or is empty.
    BadName,
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Version(v) => write!(f, "not SOCKS5 (version byte 0x{v:02x})"),
            WireError::AddressType(t) => write!(f, "unknown address type 0x{t:02x}"),
            WireError::NoMethods => f.write_str("a greeting offering no authentication method"),
            WireError::BadName => f.write_str("an empty or non-UTF-8 host name"),
        }
    }
}

/// `Ok(None)`: more bytes are needed; `Ok(Some((value, used)))`: parsed from the
/// first `used` bytes.
pub type Parsed<T> = Result<Option<(T, usize)>, WireError>;

/// The greeting: the methods the client offers.
///
/// ```
/// use egress_proxy::socks5::parse_greeting;
/// assert_eq!(parse_greeting(&[5, 2, 0, 2]).unwrap(), Some((vec![0, 2], 4)));
/// assert_eq!(parse_greeting(&[5, 2, 0]).unwrap(), None);
/// assert!(parse_greeting(&[4, 1, 0]).is_err());
/// ```
pub fn parse_greeting(buf: &[u8]) -> Parsed<Vec<u8>> {
    let [version, count, rest @ ..] = buf else {
        return check_version(buf.first(), VERSION).map(|_| None);
    };
    check_version(Some(version), VERSION)?;
    let n = usize::from(*count);
    if n == 0 {
        return Err(WireError::NoMethods);
    }
    Ok(rest.get(..n).map(|m| (m.to_vec(), 2 + n)))
}

/// RFC 1929's username/password message.
///
/// ```
/// use egress_proxy::socks5::parse_credentials;
/// let msg = [1, 2, b'u', b'1', 2, b'p', b'w'];
/// assert_eq!(
///     parse_credentials(&msg).unwrap(),
///     Some(((b"u1".to_vec(), b"pw".to_vec()), 7))
/// );
/// ```
pub fn parse_credentials(buf: &[u8]) -> Parsed<(Vec<u8>, Vec<u8>)> {
    check_version(buf.first(), 0x01)?;
    let Some(&ulen) = buf.get(1) else {
        return Ok(None);
    };
    let ulen = usize::from(ulen);
    let Some(&plen) = buf.get(2 + ulen) else {
        return Ok(None);
    };
    let plen = usize::from(plen);
    let end = 3 + ulen + plen;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some((
        (buf[2..2 + ulen].to_vec(), buf[3 + ulen..end].to_vec()),
        end,
    )))
}

/// A request.
///
/// ```
/// use egress_proxy::socks5::{parse_request, Command, Target};
/// let bind = [5, 2, 0, 1, 127, 0, 0, 5, 0, 0];
/// let (req, used) = parse_request(&bind).unwrap().unwrap();
/// assert_eq!((req.command, used), (Command::Bind, 10));
/// assert_eq!(req.target, Target::Addr("127.0.0.5:0".parse().unwrap()));
/// let name = [5, 1, 0, 3, 4, b'h', b'o', b's', b't', 0, 25];
/// let (req, _) = parse_request(&name).unwrap().unwrap();
/// assert_eq!(req.target, Target::Name("host".into(), 25));
/// ```
pub fn parse_request(buf: &[u8]) -> Parsed<Request> {
    check_version(buf.first(), VERSION)?;
    let (Some(&cmd), Some(&atyp)) = (buf.get(1), buf.get(3)) else {
        return Ok(None);
    };
    let command = match cmd {
        0x01 => Command::Connect,
        0x02 => Command::Bind,
        0x03 => Command::UdpAssociate,
        other => Command::Other(other),
    };
    let (host, host_end) = match atyp {
        0x01 => match buf.get(4..8) {
            Some(b) => (Host::Ip(IpAddr::from(array::<4>(b))), 8),
            None => return Ok(None),
        },
        0x04 => match buf.get(4..20) {
            Some(b) => (Host::Ip(IpAddr::from(array::<16>(b))), 20),
            None => return Ok(None),
        },
        0x03 => {
            let Some(&len) = buf.get(4) else {
                return Ok(None);
            };
            let end = 5 + usize::from(len);
            match buf.get(5..end) {
                Some(b) => match std::str::from_utf8(b) {
                    Ok(name) if !name.is_empty() => (Host::Name(name.to_owned()), end),
                    _ => return Err(WireError::BadName),
                },
                None => return Ok(None),
            }
        }
        other => return Err(WireError::AddressType(other)),
    };
    let Some(port) = buf.get(host_end..host_end + 2) else {
        return Ok(None);
    };
    let port = u16::from_be_bytes([port[0], port[1]]);
    let target = match host {
        Host::Ip(ip) => Target::Addr(SocketAddr::new(ip, port)),
        Host::Name(name) => Target::Name(name, port),
    };
    Ok(Some((Request { command, target }, host_end + 2)))
}

enum Host {
    Ip(IpAddr),
    Name(String),
}

/// The first `N` bytes of `b` (which the caller sliced to length `N`).
fn array<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&b[..N]);
    out
}

fn check_version(byte: Option<&u8>, expected: u8) -> Result<(), WireError> {
    match byte {
        Some(v) if *v != expected => Err(WireError::Version(*v)),
        _ => Ok(()),
    }
}

/// A reply (RFC 1928 §6) carrying `bound`: at most 22 bytes, returned with its
/// length so no allocation is made.
///
/// ```
/// use egress_proxy::socks5::{reply, ReplyCode};
/// let (buf, len) = reply(ReplyCode::Succeeded, "127.0.0.5:0".parse().unwrap());
/// assert_eq!(&buf[..len], &[5, 0, 0, 1, 127, 0, 0, 5, 0, 0]);
/// ```
pub fn reply(code: ReplyCode, bound: SocketAddr) -> ([u8; 22], usize) {
    let mut buf = [0u8; 22];
    buf[..3].copy_from_slice(&[VERSION, code as u8, 0]);
    let len = match bound.ip() {
        IpAddr::V4(ip) => {
            buf[3] = 0x01;
            buf[4..8].copy_from_slice(&ip.octets());
            8
        }
        IpAddr::V6(ip) => {
            buf[3] = 0x04;
            buf[4..20].copy_from_slice(&ip.octets());
            20
        }
    };
    buf[len..len + 2].copy_from_slice(&bound.port().to_be_bytes());
    (buf, len + 2)
}

/// A failure reply (the bound address all zeroes).
pub fn failure(code: ReplyCode) -> ([u8; 22], usize) {
    reply(code, SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_prefix_of_a_request_asks_for_more_and_the_whole_parses() {
        let msgs: [&[u8]; 3] = [
            &[5, 1, 0, 1, 10, 0, 0, 1, 0, 25],
            &[
                5, 1, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0xbb,
            ],
            &[5, 1, 0, 3, 3, b'm', b'x', b'1', 0, 25],
        ];
        for msg in msgs {
            for cut in 0..msg.len() {
                assert_eq!(parse_request(&msg[..cut]), Ok(None), "{msg:?} cut at {cut}");
            }
            let (_, used) = parse_request(msg).unwrap().unwrap();
            assert_eq!(used, msg.len());
        }
    }

    #[test]
    fn bad_bytes_are_errors_not_panics() {
        assert_eq!(parse_request(&[4, 1, 0, 1]), Err(WireError::Version(4)));
        assert_eq!(
            parse_request(&[5, 1, 0, 9, 0]),
            Err(WireError::AddressType(9))
        );
        assert_eq!(
            parse_request(&[5, 1, 0, 3, 0, 0, 25]),
            Err(WireError::BadName)
        );
        assert_eq!(
            parse_request(&[5, 1, 0, 3, 1, 0xff, 0, 25]),
            Err(WireError::BadName)
        );
        assert_eq!(parse_greeting(&[5, 0]), Err(WireError::NoMethods));
        assert_eq!(parse_credentials(&[5]), Err(WireError::Version(5)));
        let (req, _) = parse_request(&[5, 9, 0, 1, 1, 2, 3, 4, 0, 1])
            .unwrap()
            .unwrap();
        assert_eq!(req.command, Command::Other(9));
    }

    #[test]
    fn replies_carry_ipv6() {
        let (buf, len) = reply(ReplyCode::Succeeded, "[::1]:2525".parse().unwrap());
        assert_eq!(len, 22);
        assert_eq!(buf[3], 0x04);
        assert_eq!(&buf[20..22], &2525u16.to_be_bytes());
    }
}
