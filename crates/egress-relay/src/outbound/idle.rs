//! Destination sessions kept open between transactions, for the next transaction
//! through the same source to the same host.
//!
//! The invariant: a session is handed out only if `ClientSession::is_clean` says so
//! at that moment — greeted, no transaction open, every reply read and nothing
//! unread waiting. Anything else is closed, never reused, so no client can receive
//! a reply that answered somebody else's command.

use super::Outbound;
use egress_source::{EgressSource, Tls};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// At most this many idle sessions per key.
const MAX_IDLE_PER_KEY: usize = 32;

/// What makes an open destination session reusable: the same source definition
/// (a changed definition, after a reload or ttl, never reuses an old route), the
/// same destination address, the same EHLO name, the same TLS mode.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionKey {
    /// Compared by value (an `Arc` delegates to the definition); hashed by name
    /// only, which equal definitions share — hashing every field of the
    /// definition for each lookup bought nothing.
    pub source: Arc<EgressSource>,
    /// The destination's address and port.
    pub addr: SocketAddr,
    /// The name we gave in EHLO.
    pub ehlo: String,
    /// The TLS mode the session was opened under: a session is reused only for the
    /// same mode (and keeps its TLS state).
    pub tls: Tls,
    /// The AUTH credential it was opened with: an authenticated session carries
    /// only its own credential's mail.
    pub credential: Option<super::auth::Credential>,
    /// It speaks LMTP.
    pub lmtp: bool,
    /// The TLSA records its certificate was checked against (DANE): a session is
    /// reused only under the same records.
    pub dane: Option<std::sync::Arc<[egress_dns::Tlsa]>>,
    /// The host name its certificate was checked against, when it was (a
    /// session verified for one MX name is not reused for another at the same
    /// address).
    pub verified_name: Option<String>,
}

impl Hash for SessionKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.source.name.hash(state);
        self.addr.hash(state);
        self.ehlo.hash(state);
        self.tls.hash(state);
        self.credential.as_ref().map(|c| &c.0).hash(state);
        self.lmtp.hash(state);
    }
}

/// The idle sessions, by key, most recently used last, each with the instant its
/// path's `idle_timeout` runs out.
#[derive(Default)]
pub struct IdleSessions {
    slots: Mutex<HashMap<SessionKey, Vec<(Instant, Outbound)>>>,
}

impl IdleSessions {
    /// Keeps a session whose transaction ended, if it is clean; closes it otherwise.
    pub async fn release(&self, out: Outbound) {
        if out.retired() {
            tokio::spawn(out.quit());
            return;
        }
        // Cheap here; the socket itself is polled when the session is taken, which
        // is what keeps a stale reply from reaching the next client.
        if !out.smtp.is_ready() {
            tracing::debug!(destination = %out.key.addr, "not reusing a destination session with unread input or an open transaction");
            tokio::spawn(out.quit());
            return;
        }
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let slot = slots.entry(out.key.clone()).or_default();
        if slot.len() < MAX_IDLE_PER_KEY {
            slot.push((Instant::now() + out.idle_timeout, out));
        } else {
            tokio::spawn(out.quit());
        }
    }

    /// The most recently used idle session for `key` that is fresh and clean now.
    pub async fn take(&self, key: &SessionKey) -> Option<Outbound> {
        loop {
            let (until, mut out) = {
                let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
                slots.get_mut(key)?.pop()?
            };
            if Instant::now() < until && out.smtp.is_clean().await {
                return Some(out);
            }
            tokio::spawn(out.quit());
        }
    }

    /// The idle session that has waited longest among those holding a slot of the
    /// connection limit `limit_key`, taken out of the set.
    pub fn take_holding(&self, limit_key: &str) -> Option<Outbound> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let (key, index) = slots
            .iter()
            .flat_map(|(key, slot)| slot.iter().enumerate().map(move |(i, s)| (key, i, s)))
            .filter(|(_, _, (_, out))| out.leases.iter().any(|l| l.key == limit_key))
            .min_by_key(|(_, _, (until, _))| *until)
            .map(|(key, i, _)| (key.clone(), i))?;
        let slot = slots.get_mut(&key)?;
        let (_, out) = slot.remove(index);
        if slot.is_empty() {
            slots.remove(&key);
        }
        Some(out)
    }

    /// Sessions idle now.
    pub fn len(&self) -> usize {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.values().map(Vec::len).sum()
    }

    /// No session is idle.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Closes idle sessions that have waited too long; the server calls this
    /// periodically so quiet periods do not hold connections open.
    pub fn reap(&self) {
        let now = Instant::now();
        for out in self.drain(|until| until <= now) {
            tokio::spawn(out.quit());
        }
    }

    /// Says QUIT on every idle session and waits (briefly) for the answers: the
    /// last thing the server does, so destinations see a clean goodbye.
    pub async fn close_all(&self) {
        let quits: Vec<_> = self
            .drain(|_| true)
            .into_iter()
            .map(|out| tokio::spawn(out.quit()))
            .collect();
        for quit in quits {
            let _ = quit.await;
        }
    }

    /// Removes and returns the idle sessions whose run-out instant matches.
    fn drain(&self, matches: impl Fn(Instant) -> bool) -> Vec<Outbound> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let mut drained = Vec::new();
        for slot in slots.values_mut() {
            let (gone, keep): (Vec<_>, Vec<_>) = std::mem::take(slot)
                .into_iter()
                .partition(|(since, _)| matches(*since));
            *slot = keep;
            drained.extend(gone.into_iter().map(|(_, out)| out));
        }
        slots.retain(|_, slot| !slot.is_empty());
        drained
    }
}
