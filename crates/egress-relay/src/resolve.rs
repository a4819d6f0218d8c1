//! What the relay would do for a message to a domain, resolved exactly as a
//! transaction resolves it (same policy calls, same DNS, same precedence and
//! shaping keys) but without connecting, counting a throttle, or moving the pool's
//! rotation. egressd serves it as `GET /api/admin/resolve-egress-path/v1`. The path
//! config shown is the one in force: automation's overrides applied, and listed
//! with their expiry.
//!
//! Without a source, every source the pool can pick (weight above zero) is shown,
//! heaviest first.

use crate::outbound::in_force::{domain_scope, site_scope};
use crate::outbound::plan::{self, Unplanned};
use crate::outbound::route::heaviest_first;
use crate::outbound::shaping::{
    connection_limits, connection_rates, message_rates, selection_rates, Rate,
};
use crate::outbound::Context;
use crate::suspension::SuspensionKey;
use egress_source::EgressPathConfig;
use serde_json::{json, Value};

/// Why a resolution could not be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolveError {
    /// What was asked is wrong (`field` names it): no such source, no domain.
    Asked {
        /// The parameter at fault.
        field: &'static str,
        /// What is wrong and what to give instead.
        message: String,
    },
    /// The policy or DNS failed to answer.
    Failed(String),
}

impl std::fmt::Display for ResolveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResolveError::Asked { field, message } => write!(f, "{field}: {message}"),
            ResolveError::Failed(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for ResolveError {}

/// Resolves `domain` (lowercase, no trailing dot) for `source`, or for every
/// source of its pool: the queue config, pool, site, destinations, and per source
/// its definition, path config, effective EHLO name and ports, suspensions, and
/// every rate and limit with what is left of it — as JSON.
pub async fn resolve(
    ctx: &Context,
    domain: &str,
    source: Option<&str>,
) -> Result<Value, ResolveError> {
    let failed =
        |what: &str, e: &dyn std::fmt::Display| ResolveError::Failed(format!("{what}: {e}"));
    let routed = plan::route(ctx, domain, None)
        .await
        .map_err(|e| ResolveError::Failed(e.text))?;
    let (queue, pool) = (&routed.queue, &routed.pool);
    let routing = &routed.routing;
    let (hosts, site) = (&routing.hosts, routing.site.clone());

    let names: Vec<String> = match source {
        Some(source) => vec![source.to_owned()],
        None => heaviest_first(pool)
            .into_iter()
            .map(str::to_owned)
            .collect(),
    };
    let mut sources = Vec::new();
    for name in names {
        let plan = plan::for_source(ctx, &routed.routing, domain, &name)
            .await
            .map_err(|e| match e {
                Unplanned::Source(e) => ResolveError::Asked {
                    field: "source",
                    message: format!("no egress source {name:?}: {e}"),
                },
                Unplanned::Path(e) => failed("get_egress_path_config", &e),
            })?;
        let (source, path) = (&plan.source, &plan.path);
        let shaper = &ctx.shaper;
        let scopes = [site_scope(&name, &site), domain_scope(&name, domain)];
        let overrides: Vec<Value> = shaper
            .automated
            .current(&shaper.throttles)
            .await
            .overrides
            .iter()
            .filter(|o| scopes.contains(&o.scope))
            .map(|o| {
                json!({
                    "scope": o.scope,
                    "name": o.name,
                    "value": serde_json::from_str::<Value>(&o.value).unwrap_or(Value::Null),
                    "expires": humantime::format_rfc3339_seconds(o.until).to_string(),
                })
            })
            .collect();
        // The hosts this source's path lets it try, in order (skip_hosts,
        // prohibited_hosts and ip_lookup_strategy applied), or why none.
        let (destinations, refused): (Vec<Value>, Option<String>) = match &plan.hosts {
            Ok(list) => (
                list.iter()
                    .map(|(h, addr)| {
                        json!({
                            "host": h.host,
                            "address": h.ip.to_string(),
                            "port": addr.port(),
                            "mx_list_entry": h.entry.as_ref().map(|e| e.to_string()),
                        })
                    })
                    .collect(),
                None,
            ),
            Err(reply) => (Vec::new(), Some(reply.to_string())),
        };
        let mut suspensions = Vec::new();
        let keys = [
            SuspensionKey::Source(name.clone()),
            SuspensionKey::Site {
                source: name.clone(),
                site: site.clone(),
            },
        ];
        for key in keys {
            if let Some(s) = ctx.shaper.throttles.suspension(&key.id()).await {
                suspensions.push(json!({
                    "id": s.key,
                    "reason": s.reason,
                    "expires": humantime::format_rfc3339_seconds(s.until).to_string(),
                }));
            }
        }
        sources.push(json!({
            "name": name,
            "in_pool": pool.entries.iter().any(|e| e.name == name),
            "weight": pool.entries.iter().find(|e| e.name == name).map(|e| e.weight),
            "ehlo_domain": plan.ehlo,
            "destinations": destinations,
            "refused": refused,
            "suspensions": suspensions,
            "overrides": overrides,
            "throttles": throttles(ctx, &name, &site, path).await,
            "source": source.as_ref(),
            "path_config": path.as_ref(),
        }));
    }
    let mta_sts = match routing.by_mx {
        false => json!("not applicable: the route is an mx_list, not the domain's MX"),
        true => match ctx
            .mta_sts
            .policy(
                &ctx.dns,
                &crate::report::NoReport,
                domain,
                std::time::Duration::from_secs(10),
            )
            .await
        {
            None => json!("none"),
            Some(p) => json!({
                "mode": p.policy.mode.to_string(),
                "id": p.id,
                "mx": p.policy.mx,
                "max_age": humantime::format_duration(p.policy.max_age).to_string(),
                "expires": humantime::format_rfc3339_seconds(
                    std::time::SystemTime::now()
                        + p.until.saturating_duration_since(std::time::Instant::now())
                )
                .to_string(),
            }),
        },
    };
    Ok(json!({
        "domain": domain,
        "queue_config": queue.as_ref(),
        "mta_sts": mta_sts,
        "pool": pool.as_ref(),
        "site_name": site,
        "destinations": hosts.iter().map(|h| json!({"host": h.host, "address": h.ip.to_string()})).collect::<Vec<_>>(),
        "sources": sources,
    }))
}

/// Every rate and limit that applies to `source` at `site`, with what is left.
async fn throttles(ctx: &Context, source: &str, site: &str, path: &EgressPathConfig) -> Vec<Value> {
    let store = &ctx.shaper.throttles;
    let mut out = Vec::new();
    let rates = selection_rates(source, site, path)
        .into_iter()
        .chain(message_rates(source, site, path))
        .chain(connection_rates(source, site, path));
    for Rate { key, spec, what } in rates {
        let c = store.capacity(&key, spec, true).await;
        out.push(json!({
            "setting": what,
            "spec": spec.to_string(),
            "key": key,
            "available": c.available,
            "burst": c.burst,
            "next_in_ms": c.next_in.as_millis() as u64,
        }));
    }
    for limit in connection_limits(source, site, path) {
        let in_use = store.in_use(&limit.key, limit.limit).await;
        out.push(json!({
            "setting": limit.what,
            "spec": limit.limit.to_string(),
            "key": limit.key,
            "limit": limit.limit.limit,
            "in_use": in_use,
            "available": limit.limit.limit.saturating_sub(in_use),
        }));
    }
    out
}
