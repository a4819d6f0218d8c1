//! The handles the relay records into, and `Report` for [`Metrics`]: how
//! egress-relay's reports become Prometheus series. A destination session holds
//! its [`PathMetrics`] (plain atomics) for as long as it lives, so recording a
//! message takes no lock and no label lookup.

use super::{
    class, source_limit, ActionLabels, EventLabels, Histogram, ListenerReason, Metrics, PathLabels,
    ResultLabels, SourceKind, SourceReason, TransactionLabels,
};
use egress_relay::{ListenerReport, Origin, PathReport, Refusal, Report, Unrouted};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The handles one (source, pool, site) records into; resolved once per
/// destination session.
#[derive(Debug)]
pub struct PathMetrics {
    pub(super) labels: PathLabels,
    pub(super) opened: Counter,
    pub(super) reused: Counter,
    pub(super) messages: Counter,
    pub(super) bytes: Counter,
    pub(super) delivered: Counter,
    pub(super) connect: Histogram,
    pub(super) transaction: Histogram,
    /// Transactions on this path (the histograms are per source, shared by paths).
    pub(super) ended: AtomicU64,
    /// Transactions by class and origin (every path's, for the rarer outcomes).
    pub(super) transactions: Family<TransactionLabels, Counter>,
}

impl PathMetrics {
    /// The site these handles count for (`other` past the cap).
    pub fn site(&self) -> &str {
        &self.labels.site
    }

    /// One transaction on this path ended.
    pub(super) fn record(&self, code: Option<u16>, origin: Origin, size: u64, took: Duration) {
        self.transaction.observe(took);
        self.ended.fetch_add(1, Ordering::Relaxed);
        if origin == Origin::Destination && class(code) == "2xx" {
            self.delivered.inc();
            self.messages.inc();
            self.bytes.inc_by(size);
            return;
        }
        self.transactions
            .get_or_create(&TransactionLabels {
                source: self.labels.source.clone(),
                pool: self.labels.pool.clone(),
                site: self.labels.site.clone(),
                class: class(code),
                origin: origin.label(),
            })
            .inc();
    }
}

impl PathReport for PathMetrics {
    fn connection_opened(&self, took: Duration) {
        self.opened.inc();
        self.connect.observe(took);
    }

    fn connection_reused(&self) {
        self.reused.inc();
    }

    fn transaction(&self, code: Option<u16>, origin: Origin, size: u64, took: Duration) {
        self.record(code, origin, size, took);
    }
}

/// One inbound listener's handles.
#[derive(Clone)]
pub struct ListenerMetrics {
    pub(super) name: String,
    pub(super) sessions: Counter,
    pub(super) active: Gauge,
    pub(super) refusals: Family<ListenerReason, Counter>,
}

impl ListenerReport for ListenerMetrics {
    fn session_opened(&self) {
        self.sessions.inc();
        self.active.inc();
    }

    fn session_closed(&self) {
        self.active.dec();
    }

    fn refused(&self, why: Refusal) {
        self.refusals
            .get_or_create(&ListenerReason {
                listener: self.name.clone(),
                reason: why.label(),
            })
            .inc();
    }
}

impl Report for Metrics {
    fn path(&self, source: &str, pool: &str, site: &str) -> Option<Arc<dyn PathReport>> {
        Metrics::path(self, source, pool, site).map(|p| p as Arc<dyn PathReport>)
    }

    fn unrouted(&self, transaction: Unrouted<'_>) {
        self.unrouted_transaction(transaction);
    }

    fn connection_failed(&self, source: &str, kind: &'static str) {
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

    fn health_suspension(&self, source: &str, reason: &str) {
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

    fn throttle_wait(&self, source: &str, limit: &str) {
        if let Some(inner) = self.inner.get() {
            inner
                .throttle_waits
                .get_or_create(&source_limit(source, limit))
                .inc();
        }
    }

    fn throttle_refusal(&self, source: &str, limit: &str) {
        if let Some(inner) = self.inner.get() {
            inner
                .throttle_refusals
                .get_or_create(&source_limit(source, limit))
                .inc();
        }
    }

    fn automation_action(&self, action: &'static str) {
        if let Some(inner) = self.inner.get() {
            inner
                .automation_actions
                .get_or_create(&ActionLabels { action })
                .inc();
        }
    }

    fn mta_sts(&self, event: &'static str) {
        if let Some(inner) = self.inner.get() {
            inner.mta_sts.get_or_create(&EventLabels { event }).inc();
        }
    }

    fn dane(&self, result: &'static str) {
        if let Some(inner) = self.inner.get() {
            inner.dane.get_or_create(&ResultLabels { result }).inc();
        }
    }

    fn listener(&self, name: &str) -> Option<Arc<dyn ListenerReport>> {
        self.listener_handles(name)
            .map(|l| Arc::new(l) as Arc<dyn ListenerReport>)
    }
}

impl Metrics {
    /// A policy handler call finished (egress-lua's `HandlerObserver`).
    pub fn handler_call(&self, event: &'static str, took: Duration) {
        if let Some(inner) = self.inner.get() {
            inner
                .lua
                .get_or_create(&EventLabels { event })
                .observe(took);
        }
    }
}
