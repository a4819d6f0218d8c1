//! What an operator (or a server's admin API) may see and change of a running
//! relay, through one handle: suspensions (list, raise, end), automation's
//! overrides in force, idle destination sessions, the throttle store's health and
//! the TLS report — without reaching into the engine.

use crate::outbound::in_force::{domain_scope, fits, site_scope};
use crate::outbound::Context;
use crate::suspension::{Suspension, SuspensionKey};
use crate::Boxed;
use egress_throttle::InForce;
use std::time::{Duration, SystemTime};

/// Where a path override applies: a source at a site (automation's `SetConfig`)
/// or a source sending to a domain (`SetDomainConfig`).
///
/// ```no_run
/// # async fn run(relay: std::sync::Arc<egress_relay::Relay>) -> Result<(), String> {
/// use egress_relay::OverrideScope;
/// use std::time::Duration;
/// // ip-2 sends to example.com at most ten a minute, for an hour.
/// let scope = OverrideScope::Domain { source: "ip-2".into(), domain: "example.com".into() };
/// relay.admin()
///     .set_override(&scope, "max_message_rate", "10/minute".into(), Duration::from_secs(3600))
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OverrideScope {
    /// `source` at every destination of `site`.
    Site {
        /// The source's name.
        source: String,
        /// The site name.
        site: String,
    },
    /// `source` sending to `domain`.
    Domain {
        /// The source's name.
        source: String,
        /// The recipient domain.
        domain: String,
    },
}

impl OverrideScope {
    fn key(&self) -> String {
        match self {
            OverrideScope::Site { source, site } => site_scope(source, site),
            OverrideScope::Domain { source, domain } => domain_scope(source, domain),
        }
    }
}

/// A running relay's operator handle, from [`Relay::admin`](crate::Relay::admin).
/// Everything it changes lives in the throttle store, so with Redis every node
/// sees it.
///
/// ```no_run
/// # async fn run(relay: std::sync::Arc<egress_relay::Relay>) {
/// use egress_relay::SuspensionKey;
/// use std::time::Duration;
/// let admin = relay.admin();
/// let key: SuspensionKey = "ip-2->mx.example.com@smtp_client".parse().unwrap();
/// admin.suspend(&key, "blocked at example.com, ticket 123", Duration::from_secs(3600)).await;
/// assert!(admin.suspensions().await.iter().any(|s| s.key == key));
/// assert!(admin.resume(&key.id()).await);
/// # }
/// ```
pub struct Admin<'a> {
    pub(crate) ctx: &'a Context,
}

impl Admin<'_> {
    /// Every suspension in force (operators', health rules', automation's), by key.
    pub fn suspensions(&self) -> Boxed<'_, Vec<Suspension>> {
        Box::pin(async move {
            let mut list: Vec<Suspension> = self
                .ctx
                .shaper
                .throttles
                .suspensions()
                .await
                .into_iter()
                .map(|s| Suspension {
                    key: SuspensionKey::from_id(&s.key),
                    reason: s.reason,
                    until: s.until,
                })
                .collect();
            list.sort_by(|a, b| a.key.cmp(&b.key));
            list
        })
    }

    /// Keeps `key` out of selection for `duration`, replacing an earlier
    /// suspension of the same key; said at WARN.
    pub fn suspend<'a>(
        &'a self,
        key: &'a SuspensionKey,
        reason: &'a str,
        duration: Duration,
    ) -> Boxed<'a, ()> {
        Box::pin(async move {
            self.ctx
                .shaper
                .throttles
                .suspend(&key.id(), reason, duration)
                .await;
            tracing::warn!(
                source = %key.source(),
                site = %key.scope(),
                duration = %humantime::format_duration(duration),
                reason = %reason,
                "egress source suspended by an operator"
            );
        })
    }

    /// Ends the suspension whose [`id`](SuspensionKey::id) is `id`; false when
    /// none is in force.
    pub fn resume<'a>(&'a self, id: &'a str) -> Boxed<'a, bool> {
        Box::pin(async move {
            let throttles = &self.ctx.shaper.throttles;
            let known = throttles.suspensions().await.iter().any(|s| s.key == id);
            if known {
                throttles.resume(id).await;
                tracing::warn!(id = %id, "suspension cancelled by an operator");
            }
            known
        })
    }

    /// Overrides path key `name` with `value` for `scope`, for `duration`, over
    /// what the policy returns — from the next transaction on, on every node
    /// sharing the store (as automation's `SetConfig` does). A key the path
    /// config does not have, or a value it does not take, is refused, naming it.
    pub fn set_override<'a>(
        &'a self,
        scope: &'a OverrideScope,
        name: &'a str,
        value: serde_json::Value,
        duration: Duration,
    ) -> Boxed<'a, Result<(), String>> {
        Box::pin(async move {
            // Tried as applying it would try it: a mistake is the caller's error
            // now, not a WARN at every transaction.
            let value = value.to_string();
            fits(name, &value).map_err(|e| format!("{name}: {e}"))?;
            self.ctx
                .shaper
                .throttles
                .set_override(&scope.key(), name, &value, duration)
                .await;
            self.ctx.shaper.automated.invalidate();
            tracing::warn!(scope = %scope.key(), name, value = %value, "path setting overridden by an operator");
            Ok(())
        })
    }

    /// Ends the override of `name` for `scope`.
    pub fn end_override<'a>(&'a self, scope: &'a OverrideScope, name: &'a str) -> Boxed<'a, ()> {
        Box::pin(async move {
            self.ctx
                .shaper
                .throttles
                .end_override(&scope.key(), name)
                .await;
            self.ctx.shaper.automated.invalidate();
        })
    }

    /// Automation's path overrides and domain blocks in force.
    pub fn automation_in_force(&self) -> Boxed<'_, InForce> {
        Box::pin(self.ctx.shaper.throttles.in_force())
    }

    /// Health suspensions this node raised that are still in force: (source,
    /// reason).
    pub fn health_suspended(&self) -> Vec<(String, &'static str)> {
        self.ctx.shaper.health_suspended()
    }

    /// Destination sessions idle in the pool, ready for reuse.
    pub fn idle_destination_sessions(&self) -> usize {
        self.ctx.idle.len()
    }

    /// Times the shared throttle store could not answer and this node's own
    /// numbers were used.
    pub fn throttle_fallbacks(&self) -> u64 {
        self.ctx.shaper.throttles.fallbacks()
    }

    /// What RFC 8460 reports would say of the TLS sessions made since the relay
    /// started, in their JSON shape, from the relay's host name.
    pub fn tls_report(&self, now: SystemTime) -> serde_json::Value {
        self.ctx
            .tls_reports
            .report(&self.ctx.hostname, &self.ctx.product, now)
    }
}
