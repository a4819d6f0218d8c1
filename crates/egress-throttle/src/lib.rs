//! Shaping for egress sources: how fast and how much each source may send, held
//! across every node that shares a Redis.
//!
//! - **Rates** (`"10/s"`, `"1,000/hr"`, `"100/day,max_burst=1"` — KumoMTA's
//!   [`ThrottleSpec`]) are GCRA limiters ([`gcra`]).
//! - **Connection limits** are leases: a slot is held while a connection lives and
//!   expires on its own if the node holding it dies ([`Lease`]).
//! - **Suspensions** take a source (or a source at one site) out of selection until
//!   a time, with a reason ([`Suspension`]).
//!
//! [`Throttles`] is the front egressd uses: an in-process [`LocalStore`] always, a
//! [`RedisStore`] when configured, and when Redis cannot be reached it logs, counts
//! and falls back to the local numbers rather than stop mail.
//!
//! No SMTP, no Lua: keys are strings the caller builds.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use egress_throttle::Throttles;
//! let throttles = Throttles::local();
//! let spec = "2/min".parse().unwrap();
//! assert!(throttles.throttle("ip-1@gmail", &spec, true).await.allowed);
//! assert!(throttles.throttle("ip-1@gmail", &spec, true).await.allowed);
//! let third = throttles.throttle("ip-1@gmail", &spec, true).await;
//! assert!(!third.allowed);
//! assert_eq!(third.retry_after.as_secs_f64().round(), 30.0);
//! # });
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod gcra;
mod local;
mod redis_store;
mod shared;

pub use egress_source::{ConnectionLimit, ThrottleSpec};
pub use gcra::{Capacity, Decision};
pub use local::LocalStore;
pub use redis_store::RedisStore;
pub use shared::{Block, BlockKind, InForce, Lease, Override, Throttles};

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

/// A store's future.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// A store could not answer (Redis unreachable, a script error).
#[derive(Debug, Clone, thiserror::Error)]
#[error("throttle store {store}: {message}")]
pub struct StoreError {
    /// Which store (`redis://127.0.0.1:6379/`).
    pub store: String,
    /// What went wrong, in words.
    pub message: String,
}

/// Why a source is out of selection, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suspension {
    /// What was suspended (a source, or `source->site`).
    pub key: String,
    /// Why.
    pub reason: String,
    /// When it ends on its own.
    pub until: SystemTime,
}

/// Where throttles, leases and suspensions live.
pub trait Store: Send + Sync {
    /// Counts one event under `key` if `spec` allows it now.
    fn throttle<'a>(&'a self, key: &'a str, spec: &'a ThrottleSpec) -> StoreFuture<'a, Decision>;
    /// Takes one of `limit` slots under `key` for `ttl` (renewable); `None` when all
    /// are taken. Returns the lease's id.
    fn acquire<'a>(
        &'a self,
        key: &'a str,
        limit: u64,
        ttl: Duration,
    ) -> StoreFuture<'a, Option<String>>;
    /// Extends a lease for another `ttl`.
    fn renew<'a>(&'a self, key: &'a str, id: &'a str, ttl: Duration) -> StoreFuture<'a, ()>;
    /// Gives a slot back.
    fn release<'a>(&'a self, key: &'a str, id: &'a str) -> StoreFuture<'a, ()>;
    /// Slots in use under `key` (expired leases not counted).
    fn in_use<'a>(&'a self, key: &'a str) -> StoreFuture<'a, u64>;
    /// Suspends `key` for `duration`.
    fn suspend<'a>(
        &'a self,
        key: &'a str,
        reason: &'a str,
        duration: Duration,
    ) -> StoreFuture<'a, ()>;
    /// The suspension in force for `key`, if any.
    fn suspension<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Suspension>>;
    /// Ends a suspension early.
    fn resume<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()>;
    /// Every suspension in force, in no particular order.
    fn suspensions(&self) -> StoreFuture<'_, Vec<Suspension>>;
    /// What `spec` would admit under `key` now, counting nothing.
    fn capacity<'a>(&'a self, key: &'a str, spec: &'a ThrottleSpec) -> StoreFuture<'a, Capacity>;
}
