//! When a relayed session has sat idle: both ways of it share the instant of the
//! last byte moved, so one quiet direction does not end a session the other keeps
//! busy.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Nothing has moved either way for `idle` (this direction timed out; the session
/// lives while the other one moves).
pub fn idle_both_ways(started: Instant, last: &AtomicU64, idle: Duration) -> bool {
    let quiet = (started.elapsed().as_millis() as u64).saturating_sub(last.load(Ordering::Relaxed));
    quiet >= idle.as_millis() as u64
}

pub fn idle_error(idle: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("no bytes either way for {} s", idle.as_secs()),
    )
}
