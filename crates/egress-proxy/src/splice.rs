//! Zero-copy relaying on Linux: socket → pipe → socket with splice(2), as
//! KumoProxy does. The bytes stay in the kernel; each direction owns a pipe
//! (created once per session) and moves at most the pipe's capacity at a time,
//! draining it before reading more, so the pipe never blocks. nix provides the
//! safe wrapper; readiness comes from tokio (`readable`/`writable` + `try_io`).

use crate::idle::{idle_both_ways, idle_error};
use nix::fcntl::{splice, SpliceFFlags};
use std::io;
use std::net::Shutdown;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// At most this much per splice: a pipe's default capacity.
const CHUNK: usize = 64 * 1024;

/// A pipe: (read end, write end).
type Pipe = (OwnedFd, OwnedFd);

/// Empty pipes kept between sessions: a short session would otherwise spend more
/// syscalls making and closing its two pipes than moving its bytes.
mod pipes {
    use super::Pipe;
    use std::sync::Mutex;

    /// Pipes kept at most (two per session in progress is the steady state).
    const KEEP: usize = 256;
    static POOL: Mutex<Vec<Pipe>> = Mutex::new(Vec::new());

    /// An empty pipe, kept or new.
    pub fn take() -> Option<Pipe> {
        let kept = POOL.lock().unwrap_or_else(|e| e.into_inner()).pop();
        kept.or_else(|| nix::unistd::pipe().ok())
    }

    /// Keeps an empty pipe for the next session.
    pub fn give(pipe: Pipe) {
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < KEEP {
            pool.push(pipe);
        }
    }
}

/// Relays both ways with splice; None when no pipe could be made (the caller
/// copies instead).
pub async fn both_ways(
    client: &TcpStream,
    remote: &TcpStream,
    idle: Duration,
) -> Option<Result<(u64, u64), (u64, u64, io::Error)>> {
    let up_pipe = pipes::take()?;
    let Some(down_pipe) = pipes::take() else {
        pipes::give(up_pipe);
        return None;
    };
    let started = Instant::now();
    let last = AtomicU64::new(0);
    let up = one_way(client, remote, up_pipe, idle, started, &last);
    let down = one_way(remote, client, down_pipe, idle, started, &last);
    let ((up, up_err, up_pipe), (down, down_err, down_pipe)) = tokio::join!(up, down);
    // A pipe is drained before each read, so one that ended without an error is
    // empty and can serve the next session.
    if up_err.is_none() {
        pipes::give(up_pipe);
    }
    if down_err.is_none() {
        pipes::give(down_pipe);
    }
    Some(match up_err.or(down_err) {
        None => Ok((up, down)),
        Some(e) => Err((up, down, e)),
    })
}

async fn one_way(
    from: &TcpStream,
    to: &TcpStream,
    pipe: Pipe,
    idle: Duration,
    started: Instant,
    last: &AtomicU64,
) -> (u64, Option<io::Error>, Pipe) {
    let (moved, error) = move_bytes(from, to, &pipe, idle, started, last).await;
    (moved, error, pipe)
}

async fn move_bytes(
    from: &TcpStream,
    to: &TcpStream,
    (pipe_out, pipe_in): &Pipe,
    idle: Duration,
    started: Instant,
    last: &AtomicU64,
) -> (u64, Option<io::Error>) {
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    let mut moved = 0u64;
    let half_close = || {
        let _ = socket2::SockRef::from(to).shutdown(Shutdown::Write);
    };
    loop {
        // Socket → pipe.
        let n = match tokio::time::timeout(idle, from.readable()).await {
            Err(_) if idle_both_ways(started, last, idle) => {
                half_close();
                return (moved, Some(idle_error(idle)));
            }
            Err(_) => continue,
            Ok(Err(e)) => return (moved, Some(e)),
            Ok(Ok(())) => match from.try_io(Interest::READABLE, || {
                splice(from, None, pipe_in, None, CHUNK, flags).map_err(io::Error::from)
            }) {
                Ok(0) => {
                    half_close();
                    return (moved, None);
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => {
                    half_close();
                    return (moved, Some(e));
                }
            },
        };
        // Pipe → socket, all of it before reading more.
        let mut left = n;
        while left > 0 {
            match tokio::time::timeout(idle, to.writable()).await {
                Err(_) => {
                    return (
                        moved,
                        Some(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the receiver stopped reading",
                        )),
                    )
                }
                Ok(Err(e)) => return (moved, Some(e)),
                Ok(Ok(())) => {}
            }
            match to.try_io(Interest::WRITABLE, || {
                splice(pipe_out, None, to, None, left, flags).map_err(io::Error::from)
            }) {
                Ok(m) => {
                    left -= m;
                    moved += m as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return (moved, Some(e)),
            }
        }
        last.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}
