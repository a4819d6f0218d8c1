//! The in-process store: one node's numbers, behind a mutex (each operation is a
//! few arithmetic steps on one map entry).

use crate::gcra::{capacity, now_micros, Capacity, Cell, Decision, Limiter};
use crate::{Store, StoreFuture, Suspension, ThrottleSpec};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

/// Throttles, leases and suspensions for this process only.
pub struct LocalStore {
    /// One limiter per key; checks share a read lock and decide with an atomic.
    limiters: RwLock<HashMap<String, Limiter>>,
    leases: Mutex<HashMap<String, HashMap<String, Instant>>>,
    suspensions: Mutex<HashMap<String, (String, Instant, SystemTime)>>,
    /// Entries in `suspensions` (ended ones included until noticed): lets the
    /// common case — nothing suspended — skip the lock.
    suspended: std::sync::atomic::AtomicUsize,
    next_id: AtomicU64,
}

impl Default for LocalStore {
    fn default() -> Self {
        LocalStore {
            limiters: RwLock::default(),
            leases: Mutex::default(),
            suspensions: Mutex::default(),
            suspended: std::sync::atomic::AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl LocalStore {
    /// The throttle decision, synchronously (no I/O here).
    pub fn check(&self, key: &str, spec: &ThrottleSpec) -> Decision {
        let cell = Cell::of(spec);
        let now = now_micros();
        {
            let limiters = self.limiters.read().unwrap_or_else(|e| e.into_inner());
            if let Some(limiter) = limiters.get(key) {
                return limiter.check(cell, now);
            }
        }
        let mut limiters = self.limiters.write().unwrap_or_else(|e| e.into_inner());
        if limiters.len() > 100_000 {
            // Keys whose TAT has passed carry no information.
            limiters.retain(|_, l| l.tat() > now);
        }
        limiters.entry(key.to_owned()).or_default().check(cell, now)
    }

    fn take(&self, key: &str, limit: u64, ttl: Duration) -> Option<String> {
        let now = Instant::now();
        let mut leases = lock(&self.leases);
        let held = leases.entry(key.to_owned()).or_default();
        held.retain(|_, expiry| *expiry > now);
        if held.len() as u64 >= limit {
            return None;
        }
        let id = format!("local-{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        held.insert(id.clone(), now + ttl);
        Some(id)
    }

    fn count(&self, key: &str) -> u64 {
        let now = Instant::now();
        lock(&self.leases)
            .get(key)
            .map(|held| held.values().filter(|e| **e > now).count() as u64)
            .unwrap_or(0)
    }

    /// True when a suspension may be in force (false: none is, without locking).
    pub fn any_suspended(&self) -> bool {
        self.suspended.load(Ordering::Relaxed) > 0
    }

    fn count_suspensions(&self, suspensions: &HashMap<String, (String, Instant, SystemTime)>) {
        self.suspended.store(suspensions.len(), Ordering::Relaxed);
    }

    fn current(&self, key: &str) -> Option<Suspension> {
        if !self.any_suspended() {
            return None;
        }
        let mut suspensions = lock(&self.suspensions);
        match suspensions.get(key) {
            Some((_, ends, _)) if *ends <= Instant::now() => {
                suspensions.remove(key);
                self.count_suspensions(&suspensions);
                None
            }
            Some((reason, _, until)) => Some(Suspension {
                key: key.to_owned(),
                reason: reason.clone(),
                until: *until,
            }),
            None => None,
        }
    }
}

impl Store for LocalStore {
    fn throttle<'a>(&'a self, key: &'a str, spec: &'a ThrottleSpec) -> StoreFuture<'a, Decision> {
        let decision = self.check(key, spec);
        Box::pin(async move { Ok(decision) })
    }

    fn acquire<'a>(
        &'a self,
        key: &'a str,
        limit: u64,
        ttl: Duration,
    ) -> StoreFuture<'a, Option<String>> {
        let id = self.take(key, limit, ttl);
        Box::pin(async move { Ok(id) })
    }

    fn renew<'a>(&'a self, key: &'a str, id: &'a str, ttl: Duration) -> StoreFuture<'a, ()> {
        if let Some(expiry) = lock(&self.leases).get_mut(key).and_then(|h| h.get_mut(id)) {
            *expiry = Instant::now() + ttl;
        }
        Box::pin(async { Ok(()) })
    }

    fn release<'a>(&'a self, key: &'a str, id: &'a str) -> StoreFuture<'a, ()> {
        let mut leases = lock(&self.leases);
        if let Some(held) = leases.get_mut(key) {
            held.remove(id);
            if held.is_empty() {
                leases.remove(key);
            }
        }
        Box::pin(async { Ok(()) })
    }

    fn in_use<'a>(&'a self, key: &'a str) -> StoreFuture<'a, u64> {
        let n = self.count(key);
        Box::pin(async move { Ok(n) })
    }

    fn suspend<'a>(
        &'a self,
        key: &'a str,
        reason: &'a str,
        duration: Duration,
    ) -> StoreFuture<'a, ()> {
        let mut suspensions = lock(&self.suspensions);
        suspensions.insert(
            key.to_owned(),
            (
                reason.to_owned(),
                Instant::now() + duration,
                SystemTime::now() + duration,
            ),
        );
        self.count_suspensions(&suspensions);
        Box::pin(async { Ok(()) })
    }

    fn suspension<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Suspension>> {
        let current = self.current(key);
        Box::pin(async move { Ok(current) })
    }

    fn resume<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()> {
        let mut suspensions = lock(&self.suspensions);
        suspensions.remove(key);
        self.count_suspensions(&suspensions);
        Box::pin(async { Ok(()) })
    }

    fn suspensions(&self) -> StoreFuture<'_, Vec<Suspension>> {
        let now = Instant::now();
        let mut suspensions = lock(&self.suspensions);
        suspensions.retain(|_, (_, ends, _)| *ends > now);
        self.count_suspensions(&suspensions);
        let list = suspensions
            .iter()
            .map(|(key, (reason, _, until))| Suspension {
                key: key.clone(),
                reason: reason.clone(),
                until: *until,
            })
            .collect();
        Box::pin(async move { Ok(list) })
    }

    fn capacity<'a>(&'a self, key: &'a str, spec: &'a ThrottleSpec) -> StoreFuture<'a, Capacity> {
        let tat = self
            .limiters
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .map(Limiter::tat)
            .filter(|t| *t != 0);
        let answer = capacity(Cell::of(spec), tat, now_micros());
        Box::pin(async move { Ok(answer) })
    }
}
