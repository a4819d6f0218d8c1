//! Prometheus metrics: what every source, pool and site is doing, for
//! `GET /metrics` (and `/metrics.json`, `egressd status`).
//!
//! prometheus-client keeps the registry and writes the exposition. The hot path
//! takes no lock per message: a destination session resolves its labelled handles
//! ([`PathMetrics`], plain atomics) once when it opens, and a reused session
//! carries them; only a new label set takes the write lock of the map that holds
//! them. Histograms here are our own ([`Histogram`]: one atomic per bucket) because
//! prometheus-client's takes a lock per observation.
//!
//! Metrics are recorded only when the policy starts an HTTP listener (nothing could
//! read them otherwise): [`Metrics::disabled`] records nothing and costs one branch.
//!
//! Labels stay bounded: sources and pools are the policy's names; sites are
//! factored MX names, and past [`MAX_SITES`] distinct ones a new site is counted
//! under `site="other"` (its transactions still log their real site).

mod handles;
mod histogram;
mod registry;

pub use handles::{ListenerMetrics, PathMetrics};
pub use histogram::Histogram;

use egress_relay::{Origin, Unrouted};
use histogram::NewHistogram;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

/// Distinct `site` label values before new sites are counted as `other`.
pub const MAX_SITES: usize = 1000;

/// A reply code's class as a label.
fn class(code: Option<u16>) -> &'static str {
    match code.map(|c| c / 100) {
        Some(2) => "2xx",
        Some(4) => "4xx",
        Some(5) => "5xx",
        Some(_) => "other",
        None => "none",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PathLabels {
    source: String,
    pool: String,
    site: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransactionLabels {
    source: String,
    pool: String,
    site: String,
    class: &'static str,
    origin: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceKind {
    source: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceReason {
    source: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceSite {
    source: String,
    site: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLimit {
    source: String,
    limit: String,
}

/// A delivery-record logger: `local` (its directory) or `hook` (its name).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LoggerLabels {
    kind: &'static str,
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerReason {
    listener: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    kind: &'static str,
}

/// Counts per source for `egressd status`.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct SourceCounts {
    /// Transactions that reached a reply (or were abandoned).
    pub transactions: u64,
    /// Messages the destination accepted.
    pub messages: u64,
    /// Their octets.
    pub bytes: u64,
    /// New connections.
    pub connections_opened: u64,
    /// Transactions on kept sessions.
    pub connections_reused: u64,
}

/// Values read from elsewhere when scraped.
pub struct Snapshot {
    /// Destination sessions idle in the pool.
    pub idle_sessions: usize,
    /// The policy's definition caches.
    pub cache: egress_lua::PolicyCacheStats,
    /// Times Redis could not answer and local numbers were used.
    pub throttle_fallbacks: u64,
    /// Suspensions in force: (source, site or `all`).
    pub suspended: Vec<(String, String)>,
    /// Health suspensions this node raised and still in force: (source, reason).
    pub health_suspended: Vec<(String, &'static str)>,
    /// The spool, when one is defined: (messages held, bytes held, fsyncs so far).
    pub spool: Option<(usize, u64, u64)>,
    /// Automation's path overrides and domain blocks in force.
    pub automation_in_force: (usize, usize),
    /// Delivery-record loggers and their counts.
    pub loggers: Vec<egress_log::LoggerInfo>,
}

/// Every metric egressd keeps (or none, until enabled).
pub struct Metrics {
    inner: OnceLock<Box<Inner>>,
}

type PathMap = HashMap<String, HashMap<String, HashMap<String, Arc<PathMetrics>>>>;

struct Inner {
    registry: Registry,
    /// source → pool → site → handles: nested so a lookup borrows the caller's
    /// strings instead of allocating a key.
    paths: RwLock<PathMap>,
    sites: Mutex<HashSet<String>>,
    opened: Family<PathLabels, Counter>,
    reused: Family<PathLabels, Counter>,
    messages: Family<PathLabels, Counter>,
    bytes: Family<PathLabels, Counter>,
    transactions: Family<TransactionLabels, Counter>,
    connect: Family<SourceLabels, Histogram, NewHistogram>,
    transaction: Family<SourceLabels, Histogram, NewHistogram>,
    connection_failures: Family<SourceKind, Counter>,
    health_suspensions: Family<SourceReason, Counter>,
    health_suspended: Family<SourceReason, Gauge>,
    suspended: Family<SourceSite, Gauge>,
    throttle_waits: Family<SourceLimit, Counter>,
    throttle_refusals: Family<SourceLimit, Counter>,
    lua: Family<EventLabels, Histogram, NewHistogram>,
    sessions: Family<ListenerLabels, Counter>,
    sessions_active: Family<ListenerLabels, Gauge>,
    refusals: Family<ListenerReason, Counter>,
    idle_sessions: Gauge,
    automation_overrides: Gauge,
    automation_blocks: Gauge,
    cache_hits: Family<CacheLabels, Counter>,
    cache_misses: Family<CacheLabels, Counter>,
    cache_loads: Family<CacheLabels, Counter>,
    throttle_fallbacks: Counter,
    automation_actions: Family<ActionLabels, Counter>,
    mta_sts: Family<EventLabels, Counter>,
    dane: Family<ResultLabels, Counter>,
    spool_messages: Gauge,
    spool_bytes: Gauge,
    spool_fsyncs: Counter,
    log_records: Family<LoggerLabels, Counter>,
    log_skipped: Family<LoggerLabels, Counter>,
    log_failures: Family<LoggerLabels, Counter>,
    log_pending: Family<LoggerLabels, Gauge>,
}

impl Metrics {
    /// Records nothing until [`enable`](Self::enable)d (egressd enables them when
    /// the policy starts an HTTP listener; without one nothing could read them).
    pub fn disabled() -> Metrics {
        Metrics {
            inner: OnceLock::new(),
        }
    }

    /// Records everything.
    pub fn enabled() -> Metrics {
        let metrics = Metrics::disabled();
        metrics.enable();
        metrics
    }

    /// Starts recording (once; later calls change nothing).
    pub fn enable(&self) {
        self.inner.get_or_init(Inner::new);
    }
}

impl Metrics {
    /// True when recording.
    pub fn is_enabled(&self) -> bool {
        self.inner.get().is_some()
    }

    /// The handles for a (source, pool, site); `None` when disabled.
    pub fn path(&self, source: &str, pool: &str, site: &str) -> Option<Arc<PathMetrics>> {
        let inner = self.inner.get()?;
        let found = inner
            .paths
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(source)
            .and_then(|pools| pools.get(pool))
            .and_then(|sites| sites.get(site))
            .cloned();
        if found.is_some() {
            return found;
        }
        let asked_site = site;
        let site = inner.bounded_site(site);
        let labels = PathLabels {
            source: source.to_owned(),
            pool: pool.to_owned(),
            site,
        };
        let by_source = SourceLabels {
            source: source.to_owned(),
        };
        let made = Arc::new(PathMetrics {
            transactions: inner.transactions.clone(),
            opened: inner.opened.get_or_create(&labels).clone(),
            reused: inner.reused.get_or_create(&labels).clone(),
            messages: inner.messages.get_or_create(&labels).clone(),
            bytes: inner.bytes.get_or_create(&labels).clone(),
            delivered: inner
                .transactions
                .get_or_create(&TransactionLabels {
                    source: labels.source.clone(),
                    pool: labels.pool.clone(),
                    site: labels.site.clone(),
                    class: "2xx",
                    origin: Origin::Destination.label(),
                })
                .clone(),
            connect: inner.connect.get_or_create(&by_source).clone(),
            transaction: inner.transaction.get_or_create(&by_source).clone(),
            ended: AtomicU64::new(0),
            labels,
        });
        inner
            .paths
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(source.to_owned())
            .or_default()
            .entry(pool.to_owned())
            .or_default()
            .insert(asked_site.to_owned(), made.clone());
        Some(made)
    }

    /// A transaction that ended before a source was picked: counted under
    /// `source="-"`.
    fn unrouted_transaction(&self, t: Unrouted<'_>) {
        if let Some(path) = self.path("-", t.pool.unwrap_or("-"), t.site.unwrap_or("-")) {
            path.record(t.code, t.origin, 0, t.took);
        }
    }

    /// Handles for an inbound listener named `name` (its address).
    fn listener_handles(&self, name: &str) -> Option<ListenerMetrics> {
        let inner = self.inner.get()?;
        let labels = ListenerLabels {
            listener: name.to_owned(),
        };
        Some(ListenerMetrics {
            name: name.to_owned(),
            sessions: inner.sessions.get_or_create(&labels).clone(),
            active: inner.sessions_active.get_or_create(&labels).clone(),
            refusals: inner.refusals.clone(),
        })
    }

    /// (sessions open now, sessions accepted so far) on the listener `name`, for
    /// `egressd status`; zeros when not recording.
    pub fn listener_sessions(&self, name: &str) -> (i64, u64) {
        self.listener_handles(name)
            .map(|l| (l.active.get(), l.sessions.get()))
            .unwrap_or_default()
    }

    /// Per-source counts (summed over pools and sites), for `egressd status`.
    pub fn source_counts(&self) -> std::collections::BTreeMap<String, SourceCounts> {
        let mut counts = std::collections::BTreeMap::<String, SourceCounts>::new();
        let Some(inner) = self.inner.get() else {
            return counts;
        };
        let paths: Vec<Arc<PathMetrics>> = inner
            .paths
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .flat_map(|pools| pools.values())
            .flat_map(|sites| sites.values())
            .cloned()
            .collect();
        for path in paths {
            let c = counts.entry(path.labels.source.clone()).or_default();
            c.transactions += path.ended.load(Ordering::Relaxed);
            c.messages += path.messages.get();
            c.bytes += path.bytes.get();
            c.connections_opened += path.opened.get();
            c.connections_reused += path.reused.get();
        }
        counts
    }

    /// The Prometheus text exposition (OpenMetrics), after taking in `snapshot`.
    pub fn encode(&self, snapshot: Snapshot) -> String {
        let mut text = String::new();
        if let Some(inner) = self.inner.get() {
            inner.refresh(snapshot);
            // Writing to a String cannot fail.
            let _ = prometheus_client::encoding::text::encode(&mut text, &inner.registry);
        }
        text
    }
}

fn source_limit(source: &str, limit: &str) -> SourceLimit {
    SourceLimit {
        source: source.to_owned(),
        limit: limit.to_owned(),
    }
}

/// Raises a monotonic counter to `value` (values read from elsewhere).
fn catch_up(counter: &Counter, value: u64) {
    let seen = counter.get();
    if value > seen {
        counter.inc_by(value - seen);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use egress_relay::Report;
    use std::time::Duration;

    fn snapshot() -> Snapshot {
        Snapshot {
            idle_sessions: 2,
            cache: egress_lua::PolicyCacheStats::default(),
            throttle_fallbacks: 0,
            suspended: vec![("ip-1".into(), "all".into())],
            health_suspended: Vec::new(),
            spool: None,
            automation_in_force: (1, 0),
            loggers: Vec::new(),
        }
    }

    #[test]
    fn a_delivered_message_counts_under_its_source_pool_and_site() {
        let m = Metrics::enabled();
        // Through the relay's reporting interface, as a relay records.
        let report: &dyn Report = &m;
        let path = report.path("ip-2", "pool-a", "mx.example.com").unwrap();
        path.connection_opened(Duration::from_millis(3));
        for _ in 0..3 {
            path.transaction(
                Some(250),
                Origin::Destination,
                100,
                Duration::from_millis(20),
            );
        }
        report.unrouted(Unrouted {
            pool: Some("pool-a"),
            site: None,
            code: Some(451),
            origin: Origin::Local,
            took: Duration::from_millis(1),
        });
        let text = m.encode(snapshot());
        let labels = r#"source="ip-2",pool="pool-a",site="mx.example.com""#;
        assert!(
            text.contains(&format!("egressd_messages_relayed_total{{{labels}}} 3")),
            "{text}"
        );
        assert!(
            text.contains(&format!("egressd_bytes_relayed_total{{{labels}}} 300")),
            "{text}"
        );
        assert!(
            text.contains(&format!("egressd_connections_opened_total{{{labels}}} 1")),
            "{text}"
        );
        assert!(text.contains(r#"egressd_transactions_total{source="-",pool="pool-a",site="-",class="4xx",origin="local"} 1"#), "{text}");
        assert!(
            text.contains(r#"egressd_transaction_seconds_count{source="ip-2"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"egressd_transaction_seconds_bucket{le="0.025",source="ip-2"} 3"#),
            "{text}"
        );
        assert!(
            text.contains("egressd_idle_destination_sessions 2"),
            "{text}"
        );
        assert!(text.contains("egressd_automation_overrides 1"), "{text}");
        assert!(
            text.contains(r#"egressd_source_suspended{source="ip-1",site="all"} 1"#),
            "{text}"
        );
        assert_eq!(m.source_counts()["ip-2"].messages, 3);
    }

    #[test]
    fn sites_past_the_cap_are_counted_as_other() {
        let m = Metrics::enabled();
        for i in 0..MAX_SITES {
            m.path("ip-1", "p", &format!("mx{i}.example"));
        }
        let late = m.path("ip-1", "p", "late.example").unwrap();
        assert_eq!(late.labels.site, "other");
        let known = m.path("ip-1", "p", "mx7.example").unwrap();
        assert_eq!(known.labels.site, "mx7.example");
    }

    #[test]
    fn disabled_metrics_record_nothing_and_expose_nothing() {
        let m = Metrics::disabled();
        assert!(m.path("ip-1", "p", "s").is_none());
        Report::connection_failed(&m, "ip-1", "timeout");
        assert_eq!(m.encode(snapshot()), "");
    }
}
