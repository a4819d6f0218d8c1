//! A TTL cache of egress definitions, on moka.
//!
//! Between the server and the Lua policy sits [`TtlCache`]: a source, pool or path
//! config is resolved once and then served from memory until its own `ttl` runs out.
//! Concurrent misses on one key share a single load (10 000 callers, one Lua call);
//! a failed load reaches every waiter and is not cached, so the next call tries again.
//!
//! ```
//! use egress_cache::TtlCache;
//! use egress_source::EgressSource;
//! use std::sync::Arc;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let cache: TtlCache<String, Arc<EgressSource>> = TtlCache::new(10_000);
//! let src = cache
//!     .get_or_load("ip-1".to_string(), || async {
//!         Ok::<_, String>(Arc::new(EgressSource::named("ip-1")))
//!     })
//!     .await
//!     .unwrap();
//! assert_eq!(src.name, "ip-1");
//! assert_eq!(cache.stats().loads, 1);
//! # });
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use egress_source::{EgressPathConfig, EgressPool, EgressSource, QueueConfig, DEFAULT_TTL};
use moka::future::Cache;
use moka::Expiry;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A value that says how long it may be cached.
pub trait HasTtl {
    /// Time to live from the moment the value is loaded.
    fn ttl(&self) -> Duration;
}

impl HasTtl for EgressSource {
    fn ttl(&self) -> Duration {
        self.ttl
    }
}

impl HasTtl for EgressPool {
    fn ttl(&self) -> Duration {
        self.ttl
    }
}

/// Path configs carry no `ttl` of their own (nor do KumoMTA's); they live for the default 60 s.
impl HasTtl for EgressPathConfig {
    fn ttl(&self) -> Duration {
        DEFAULT_TTL
    }
}

/// Queue configs carry no `ttl` of their own; they live for the default 60 s.
impl HasTtl for QueueConfig {
    fn ttl(&self) -> Duration {
        DEFAULT_TTL
    }
}

impl<T: HasTtl + ?Sized> HasTtl for Arc<T> {
    fn ttl(&self) -> Duration {
        (**self).ttl()
    }
}

impl<T: HasTtl, E> HasTtl for Result<T, E> {
    /// Only `Ok` values are ever cached; an `Err` would expire at once.
    fn ttl(&self) -> Duration {
        self.as_ref().map(HasTtl::ttl).unwrap_or_default()
    }
}

/// Expires each entry after the TTL its own value carries.
struct ValueTtl;

impl<K, V: HasTtl> Expiry<K, V> for ValueTtl {
    fn expire_after_create(&self, _key: &K, value: &V, _created_at: Instant) -> Option<Duration> {
        Some(value.ttl())
    }
}

/// Counters since the cache was built. A snapshot; `entries` is approximate while
/// moka has maintenance pending.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Calls answered from the cache.
    pub hits: u64,
    /// Calls that found no live entry (they waited for a load, theirs or another's).
    pub misses: u64,
    /// Loader runs.
    pub loads: u64,
    /// Loader runs that failed.
    pub load_errors: u64,
    /// Entries held.
    pub entries: u64,
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    loads: AtomicU64,
    load_errors: AtomicU64,
}

/// A bounded async cache whose entries expire after their own TTL, with
/// single-flight loading. Cheap to clone (clones share the entries).
pub struct TtlCache<K, V> {
    inner: Cache<K, V>,
    counters: Arc<Counters>,
}

impl<K, V> Clone for TtlCache<K, V> {
    fn clone(&self) -> Self {
        TtlCache {
            inner: self.inner.clone(),
            counters: self.counters.clone(),
        }
    }
}

impl<K, V> TtlCache<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: HasTtl + Clone + Send + Sync + 'static,
{
    /// A cache holding at most `capacity` entries (least recently used go first).
    pub fn new(capacity: u64) -> Self {
        TtlCache {
            inner: Cache::builder()
                .max_capacity(capacity)
                .expire_after(ValueTtl)
                .build(),
            counters: Arc::default(),
        }
    }

    /// The cached value for `key`, or the result of `loader`.
    ///
    /// At most one loader runs per key at a time; concurrent callers wait for it and
    /// share its result. A loader error is returned to all of them (as the same
    /// `Arc<E>`) and nothing is cached, so the next call loads again.
    pub async fn get_or_load<F, Fut, E>(&self, key: K, loader: F) -> Result<V, Arc<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
        E: Send + Sync + 'static,
    {
        if let Some(value) = self.inner.get(&key).await {
            self.counters.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(value);
        }
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
        // Boxed so that the hit path's future stays small: moka's loading future is
        // large, and embedding it would make every hit move it around. A miss costs
        // a policy call anyway; one allocation more is noise there.
        Box::pin(self.load(key, loader)).await
    }

    async fn load<F, Fut, E>(&self, key: K, loader: F) -> Result<V, Arc<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
        E: Send + Sync + 'static,
    {
        let counters = &self.counters;
        self.inner
            .try_get_with(key, async move {
                counters.loads.fetch_add(1, Ordering::Relaxed);
                let result = loader().await;
                if result.is_err() {
                    counters.load_errors.fetch_add(1, Ordering::Relaxed);
                }
                result
            })
            .await
    }

    /// The cached value, without loading.
    pub async fn get(&self, key: &K) -> Option<V> {
        self.inner.get(key).await
    }

    /// Drops one entry; the next call for it loads again.
    pub async fn invalidate(&self, key: &K) {
        self.inner.invalidate(key).await;
    }

    /// Drops every entry (used when the policy is reloaded).
    pub fn invalidate_all(&self) {
        self.inner.invalidate_all();
    }

    /// Runs moka's pending maintenance (evictions, expiries) now, so that
    /// [`stats`](Self::stats)`.entries` is exact.
    pub async fn sync(&self) {
        self.inner.run_pending_tasks().await;
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> CacheStats {
        let c = &self.counters;
        CacheStats {
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            loads: c.loads.load(Ordering::Relaxed),
            load_errors: c.load_errors.load(Ordering::Relaxed),
            entries: self.inner.entry_count(),
        }
    }
}
