//! The SOCKS5 route.
//!
//! The standard exchange (greeting, RFC 1929 authentication, CONNECT) is tokio-socks.
//! Choosing the proxy's source address follows the KumoProxy convention: after
//! authentication, a BIND request carrying the source address, its success reply,
//! then a CONNECT request on the same connection. tokio-socks runs exactly one
//! request per connection and does not hand the stream back after a BIND reply, so
//! that exchange is written here — small, and only what the convention needs.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How a SOCKS5 exchange failed, before the caller adds source and proxy names.
#[derive(Debug)]
pub(crate) enum Socks5Failure {
    /// A failure reply to CONNECT (code in words).
    Refused(String),
    /// Authentication refused, or required and not configured.
    Auth(String),
    /// A failure reply to the source BIND, or a different address bound.
    SourceBind(String),
    /// The proxy refused the source address by rule (0x02): it is not assigned
    /// there, or not allowed — the source is unplumbed at the proxy.
    SourceRefused(String),
    /// Malformed reply, closed connection, I/O error.
    Protocol(String),
}

/// The words for a SOCKS5 reply code (RFC 1928 §6).
pub fn reply_in_words(code: u8) -> String {
    match code {
        0x01 => "general SOCKS server failure (0x01)".into(),
        0x02 => "connection not allowed by ruleset (0x02)".into(),
        0x03 => "network unreachable (0x03)".into(),
        0x04 => "host unreachable (0x04)".into(),
        0x05 => "connection refused by the destination (0x05)".into(),
        0x06 => "TTL expired (0x06)".into(),
        0x07 => "command not supported (0x07)".into(),
        0x08 => "address type not supported (0x08)".into(),
        other => format!("unknown reply code 0x{other:02x}"),
    }
}

/// Standard CONNECT through tokio-socks. Returns the stream and the address the
/// proxy reports having bound (None when it reports an unspecified address, as
/// microsocks does).
pub(crate) async fn connect_standard(
    stream: TcpStream,
    destination: SocketAddr,
    credentials: Option<(&str, &str)>,
) -> Result<(TcpStream, Option<IpAddr>), Socks5Failure> {
    use tokio_socks::tcp::Socks5Stream;
    use tokio_socks::{Error, TargetAddr};
    let result = match credentials {
        Some((user, pass)) => {
            Socks5Stream::connect_with_password_and_socket(stream, destination, user, pass).await
        }
        None => Socks5Stream::connect_with_socket(stream, destination).await,
    };
    match result {
        Ok(socks) => {
            let bound = match socks.target_addr() {
                TargetAddr::Ip(addr) => Some(addr.ip()).filter(|ip| !ip.is_unspecified()),
                TargetAddr::Domain(..) => None,
            };
            Ok((socks.into_inner(), bound))
        }
        Err(e) => Err(match e {
            Error::PasswordAuthFailure(code) => {
                Socks5Failure::Auth(format!("username/password refused (status {code}); check `socks5_proxy_username` and `socks5_proxy_password`"))
            }
            Error::NoAcceptableAuthMethods | Error::AuthorizationRequired => Socks5Failure::Auth(match credentials {
                Some(_) => "the proxy accepts none of our methods (username/password)".into(),
                None => "the proxy requires credentials; set `socks5_proxy_username` and `socks5_proxy_password`".into(),
            }),
            Error::GeneralSocksServerFailure => Socks5Failure::Refused(reply_in_words(0x01)),
            Error::ConnectionNotAllowedByRuleset => Socks5Failure::Refused(reply_in_words(0x02)),
            Error::NetworkUnreachable => Socks5Failure::Refused(reply_in_words(0x03)),
            Error::HostUnreachable => Socks5Failure::Refused(reply_in_words(0x04)),
            Error::ConnectionRefused => Socks5Failure::Refused(reply_in_words(0x05)),
            Error::TtlExpired => Socks5Failure::Refused(reply_in_words(0x06)),
            Error::CommandNotSupported => Socks5Failure::Refused(reply_in_words(0x07)),
            Error::AddressTypeNotSupported => Socks5Failure::Refused(reply_in_words(0x08)),
            Error::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Socks5Failure::Protocol("the proxy closed the connection mid-exchange".into())
            }
            other => Socks5Failure::Protocol(other.to_string()),
        }),
    }
}

const VERSION: u8 = 0x05;
const NO_AUTH: u8 = 0x00;
const USER_PASS: u8 = 0x02;
const NO_ACCEPTABLE: u8 = 0xff;
const CMD_CONNECT: u8 = 0x01;
const CMD_BIND: u8 = 0x02;

/// The KumoProxy convention: authenticate, BIND `source`, then CONNECT `destination`.
pub(crate) async fn connect_from_source(
    stream: &mut TcpStream,
    source: IpAddr,
    destination: SocketAddr,
    credentials: Option<(&str, &str)>,
) -> Result<Option<IpAddr>, Socks5Failure> {
    let io = |e: io::Error| {
        Socks5Failure::Protocol(if e.kind() == io::ErrorKind::UnexpectedEof {
            "the proxy closed the connection mid-exchange".into()
        } else {
            e.to_string()
        })
    };
    let method = if credentials.is_some() {
        USER_PASS
    } else {
        NO_AUTH
    };
    stream.write_all(&[VERSION, 1, method]).await.map_err(io)?;
    let mut choice = [0u8; 2];
    stream.read_exact(&mut choice).await.map_err(io)?;
    if choice[0] != VERSION {
        return Err(Socks5Failure::Protocol(format!(
            "not a SOCKS5 server (version byte 0x{:02x})",
            choice[0]
        )));
    }
    match (choice[1], credentials) {
        (m, _) if m == method => {}
        (NO_ACCEPTABLE, None) => {
            return Err(Socks5Failure::Auth(
                "the proxy requires credentials; set `socks5_proxy_username` and `socks5_proxy_password`".into(),
            ))
        }
        (NO_ACCEPTABLE, Some(_)) => {
            return Err(Socks5Failure::Auth("the proxy accepts none of our methods (username/password)".into()))
        }
        (other, _) => return Err(Socks5Failure::Protocol(format!("the proxy chose a method we did not offer (0x{other:02x})"))),
    }
    if let Some((user, pass)) = credentials {
        // Lengths were checked (< 256 bytes) by EgressSource::validate; check again
        // rather than truncate, because a truncated credential is a silent failure.
        let (u, p) = (user.as_bytes(), pass.as_bytes());
        let (Ok(ulen), Ok(plen)) = (u8::try_from(u.len()), u8::try_from(p.len())) else {
            return Err(Socks5Failure::Auth(
                "credentials longer than 255 bytes".into(),
            ));
        };
        let mut msg = vec![0x01, ulen];
        msg.extend_from_slice(u);
        msg.push(plen);
        msg.extend_from_slice(p);
        stream.write_all(&msg).await.map_err(io)?;
        let mut status = [0u8; 2];
        stream.read_exact(&mut status).await.map_err(io)?;
        if status[1] != 0 {
            return Err(Socks5Failure::Auth(format!(
                "username/password refused (status {}); check `socks5_proxy_username` and `socks5_proxy_password`",
                status[1]
            )));
        }
    }

    stream
        .write_all(&request(CMD_BIND, SocketAddr::new(source, 0)))
        .await
        .map_err(io)?;
    let (code, bound) = read_socks5_reply(stream).await.map_err(io)?;
    if code == 0x02 {
        return Err(Socks5Failure::SourceRefused(reply_in_words(code)));
    }
    if code != 0 {
        return Err(Socks5Failure::SourceBind(format!(
            "it answered the BIND request with: {}",
            reply_in_words(code)
        )));
    }
    match bound {
        Some(addr) if addr.ip() == source => {}
        Some(addr) => {
            return Err(Socks5Failure::SourceBind(format!(
            "asked to bind {source}, it bound {} instead (a standard BIND, not a source address)",
            addr.ip()
        )))
        }
        None => {
            return Err(Socks5Failure::SourceBind(
                "its BIND reply carried no IP address".into(),
            ))
        }
    }

    stream
        .write_all(&request(CMD_CONNECT, destination))
        .await
        .map_err(io)?;
    let (code, bound) = read_socks5_reply(stream).await.map_err(io)?;
    if code != 0 {
        return Err(Socks5Failure::Refused(reply_in_words(code)));
    }
    Ok(bound
        .map(|a| a.ip())
        .filter(|ip| !ip.is_unspecified())
        .or(Some(source)))
}

fn request(command: u8, addr: SocketAddr) -> Vec<u8> {
    let mut msg = vec![VERSION, command, 0x00];
    match addr.ip() {
        IpAddr::V4(ip) => {
            msg.push(0x01);
            msg.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            msg.push(0x04);
            msg.extend_from_slice(&ip.octets());
        }
    }
    msg.extend_from_slice(&addr.port().to_be_bytes());
    msg
}

/// Reads a SOCKS5 reply (RFC 1928 §6) from `stream`: the reply code, and the bound
/// address when the proxy gave an IP (a name is read and skipped). Anything that
/// is not a SOCKS5 reply is an `InvalidData` error in words.
pub async fn read_socks5_reply<R: AsyncRead + Unpin>(
    stream: &mut R,
) -> io::Result<(u8, Option<SocketAddr>)> {
    let mut head = [0u8; 4];
    stream.read_exact(&mut head).await?;
    if head[0] != VERSION {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("reply version 0x{:02x} is not SOCKS5", head[0]),
        ));
    }
    let ip = match head[3] {
        0x01 => {
            let mut b = [0u8; 4];
            stream.read_exact(&mut b).await?;
            Some(IpAddr::V4(Ipv4Addr::from(b)))
        }
        0x04 => {
            let mut b = [0u8; 16];
            stream.read_exact(&mut b).await?;
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        0x03 => {
            let mut len = [0u8; 1];
            stream.read_exact(&mut len).await?;
            let mut name = vec![0u8; usize::from(len[0])];
            stream.read_exact(&mut name).await?;
            None
        }
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unknown address type 0x{other:02x} in reply"),
            ))
        }
    };
    let mut port = [0u8; 2];
    stream.read_exact(&mut port).await?;
    Ok((
        head[1],
        ip.map(|ip| SocketAddr::new(ip, u16::from_be_bytes(port))),
    ))
}
