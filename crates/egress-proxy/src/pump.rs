//! Bytes both ways between the client and the destination, until both
//! directions have ended: an end of stream in one direction is passed on as a
//! half-close (`shutdown(Write)`) and the other keeps flowing, as SMTP's QUIT
//! exchange needs. The session ends when neither direction has moved a byte for
//! the timeout.
//!
//! On Linux with `use_splice` (KumoProxy's default), bytes move socket → pipe →
//! socket with splice(2) and never enter user space (`splice.rs`, through nix's
//! safe wrapper); otherwise a copy loop with one 64 KiB buffer per direction,
//! allocated once per session.

use crate::idle::{idle_both_ways, idle_error};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const BUFFER: usize = 64 * 1024;

/// What [`Pump::pump`] returns: bytes (client→remote, remote→client), with why
/// it stopped early.
pub type Moved = Result<(u64, u64), (u64, u64, io::Error)>;

/// [`Pump::pump`]'s future.
pub type PumpFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Moved> + Send + 'a>>;

/// A client stream bytes can be relayed for: plain TCP (splice or copy) or TLS
/// (copy).
pub trait Pump: AsyncRead + AsyncWrite + Unpin + Send {
    /// Relays between `self` and `remote` until both directions end.
    fn pump<'a>(
        &'a mut self,
        remote: &'a mut TcpStream,
        idle: Duration,
        use_splice: bool,
    ) -> PumpFuture<'a>;
}

impl Pump for TcpStream {
    fn pump<'a>(
        &'a mut self,
        remote: &'a mut TcpStream,
        idle: Duration,
        use_splice: bool,
    ) -> PumpFuture<'a> {
        Box::pin(both_ways(self, remote, idle, use_splice))
    }
}

impl Pump for tokio_rustls::server::TlsStream<TcpStream> {
    fn pump<'a>(
        &'a mut self,
        remote: &'a mut TcpStream,
        idle: Duration,
        _use_splice: bool,
    ) -> PumpFuture<'a> {
        Box::pin(async move {
            let (mut client_read, mut client_write) = tokio::io::split(self);
            let (mut remote_read, mut remote_write) = remote.split();
            copy_both(
                &mut client_read,
                &mut client_write,
                &mut remote_read,
                &mut remote_write,
                idle,
            )
            .await
        })
    }
}

/// Relays until both directions end: `(client→remote bytes, remote→client bytes)`,
/// or those counts and why it stopped early.
pub async fn both_ways(
    client: &mut TcpStream,
    remote: &mut TcpStream,
    idle: Duration,
    use_splice: bool,
) -> Result<(u64, u64), (u64, u64, io::Error)> {
    #[cfg(target_os = "linux")]
    if use_splice {
        if let Some(moved) = crate::splice::both_ways(client, remote, idle).await {
            return moved;
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = use_splice;
    let (mut client_read, mut client_write) = client.split();
    let (mut remote_read, mut remote_write) = remote.split();
    copy_both(
        &mut client_read,
        &mut client_write,
        &mut remote_read,
        &mut remote_write,
        idle,
    )
    .await
}

/// The copy loop, both ways at once.
async fn copy_both<CR, CW, RR, RW>(
    client_read: &mut CR,
    client_write: &mut CW,
    remote_read: &mut RR,
    remote_write: &mut RW,
    idle: Duration,
) -> Moved
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    RR: AsyncRead + Unpin,
    RW: AsyncWrite + Unpin,
{
    let started = Instant::now();
    // Milliseconds since `started` of the last byte moved either way.
    let last = AtomicU64::new(0);
    let up = one_way(client_read, remote_write, idle, started, &last);
    let down = one_way(remote_read, client_write, idle, started, &last);
    let ((up, up_err), (down, down_err)) = tokio::join!(up, down);
    match up_err.or(down_err) {
        None => Ok((up, down)),
        Some(e) => Err((up, down, e)),
    }
}

async fn one_way<R, W>(
    from: &mut R,
    to: &mut W,
    idle: Duration,
    started: Instant,
    last: &AtomicU64,
) -> (u64, Option<io::Error>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUFFER];
    let mut moved = 0u64;
    loop {
        let n = match tokio::time::timeout(idle, from.read(&mut buf)).await {
            Ok(Ok(0)) => {
                let _ = to.shutdown().await;
                return (moved, None);
            }
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                let _ = to.shutdown().await;
                return (moved, Some(e));
            }
            Err(_) => {
                if !idle_both_ways(started, last, idle) {
                    continue;
                }
                let _ = to.shutdown().await;
                return (moved, Some(idle_error(idle)));
            }
        };
        if let Err(e) = tokio::time::timeout(idle, to.write_all(&buf[..n]))
            .await
            .unwrap_or_else(|_| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the receiver stopped reading",
                ))
            })
        {
            return (moved, Some(e));
        }
        moved += n as u64;
        last.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}
