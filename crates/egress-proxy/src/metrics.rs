//! Counters per listener, under KumoProxy's metric names (so its dashboards
//! work), with egress-proxy's labels where it says more: failures by `reason`,
//! outbound connections by `source` address. Rendered in the Prometheus text
//! format; no metrics library, a dozen atomics.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// One listener's counters.
#[derive(Default)]
pub struct ListenerMetrics {
    accepted: AtomicU64,
    completed: AtomicU64,
    active: AtomicI64,
    up: AtomicU64,
    down: AtomicU64,
    failed: Mutex<BTreeMap<&'static str, u64>>,
    tls_failures: AtomicU64,
    /// By source address (None: the client chose none).
    outbound: Mutex<BTreeMap<Option<std::net::IpAddr>, u64>>,
}

impl ListenerMetrics {
    /// A connection was accepted (and is active until [`ended`](Self::ended)).
    pub fn accepted(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::Relaxed);
    }

    /// A TLS handshake with a client failed (the connection ends there).
    pub fn tls_failed(&self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
        self.tls_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// An outbound connection was made from `source` (`default` when the client
    /// did not choose one).
    pub fn outbound(&self, source: Option<std::net::IpAddr>) {
        *lock(&self.outbound).entry(source).or_default() += 1;
    }

    /// A session ended: relayed (`failure` none) or failed for `failure`.
    pub fn ended(&self, up: u64, down: u64, failure: Option<&'static str>) {
        self.active.fetch_sub(1, Ordering::Relaxed);
        self.up.fetch_add(up, Ordering::Relaxed);
        self.down.fetch_add(down, Ordering::Relaxed);
        match failure {
            None => {
                self.completed.fetch_add(1, Ordering::Relaxed);
            }
            Some(reason) => *lock(&self.failed).entry(reason).or_default() += 1,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Every listener's counters, by listen address.
#[derive(Default)]
pub struct Registry {
    listeners: Mutex<Vec<(String, Arc<ListenerMetrics>)>>,
}

impl Registry {
    /// The process-wide registry.
    pub fn global() -> &'static Registry {
        static GLOBAL: OnceLock<Registry> = OnceLock::new();
        GLOBAL.get_or_init(Registry::default)
    }

    /// The counters of the listener on `listen` (made on first use).
    pub fn listener(&self, listen: &str) -> Arc<ListenerMetrics> {
        let mut all = lock(&self.listeners);
        if let Some((_, m)) = all.iter().find(|(l, _)| l == listen) {
            return m.clone();
        }
        let m = Arc::new(ListenerMetrics::default());
        all.push((listen.to_owned(), m.clone()));
        m
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let all = lock(&self.listeners).clone();
        let mut out = String::new();
        for family in PER_LISTENER {
            family.head(&mut out);
            for (listener, m) in &all {
                let _ = writeln!(
                    out,
                    "{}{{listener=\"{listener}\"}} {}",
                    family.name,
                    (family.read)(m)
                );
            }
        }
        let labelled: [(Family, &str, LabelledReading); 2] = [
            (FAILED, "reason", |m| labelled(&lock(&m.failed))),
            (OUTBOUND, "source", |m| {
                lock(&m.outbound)
                    .iter()
                    .map(|(s, n)| (s.map_or("default".to_owned(), |s| s.to_string()), *n))
                    .collect()
            }),
        ];
        for (family, label, read) in labelled {
            family.head(&mut out);
            for (listener, m) in &all {
                for (value, n) in read(m) {
                    let _ = writeln!(
                        out,
                        "{}{{listener=\"{listener}\",{label}=\"{value}\"}} {n}",
                        family.name
                    );
                }
            }
        }
        out
    }
}

/// One metric family: its name, type, help, and how a listener's value is read.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    read: fn(&ListenerMetrics) -> i64,
}

impl Family {
    fn head(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP {} {}\n# TYPE {} {}",
            self.name, self.help, self.name, self.kind
        );
    }
}

/// A listener's values of a labelled family: (label value, count).
type LabelledReading = fn(&ListenerMetrics) -> Vec<(String, u64)>;

fn count(a: &AtomicU64) -> i64 {
    a.load(Ordering::Relaxed) as i64
}

fn labelled<K: ToString>(map: &BTreeMap<K, u64>) -> Vec<(String, u64)> {
    map.iter().map(|(k, n)| (k.to_string(), *n)).collect()
}

const PER_LISTENER: [Family; 6] = [
    Family {
        name: "proxy_tls_handshake_failures_total",
        kind: "counter",
        help: "TLS handshakes with clients that failed.",
        read: |m| count(&m.tls_failures),
    },
    Family {
        name: "proxy_connections_accepted_total",
        kind: "counter",
        help: "Incoming connections accepted.",
        read: |m| count(&m.accepted),
    },
    Family {
        name: "proxy_connections_completed_total",
        kind: "counter",
        help: "Sessions relayed to their end.",
        read: |m| count(&m.completed),
    },
    Family {
        name: "proxy_active_connections",
        kind: "gauge",
        help: "Sessions in progress.",
        read: |m| m.active.load(Ordering::Relaxed),
    },
    Family {
        name: "proxy_bytes_client_to_dest_total",
        kind: "counter",
        help: "Bytes from clients to destinations.",
        read: |m| count(&m.up),
    },
    Family {
        name: "proxy_bytes_dest_to_client_total",
        kind: "counter",
        help: "Bytes from destinations to clients.",
        read: |m| count(&m.down),
    },
];
const FAILED: Family = Family {
    name: "proxy_connections_failed_total",
    kind: "counter",
    help: "Sessions that failed or were refused, by reason.",
    read: |_| 0,
};
const OUTBOUND: Family = Family {
    name: "proxy_outbound_connections_total",
    kind: "counter",
    help: "Outbound connections made, by source address.",
    read: |_| 0,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_each_listener_with_its_labels() {
        let r = Registry::default();
        let m = r.listener("127.0.0.1:5000");
        m.accepted();
        m.outbound(Some("127.0.0.5".parse().unwrap()));
        m.ended(10, 20, None);
        m.accepted();
        m.ended(0, 0, Some("not_allowed"));
        let text = r.render();
        assert!(
            text.contains("proxy_connections_accepted_total{listener=\"127.0.0.1:5000\"} 2"),
            "{text}"
        );
        assert!(text.contains("proxy_active_connections{listener=\"127.0.0.1:5000\"} 0"));
        assert!(text.contains("proxy_bytes_dest_to_client_total{listener=\"127.0.0.1:5000\"} 20"));
        assert!(text.contains("reason=\"not_allowed\"} 1"));
        assert!(text.contains("source=\"127.0.0.5\"} 1"));
    }
}
