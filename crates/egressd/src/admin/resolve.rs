//! `GET /api/admin/resolve-egress-path/v1?domain=D[&source=S]`: what the relay
//! would do for a message to `D`, resolved exactly as a transaction resolves it
//! (same policy calls, same DNS, same precedence and shaping keys) but without
//! connecting, counting a throttle, or moving the pool's rotation.
//!
//! Without `source`, every source the pool can pick (weight above zero) is shown,
//! heaviest first.

use super::{Admin, Answer};
use crate::outbound::route::heaviest_first;
use crate::outbound::shaping::{
    connection_limits, connection_rates, message_rates, ready_queue, selection_rates, Rate,
};
use egress_source::{effective_ehlo_domain, effective_port, EgressPathConfig};
use hyper::StatusCode;
use serde_json::{json, Value};
use std::collections::HashMap;

const KNOWN: &[&str] = &["domain", "source"];

pub(crate) async fn resolve(admin: &Admin, query: &str) -> Answer {
    let params: HashMap<String, String> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    if let Some(unknown) = params.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Answer::bad(
            unknown,
            format!("unknown parameter {unknown:?}; expected domain=DOMAIN and optionally source=SOURCE"),
        );
    }
    let Some(domain) = params
        .get("domain")
        .map(|d| d.trim().trim_end_matches('.').to_ascii_lowercase())
        .filter(|d| !d.is_empty())
    else {
        return Answer::bad("domain", "expected domain=DOMAIN, e.g. ?domain=example.com");
    };
    let ctx = &admin.ctx;
    let policy = &ctx.policy;
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        Answer::error(StatusCode::BAD_GATEWAY, None, format!("{what}: {e}"))
    };
    let queue = match policy.queue_config(&domain, None, None, None).await {
        Ok(q) => q,
        Err(e) => return failed("get_queue_config", &e),
    };
    let pool = match policy.egress_pool(&queue.egress_pool).await {
        Ok(p) => p,
        Err(e) => return failed(&format!("pool '{}'", queue.egress_pool), &e),
    };
    let routing = match ctx.routing.get(&ctx.dns, &domain, &queue).await {
        Ok(r) => r,
        Err(e) => return failed(&format!("cannot route {domain}"), &e),
    };
    let (hosts, site) = (&routing.hosts, routing.site.clone());

    let names: Vec<String> = match params.get("source") {
        Some(source) => vec![source.trim().to_owned()],
        None => heaviest_first(&pool)
            .into_iter()
            .map(str::to_owned)
            .collect(),
    };
    let mut sources = Vec::new();
    for name in names {
        let source = match policy.egress_source(&name).await {
            Ok(s) => s,
            Err(e) => return Answer::bad("source", format!("no egress source {name:?}: {e}")),
        };
        let path = match policy.egress_path_config(&domain, &name, Some(&site)).await {
            Ok(p) => p,
            Err(e) => return failed("get_egress_path_config", &e),
        };
        let destinations: Vec<Value> = hosts
            .iter()
            .map(|h| {
                json!({
                    "host": h.host,
                    "address": h.ip.to_string(),
                    "port": effective_port(&source, h.entry.as_ref(), &path),
                    "mx_list_entry": h.entry.as_ref().map(|e| e.to_string()),
                })
            })
            .collect();
        let mut suspensions = Vec::new();
        for key in [name.clone(), ready_queue(&name, &site)] {
            if let Some(s) = ctx.shaper.throttles.suspension(&key).await {
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
            "ehlo_domain": effective_ehlo_domain(&path, &source, &ctx.hostname),
            "destinations": destinations,
            "suspensions": suspensions,
            "throttles": throttles(admin, &name, &site, &path).await,
            "source": source.as_ref(),
            "path_config": path.as_ref(),
        }));
    }
    Answer::ok(json!({
        "domain": domain,
        "queue_config": queue.as_ref(),
        "pool": pool.as_ref(),
        "site_name": site,
        "destinations": hosts.iter().map(|h| json!({"host": h.host, "address": h.ip.to_string()})).collect::<Vec<_>>(),
        "sources": sources,
    }))
}

/// Every rate and limit that applies to `source` at `site`, with what is left.
async fn throttles(admin: &Admin, source: &str, site: &str, path: &EgressPathConfig) -> Vec<Value> {
    let store = &admin.ctx.shaper.throttles;
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
