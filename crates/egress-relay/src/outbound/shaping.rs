//! Shaping at the moment a transaction picks its route: which sources may be chosen
//! (suspensions, `source_selection_rate`), whether a message may go now
//! (`max_message_rate`), whether a new connection may open (`max_connection_rate`,
//! `connection_limit`), and health rules that suspend a failing source.
//!
//! egressd holds no queue, so it must decide now: a short wait (at most
//! [`MAX_WAIT`]) is taken; anything longer is a `451 4.7.1` that says when to retry.
//! Keys: `SOURCE@SITE` unless an `additional_*` name says otherwise (those names are
//! shared by every path that uses them); suspensions are keyed by source name (all
//! sites) or `SOURCE->SITE`.

use crate::report::Report;
use crate::suspension::SuspensionKey;
use egress_connect::{ConnectError, Phase};
use egress_smtp::{words, Reply};
use egress_source::{
    ConnectionLimit, EgressPathConfig, EgressSource, SuspensionRule, ThrottleSpec, Trigger,
};
use egress_throttle::{Lease, Throttles};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// The longest a transaction waits for a rate; beyond it, `451 4.7.1`.
pub const MAX_WAIT: Duration = Duration::from_secs(1);
/// How long a connection-limit lease lasts without renewal. Every lease a live
/// connection holds is renewed every [`LEASE_RENEWAL`]; a node that dies stops
/// renewing, and its slots free themselves after this.
pub const LEASE_TTL: Duration = Duration::from_secs(15);
/// How often held leases are renewed.
pub const LEASE_RENEWAL: Duration = Duration::from_secs(5);

/// Why a source cannot be chosen now, and when it may be.
pub struct Ineligible {
    /// In words, naming the source and the setting.
    pub reason: String,
    /// When trying again could succeed.
    pub retry_after: Duration,
}

/// The shaping state of this node (and, through Redis, of all).
pub struct Shaper {
    /// The store: rates, leases, suspensions (this node's, or shared by Redis).
    pub throttles: Arc<Throttles>,
    /// What automation put in force: path overrides, blocked domains.
    pub automated: super::in_force::Automated,
    /// Recent failures per (source, rule), for `Threshold` triggers.
    failures: Mutex<HashMap<(String, &'static str), VecDeque<Instant>>>,
    /// Leases held by live connections, renewed in the background.
    live: Mutex<HashMap<String, Lease>>,
    /// Health suspensions this node raised: (source, kind) → until.
    raised: Mutex<HashMap<(String, &'static str), SystemTime>>,
    /// Waits, refusals, connection failures, suspensions.
    pub report: Arc<dyn Report>,
}

/// The suspension key for a source at a site (see [`SuspensionKey`]).
pub fn ready_queue(source: &str, site: &str) -> String {
    SuspensionKey::Site {
        source: source.to_owned(),
        site: site.to_owned(),
    }
    .id()
}

/// The suspension key of `source` at every site of `provider` (a provider's
/// automation rule suspends there).
pub fn provider_queue(source: &str, provider: &str) -> String {
    SuspensionKey::Provider {
        source: source.to_owned(),
        provider: provider.to_owned(),
    }
    .id()
}

fn until_now(until: SystemTime) -> Duration {
    until
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO)
}

impl Shaper {
    /// Shaping over `throttles`, reporting waits, refusals and health
    /// suspensions to `report`.
    pub fn new(throttles: Arc<Throttles>, report: Arc<dyn Report>) -> Shaper {
        Shaper {
            throttles,
            automated: Default::default(),
            failures: Mutex::default(),
            live: Mutex::default(),
            raised: Mutex::default(),
            report,
        }
    }

    /// Health suspensions this node raised that are still in force: (source, kind).
    pub fn health_suspended(&self) -> Vec<(String, &'static str)> {
        let now = SystemTime::now();
        let mut raised = self.raised.lock().unwrap_or_else(|e| e.into_inner());
        raised.retain(|_, until| *until > now);
        raised.keys().cloned().collect()
    }

    /// Renews every held lease every [`LEASE_RENEWAL`], for as long as the process
    /// lives (the server starts this once).
    pub fn spawn_renewal(self: &Arc<Self>) {
        let shaper = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(LEASE_RENEWAL);
            loop {
                tick.tick().await;
                let Some(shaper) = shaper.upgrade() else {
                    return;
                };
                let held: Vec<Lease> = shaper
                    .live
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .values()
                    .cloned()
                    .collect();
                for lease in &held {
                    shaper.throttles.renew(lease, LEASE_TTL).await;
                }
                shaper.automated.log_ended();
            }
        });
    }

    /// May `source` be chosen for `site` now? Suspensions first, then the
    /// selection rates, smallest first (KumoMTA's rule). Counts the selection when
    /// it is allowed.
    pub async fn eligible(
        &self,
        source: &str,
        site: &str,
        path: &EgressPathConfig,
    ) -> Result<(), Ineligible> {
        let keys = match self.throttles.may_have_suspensions() {
            true => {
                let mut keys = vec![source.to_owned(), ready_queue(source, site)];
                // The providers whose rules apply here: a provider-wide suspension.
                for provider in path.automation.iter().filter_map(|r| r.provider.as_deref()) {
                    let key = provider_queue(source, provider);
                    if !keys.contains(&key) {
                        keys.push(key);
                    }
                }
                keys
            }
            false => Vec::new(),
        };
        for key in keys {
            if let Some(s) = self.throttles.suspension(&key).await {
                self.report.throttle_refusal(source, "suspended");
                return Err(Ineligible {
                    reason: format!("source '{source}' is suspended ({})", s.reason),
                    retry_after: until_now(s.until),
                });
            }
        }
        let rates = selection_rates(source, site, path);
        for Rate { key, spec, .. } in rates {
            let d = self.throttles.throttle(&key, spec, true).await;
            if !d.allowed {
                self.report
                    .throttle_refusal(source, "source_selection_rate");
                return Err(Ineligible {
                    reason: format!("source '{source}' reached its source_selection_rate {spec}"),
                    retry_after: d.retry_after,
                });
            }
        }
        Ok(())
    }

    /// One message through `source` to `site`: `max_message_rate` and the
    /// additional message rates; waits up to [`MAX_WAIT`].
    pub async fn message(
        &self,
        source: &str,
        site: &str,
        path: &EgressPathConfig,
    ) -> Result<(), Reply> {
        let rates = message_rates(source, site, path);
        for Rate { key, spec, what } in rates {
            self.wait_for(&key, spec, &what, source, site).await?;
        }
        Ok(())
    }

    /// A new connection through `source` to `site`: `max_connection_rate`.
    pub async fn connection_rate(
        &self,
        source: &str,
        site: &str,
        path: &EgressPathConfig,
    ) -> Result<(), Reply> {
        for Rate { key, spec, what } in connection_rates(source, site, path) {
            self.wait_for(&key, spec, &what, source, site).await?;
        }
        Ok(())
    }

    async fn wait_for(
        &self,
        key: &str,
        spec: &egress_source::ThrottleSpec,
        what: &str,
        source: &str,
        site: &str,
    ) -> Result<(), Reply> {
        let started = Instant::now();
        loop {
            let d = self.throttles.throttle(key, spec, true).await;
            if d.allowed {
                return Ok(());
            }
            if started.elapsed() + d.retry_after > MAX_WAIT {
                self.report.throttle_refusal(source, what);
                return Err(Reply::new(
                    451,
                    [4, 7, 1],
                    format!(
                        "source '{source}' at {site}: {what} {spec} reached; the next message may go in {}",
                        words::duration(d.retry_after.max(Duration::from_millis(1)))
                    ),
                ));
            }
            self.report.throttle_wait(source, what);
            tokio::time::sleep(d.retry_after).await;
        }
    }

    /// Slots for a new connection: `connection_limit` and the additional limits,
    /// all or none. `Err` with the reply to give if the caller stops waiting.
    pub async fn connection_slots(
        &self,
        source: &str,
        site: &str,
        path: &EgressPathConfig,
        waited: Duration,
    ) -> Result<Vec<Lease>, (Reply, String)> {
        let limits = connection_limits(source, site, path);
        let mut held = Vec::new();
        for Limit { key, limit, what } in limits {
            match self.throttles.acquire(&key, limit, LEASE_TTL).await {
                Some(lease) => {
                    self.live
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(lease.id.clone(), lease.clone());
                    held.push(lease);
                }
                None => {
                    self.release(&held).await;
                    let reply = Reply::new(
                        451,
                        [4, 7, 1],
                        format!(
                            "source '{source}' at {site}: all {} connections of {what} are busy (waited {})",
                            limit.limit,
                            words::duration(waited)
                        ),
                    );
                    return Err((reply, key));
                }
            }
        }
        Ok(held)
    }

    /// Gives connection slots back.
    pub async fn release(&self, leases: &[Lease]) {
        for lease in leases {
            self.live
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&lease.id);
            self.throttles.release(lease).await;
        }
    }

    /// A connect failure through `source`: if one of its health rules applies and
    /// fires, the source is suspended (for every node when Redis is configured).
    /// Returns the suspension's reason when it fired.
    pub async fn connect_failed(
        &self,
        source: &EgressSource,
        error: &ConnectError,
    ) -> Option<String> {
        self.report.connection_failed(&source.name, error.kind());
        let (rule, kind) = if error.is_unplumbed() {
            (source.suspend_when_unplumbed.as_ref()?, "unplumbed")
        } else if proxy_unhealthy(error) {
            (
                source.suspend_when_proxy_unhealthy.as_ref()?,
                "proxy_unhealthy",
            )
        } else {
            return None;
        };
        if !self.fires(&source.name, kind, rule) {
            return None;
        }
        let reason = format!("{}: {error}", kind.replace('_', " "));
        tracing::warn!(
            source = %source.name,
            duration = %words::duration(rule.duration),
            "suspending egress source: {reason}"
        );
        self.throttles
            .suspend(&source.name, &reason, rule.duration)
            .await;
        self.report.health_suspension(&source.name, kind);
        self.raised
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                (source.name.clone(), kind),
                SystemTime::now() + rule.duration,
            );
        Some(reason)
    }

    fn fires(&self, source: &str, kind: &'static str, rule: &SuspensionRule) -> bool {
        let spec = match rule.trigger {
            Trigger::Immediate => return true,
            Trigger::Threshold(spec) => spec,
        };
        let now = Instant::now();
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let seen = failures.entry((source.to_owned(), kind)).or_default();
        seen.push_back(now);
        while seen
            .front()
            .is_some_and(|t| now.duration_since(*t) > spec.period)
        {
            seen.pop_front();
        }
        if seen.len() as u64 >= spec.limit {
            seen.clear();
            return true;
        }
        false
    }
}

/// A rate as shaping applies it: the throttle key, the spec, and the setting it
/// comes from (for messages).
pub struct Rate<'a> {
    /// The throttle store's key.
    pub key: String,
    /// The rate.
    pub spec: &'a ThrottleSpec,
    /// The setting it comes from, as an operator wrote it.
    pub what: String,
}

/// A connection limit as shaping applies it.
pub struct Limit {
    /// The throttle store's key for its leases.
    pub key: String,
    /// The limit.
    pub limit: ConnectionLimit,
    /// The setting it comes from, as an operator wrote it.
    pub what: String,
}

/// A path's own setting, keyed `PREFIX:SOURCE@SITE`, and its additional named ones,
/// keyed `PREFIX:NAME` (shared by every path that names them): (key, value, setting).
fn keyed<'a, T>(
    prefix: &str,
    (source, site): (&str, &str),
    own: (Option<&'a T>, &str),
    additional: (&'a BTreeMap<String, T>, &str),
) -> Vec<(String, &'a T, String)> {
    own.0
        .map(|value| (format!("{prefix}:{source}@{site}"), value, own.1.to_owned()))
        .into_iter()
        .chain(additional.0.iter().map(|(name, value)| {
            (
                format!("{prefix}:{name}"),
                value,
                format!("{}.{name}", additional.1),
            )
        }))
        .collect()
}

fn rates(keyed: Vec<(String, &ThrottleSpec, String)>) -> Vec<Rate<'_>> {
    keyed
        .into_iter()
        .map(|(key, spec, what)| Rate { key, spec, what })
        .collect()
}

/// `source_selection_rate` and the additional selection rates, most restrictive
/// (longest interval) first — KumoMTA's order.
pub fn selection_rates<'a>(source: &str, site: &str, path: &'a EgressPathConfig) -> Vec<Rate<'a>> {
    let mut list = rates(keyed(
        "select",
        (source, site),
        (path.source_selection_rate.as_ref(), "source_selection_rate"),
        (
            &path.additional_source_selection_rates,
            "additional_source_selection_rates",
        ),
    ));
    list.sort_by_key(|r| std::cmp::Reverse(r.spec.interval()));
    list
}

/// `max_message_rate` and the additional message rates.
pub fn message_rates<'a>(source: &str, site: &str, path: &'a EgressPathConfig) -> Vec<Rate<'a>> {
    rates(keyed(
        "msg",
        (source, site),
        (path.max_message_rate.as_ref(), "max_message_rate"),
        (
            &path.additional_message_rate_throttles,
            "additional_message_rate_throttles",
        ),
    ))
}

/// KumoMTA has no additional connection rates.
static NO_ADDITIONAL_RATES: BTreeMap<String, ThrottleSpec> = BTreeMap::new();

/// `max_connection_rate`.
pub fn connection_rates<'a>(source: &str, site: &str, path: &'a EgressPathConfig) -> Vec<Rate<'a>> {
    rates(keyed(
        "connrate",
        (source, site),
        (path.max_connection_rate.as_ref(), "max_connection_rate"),
        (&NO_ADDITIONAL_RATES, ""),
    ))
}

/// `connection_limit` and the additional connection limits.
pub fn connection_limits(source: &str, site: &str, path: &EgressPathConfig) -> Vec<Limit> {
    keyed(
        "conn",
        (source, site),
        (path.connection_limit.as_ref(), "connection_limit"),
        (
            &path.additional_connection_limits,
            "additional_connection_limits",
        ),
    )
    .into_iter()
    .map(|(key, limit, what)| Limit {
        key,
        limit: *limit,
        what,
    })
    .collect()
}

/// A failure that says the proxy (not the destination) is unwell: unreachable,
/// unresolvable, silent, refusing us, or unable to bind the source address.
fn proxy_unhealthy(error: &ConnectError) -> bool {
    match error {
        ConnectError::ProxyUnreachable { .. }
        | ConnectError::ResolveProxy { .. }
        | ConnectError::SourceBindUnsupported { .. }
        | ConnectError::ProxyProtocol { .. }
        | ConnectError::ProxyAuthFailed { .. } => true,
        ConnectError::Timeout { phase, .. } => {
            matches!(phase, Phase::ConnectProxy | Phase::ProxyHandshake)
        }
        _ => false,
    }
}
