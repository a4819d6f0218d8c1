//! Connect through an egress source: from the right address, through the right proxy,
//! or fail with an error an operator understands.
//!
//! [`connect`] takes an [`EgressSource`], a destination and one deadline for the
//! whole attempt, and returns a [`Connection`]: the TCP stream (a byte pipe to the
//! destination, whatever the route) and the [`EgressAddress`] the destination will see.
//!
//! - **Direct**: socket2, `TCP_NODELAY`, `IP_BIND_ADDRESS_NO_PORT`, bind
//!   `source_address`, connect.
//! - **HAProxy**: connect to `ha_proxy_server` (from `source_address` when set), send a
//!   PROXY v2 header (ppp) whose source is `ha_proxy_source_address`.
//! - **SOCKS5**: connect to `socks5_proxy_server`, authenticate (none or RFC 1929), then
//!   a standard CONNECT (tokio-socks) or, with `socks5_proxy_source_address`, the
//!   KumoProxy convention (BIND the source, then CONNECT).
//!
//! Proxy host names resolve at connect time; each address is tried in turn within
//! the deadline, skipping those of the wrong family for `source_address`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), egress_connect::ConnectError> {
//! use egress_source::EgressSource;
//! use std::time::Duration;
//!
//! let mut src = EgressSource::named("ip-2");
//! src.source_address = Some("127.0.0.2".parse().unwrap());
//! let conn = egress_connect::connect(&src, "127.0.0.1:25".parse().unwrap(), Duration::from_secs(10)).await?;
//! println!("connected, the destination sees {}", conn.egress);
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod error;
mod haproxy;
mod resolve;
mod socket;
mod socks5;

pub use error::{ConnectError, Phase, ProxyKind};
pub use haproxy::proxy_v2_header;
pub use resolve::{Resolve, ResolveFuture, StaticResolver, SystemResolver};
pub use socks5::{read_socks5_reply, reply_in_words};

use egress_source::{EgressSource, HostPort, Route};
use socket::{connect_from, SocketError};
use socks5::Socks5Failure;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

/// An open connection to the destination, through a source.
#[derive(Debug)]
pub struct Connection {
    /// A byte pipe to the destination (any proxy handshake is done).
    pub stream: TcpStream,
    /// The address the destination will see, and how the connection got there.
    pub egress: EgressAddress,
}

/// The address a destination sees a connection come from, and the route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EgressAddress {
    /// The source IP the destination sees, when known. Direct: the socket's local
    /// address. HAProxy: `ha_proxy_source_address` (the protocol cannot confirm it).
    /// SOCKS5: the address in the proxy's CONNECT reply (unknown when it reports 0.0.0.0).
    pub ip: Option<IpAddr>,
    /// The route.
    pub via: Via,
}

/// The route a connection took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Straight to the destination.
    Direct,
    /// Through the HAProxy at this address.
    HaProxy(SocketAddr),
    /// Through the SOCKS5 proxy at this address.
    Socks5(SocketAddr),
}

impl EgressAddress {
    /// The proxy, if the route has one.
    pub fn proxy(&self) -> Option<(ProxyKind, SocketAddr)> {
        match self.via {
            Via::Direct => None,
            Via::HaProxy(a) => Some((ProxyKind::HaProxy, a)),
            Via::Socks5(a) => Some((ProxyKind::Socks5, a)),
        }
    }

    /// Text for a timeout waiting for the destination's banner: HAProxy cannot report
    /// that it failed to bind `ha_proxy_source_address` or to connect onwards, so
    /// such a failure arrives as silence.
    pub fn silence_hint(&self) -> &'static str {
        match self.via {
            Via::HaProxy(_) => " (HAProxy cannot report a failed bind or connect: check that `ha_proxy_source_address` is configured on the HAProxy host and the backend uses `source 0.0.0.0 usesrc clientip`)",
            _ => "",
        }
    }
}

impl fmt::Display for EgressAddress {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.ip {
            Some(ip) => write!(f, "{ip}")?,
            None => f.write_str("unknown address")?,
        }
        match self.via {
            Via::Direct => f.write_str(" (direct)"),
            Via::HaProxy(p) => write!(f, " via HAProxy {p}"),
            Via::Socks5(p) => write!(f, " via SOCKS5 {p}"),
        }
    }
}

/// Connects through `source` with the operating system's resolver for proxy names.
pub async fn connect(
    source: &EgressSource,
    destination: SocketAddr,
    timeout: Duration,
) -> Result<Connection, ConnectError> {
    Connector::default()
        .connect(source, destination, timeout)
        .await
}

/// Connects through sources, resolving proxy names with a chosen [`Resolve`].
#[derive(Clone)]
pub struct Connector {
    resolver: Arc<dyn Resolve>,
}

impl Default for Connector {
    fn default() -> Self {
        Connector::new(Arc::new(SystemResolver))
    }
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.debug_struct("Connector").finish_non_exhaustive()
    }
}

impl Connector {
    /// A connector that resolves proxy names with `resolver`.
    pub fn new(resolver: Arc<dyn Resolve>) -> Self {
        Connector { resolver }
    }

    /// Connects to `destination` through `source`; `timeout` bounds the whole
    /// attempt (resolution, every proxy address, the handshake).
    ///
    /// The source should have passed [`EgressSource::validate`].
    pub async fn connect(
        &self,
        source: &EgressSource,
        destination: SocketAddr,
        timeout: Duration,
    ) -> Result<Connection, ConnectError> {
        let attempt = Attempt {
            source,
            deadline: Instant::now() + timeout,
            timeout,
        };
        match source.route() {
            Route::Direct => {
                let stream = attempt.direct(destination).await?;
                let ip = stream.local_addr().ok().map(|a| a.ip());
                Ok(Connection {
                    stream,
                    egress: EgressAddress {
                        ip,
                        via: Via::Direct,
                    },
                })
            }
            Route::HaProxy {
                server,
                source_address,
            } => {
                attempt.same_family("ha_proxy_source_address", source_address, destination)?;
                let (mut stream, proxy) = self
                    .connect_proxy(&attempt, ProxyKind::HaProxy, server)
                    .await?;
                let header_source = SocketAddr::new(source_address, 0);
                attempt
                    .within(
                        Phase::ProxyHandshake,
                        proxy.to_string(),
                        haproxy::send_header(&mut stream, header_source, destination),
                    )
                    .await?
                    .map_err(|e| attempt.protocol(ProxyKind::HaProxy, proxy, e.to_string()))?;
                Ok(Connection {
                    stream,
                    egress: EgressAddress {
                        ip: Some(source_address),
                        via: Via::HaProxy(proxy),
                    },
                })
            }
            Route::Socks5 {
                server,
                source_address,
                credentials,
            } => {
                if let Some(ip) = source_address {
                    attempt.same_family("socks5_proxy_source_address", ip, destination)?;
                }
                let (mut stream, proxy) = self
                    .connect_proxy(&attempt, ProxyKind::Socks5, server)
                    .await?;
                let outcome = match source_address {
                    Some(ip) => {
                        let handshake =
                            socks5::connect_from_source(&mut stream, ip, destination, credentials);
                        attempt
                            .within(Phase::ProxyHandshake, proxy.to_string(), handshake)
                            .await?
                            .map(|bound| (stream, bound))
                    }
                    None => {
                        let handshake = socks5::connect_standard(stream, destination, credentials);
                        attempt
                            .within(Phase::ProxyHandshake, proxy.to_string(), handshake)
                            .await?
                    }
                };
                let (stream, ip) = outcome
                    .map_err(|f| attempt.socks_failure(f, proxy, destination, source_address))?;
                Ok(Connection {
                    stream,
                    egress: EgressAddress {
                        ip,
                        via: Via::Socks5(proxy),
                    },
                })
            }
        }
    }

    /// Resolves the proxy and tries each address (of the right family) in turn.
    async fn connect_proxy(
        &self,
        attempt: &Attempt<'_>,
        kind: ProxyKind,
        server: &HostPort,
    ) -> Result<(TcpStream, SocketAddr), ConnectError> {
        let candidates = match server.ip() {
            Some(ip) => vec![SocketAddr::new(ip, server.port)],
            None => attempt
                .within(
                    Phase::ResolveProxy,
                    server.to_string(),
                    self.resolver.resolve(&server.host, server.port),
                )
                .await?
                .map_err(|error| ConnectError::ResolveProxy {
                    source_name: attempt.name(),
                    kind,
                    proxy: server.to_string(),
                    error,
                })?,
        };
        let local = attempt.source.source_address;
        let usable: Vec<SocketAddr> = candidates
            .iter()
            .copied()
            .filter(|c| local.is_none_or(|l| l.is_ipv4() == c.is_ipv4()))
            .collect();
        if usable.is_empty() && !candidates.is_empty() {
            return Err(ConnectError::FamilyMismatch {
                source_name: attempt.name(),
                detail: format!(
                    "{kind} proxy '{server}' has only addresses ({}) of a different family from `source_address` {}",
                    candidates.iter().map(|c| c.ip().to_string()).collect::<Vec<_>>().join(", "),
                    local.map(|l| l.to_string()).unwrap_or_default()
                ),
            });
        }
        let mut attempts = Vec::new();
        for addr in usable {
            match attempt
                .within(
                    Phase::ConnectProxy,
                    format!("{kind} proxy {addr}"),
                    connect_from(local, addr),
                )
                .await?
            {
                Ok(stream) => return Ok((stream, addr)),
                Err(SocketError::Bind(error)) => return Err(attempt.bind_error(error, addr)),
                Err(SocketError::Connect(error)) => attempts.push((addr, error)),
            }
        }
        Err(ConnectError::ProxyUnreachable {
            source_name: attempt.name(),
            kind,
            proxy: server.to_string(),
            attempts,
        })
    }
}

/// One connect attempt: the source and the deadline, with the error constructors
/// that need them.
struct Attempt<'a> {
    source: &'a EgressSource,
    deadline: Instant,
    timeout: Duration,
}

impl Attempt<'_> {
    fn name(&self) -> String {
        self.source.name.clone()
    }

    /// Runs `fut` until the deadline; a timeout names `phase` and `peer`.
    async fn within<T>(
        &self,
        phase: Phase,
        peer: String,
        fut: impl Future<Output = T>,
    ) -> Result<T, ConnectError> {
        timeout_at(self.deadline, fut)
            .await
            .map_err(|_| ConnectError::Timeout {
                source_name: self.name(),
                phase,
                peer,
                after: self.timeout,
            })
    }

    async fn direct(&self, destination: SocketAddr) -> Result<TcpStream, ConnectError> {
        let local = self.source.source_address;
        match self
            .within(
                Phase::Connect,
                destination.to_string(),
                connect_from(local, destination),
            )
            .await?
        {
            Ok(stream) => Ok(stream),
            Err(SocketError::Bind(error)) => Err(self.bind_error(error, destination)),
            Err(SocketError::Connect(error)) => Err(ConnectError::Connect {
                source_name: self.name(),
                destination,
                from: local.map_or_else(|| "a kernel-chosen address".into(), |ip| ip.to_string()),
                error,
            }),
        }
    }

    fn bind_error(&self, error: std::io::Error, peer: SocketAddr) -> ConnectError {
        ConnectError::Bind {
            source_name: self.name(),
            address: self
                .source
                .source_address
                .unwrap_or(IpAddr::from([0, 0, 0, 0])),
            peer,
            error,
        }
    }

    fn same_family(
        &self,
        field: &str,
        ip: IpAddr,
        destination: SocketAddr,
    ) -> Result<(), ConnectError> {
        if ip.is_ipv4() == destination.is_ipv4() {
            return Ok(());
        }
        Err(ConnectError::FamilyMismatch {
            source_name: self.name(),
            detail: format!(
                "`{field}` {ip} and the destination {destination} are of different address families; the proxy cannot send from one family to the other (use a source of the destination's family)"
            ),
        })
    }

    fn protocol(&self, kind: ProxyKind, proxy: SocketAddr, detail: String) -> ConnectError {
        ConnectError::ProxyProtocol {
            source_name: self.name(),
            kind,
            proxy,
            phase: Phase::ProxyHandshake,
            detail,
        }
    }

    fn socks_failure(
        &self,
        failure: Socks5Failure,
        proxy: SocketAddr,
        destination: SocketAddr,
        requested: Option<IpAddr>,
    ) -> ConnectError {
        let source_name = self.name();
        match failure {
            Socks5Failure::Refused(reply) => ConnectError::ProxyRefused {
                source_name,
                proxy,
                destination,
                reply,
            },
            Socks5Failure::Auth(detail) => ConnectError::ProxyAuthFailed {
                source_name,
                proxy,
                detail,
            },
            Socks5Failure::SourceBind(detail) => ConnectError::SourceBindUnsupported {
                source_name,
                proxy,
                requested: requested.unwrap_or(IpAddr::from([0, 0, 0, 0])),
                detail,
            },
            Socks5Failure::SourceRefused(reply) => ConnectError::SourceRefusedByProxy {
                source_name,
                proxy,
                requested: requested.unwrap_or(IpAddr::from([0, 0, 0, 0])),
                reply,
            },
            Socks5Failure::Protocol(detail) => self.protocol(ProxyKind::Socks5, proxy, detail),
        }
    }
}
