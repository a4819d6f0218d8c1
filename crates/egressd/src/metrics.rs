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

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

/// Distinct `site` label values before new sites are counted as `other`.
pub const MAX_SITES: usize = 1000;

/// Where a final reply came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// The destination said it (relayed as is).
    Destination,
    /// egressd said it (policy, routing, shaping, a lost session).
    Local,
    /// Nothing was answered: the client ended the transaction (RSET, QUIT).
    Client,
}

impl Origin {
    fn label(self) -> &'static str {
        match self {
            Origin::Destination => "destination",
            Origin::Local => "local",
            Origin::Client => "client",
        }
    }
}

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event: &'static str,
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
struct CacheLabels {
    kind: &'static str,
}

/// Histogram buckets for latencies, in seconds: 1 ms to 60 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// A latency histogram with one atomic per bucket (observing never locks).
#[derive(Debug, Clone)]
pub struct Histogram {
    inner: Arc<HistogramCells>,
}

#[derive(Debug)]
struct HistogramCells {
    /// One per bound in [`LATENCY_BUCKETS`], and one for +Inf.
    counts: Box<[AtomicU64]>,
    sum_micros: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            inner: Arc::new(HistogramCells {
                counts: (0..=LATENCY_BUCKETS.len())
                    .map(|_| AtomicU64::new(0))
                    .collect(),
                sum_micros: AtomicU64::new(0),
            }),
        }
    }
}

impl Histogram {
    /// Counts one observation.
    pub fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let bucket = LATENCY_BUCKETS.partition_point(|bound| *bound < secs);
        self.inner.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.inner
            .sum_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
            .iter()
            .copied()
            .chain(std::iter::once(f64::MAX))
            .zip(self.inner.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.inner.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[derive(Clone)]
struct NewHistogram;

impl MetricConstructor<Histogram> for NewHistogram {
    fn new_metric(&self) -> Histogram {
        Histogram::default()
    }
}

/// The handles one (source, pool, site) records into; resolved once per
/// destination session.
#[derive(Debug)]
pub struct PathMetrics {
    /// The pool the handles are labelled with (a reused session serving another
    /// pool resolves new handles).
    pub pool: String,
    labels: PathLabels,
    opened: Counter,
    reused: Counter,
    messages: Counter,
    bytes: Counter,
    delivered: Counter,
    connect: Histogram,
    transaction: Histogram,
    /// Transactions on this path (the histograms are per source, shared by paths).
    ended: AtomicU64,
}

impl PathMetrics {
    /// The site these handles count for (`other` past the cap).
    pub fn site(&self) -> &str {
        &self.labels.site
    }

    /// A new connection through the source, and how long it took.
    pub fn connection_opened(&self, took: Duration) {
        self.opened.inc();
        self.connect.observe(took);
    }

    /// A transaction on a session kept from an earlier one.
    pub fn connection_reused(&self) {
        self.reused.inc();
    }
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
    cache_hits: Family<CacheLabels, Counter>,
    cache_misses: Family<CacheLabels, Counter>,
    cache_loads: Family<CacheLabels, Counter>,
    throttle_fallbacks: Counter,
    spool_messages: Gauge,
    spool_bytes: Gauge,
    spool_fsyncs: Counter,
}

/// One inbound listener's handles.
#[derive(Clone)]
pub struct ListenerMetrics {
    name: String,
    sessions: Counter,
    active: Gauge,
    refusals: Family<ListenerReason, Counter>,
}

/// Why an inbound session or command was refused (a fixed label set).
#[derive(Debug, Clone, Copy)]
pub enum Refusal {
    /// `max_connections` reached.
    MaxConnections,
    /// `max_connections_per_client` or `max_connection_rate_per_client`.
    PerClientLimit,
    /// RCPT from a client that may not relay.
    RelayDenied,
    /// AUTH with bad credentials.
    AuthFailed,
    /// A message with a bare CR or LF under `invalid_line_endings = "Deny"`.
    InvalidLineEndings,
    /// A message over `max_message_size`.
    MessageTooLarge,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::PerClientLimit => "per_client_limit",
            Refusal::RelayDenied => "relay_denied",
            Refusal::AuthFailed => "auth_failed",
            Refusal::InvalidLineEndings => "invalid_line_endings",
            Refusal::MessageTooLarge => "message_too_large",
        }
    }
}

impl ListenerMetrics {
    /// A session began; the returned guard counts it active until dropped.
    pub fn session(&self) -> ActiveSession {
        self.sessions.inc();
        self.active.inc();
        ActiveSession(self.active.clone())
    }

    /// Sessions open now.
    pub fn active(&self) -> i64 {
        self.active.get()
    }

    /// Sessions accepted so far.
    pub fn sessions(&self) -> u64 {
        self.sessions.get()
    }

    /// Something was refused.
    pub fn refused(&self, why: Refusal) {
        self.refusals
            .get_or_create(&ListenerReason {
                listener: self.name.clone(),
                reason: why.label(),
            })
            .inc();
    }
}

/// Counts a session as active while it lives.
pub struct ActiveSession(Gauge);

impl Drop for ActiveSession {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// What one transaction did, for its metrics.
pub struct TransactionRecord<'a> {
    /// Its path's handles, when a source was picked.
    pub path: Option<&'a PathMetrics>,
    /// Else: the pool and site known, for the `source="-"` series.
    pub pool: Option<&'a str>,
    /// The site, when known.
    pub site: Option<&'a str>,
    /// The reply that decided it and who gave it.
    pub code: Option<u16>,
    /// Who gave it.
    pub origin: Origin,
    /// Message octets (counted when the destination accepted it).
    pub size: u64,
    /// From MAIL FROM to the end.
    pub took: Duration,
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

impl Inner {
    fn new() -> Box<Inner> {
        let mut registry = Registry::default();
        let inner = Inner {
            paths: RwLock::default(),
            sites: Mutex::default(),
            opened: Family::default(),
            reused: Family::default(),
            messages: Family::default(),
            bytes: Family::default(),
            transactions: Family::default(),
            connect: Family::new_with_constructor(NewHistogram),
            transaction: Family::new_with_constructor(NewHistogram),
            connection_failures: Family::default(),
            health_suspensions: Family::default(),
            health_suspended: Family::default(),
            suspended: Family::default(),
            throttle_waits: Family::default(),
            throttle_refusals: Family::default(),
            lua: Family::new_with_constructor(NewHistogram),
            sessions: Family::default(),
            sessions_active: Family::default(),
            refusals: Family::default(),
            idle_sessions: Gauge::default(),
            cache_hits: Family::default(),
            cache_misses: Family::default(),
            cache_loads: Family::default(),
            throttle_fallbacks: Counter::default(),
            spool_messages: Gauge::default(),
            spool_bytes: Gauge::default(),
            spool_fsyncs: Counter::default(),
            registry: Registry::default(),
        };
        // KumoMTA's names first (the dashboards operators have), then ours.
        let r = &mut registry;
        r.register(
            "egress_source_connection_failures",
            "Connections through a source that failed, by kind",
            inner.connection_failures.clone(),
        );
        r.register(
            "egress_source_health_suspensions",
            "Times a health rule suspended a source",
            inner.health_suspensions.clone(),
        );
        r.register(
            "egress_source_health_suspended",
            "1 while a health rule raised on this node keeps a source suspended",
            inner.health_suspended.clone(),
        );
        r.register(
            "lua_event_latency",
            "Seconds a policy handler call took (waiting for a Lua state included)",
            inner.lua.clone(),
        );
        r.register(
            "egressd_connections_opened",
            "New connections to destinations",
            inner.opened.clone(),
        );
        r.register(
            "egressd_connections_reused",
            "Transactions carried on a destination session kept from an earlier one",
            inner.reused.clone(),
        );
        r.register(
            "egressd_transactions",
            "Transactions by the class of the reply that decided them and who gave it",
            inner.transactions.clone(),
        );
        r.register(
            "egressd_messages_relayed",
            "Messages the destination accepted",
            inner.messages.clone(),
        );
        r.register(
            "egressd_bytes_relayed",
            "Octets of messages the destination accepted",
            inner.bytes.clone(),
        );
        r.register(
            "egressd_connect_seconds",
            "Time to connect through a source (proxy handshake included)",
            inner.connect.clone(),
        );
        r.register(
            "egressd_transaction_seconds",
            "Time from MAIL FROM to the final reply",
            inner.transaction.clone(),
        );
        r.register(
            "egressd_source_suspended",
            "1 while a source (site=\"all\") or a source at a site is suspended, by an operator or a health rule",
            inner.suspended.clone(),
        );
        r.register(
            "egressd_throttle_waits",
            "Times a transaction waited (at most 1 s) for a rate",
            inner.throttle_waits.clone(),
        );
        r.register(
            "egressd_throttle_refusals",
            "Times a limit or rate turned a transaction or a source away",
            inner.throttle_refusals.clone(),
        );
        r.register(
            "egressd_throttle_store_fallbacks",
            "Times Redis could not answer and this node's own numbers were used",
            inner.throttle_fallbacks.clone(),
        );
        r.register(
            "egressd_idle_destination_sessions",
            "Destination sessions kept open for reuse",
            inner.idle_sessions.clone(),
        );
        r.register(
            "egressd_policy_cache_hits",
            "Definitions answered from the policy cache",
            inner.cache_hits.clone(),
        );
        r.register(
            "egressd_policy_cache_misses",
            "Definitions not in the policy cache",
            inner.cache_misses.clone(),
        );
        r.register(
            "egressd_policy_cache_loads",
            "Policy handler calls made to fill the cache",
            inner.cache_loads.clone(),
        );
        r.register(
            "egressd_spool_messages",
            "Messages held in the spool (several-domain transactions not yet delivered everywhere)",
            inner.spool_messages.clone(),
        );
        r.register(
            "egressd_spool_bytes",
            "Octets of message data held in the spool",
            inner.spool_bytes.clone(),
        );
        r.register(
            "egressd_spool_fsyncs",
            "fsync calls the spool made (files and directory)",
            inner.spool_fsyncs.clone(),
        );
        r.register(
            "egressd_inbound_sessions",
            "SMTP sessions accepted",
            inner.sessions.clone(),
        );
        r.register(
            "egressd_inbound_sessions_active",
            "SMTP sessions open now",
            inner.sessions_active.clone(),
        );
        r.register(
            "egressd_inbound_refusals",
            "Inbound sessions, commands or messages refused, by reason",
            inner.refusals.clone(),
        );
        Box::new(Inner { registry, ..inner })
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
            pool: pool.to_owned(),
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

    /// One transaction ended.
    pub fn transaction(&self, t: TransactionRecord<'_>) {
        let Some(inner) = self.inner.get() else {
            return;
        };
        let owned;
        let path = match t.path {
            Some(path) => path,
            None => {
                let Some(made) = self.path("-", t.pool.unwrap_or("-"), t.site.unwrap_or("-"))
                else {
                    return;
                };
                owned = made;
                &owned
            }
        };
        path.transaction.observe(t.took);
        path.ended.fetch_add(1, Ordering::Relaxed);
        if t.origin == Origin::Destination && class(t.code) == "2xx" {
            path.delivered.inc();
            path.messages.inc();
            path.bytes.inc_by(t.size);
            return;
        }
        inner
            .transactions
            .get_or_create(&TransactionLabels {
                source: path.labels.source.clone(),
                pool: path.labels.pool.clone(),
                site: path.labels.site.clone(),
                class: class(t.code),
                origin: t.origin.label(),
            })
            .inc();
    }

    /// A connection through `source` failed.
    pub fn connection_failed(&self, source: &str, kind: &'static str) {
        if let Some(inner) = self.inner.get() {
            inner
                .connection_failures
                .get_or_create(&SourceKind {
                    source: source.to_owned(),
                    kind,
                })
                .inc();
        }
    }

    /// A health rule suspended `source`.
    pub fn health_suspension(&self, source: &str, reason: &str) {
        if let Some(inner) = self.inner.get() {
            inner
                .health_suspensions
                .get_or_create(&SourceReason {
                    source: source.to_owned(),
                    reason: reason.to_owned(),
                })
                .inc();
        }
    }

    /// A transaction waited for `limit` of `source`.
    pub fn throttle_wait(&self, source: &str, limit: &str) {
        if let Some(inner) = self.inner.get() {
            inner
                .throttle_waits
                .get_or_create(&source_limit(source, limit))
                .inc();
        }
    }

    /// `limit` of `source` turned a transaction or the source away.
    pub fn throttle_refusal(&self, source: &str, limit: &str) {
        if let Some(inner) = self.inner.get() {
            inner
                .throttle_refusals
                .get_or_create(&source_limit(source, limit))
                .inc();
        }
    }

    /// A policy handler call finished.
    pub fn handler_call(&self, event: &'static str, took: Duration) {
        if let Some(inner) = self.inner.get() {
            inner
                .lua
                .get_or_create(&EventLabels { event })
                .observe(took);
        }
    }

    /// Handles for an inbound listener named `name` (its address).
    pub fn listener(&self, name: &str) -> Option<ListenerMetrics> {
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

/// The classic Prometheus text format (0.0.4) from an OpenMetrics exposition, for
/// clients that do not ask for OpenMetrics (`promtool`, `curl`, older scrapers): a
/// counter family is named with its `_total` suffix there, and there is no `# EOF`.
pub fn classic_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<&str> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let name = match kind {
                "counter" => format!("{name}_total"),
                _ => name.to_owned(),
            };
            if let Some(text) = help.take().and_then(|h| h.split_once(' ').map(|(_, t)| t)) {
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
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

impl Inner {
    fn bounded_site(&self, site: &str) -> String {
        let mut sites = self.sites.lock().unwrap_or_else(|e| e.into_inner());
        if sites.contains(site) {
            return site.to_owned();
        }
        if sites.len() >= MAX_SITES {
            return "other".to_owned();
        }
        sites.insert(site.to_owned());
        site.to_owned()
    }

    fn refresh(&self, s: Snapshot) {
        self.idle_sessions.set(s.idle_sessions as i64);
        if let Some((messages, bytes, fsyncs)) = s.spool {
            self.spool_messages.set(messages as i64);
            self.spool_bytes.set(bytes as i64);
            catch_up(&self.spool_fsyncs, fsyncs);
        }
        catch_up(&self.throttle_fallbacks, s.throttle_fallbacks);
        let kinds = [
            ("sources", s.cache.sources),
            ("pools", s.cache.pools),
            ("paths", s.cache.paths),
            ("queues", s.cache.queues),
        ];
        for (kind, stats) in kinds {
            let labels = CacheLabels { kind };
            catch_up(&self.cache_hits.get_or_create(&labels), stats.hits);
            catch_up(&self.cache_misses.get_or_create(&labels), stats.misses);
            catch_up(&self.cache_loads.get_or_create(&labels), stats.loads);
        }
        // Gauges of what is in force now: rebuilt, so an ended suspension leaves no
        // stale 1 behind.
        self.suspended.clear();
        for (source, site) in s.suspended {
            self.suspended
                .get_or_create(&SourceSite { source, site })
                .set(1);
        }
        self.health_suspended.clear();
        for (source, reason) in s.health_suspended {
            self.health_suspended
                .get_or_create(&SourceReason {
                    source,
                    reason: reason.to_owned(),
                })
                .set(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        Snapshot {
            idle_sessions: 2,
            cache: egress_lua::PolicyCacheStats::default(),
            throttle_fallbacks: 0,
            suspended: vec![("ip-1".into(), "all".into())],
            health_suspended: Vec::new(),
            spool: None,
        }
    }

    #[test]
    fn a_delivered_message_counts_under_its_source_pool_and_site() {
        let m = Metrics::enabled();
        let path = m.path("ip-2", "pool-a", "mx.example.com").unwrap();
        path.connection_opened(Duration::from_millis(3));
        for _ in 0..3 {
            m.transaction(TransactionRecord {
                path: Some(&path),
                pool: None,
                site: None,
                code: Some(250),
                origin: Origin::Destination,
                size: 100,
                took: Duration::from_millis(20),
            });
        }
        m.transaction(TransactionRecord {
            path: None,
            pool: Some("pool-a"),
            site: None,
            code: Some(451),
            origin: Origin::Local,
            size: 0,
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
        m.connection_failed("ip-1", "timeout");
        assert_eq!(m.encode(snapshot()), "");
    }
}
