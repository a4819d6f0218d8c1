//! The HAProxy route: a PROXY protocol v2 header, built with `ppp`.

use ppp::v2::{Builder, Command, Protocol, Version};
use std::io;
use std::net::SocketAddr;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The header that asks HAProxy to connect to `destination` from `source`.
/// Both must be of one family (checked by the caller, before any connect).
pub fn proxy_v2_header(source: SocketAddr, destination: SocketAddr) -> io::Result<Vec<u8>> {
    Builder::with_addresses(
        Version::Two | Command::Proxy,
        Protocol::Stream,
        (source, destination),
    )
    .build()
}

/// Sends the header; after it, the stream is a byte pipe to the destination.
pub(crate) async fn send_header(
    stream: &mut TcpStream,
    source: SocketAddr,
    destination: SocketAddr,
) -> io::Result<()> {
    let header = proxy_v2_header(source, destination)?;
    stream.write_all(&header).await
}
