//! A TCP connect from an optional local address, under a deadline.

use std::io;
use std::net::{IpAddr, SocketAddr};
use tokio::net::{TcpSocket, TcpStream};

/// Why [`connect_from`] failed: binding is a configuration problem, connecting a
/// network one, and callers report them differently.
pub(crate) enum SocketError {
    Bind(io::Error),
    Connect(io::Error),
}

/// Connects to `peer`, first binding `local` (port 0) when given.
///
/// socket2 lets us set `IP_BIND_ADDRESS_NO_PORT` before `bind`: without it, each bind
/// reserves an ephemeral port for the address alone, so a busy source IP runs out of
/// ports at ~28 000 connections even though the 4-tuples would all be distinct.
pub(crate) async fn connect_from(
    local: Option<IpAddr>,
    peer: SocketAddr,
) -> Result<TcpStream, SocketError> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(peer),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .map_err(SocketError::Connect)?;
    socket.set_tcp_nodelay(true).map_err(SocketError::Connect)?;
    socket.set_nonblocking(true).map_err(SocketError::Connect)?;
    if let Some(ip) = local {
        #[cfg(target_os = "linux")]
        {
            use nix::sys::socket::{setsockopt, sockopt::IpBindAddressNoPort};
            // Best effort: an old kernel without the option still binds correctly.
            let _ = setsockopt(&socket, IpBindAddressNoPort, &true);
        }
        socket
            .bind(&SocketAddr::new(ip, 0).into())
            .map_err(SocketError::Bind)?;
    }
    let socket = TcpSocket::from_std_stream(socket.into());
    socket.connect(peer).await.map_err(SocketError::Connect)
}
