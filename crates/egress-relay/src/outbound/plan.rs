//! The route decision, made one way for every caller: what a message to a domain
//! would follow — the queue config, the pool and the destination hosts
//! ([`route`]), then for a source its definition, its path config with
//! automation's overrides applied, the EHLO name and the hosts that path lets it
//! try, in order, each with its port ([`for_source`]). A transaction
//! (`route::open`), `Relay::resolve` and `Relay::probe` all follow it, so none can
//! show or do what another would not.

use super::destinations::Routing;
use super::hosts;
use super::Context;
use crate::dns::Destination;
use egress_smtp::Reply;
use egress_source::{effective_ehlo_domain, effective_port, EgressPathConfig, EgressPool};
use egress_source::{EgressSource, MxListEntry, QueueConfig};
use std::net::SocketAddr;
use std::sync::Arc;

/// Where mail for a domain goes: its queue config, pool and destination hosts.
pub struct Routed {
    /// The policy's queue config for the domain (and tenant).
    pub queue: Arc<QueueConfig>,
    /// The queue's pool.
    pub pool: Arc<EgressPool>,
    /// The hosts in the order they are tried, their site, and whether they are
    /// the domain's MX hosts.
    pub routing: Arc<Routing>,
}

/// Why there is no route: a local failure (`4xx`), with its enhanced code.
pub struct NoRoute {
    /// Enhanced status code.
    pub esc: [u8; 3],
    /// What failed, naming the pool or the policy.
    pub text: String,
}

/// The route of mail for `domain` (from `tenant`): the queue config, the pool, and
/// the hosts — `mx_list`, else the MX records, else the domain's addresses.
pub async fn route(ctx: &Context, domain: &str, tenant: Option<&str>) -> Result<Routed, NoRoute> {
    let policy = &ctx.policy;
    let queue = policy
        .queue_config(domain, tenant, None, None)
        .await
        .map_err(|e| NoRoute {
            esc: [4, 3, 0],
            text: format!("policy error: {e}"),
        })?;
    let pool = policy
        .egress_pool(&queue.egress_pool)
        .await
        .map_err(|e| NoRoute {
            esc: [4, 3, 0],
            text: format!("pool '{}': {e}", queue.egress_pool),
        })?;
    let routing = ctx
        .routing
        .get(&ctx.dns, domain, &queue)
        .await
        .map_err(|e| NoRoute {
            esc: [4, 4, 3],
            text: format!("pool '{}': cannot route {domain}: {e}", pool.name),
        })?;
    Ok(Routed {
        queue,
        pool,
        routing,
    })
}

/// The route to one host, named as an `mx_list` entry names it (`egressd probe
/// HOST:PORT`): that host's addresses, and its site.
pub async fn route_to_host(ctx: &Context, entry: MxListEntry) -> Result<Arc<Routing>, NoRoute> {
    let host = entry.name().to_owned();
    let queue = Arc::new(QueueConfig::for_pool("probe").with_mx_list(vec![entry]));
    ctx.routing
        .get(&ctx.dns, &host, &queue)
        .await
        .map_err(|e| NoRoute {
            esc: [4, 4, 3],
            text: format!("cannot route to {host}: {e}"),
        })
}

/// What `source` would do on a route.
pub struct SourcePlan {
    /// The source's definition.
    pub source: Arc<EgressSource>,
    /// Its path config for the domain at the site, automation's overrides applied.
    pub path: Arc<EgressPathConfig>,
    /// The EHLO name it would give.
    pub ehlo: String,
    /// The hosts the path lets it try, in order, each with the port it is
    /// reached on (`ip_lookup_strategy`, `prohibited_hosts`, `skip_hosts`); or
    /// the refusal when none may be tried.
    pub hosts: Result<Vec<(Destination, SocketAddr)>, Reply>,
}

/// Why a source has no plan: the policy could not say what it is, or how it
/// sends (the policy's own words).
pub enum Unplanned {
    /// `get_egress_source` failed.
    Source(String),
    /// `get_egress_path_config` failed.
    Path(String),
}

impl Unplanned {
    /// The policy's words.
    pub fn into_text(self) -> String {
        match self {
            Unplanned::Source(text) | Unplanned::Path(text) => text,
        }
    }
}

/// The plan of `name` on `routing` for `domain`.
pub async fn for_source(
    ctx: &Context,
    routing: &Routing,
    domain: &str,
    name: &str,
) -> Result<SourcePlan, Unplanned> {
    let site = &routing.site;
    let source = ctx
        .policy
        .egress_source(name)
        .await
        .map_err(|e| Unplanned::Source(e.to_string()))?;
    let path = ctx
        .policy
        .egress_path_config(domain, name, Some(site))
        .await
        .map_err(|e| Unplanned::Path(e.to_string()))?;
    let path = ctx
        .shaper
        .automated
        .apply(&ctx.shaper.throttles, path, name, site, domain)
        .await;
    Ok(decide(
        routing,
        source,
        path,
        &ctx.hostname,
        &ctx.own_addresses,
    ))
}

/// The decision itself, from the answers gathered — no I/O, so it is tested
/// alone: the EHLO name (path, else source, else our host name), and the hosts
/// the path lets the source try, in order, each with its port (source's
/// `remote_port`, else the `mx_list` entry's, else the path's `smtp_port`).
pub fn decide(
    routing: &Routing,
    source: Arc<EgressSource>,
    path: Arc<EgressPathConfig>,
    hostname: &str,
    own: &hosts::OwnAddresses,
) -> SourcePlan {
    let ehlo = effective_ehlo_domain(&path, &source, hostname).to_owned();
    let hosts = hosts::for_path(
        &routing.hosts,
        &path,
        |d| effective_port(&source, d.entry.as_ref(), &path),
        own,
    )
    .map(|kept| {
        kept.into_iter()
            .map(|(dest, addr)| (dest.clone(), addr))
            .collect()
    });
    SourcePlan {
        source,
        path,
        ehlo,
        hosts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(host: &str, ip: &str) -> Destination {
        Destination {
            host: host.into(),
            ip: ip.parse().unwrap(),
            entry: None,
            secure_chain: false,
        }
    }

    #[test]
    fn the_plan_skips_hosts_and_names_the_ehlo_and_ports() {
        let routing = Routing {
            hosts: vec![
                dest("mx-a.test", "192.0.2.1"),
                dest("mx-b.test", "192.0.2.2"),
            ],
            site: "(mx-a|mx-b).test".into(),
            by_mx: true,
        };
        let mut source = EgressSource::named("ip-2");
        source.ehlo_domain = Some("mta2.example.test".into());
        let path: EgressPathConfig =
            serde_json::from_str(r#"{ "skip_hosts": ["192.0.2.1"], "smtp_port": 2525 }"#).unwrap();
        let plan = decide(
            &routing,
            Arc::new(source),
            Arc::new(path),
            "relay.test",
            &hosts::OwnAddresses::default(),
        );
        assert_eq!(plan.ehlo, "mta2.example.test");
        let hosts = plan.hosts.unwrap();
        assert_eq!(hosts.len(), 1);
        assert_eq!(hosts[0].0.host, "mx-b.test");
        assert_eq!(hosts[0].1, "192.0.2.2:2525".parse().unwrap());

        // Every host skipped: the refusal, not an empty plan.
        let all: EgressPathConfig =
            serde_json::from_str(r#"{ "skip_hosts": ["192.0.2.0/24"] }"#).unwrap();
        let plan = decide(
            &routing,
            Arc::new(EgressSource::named("ip-2")),
            Arc::new(all),
            "relay.test",
            &hosts::OwnAddresses::default(),
        );
        assert_eq!(plan.ehlo, "relay.test");
        assert!(plan.hosts.unwrap_err().to_string().contains("skip_hosts"));
    }
}
