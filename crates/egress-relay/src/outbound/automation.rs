//! Automation: a path's rules (shaping.toml's `automation` tables, carried in the
//! path config) matched against the destination's replies for the (source, site,
//! domain, tenant) of the attempt that got them — the feedback loop KumoMTA runs in
//! its separate TSA daemon, done here as each reply arrives.
//!
//! Every reply that ends an attempt is matched as one line, `CODE ENHANCED text`:
//! a refused banner or EHLO, the reply to MAIL, to each RCPT, to DATA and to the
//! final dot. Replies egressd makes itself match only rules with
//! `match_internal = true`.
//!
//! What a rule does is kept in egress-throttle's store, so with
//! `kumo.configure_redis_throttles` it is in force on every node at once: `Suspend`
//! is a suspension of the source at the site (`SOURCE->SITE`), or at every site of
//! the provider for a provider's rule (`SOURCE->provider:NAME`, which selection
//! reads for each path the provider's rules apply to) — listed by
//! `suspend-ready-q` with the rule as its reason; `SetConfig` and
//! `SetDomainConfig` override a path key for (source, site) or (source, domain)
//! (`in_force.rs` applies them over the policy's path config); a `Threshold`
//! trigger counts matches with the store's GCRA (`N/period`: the Nth match in a
//! burst within the period fires it). `SuspendTenant` defers (451) and `Bounce` /
//! `BounceTenant` refuse (550) RCPTs for the domain (and tenant — the AUTH identity;
//! without one, the tenant actions do nothing, as in KumoMTA) for the duration.
//! egressd has no campaigns, so `SuspendCampaign` and `BounceCampaign` do nothing
//! and say so once, in a WARN line, rather than seem to work.

use super::in_force::{domain_scope, site_scope};
use super::shaping::{provider_queue, ready_queue, Shaper};
use egress_smtp::Reply;
use egress_source::{
    AutomationAction, AutomationRule, AutomationTrigger, ConfigOverride, EgressPathConfig,
    ThrottleSpec,
};
use egress_throttle::BlockKind;
use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

/// What an attempt's replies are matched for: its path's rules and who it was.
pub struct Watch {
    path: Arc<EgressPathConfig>,
    source: String,
    site: String,
    domain: String,
    tenant: Option<String>,
}

impl Watch {
    /// A watch over `path`'s rules; `None` when it has none (the common case
    /// costs nothing per reply).
    pub fn over(
        path: &Arc<EgressPathConfig>,
        source: &str,
        site: &str,
        domain: &str,
        tenant: Option<&str>,
    ) -> Option<Arc<Watch>> {
        (!path.automation.is_empty()).then(|| {
            Arc::new(Watch {
                path: path.clone(),
                source: source.to_owned(),
                site: site.to_owned(),
                domain: domain.to_owned(),
                tenant: tenant.map(str::to_owned),
            })
        })
    }

    /// Matches `reply` (the destination's, or egressd's own when `internal`) and
    /// acts on every rule that fires.
    pub async fn observe(&self, shaper: &Shaper, reply: &Reply, internal: bool) {
        let line = reply.to_string();
        for (index, rule) in self.path.automation.iter().enumerate() {
            if (internal && !rule.match_internal) || !rule.matches(&line) {
                continue;
            }
            if !self.triggered(shaper, index, rule).await {
                continue;
            }
            for action in &rule.action {
                self.act(shaper, rule, action, &line).await;
            }
        }
    }

    /// Whether a matching rule fires now.
    async fn triggered(&self, shaper: &Shaper, index: usize, rule: &AutomationRule) -> bool {
        let AutomationTrigger::Threshold(spec) = rule.trigger else {
            return true;
        };
        if spec.limit <= 1 {
            return true;
        }
        // N matches within the period: N − 1 pass the throttle, the Nth is refused.
        let below = ThrottleSpec {
            limit: spec.limit - 1,
            period: spec.period,
            max_burst: None,
        };
        let key = format!(
            "automation:{}#{index}:{}",
            rule.label(),
            ready_queue(&self.source, &self.site)
        );
        !shaper.throttles.throttle(&key, &below, true).await.allowed
    }

    async fn act(
        &self,
        shaper: &Shaper,
        rule: &AutomationRule,
        action: &AutomationAction,
        line: &str,
    ) {
        let until = humantime::format_rfc3339_seconds(SystemTime::now() + rule.duration);
        match action {
            AutomationAction::Suspend => {
                let key = match &rule.provider {
                    Some(provider) => provider_queue(&self.source, provider),
                    None => ready_queue(&self.source, &self.site),
                };
                let reason = format!("automation: {}: {line}", rule.label());
                shaper.throttles.suspend(&key, &reason, rule.duration).await;
                tracing::warn!(
                    rule = %rule.label(),
                    source = %self.source,
                    site = %self.site,
                    domain = %self.domain,
                    reply = %line,
                    action = "Suspend",
                    until = %until,
                    scope = %key,
                    "automation: source suspended"
                );
                took_effect(shaper, rule, action, format!("the suspension of {key}"));
            }
            AutomationAction::SetConfig(o) => {
                let scope = site_scope(&self.source, &self.site);
                self.set(shaper, rule, action, o, &scope, line, &until)
                    .await;
            }
            AutomationAction::SetDomainConfig(o) => {
                let scope = domain_scope(&self.source, &self.domain);
                self.set(shaper, rule, action, o, &scope, line, &until)
                    .await;
            }
            AutomationAction::Bounce => {
                self.block(shaper, rule, action, BlockKind::Refuse, None, line, &until)
                    .await;
            }
            AutomationAction::SuspendTenant | AutomationAction::BounceTenant => {
                let Some(tenant) = self.tenant.clone() else {
                    return;
                };
                let kind = match action {
                    AutomationAction::SuspendTenant => BlockKind::Defer,
                    _ => BlockKind::Refuse,
                };
                self.block(shaper, rule, action, kind, Some(&tenant), line, &until)
                    .await;
            }
            other => no_campaigns(rule, other),
        }
    }

    /// Defers or refuses RCPTs for the domain (and tenant) for the rule's duration.
    #[allow(clippy::too_many_arguments)]
    async fn block(
        &self,
        shaper: &Shaper,
        rule: &AutomationRule,
        action: &AutomationAction,
        kind: BlockKind,
        tenant: Option<&str>,
        line: &str,
        until: &impl std::fmt::Display,
    ) {
        let reason = format!("automation: {}: {line}", rule.label());
        shaper
            .throttles
            .set_block(kind, &self.domain, tenant, &reason, rule.duration)
            .await;
        tracing::warn!(
            rule = %rule.label(),
            source = %self.source,
            domain = %self.domain,
            tenant = tenant.unwrap_or("-"),
            reply = %line,
            action = action.name(),
            until = %until,
            "automation: mail for the domain deferred or refused at RCPT"
        );
        let what = format!("the {} of {}", action.name(), self.domain);
        took_effect(shaper, rule, action, what);
    }

    /// Overrides a path key for `scope` for the rule's duration.
    #[allow(clippy::too_many_arguments)]
    async fn set(
        &self,
        shaper: &Shaper,
        rule: &AutomationRule,
        action: &AutomationAction,
        o: &ConfigOverride,
        scope: &str,
        line: &str,
        until: &impl std::fmt::Display,
    ) {
        let value = serde_json::to_string(&o.value).unwrap_or_default();
        shaper
            .throttles
            .set_override(scope, &o.name, &value, rule.duration)
            .await;
        tracing::warn!(
            rule = %rule.label(),
            source = %self.source,
            site = %self.site,
            domain = %self.domain,
            reply = %line,
            action = action.name(),
            setting = %format!("{} = {value}", o.name),
            until = %until,
            "automation: path setting overridden"
        );
        let what = format!("the override {} = {value} for {scope}", o.name);
        took_effect(shaper, rule, action, what);
    }
}

/// What every action does once it is in force: this node's snapshot is dropped
/// (so it applies here at once), its end is noted for the INFO line, and it is
/// counted.
fn took_effect(shaper: &Shaper, rule: &AutomationRule, action: &AutomationAction, what: String) {
    shaper.automated.invalidate();
    shaper.automated.raised(
        format!("{what} by {}", rule.label()),
        SystemTime::now() + rule.duration,
    );
    shaper.report.automation_action(action.name());
}

/// Says once per (rule, action) that a campaign action does nothing here.
fn no_campaigns(rule: &AutomationRule, action: &AutomationAction) {
    static SAID: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let key = format!("{} {}", rule.label(), action.name());
    let first = SAID
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key);
    if first {
        tracing::warn!(
            rule = %rule.label(),
            action = action.name(),
            "automation: the rule matched; this relay has no campaigns, so this action does nothing"
        );
    }
}
