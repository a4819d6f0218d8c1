//! Per-client limits on a listener, so one address cannot take every connection
//! (what Postfix's anvil does): concurrent sessions and new sessions per period.
//!
//! A client is an IPv4 address or an IPv6 /64 (one host usually owns a whole /64).
//! The listener's `client_limit_exceptions` (by default its `relay_hosts`) are not
//! counted at all: the limits keep outsiders from taking every slot, and must not
//! throttle the very senders the relay is for (Postfix exempts `$mynetworks` from
//! anvil the same way).
//! The rate is GCRA: each client has a "theoretical arrival time" that moves one
//! interval forward per admitted connection, and a connection is refused when that
//! time is more than a burst ahead of now.

use egress_source::ThrottleSpec;
use ipnet::IpNet;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The key a limit counts under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey(IpAddr);

impl ClientKey {
    /// IPv4 as is; IPv6 masked to its /64 (IPv4-mapped IPv6 is IPv4).
    pub fn of(ip: IpAddr) -> ClientKey {
        match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                ClientKey(IpAddr::V6(bits.into()))
            }
            v4 => ClientKey(v4),
        }
    }
}

#[derive(Default)]
struct Entry {
    sessions: usize,
    /// GCRA: when the next connection would be on schedule.
    tat: Option<Instant>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Too many sessions open from the client.
    Concurrent {
        /// `max_connections_per_client`.
        limit: usize,
    },
    /// Too many new sessions in a short time.
    Rate {
        /// `max_connection_rate_per_client`.
        spec: ThrottleSpec,
    },
}

/// The limits of one listener and what each client currently uses.
pub struct ClientLimits {
    max_sessions: usize,
    rate: Option<ThrottleSpec>,
    exceptions: Vec<IpNet>,
    clients: Mutex<HashMap<ClientKey, Entry>>,
}

/// An admitted session; dropping it gives the client's slot back (an exempt
/// client holds none).
pub struct ClientSlot(Option<(Arc<ClientLimits>, ClientKey)>);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let Some((limits, key)) = self.0.take() else {
            return;
        };
        let mut clients = limits.lock();
        if let Some(entry) = clients.get_mut(&key) {
            entry.sessions = entry.sessions.saturating_sub(1);
            let now = Instant::now();
            if entry.sessions == 0 && entry.tat.is_none_or(|t| t <= now) {
                clients.remove(&key);
            }
        }
    }
}

impl ClientLimits {
    /// `max_sessions` of 0 means no concurrency limit; `rate` None no rate limit;
    /// clients in `exceptions` are not limited.
    pub fn new(
        max_sessions: usize,
        rate: Option<ThrottleSpec>,
        exceptions: &[IpNet],
    ) -> Arc<ClientLimits> {
        Arc::new(ClientLimits {
            max_sessions,
            rate,
            exceptions: exceptions.to_vec(),
            clients: Mutex::default(),
        })
    }

    /// Whether `ip` is one of the `client_limit_exceptions` (a dual-stack
    /// listener's `::ffff:a.b.c.d` is matched as IPv4).
    pub fn is_exempt(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.exceptions.iter().any(|net| net.contains(&ip))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ClientKey, Entry>> {
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a new session from `ip`, or says which limit it is over.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ClientSlot, Refused> {
        self.admit_at(ip, Instant::now())
    }

    fn admit_at(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<ClientSlot, Refused> {
        if self.is_exempt(ip) {
            return Ok(ClientSlot(None));
        }
        let key = ClientKey::of(ip);
        let mut clients = self.lock();
        if clients.len() > 4096 {
            // Forget clients whose rate history no longer matters, so a scan from
            // many addresses cannot grow the table without bound.
            clients.retain(|_, e| e.sessions > 0 || e.tat.is_some_and(|t| t > now));
        }
        let entry = clients.entry(key).or_default();
        if self.max_sessions > 0 && entry.sessions >= self.max_sessions {
            return Err(Refused::Concurrent {
                limit: self.max_sessions,
            });
        }
        if let Some(spec) = self.rate {
            let interval = spec.interval();
            let tolerance = interval * (spec.burst().min(u64::from(u32::MAX)) as u32 - 1);
            let tat = entry.tat.filter(|t| *t > now).unwrap_or(now);
            if tat.saturating_duration_since(now) > tolerance {
                return Err(Refused::Rate { spec });
            }
            entry.tat = Some(tat + interval);
        }
        entry.sessions += 1;
        Ok(ClientSlot(Some((self.clone(), key))))
    }
}

impl Refused {
    /// The reply's text.
    pub fn explain(&self, ip: IpAddr) -> String {
        match self {
            Refused::Concurrent { limit } => format!(
                "too many connections from {ip} (max_connections_per_client = {limit}; \
                 a trusted sender belongs in the listener's client_limit_exceptions); try again later"
            ),
            Refused::Rate { spec } => format!(
                "too many new connections from {ip} (max_connection_rate_per_client = {spec}; \
                 a trusted sender belongs in the listener's client_limit_exceptions); try again later"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn concurrency_is_per_client_and_slots_come_back() {
        let limits = ClientLimits::new(2, None, &[]);
        let a = limits.admit(ip("127.0.0.66")).unwrap();
        let _b = limits.admit(ip("127.0.0.66")).unwrap();
        assert_eq!(
            limits.admit(ip("127.0.0.66")).err(),
            Some(Refused::Concurrent { limit: 2 })
        );
        assert!(limits.admit(ip("127.0.0.1")).is_ok(), "another client");
        drop(a);
        assert!(limits.admit(ip("127.0.0.66")).is_ok());
    }

    #[test]
    fn ipv6_counts_by_64_and_mapped_v4_is_v4() {
        let limits = ClientLimits::new(1, None, &[]);
        let _a = limits.admit(ip("2001:db8:1:2::1")).unwrap();
        assert!(limits.admit(ip("2001:db8:1:2:ffff::9")).is_err());
        assert!(limits.admit(ip("2001:db8:1:3::1")).is_ok());
        let _v4 = limits.admit(ip("10.0.0.1")).unwrap();
        assert!(limits.admit(ip("::ffff:10.0.0.1")).is_err());
    }

    #[test]
    fn rate_admits_the_burst_then_one_per_interval() {
        let limits = ClientLimits::new(0, Some("5/s".parse().unwrap()), &[]);
        let t0 = Instant::now();
        let client = ip("127.0.0.7");
        let mut slots = Vec::new();
        for _ in 0..5 {
            slots.push(limits.admit_at(client, t0).unwrap());
        }
        assert!(matches!(
            limits.admit_at(client, t0),
            Err(Refused::Rate { .. })
        ));
        // One interval (200 ms) later, exactly one more.
        let t1 = t0 + Duration::from_millis(200);
        assert!(limits.admit_at(client, t1).is_ok());
        assert!(limits.admit_at(client, t1).is_err());
        assert!(limits.admit_at(ip("127.0.0.8"), t1).is_ok());
    }

    #[test]
    fn exempt_clients_are_never_counted_and_others_still_are() {
        let nets: Vec<IpNet> = vec![
            "127.0.0.1/32".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
        ];
        let limits = ClientLimits::new(1, Some("1/s".parse().unwrap()), &nets);
        let mut held = Vec::new();
        for _ in 0..100 {
            held.push(limits.admit(ip("127.0.0.1")).unwrap());
            held.push(limits.admit(ip("::ffff:127.0.0.1")).unwrap());
            held.push(limits.admit(ip("2001:db8:5::1")).unwrap());
        }
        assert!(limits.lock().is_empty(), "exempt clients leave no entry");
        let _one = limits.admit(ip("127.0.0.66")).unwrap();
        assert_eq!(
            limits.admit(ip("127.0.0.66")).err(),
            Some(Refused::Concurrent { limit: 1 })
        );
    }
}
