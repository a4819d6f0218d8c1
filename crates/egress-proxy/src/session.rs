//! One client's session: greeting, RFC 1929 authentication when required, the
//! optional BIND that chooses the source address (KumoProxy's convention), the
//! CONNECT, then bytes both ways until both sides are done — each phase under the
//! listener's timeout, and one log line at the end.

use crate::metrics::ListenerMetrics;
use crate::pump::Pump;
use crate::rules::Rules;
use crate::socks5::{self, Command, ReplyCode, Request, Target, WireError};
use socket2::{Domain, Socket, Type};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// What a session came to (the `outcome` of its log line).
#[derive(Debug)]
pub struct Summary {
    /// The authenticated user, if any.
    pub user: Option<String>,
    /// The source address asked for with BIND.
    pub source: Option<IpAddr>,
    /// The CONNECT target.
    pub destination: Option<String>,
    /// Bytes from the client to the destination.
    pub up: u64,
    /// Bytes from the destination to the client.
    pub down: u64,
    /// `relayed`, or why not.
    pub outcome: String,
    /// Why it failed, as a metric label (`not_allowed`, `auth`, `connect`,
    /// `timeout`, `unsupported`, `protocol`, `client`, `io`); none when relayed.
    pub failure: Option<&'static str>,
}

/// Serves one client (plain TCP, or inside TLS); `local` is the address it
/// connected to.
#[allow(clippy::too_many_arguments)]
pub async fn serve<S: Pump>(
    client: S,
    peer: SocketAddr,
    local: SocketAddr,
    rules: &Rules,
    timeout: Duration,
    use_splice: bool,
    metrics: Option<&ListenerMetrics>,
) -> Summary {
    let started = Instant::now();
    let mut s = Session {
        client,
        peer,
        local,
        rules,
        timeout,
        buf: Vec::with_capacity(64),
        summary: Summary {
            user: None,
            source: None,
            destination: None,
            up: 0,
            down: 0,
            outcome: String::new(),
            failure: None,
        },
    };
    let outcome = match s.negotiate().await {
        Ok(remote) => {
            if let Some(metrics) = metrics {
                metrics.outbound(s.summary.source);
            }
            s.relay(remote, use_splice).await
        }
        Err(why) => {
            s.summary
                .failure
                .get_or_insert(if why.starts_with("ended") {
                    "client"
                } else {
                    "protocol"
                });
            why
        }
    };
    let mut summary = s.summary;
    summary.outcome = outcome;
    if let Some(metrics) = metrics {
        metrics.ended(summary.up, summary.down, summary.failure);
    }
    tracing::info!(
        client = %peer,
        user = %summary.user.as_deref().unwrap_or("-"),
        source = %summary.source.map_or("-".to_owned(), |s| s.to_string()),
        destination = %summary.destination.as_deref().unwrap_or("-"),
        up = summary.up,
        down = summary.down,
        ms = started.elapsed().as_millis() as u64,
        outcome = %summary.outcome,
        "session"
    );
    summary
}

struct Session<'a, S> {
    client: S,
    peer: SocketAddr,
    local: SocketAddr,
    rules: &'a Rules,
    timeout: Duration,
    /// Bytes read from the client and not yet parsed.
    buf: Vec<u8>,
    summary: Summary,
}

/// How a negotiation ends early: the words for the log line.
type Ended = String;

impl<S: Pump> Session<'_, S> {
    /// Up to a connected destination socket.
    async fn negotiate(&mut self) -> Result<TcpStream, Ended> {
        let allowed = self.rules.client_allowed(self.peer.ip());
        let methods = self.read(socks5::parse_greeting).await?;
        let method = match &self.rules.auth {
            _ if !allowed => socks5::NO_AUTH,
            Some(_) => socks5::USER_PASS,
            None => socks5::NO_AUTH,
        };
        if !methods.contains(&method) {
            self.write(&[socks5::VERSION, socks5::NO_ACCEPTABLE])
                .await?;
            return Err(match method {
                socks5::USER_PASS => "refused: the client offered no username/password method and require_auth is set".into(),
                _ => "refused: the client offered no method this proxy accepts".into(),
            });
        }
        self.write(&[socks5::VERSION, method]).await?;
        if method == socks5::USER_PASS {
            let (user, password) = self.read(socks5::parse_credentials).await?;
            self.summary.user = Some(String::from_utf8_lossy(&user).into_owned());
            let ok = match &self.rules.auth {
                Some(auth) => auth.check(&user, &password, self.peer, self.local).await,
                None => false,
            };
            if !ok {
                self.summary.failure = Some("auth");
                self.write(&[0x01, 0x01]).await?;
                return Err("refused: username/password not accepted".into());
            }
            self.write(&[0x01, 0x00]).await?;
        }
        if !allowed {
            self.read(socks5::parse_request).await?;
            return Err(self
                .refuse(
                    ReplyCode::NotAllowed,
                    format!(
                        "refused: client {} is not in the allowed clients",
                        self.peer.ip()
                    ),
                )
                .await);
        }
        let mut bound: Option<TcpSocket> = None;
        // At most a BIND, then a CONNECT.
        for _ in 0..2 {
            let request = self.read(socks5::parse_request).await?;
            match request.command {
                Command::Bind if bound.is_none() => bound = Some(self.bind(&request).await?),
                Command::Connect => return self.connect(&request, bound).await,
                Command::Bind => {
                    return Err(self
                        .refuse(ReplyCode::ServerFailure, "refused: a second BIND".into())
                        .await)
                }
                Command::UdpAssociate | Command::Other(_) => {
                    return Err(self
                        .refuse(
                            ReplyCode::CommandNotSupported,
                            format!("refused: command {:?} is not supported", request.command),
                        )
                        .await)
                }
            }
        }
        Err("refused: no CONNECT after the BIND".into())
    }

    /// KumoProxy's BIND: the source address the CONNECT will leave from.
    async fn bind(&mut self, request: &Request) -> Result<TcpSocket, Ended> {
        let Target::Addr(addr) = request.target else {
            return Err(self
                .refuse(
                    ReplyCode::AddressTypeNotSupported,
                    "refused: BIND to a host name".into(),
                )
                .await);
        };
        self.summary.source = Some(addr.ip());
        if let Some(why) = self.rules.source_refusal(addr.ip()) {
            return Err(self
                .refuse(ReplyCode::NotAllowed, format!("refused: {why}"))
                .await);
        }
        match bind_source(addr.ip()) {
            Ok((socket, bound)) => {
                let (buf, len) = socks5::reply(ReplyCode::Succeeded, bound);
                self.write(&buf[..len]).await?;
                Ok(socket)
            }
            Err(e) if e.kind() == io::ErrorKind::AddrNotAvailable => Err(self
                .refuse(
                    ReplyCode::NotAllowed,
                    format!(
                        "refused: source address {} is not assigned to this host",
                        addr.ip()
                    ),
                )
                .await),
            Err(e) => Err(self
                .refuse(
                    ReplyCode::ServerFailure,
                    format!("failed: binding {}: {e}", addr.ip()),
                )
                .await),
        }
    }

    async fn connect(
        &mut self,
        request: &Request,
        bound: Option<TcpSocket>,
    ) -> Result<TcpStream, Ended> {
        self.summary.destination = Some(request.target.to_string());
        let target = match &request.target {
            Target::Addr(addr) => *addr,
            Target::Name(name, port) => {
                let found = tokio::time::timeout(
                    self.timeout,
                    tokio::net::lookup_host((name.as_str(), *port)),
                )
                .await;
                let family = self.summary.source.map(|s| s.is_ipv4());
                let pick = |addrs: Vec<SocketAddr>| {
                    addrs
                        .into_iter()
                        .find(|a| family.is_none_or(|v4| a.is_ipv4() == v4))
                };
                match found {
                    Ok(Ok(addrs)) => match pick(addrs.collect()) {
                        Some(a) => a,
                        None => {
                            return Err(self
                                .refuse(
                                    ReplyCode::HostUnreachable,
                                    format!("failed: {name} has no address of the source's family"),
                                )
                                .await)
                        }
                    },
                    Ok(Err(e)) => {
                        return Err(self
                            .refuse(
                                ReplyCode::HostUnreachable,
                                format!("failed: resolving {name}: {e}"),
                            )
                            .await)
                    }
                    Err(_) => {
                        return Err(self
                            .refuse(
                                ReplyCode::TtlExpired,
                                format!("failed: resolving {name} took longer than the timeout"),
                            )
                            .await)
                    }
                }
            }
        };
        if let Some(why) = self.rules.port_refusal(target.port()) {
            return Err(self
                .refuse(ReplyCode::NotAllowed, format!("refused: {why}"))
                .await);
        }
        let socket = match bound {
            Some(socket) => socket,
            None => match target {
                SocketAddr::V4(_) => TcpSocket::new_v4(),
                SocketAddr::V6(_) => TcpSocket::new_v6(),
            }
            .map_err(|e| format!("failed: socket: {e}"))?,
        };
        match tokio::time::timeout(self.timeout, socket.connect(target)).await {
            Ok(Ok(remote)) => {
                let _ = remote.set_nodelay(true);
                let local = remote
                    .local_addr()
                    .unwrap_or_else(|_| SocketAddr::new(IpAddr::from([0, 0, 0, 0]), 0));
                let (buf, len) = socks5::reply(ReplyCode::Succeeded, local);
                self.write(&buf[..len]).await?;
                Ok(remote)
            }
            Ok(Err(e)) => {
                let code = code_for(&e);
                Err(self
                    .refuse(code, format!("failed: connecting to {target}: {e}"))
                    .await)
            }
            Err(_) => Err(self
                .refuse(
                    ReplyCode::TtlExpired,
                    format!("failed: connecting to {target}: no answer within the timeout"),
                )
                .await),
        }
    }

    /// Bytes both ways until both directions end.
    async fn relay(&mut self, mut remote: TcpStream, use_splice: bool) -> String {
        if !self.buf.is_empty() {
            // Whatever the client pipelined after CONNECT belongs to the destination.
            if let Err(e) = remote.write_all(&self.buf).await {
                return format!("failed: {e}");
            }
            self.summary.up += self.buf.len() as u64;
            self.buf.clear();
        }
        match self
            .client
            .pump(&mut remote, self.timeout, use_splice)
            .await
        {
            Ok((up, down)) => {
                self.summary.up += up;
                self.summary.down += down;
                "relayed".into()
            }
            Err((up, down, e)) => {
                self.summary.up += up;
                self.summary.down += down;
                self.summary.failure = Some(match e.kind() {
                    io::ErrorKind::TimedOut => "timeout",
                    _ => "io",
                });
                format!("ended: {e}")
            }
        }
    }

    /// Reads until `parse` has a whole message, within the timeout.
    async fn read<T>(&mut self, parse: impl Fn(&[u8]) -> socks5::Parsed<T>) -> Result<T, Ended> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            match parse(&self.buf) {
                Ok(Some((value, used))) => {
                    self.buf.drain(..used);
                    return Ok(value);
                }
                Ok(None) => {}
                Err(e) => return Err(self.wire_error(e).await),
            }
            if self.buf.len() > 600 {
                return Err("refused: an oversized message".into());
            }
            let mut chunk = [0u8; 512];
            let n = match tokio::time::timeout_at(deadline, self.client.read(&mut chunk)).await {
                Ok(Ok(0)) => return Err("ended: the client closed mid-negotiation".into()),
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return Err(format!("ended: {e}")),
                Err(_) => return Err("ended: the client said nothing for the timeout".into()),
            };
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn wire_error(&mut self, e: WireError) -> Ended {
        if let WireError::AddressType(_) = e {
            return self
                .refuse(ReplyCode::AddressTypeNotSupported, format!("refused: {e}"))
                .await;
        }
        format!("refused: {e}")
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), Ended> {
        match tokio::time::timeout(self.timeout, self.client.write_all(bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("ended: {e}")),
            Err(_) => Err("ended: the client stopped reading".into()),
        }
    }

    /// Sends a failure reply; the words are the log line's outcome.
    async fn refuse(&mut self, code: ReplyCode, why: String) -> Ended {
        self.summary.failure.get_or_insert(match code {
            ReplyCode::NotAllowed => "not_allowed",
            ReplyCode::TtlExpired => "timeout",
            ReplyCode::CommandNotSupported | ReplyCode::AddressTypeNotSupported => "unsupported",
            _ => "connect",
        });
        let (buf, len) = socks5::failure(code);
        let _ = self.write(&buf[..len]).await;
        if code == ReplyCode::NotAllowed {
            tracing::warn!(client = %self.peer, "{why}");
        }
        why
    }
}

/// A socket bound to `ip` (port chosen at connect time), and the address bound.
fn bind_source(ip: IpAddr) -> io::Result<(TcpSocket, SocketAddr)> {
    let socket = Socket::new(
        Domain::for_address(SocketAddr::new(ip, 0)),
        Type::STREAM,
        None,
    )?;
    // Without IP_BIND_ADDRESS_NO_PORT each bind reserves a port for every
    // destination; with it the port is picked at connect, per 4-tuple.
    #[cfg(target_os = "linux")]
    {
        use nix::sys::socket::{setsockopt, sockopt::IpBindAddressNoPort};
        let _ = setsockopt(&socket, IpBindAddressNoPort, &true);
    }
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::new(ip, 0).into())?;
    let bound = socket
        .local_addr()?
        .as_socket()
        .unwrap_or(SocketAddr::new(ip, 0));
    Ok((TcpSocket::from_std_stream(socket.into()), bound))
}

/// The SOCKS5 code for a failed connect (as KumoProxy maps them).
fn code_for(e: &io::Error) -> ReplyCode {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => ReplyCode::ConnectionRefused,
        io::ErrorKind::NetworkUnreachable => ReplyCode::NetworkUnreachable,
        io::ErrorKind::HostUnreachable => ReplyCode::HostUnreachable,
        io::ErrorKind::TimedOut => ReplyCode::TtlExpired,
        _ => ReplyCode::ServerFailure,
    }
}
