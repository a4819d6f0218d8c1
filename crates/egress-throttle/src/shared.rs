//! [`Throttles`]: the front callers use — Redis when configured, this node's
//! numbers always, and a fall back to them when Redis cannot answer.
//!
//! What falling back means for the shared numbers: while Redis is unreachable each
//! node enforces each limit on its own, so N nodes may together send up to N times a
//! shared rate and hold N times a shared connection limit. Mail keeps flowing; the
//! shared numbers are exact again as soon as Redis answers.

use crate::{
    Capacity, ConnectionLimit, Decision, LocalStore, RedisStore, Store, Suspension, ThrottleSpec,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Overrides live beside suspensions in the stores, as expiring entries under keys
/// with this prefix (`override:SCOPE|NAME`, the value as the entry's text): the
/// same expiry, the same sharing through Redis, no second mechanism to keep right.
/// Suspension listings leave them (and blocks, below) out.
const OVERRIDE: &str = "override:";

/// A path key overridden for a while (an automation rule's `SetConfig`): for
/// `scope` (`SOURCE->SITE`, or `SOURCE->domain:DOMAIN`), `name` takes `value` (JSON
/// text) until `until`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// Whose path it changes.
    pub scope: String,
    /// The path key.
    pub name: String,
    /// Its value, as JSON text.
    pub value: String,
    /// When it ends on its own.
    pub until: std::time::SystemTime,
}

/// Automation's blocks on a destination domain live beside them too, under
/// `block:KIND|DOMAIN|TENANT` (`*` for every tenant), the reason as the text.
const BLOCK: &str = "block:";

/// What an automation block does to RCPTs for its domain (and tenant).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// Deferred (`SuspendTenant`).
    Defer,
    /// Refused (`Bounce`, `BounceTenant`).
    Refuse,
}

/// Mail for `domain` (from `tenant`, or every tenant) deferred or refused at RCPT
/// until `until`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// Deferred or refused.
    pub kind: BlockKind,
    /// The destination domain.
    pub domain: String,
    /// The tenant, or every tenant.
    pub tenant: Option<String>,
    /// Why (the rule and the reply).
    pub reason: String,
    /// When it ends on its own.
    pub until: std::time::SystemTime,
}

/// Everything automation put in force: overrides and blocks (one read of the
/// store).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InForce {
    /// Path keys overridden.
    pub overrides: Vec<Override>,
    /// Domains (and tenants) deferred or refused.
    pub blocks: Vec<Block>,
}

/// How often a Redis failure is logged at WARN (each one is counted).
const WARN_EVERY: Duration = Duration::from_secs(10);

/// A held connection slot; give it back with [`Throttles::release`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The limit's key.
    pub key: String,
    /// The slot's id in its store.
    pub id: String,
    /// Held in Redis (else in this process).
    pub shared: bool,
}

/// Throttles, leases and suspensions for one node, shared through Redis when
/// configured.
pub struct Throttles {
    local: LocalStore,
    redis: Option<RedisStore>,
    fallbacks: AtomicU64,
    last_warning: Mutex<Option<Instant>>,
}

impl Throttles {
    /// This node only.
    pub fn local() -> Throttles {
        Throttles {
            local: LocalStore::default(),
            redis: None,
            fallbacks: AtomicU64::new(0),
            last_warning: Mutex::new(None),
        }
    }

    /// Shared through the Redis at `url` (`kumo.configure_redis_throttles { node = url }`).
    pub fn with_redis(url: &str) -> Result<Throttles, crate::StoreError> {
        Self::with_redis_params(&egress_source::RedisParams::single(url))
    }

    /// Shared through the Redis or Redis Cluster `params` name (all of
    /// `kumo.configure_redis_throttles`'s parameters).
    pub fn with_redis_params(
        params: &egress_source::RedisParams,
    ) -> Result<Throttles, crate::StoreError> {
        Ok(Throttles {
            redis: Some(RedisStore::open(params)?),
            ..Throttles::local()
        })
    }

    /// Times Redis could not answer and this node's numbers were used instead.
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }

    /// The shared store, when configured and `shared` is wanted.
    fn redis(&self, shared: bool) -> Option<&RedisStore> {
        self.redis.as_ref().filter(|_| shared)
    }

    fn fell_back(&self, e: &crate::StoreError) {
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last_warning.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            *last = Some(Instant::now());
            tracing::warn!(
                fallbacks = self.fallbacks(),
                "{e}; using this node's own limits until it answers"
            );
        }
    }

    /// Counts one event under `key` if `spec` allows it now. `shared` asks for the
    /// cluster-wide count (when Redis is configured).
    pub async fn throttle(&self, key: &str, spec: &ThrottleSpec, shared: bool) -> Decision {
        if let Some(redis) = self.redis(shared) {
            match redis.throttle(key, spec).await {
                Ok(d) => return d,
                Err(e) => self.fell_back(&e),
            }
        }
        self.local.check(key, spec)
    }

    /// Takes a slot of `limit` under `key` for `ttl` (renew it while the connection
    /// lives); `None` when all are taken. A `local:` limit is never shared.
    pub async fn acquire(&self, key: &str, limit: ConnectionLimit, ttl: Duration) -> Option<Lease> {
        if let Some(redis) = self.redis(!limit.local) {
            match redis.acquire(key, limit.limit, ttl).await {
                Ok(id) => {
                    return id.map(|id| Lease {
                        key: key.to_owned(),
                        id,
                        shared: true,
                    })
                }
                Err(e) => self.fell_back(&e),
            }
        }
        let id = self
            .local
            .acquire(key, limit.limit, ttl)
            .await
            .ok()
            .flatten()?;
        Some(Lease {
            key: key.to_owned(),
            id,
            shared: false,
        })
    }

    /// Keeps a lease alive for another `ttl`.
    pub async fn renew(&self, lease: &Lease, ttl: Duration) {
        let result = match self.redis(lease.shared) {
            Some(redis) => redis.renew(&lease.key, &lease.id, ttl).await,
            None => self.local.renew(&lease.key, &lease.id, ttl).await,
        };
        if let Err(e) = result {
            self.fell_back(&e);
        }
    }

    /// Gives a slot back (a lease that cannot be released expires on its own).
    pub async fn release(&self, lease: &Lease) {
        let result = match self.redis(lease.shared) {
            Some(redis) => redis.release(&lease.key, &lease.id).await,
            None => self.local.release(&lease.key, &lease.id).await,
        };
        if let Err(e) = result {
            self.fell_back(&e);
        }
    }

    /// Slots in use under `key` (shared count when Redis answers).
    pub async fn in_use(&self, key: &str, limit: ConnectionLimit) -> u64 {
        if let Some(redis) = self.redis(!limit.local) {
            match redis.in_use(key).await {
                Ok(n) => return n,
                Err(e) => self.fell_back(&e),
            }
        }
        self.local.in_use(key).await.unwrap_or(0)
    }

    /// Suspends `key` for `duration`: on this node always, and for every node when
    /// Redis is configured.
    pub async fn suspend(&self, key: &str, reason: &str, duration: Duration) {
        let _ = self.local.suspend(key, reason, duration).await;
        if let Some(redis) = self.redis(true) {
            if let Err(e) = redis.suspend(key, reason, duration).await {
                self.fell_back(&e);
            }
        }
    }

    /// False when no suspension can be in force (none on this node, no Redis):
    /// callers skip building keys to ask about.
    pub fn may_have_suspensions(&self) -> bool {
        self.redis.is_some() || self.local.any_suspended()
    }

    /// The suspension in force for `key`: this node's, else the shared one.
    pub async fn suspension(&self, key: &str) -> Option<Suspension> {
        if let Ok(Some(s)) = self.local.suspension(key).await {
            return Some(s);
        }
        let redis = self.redis(true)?;
        match redis.suspension(key).await {
            Ok(s) => s,
            Err(e) => {
                self.fell_back(&e);
                None
            }
        }
    }

    /// Ends a suspension everywhere.
    pub async fn resume(&self, key: &str) {
        let _ = self.local.resume(key).await;
        if let Some(redis) = self.redis(true) {
            if let Err(e) = redis.resume(key).await {
                self.fell_back(&e);
            }
        }
    }

    /// Every suspension in force: the shared list when Redis answers (it holds
    /// every node's, this one's included), else this node's.
    pub async fn suspensions(&self) -> Vec<Suspension> {
        let mut list = self.entries().await;
        list.retain(|s| !s.key.starts_with(OVERRIDE) && !s.key.starts_with(BLOCK));
        list
    }

    /// Every expiring entry, suspensions and overrides.
    async fn entries(&self) -> Vec<Suspension> {
        if let Some(redis) = self.redis(true) {
            match redis.suspensions().await {
                Ok(list) => return list,
                Err(e) => self.fell_back(&e),
            }
        }
        self.local.suspensions().await.unwrap_or_default()
    }

    /// Overrides `name` with `value` (JSON text) for `scope` for `duration`: on this
    /// node, and on every node when Redis is configured.
    pub async fn set_override(&self, scope: &str, name: &str, value: &str, duration: Duration) {
        self.suspend(&format!("{OVERRIDE}{scope}|{name}"), value, duration)
            .await;
    }

    /// Every override in force (the shared list when Redis answers).
    pub async fn overrides(&self) -> Vec<Override> {
        self.in_force().await.overrides
    }

    /// Defers or refuses mail for `domain` (from `tenant`, or every tenant) at RCPT
    /// for `duration`: on this node, and on every node when Redis is configured.
    pub async fn set_block(
        &self,
        kind: BlockKind,
        domain: &str,
        tenant: Option<&str>,
        reason: &str,
        duration: Duration,
    ) {
        let kind = match kind {
            BlockKind::Defer => "defer",
            BlockKind::Refuse => "refuse",
        };
        let key = format!("{BLOCK}{kind}|{domain}|{}", tenant.unwrap_or("*"));
        self.suspend(&key, reason, duration).await;
    }

    /// Every override and block in force (the shared lists when Redis answers).
    pub async fn in_force(&self) -> InForce {
        let mut found = InForce::default();
        for e in self.entries().await {
            if let Some(rest) = e.key.strip_prefix(OVERRIDE) {
                if let Some((scope, name)) = rest.rsplit_once('|') {
                    found.overrides.push(Override {
                        scope: scope.to_owned(),
                        name: name.to_owned(),
                        value: e.reason,
                        until: e.until,
                    });
                }
            } else if let Some(rest) = e.key.strip_prefix(BLOCK) {
                let mut parts = rest.splitn(3, '|');
                let (Some(kind), Some(domain), Some(tenant)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    continue;
                };
                found.blocks.push(Block {
                    kind: if kind == "refuse" {
                        BlockKind::Refuse
                    } else {
                        BlockKind::Defer
                    },
                    domain: domain.to_owned(),
                    tenant: (tenant != "*").then(|| tenant.to_owned()),
                    reason: e.reason,
                    until: e.until,
                });
            }
        }
        found
    }

    /// Ends an override early.
    pub async fn end_override(&self, scope: &str, name: &str) {
        self.resume(&format!("{OVERRIDE}{scope}|{name}")).await;
    }

    /// What `spec` would admit under `key` now, counting nothing (the shared
    /// numbers when `shared` and Redis answers).
    pub async fn capacity(&self, key: &str, spec: &ThrottleSpec, shared: bool) -> Capacity {
        if let Some(redis) = self.redis(shared) {
            match redis.capacity(key, spec).await {
                Ok(c) => return c,
                Err(e) => self.fell_back(&e),
            }
        }
        match self.local.capacity(key, spec).await {
            Ok(c) => c,
            Err(_) => crate::gcra::capacity(crate::gcra::Cell::of(spec), None, 0),
        }
    }
}
