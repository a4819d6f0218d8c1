//! The registry: every family registered under its exposition name (KumoMTA's
//! names first, the dashboards operators have), and the values read from
//! elsewhere at scrape time.

use super::{
    catch_up, CacheLabels, Inner, NewHistogram, Snapshot, SourceReason, SourceSite, MAX_SITES,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Mutex;
use std::sync::RwLock;

impl Inner {
    pub(super) fn new() -> Box<Inner> {
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
            automation_overrides: Gauge::default(),
            automation_blocks: Gauge::default(),
            cache_hits: Family::default(),
            cache_misses: Family::default(),
            cache_loads: Family::default(),
            throttle_fallbacks: Counter::default(),
            automation_actions: Family::default(),
            mta_sts: Family::default(),
            dane: Family::default(),
            spool_messages: Gauge::default(),
            spool_bytes: Gauge::default(),
            spool_fsyncs: Counter::default(),
            log_records: Family::default(),
            log_skipped: Family::default(),
            log_failures: Family::default(),
            log_pending: Family::default(),
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
            "egressd_automation_actions",
            "Actions automation rules took (Suspend, …), by action",
            inner.automation_actions.clone(),
        );
        r.register(
            "egressd_mta_sts",
            "MTA-STS policy events: fetched, fetch_failed, cache_hit, refused (enforce turned a destination away)",
            inner.mta_sts.clone(),
        );
        r.register(
            "egressd_dane",
            "DANE decisions for destination hosts (KumoMTA's dane_result_count): verified, \
             failed (no TLSA record matched), encrypt_only (records, none usable), deferred \
             (TLSA lookup bogus or failed)",
            inner.dane.clone(),
        );
        r.register(
            "egressd_automation_overrides",
            "Path settings overridden by automation rules (SetConfig, SetDomainConfig) in force now",
            inner.automation_overrides.clone(),
        );
        r.register(
            "egressd_automation_blocks",
            "Domains (or a tenant's mail to them) deferred or refused by automation rules now",
            inner.automation_blocks.clone(),
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
            "egressd_log_records",
            "Delivery records written to a local log's segments, or taken by a log hook's endpoint",
            inner.log_records.clone(),
        );
        r.register(
            "egressd_log_records_skipped",
            "Delivery records a logger left out (per_record enable = false, or its filter said no)",
            inner.log_skipped.clone(),
        );
        r.register(
            "egressd_log_failures",
            "Log segment writes, or webhook POSTs, that failed (a hook keeps the records and retries)",
            inner.log_failures.clone(),
        );
        r.register(
            "egressd_log_backlog",
            "Delivery records taken and not yet written (local log) or not yet taken by the endpoint (log hook)",
            inner.log_pending.clone(),
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

impl Inner {
    pub(super) fn bounded_site(&self, site: &str) -> String {
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

    pub(super) fn refresh(&self, s: Snapshot) {
        self.idle_sessions.set(s.idle_sessions as i64);
        self.automation_overrides
            .set(s.automation_in_force.0 as i64);
        self.automation_blocks.set(s.automation_in_force.1 as i64);
        if let Some((messages, bytes, fsyncs)) = s.spool {
            self.spool_messages.set(messages as i64);
            self.spool_bytes.set(bytes as i64);
            catch_up(&self.spool_fsyncs, fsyncs);
        }
        catch_up(&self.throttle_fallbacks, s.throttle_fallbacks);
        for logger in &s.loggers {
            use std::sync::atomic::Ordering::Relaxed;
            let labels = super::LoggerLabels {
                kind: logger.kind,
                name: logger.name.clone(),
            };
            let stats = &logger.stats;
            catch_up(
                &self.log_records.get_or_create(&labels),
                stats.done.load(Relaxed),
            );
            catch_up(
                &self.log_skipped.get_or_create(&labels),
                stats.skipped.load(Relaxed),
            );
            catch_up(
                &self.log_failures.get_or_create(&labels),
                stats.failures.load(Relaxed),
            );
            self.log_pending
                .get_or_create(&labels)
                .set(stats.pending.load(Relaxed) as i64);
        }
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
