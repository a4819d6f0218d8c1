//! Listening sockets made with an explicit backlog, and the file-descriptor limit
//! a server with thousands of sessions needs.

use socket2::{Domain, Protocol, Socket, Type};
use std::net::SocketAddr;
use tokio::net::TcpListener;

/// Linux's cap on any listen backlog; 4096 since Linux 5.4.
fn somaxconn() -> u32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4096)
}

/// The backlog for a listener that serves up to `max_connections` sessions: enough
/// for all of them to connect at once (mio's fixed 128 dropped bursts into SYN
/// cookies and retransmits), capped by the kernel's `somaxconn`.
pub fn backlog(max_connections: usize) -> u32 {
    let wanted = u32::try_from(max_connections).unwrap_or(u32::MAX).max(128);
    wanted.min(somaxconn())
}

/// Binds `addr` and listens with [`backlog`]; returns the listener and the backlog.
pub fn bind(addr: SocketAddr, max_connections: usize) -> Result<(TcpListener, u32), String> {
    let backlog = backlog(max_connections);
    let fail = |what: &str, e: std::io::Error| {
        format!(
            "cannot listen on {addr} (kumo.start_esmtp_listener listen = '{addr}'): {what}: {e}"
        )
    };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| fail("socket", e))?;
    socket
        .set_reuse_address(true)
        .map_err(|e| fail("SO_REUSEADDR", e))?;
    socket
        .set_nonblocking(true)
        .map_err(|e| fail("non-blocking", e))?;
    socket.bind(&addr.into()).map_err(|e| fail("bind", e))?;
    socket
        .listen(backlog.min(i32::MAX as u32) as i32)
        .map_err(|e| fail("listen", e))?;
    let listener = TcpListener::from_std(socket.into()).map_err(|e| fail("register", e))?;
    Ok((listener, backlog))
}

/// Raises the soft limit on open files to the hard limit: every session holds two
/// descriptors (client and destination), and the usual soft limit of 1024 would
/// refuse connections long before `max_connections`. Returns the new soft limit.
pub fn raise_fd_limit() -> Option<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return Some(hard);
    }
    Some(soft)
}
