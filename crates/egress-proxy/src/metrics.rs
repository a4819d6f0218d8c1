//! Counters per listener, under KumoProxy's metric names (so its dashboards
//! work), with egress-proxy's labels where it says more: failures by `reason`,
//! outbound connections by `source` address. On prometheus-client, as egressd's
//! are; egress-http writes the exposition.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::{Arc, Mutex, OnceLock};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Listener {
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Failure {
    listener: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outbound {
    listener: String,
    source: String,
}

/// Every listener's counters (families labelled by listener), and the
/// prometheus-client registry they are registered in.
pub struct Registry {
    registry: Mutex<prometheus_client::registry::Registry>,
    tls_failures: Family<Listener, Counter>,
    accepted: Family<Listener, Counter>,
    completed: Family<Listener, Counter>,
    active: Family<Listener, Gauge>,
    up: Family<Listener, Counter>,
    down: Family<Listener, Counter>,
    failed: Family<Failure, Counter>,
    outbound: Family<Outbound, Counter>,
}

impl Default for Registry {
    fn default() -> Registry {
        let mut registry = prometheus_client::registry::Registry::default();
        let r = Registry {
            registry: Mutex::new(prometheus_client::registry::Registry::default()),
            tls_failures: Family::default(),
            accepted: Family::default(),
            completed: Family::default(),
            active: Family::default(),
            up: Family::default(),
            down: Family::default(),
            failed: Family::default(),
            outbound: Family::default(),
        };
        // Counters are registered without their `_total`: the encoder adds it
        // to the samples, which keep KumoProxy's names.
        registry.register(
            "proxy_tls_handshake_failures",
            "TLS handshakes with clients that failed.",
            r.tls_failures.clone(),
        );
        registry.register(
            "proxy_connections_accepted",
            "Incoming connections accepted.",
            r.accepted.clone(),
        );
        registry.register(
            "proxy_connections_completed",
            "Sessions relayed to their end.",
            r.completed.clone(),
        );
        registry.register(
            "proxy_active_connections",
            "Sessions in progress.",
            r.active.clone(),
        );
        registry.register(
            "proxy_bytes_client_to_dest",
            "Bytes from clients to destinations.",
            r.up.clone(),
        );
        registry.register(
            "proxy_bytes_dest_to_client",
            "Bytes from destinations to clients.",
            r.down.clone(),
        );
        registry.register(
            "proxy_connections_failed",
            "Sessions that failed or were refused, by reason.",
            r.failed.clone(),
        );
        registry.register(
            "proxy_outbound_connections",
            "Outbound connections made, by source address.",
            r.outbound.clone(),
        );
        *r.registry.lock().unwrap_or_else(|e| e.into_inner()) = registry;
        r
    }
}

impl Registry {
    /// The process-wide registry.
    pub fn global() -> &'static Registry {
        static GLOBAL: OnceLock<Registry> = OnceLock::new();
        GLOBAL.get_or_init(Registry::default)
    }

    /// The counters of the listener on `listen`.
    pub fn listener(&'static self, listen: &str) -> Arc<ListenerMetrics> {
        let listener = Listener {
            listener: listen.to_owned(),
        };
        // Every family has a sample for the listener from the start (0s).
        for family in [
            &self.tls_failures,
            &self.accepted,
            &self.completed,
            &self.up,
            &self.down,
        ] {
            let _ = family.get_or_create(&listener);
        }
        let _ = self.active.get_or_create(&listener);
        Arc::new(ListenerMetrics {
            registry: self,
            listener,
        })
    }

    /// The exposition in the format `accept` asks for: (content type, body).
    pub fn exposition(&self, accept: &str) -> (&'static str, String) {
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        egress_http::exposition(&registry, accept)
    }
}

/// One listener's counters.
pub struct ListenerMetrics {
    registry: &'static Registry,
    listener: Listener,
}

impl ListenerMetrics {
    fn labelled(&self) -> &Listener {
        &self.listener
    }

    /// A connection was accepted (and is active until [`ended`](Self::ended)).
    pub fn accepted(&self) {
        let r = self.registry;
        r.accepted.get_or_create(self.labelled()).inc();
        r.active.get_or_create(self.labelled()).inc();
    }

    /// A TLS handshake with a client failed (the connection ends there).
    pub fn tls_failed(&self) {
        let r = self.registry;
        r.active.get_or_create(self.labelled()).dec();
        r.tls_failures.get_or_create(self.labelled()).inc();
    }

    /// An outbound connection was made from `source` (`default` when the client
    /// did not choose one).
    pub fn outbound(&self, source: Option<std::net::IpAddr>) {
        let labels = Outbound {
            listener: self.listener.listener.clone(),
            source: source.map_or("default".to_owned(), |s| s.to_string()),
        };
        self.registry.outbound.get_or_create(&labels).inc();
    }

    /// A session ended: relayed (`failure` none) or failed for `failure`.
    pub fn ended(&self, up: u64, down: u64, failure: Option<&'static str>) {
        let r = self.registry;
        r.active.get_or_create(self.labelled()).dec();
        r.up.get_or_create(self.labelled()).inc_by(up);
        r.down.get_or_create(self.labelled()).inc_by(down);
        match failure {
            None => {
                r.completed.get_or_create(self.labelled()).inc();
            }
            Some(reason) => {
                let labels = Failure {
                    listener: self.listener.listener.clone(),
                    reason: reason.to_owned(),
                };
                r.failed.get_or_create(&labels).inc();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_each_listener_with_its_labels() {
        let r: &'static Registry = Box::leak(Box::default());
        let m = r.listener("127.0.0.1:5000");
        m.accepted();
        m.outbound(Some("127.0.0.5".parse().unwrap()));
        m.ended(10, 20, None);
        m.accepted();
        m.ended(0, 0, Some("not_allowed"));
        let (_, text) = r.exposition("text/plain");
        assert!(
            text.contains("proxy_connections_accepted_total{listener=\"127.0.0.1:5000\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE proxy_connections_accepted_total counter"),
            "{text}"
        );
        assert!(text.contains("proxy_active_connections{listener=\"127.0.0.1:5000\"} 0"));
        assert!(text.contains("proxy_bytes_dest_to_client_total{listener=\"127.0.0.1:5000\"} 20"));
        assert!(text.contains("reason=\"not_allowed\"} 1"), "{text}");
        assert!(text.contains("source=\"127.0.0.5\"} 1"));
        let (kind, open) = r.exposition("application/openmetrics-text");
        assert_eq!(kind, egress_http::OPENMETRICS);
        assert!(open.ends_with("# EOF\n"), "{open}");
    }
}
