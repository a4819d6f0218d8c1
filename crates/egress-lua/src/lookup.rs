//! `kumo.dns.lookup_mx`, `lookup_addr`, `lookup_ptr`: DNS from a policy, through
//! the resolver `kumo.dns.configure_resolver` declared (else the system's).
//!
//! A policy call is synchronous and may run while the policy loads (the top level
//! of a file, where helpers such as `policy-extras.shaping` resolve MX hosts) —
//! inside the caller's async runtime, where blocking on a future is not allowed. So
//! each lookup runs on a short-lived thread of its own with a small runtime; lookups
//! are rare (definitions are cached) and bounded by the resolver's timeouts.

use crate::declarations::{InitConfig, ResolverConfig};
use crate::error::located;
use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, Protocol, ResolverConfig as HickoryConfig, ResolverOpts,
};
use hickory_resolver::TokioAsyncResolver;
use mlua::{Lua, Table};
use std::io;
use std::net::IpAddr;
use std::time::Duration;

/// A resolver for `config` (the policy's name servers) or the system's; it
/// looks up A and AAAA (KumoMTA's default `Ipv4AndIpv6`): a path's
/// `ip_lookup_strategy` chooses among them.
pub fn resolver(config: Option<&ResolverConfig>) -> io::Result<TokioAsyncResolver> {
    match config {
        Some(cfg) => {
            let mut hickory = HickoryConfig::new();
            for addr in &cfg.name_servers {
                for protocol in [Protocol::Udp, Protocol::Tcp] {
                    hickory.add_name_server(NameServerConfig {
                        socket_addr: *addr,
                        protocol,
                        tls_dns_name: None,
                        trust_negative_responses: true,
                        bind_addr: None,
                    });
                }
            }
            let mut opts = ResolverOpts::default();
            opts.timeout = Duration::from_secs(5);
            opts.attempts = 2;
            opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
            Ok(TokioAsyncResolver::tokio(hickory, opts))
        }
        None => {
            let (hickory, mut opts) =
                hickory_resolver::system_conf::read_system_conf().map_err(|e| {
                    io::Error::other(format!("reading the system DNS configuration: {e}"))
                })?;
            opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
            Ok(TokioAsyncResolver::tokio(hickory, opts))
        }
    }
}

/// A name as an absolute one (no search domains).
pub fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_owned()
    } else {
        format!("{name}.")
    }
}

/// Runs `lookup` on its own thread and runtime (see the module documentation).
fn on_own_thread<T: Send + 'static>(
    config: Option<ResolverConfig>,
    lookup: impl FnOnce(
            TokioAsyncResolver,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, String>> + Send>>
        + Send
        + 'static,
) -> Result<T, String> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async move {
            let resolver = resolver(config.as_ref()).map_err(|e| e.to_string())?;
            lookup(resolver).await
        })
    })
    .join()
    .unwrap_or_else(|_| Err("the lookup thread failed".into()))
}

fn declared_resolver(lua: &Lua) -> Option<ResolverConfig> {
    lua.app_data_ref::<InitConfig>()
        .and_then(|i| i.resolver.clone())
}

/// A resolver failure in words, naming `name` and the record (`what`) — hickory's
/// own text is a `Debug` dump of the query. Shared with the relay's routing.
pub fn describe_resolve_error(
    name: &str,
    what: &str,
    e: &hickory_resolver::error::ResolveError,
) -> String {
    use hickory_resolver::error::ResolveErrorKind;
    use hickory_resolver::proto::op::ResponseCode;
    match e.kind() {
        ResolveErrorKind::NoRecordsFound { response_code, .. } => {
            if *response_code == ResponseCode::NXDomain {
                format!("{name}: no such domain (no {what})")
            } else {
                format!("{name}: no {what}")
            }
        }
        ResolveErrorKind::Timeout => format!("{name}: DNS lookup for its {what} timed out"),
        ResolveErrorKind::NoConnections => {
            format!("{name}: no DNS server could be reached for its {what}")
        }
        ResolveErrorKind::Io(io) => format!("{name}: DNS lookup for its {what} failed: {io}"),
        ResolveErrorKind::Proto(p) => {
            format!("{name}: DNS lookup for its {what} failed: {p}")
        }
        ResolveErrorKind::Message(m) => format!("{name}: DNS lookup for its {what} failed: {m}"),
        ResolveErrorKind::Msg(m) => format!("{name}: DNS lookup for its {what} failed: {m}"),
        _ => format!("{name}: DNS lookup for its {what} failed"),
    }
}

/// Installs the lookups into `kumo.dns`.
pub(crate) fn install(lua: &Lua, dns: &Table) -> mlua::Result<()> {
    dns.set(
        "lookup_mx",
        lua.create_function(|lua, domain: String| {
            let name = fqdn(domain.trim());
            let domain_name = domain.trim().to_owned();
            let records = on_own_thread(declared_resolver(lua), move |r| {
                Box::pin(async move {
                    let mx = r
                        .mx_lookup(name)
                        .await
                        .map_err(|e| describe_resolve_error(&domain_name, "MX record", &e))?;
                    Ok(mx
                        .iter()
                        .map(|m| (m.preference(), m.exchange().to_utf8()))
                        .collect::<Vec<_>>())
                })
            })
            .map_err(|e| located(lua, format!("kumo.dns.lookup_mx {domain}: {e}")))?;
            mx_table(lua, &domain, records)
        })?,
    )?;
    dns.set(
        "lookup_addr",
        lua.create_function(|lua, host: String| {
            let name = fqdn(host.trim());
            let host_name = host.trim().to_owned();
            let ips = on_own_thread(declared_resolver(lua), move |r| {
                Box::pin(async move {
                    let found = r
                        .lookup_ip(name)
                        .await
                        .map_err(|e| describe_resolve_error(&host_name, "address record", &e))?;
                    Ok(found.iter().map(|ip| ip.to_string()).collect::<Vec<_>>())
                })
            })
            .map_err(|e| located(lua, format!("kumo.dns.lookup_addr {host}: {e}")))?;
            Ok(ips)
        })?,
    )?;
    dns.set(
        "lookup_ptr",
        lua.create_function(|lua, ip: String| {
            let addr: IpAddr = ip.trim().parse().map_err(|_| {
                located(
                    lua,
                    format!("kumo.dns.lookup_ptr: {ip:?} is not an IP address"),
                )
            })?;
            let names = on_own_thread(declared_resolver(lua), move |r| {
                Box::pin(async move {
                    let found = r
                        .reverse_lookup(addr)
                        .await
                        .map_err(|e| describe_resolve_error(&addr.to_string(), "PTR record", &e))?;
                    Ok(found.iter().map(|n| n.to_utf8()).collect::<Vec<_>>())
                })
            })
            .map_err(|e| located(lua, format!("kumo.dns.lookup_ptr {ip}: {e}")))?;
            Ok(names)
        })?,
    )?;
    Ok(())
}

/// KumoMTA's shape: `by_pref`, `hosts` (preference order), `site_name`,
/// `domain_name`, `is_domain_literal`, `is_mx`.
fn mx_table(lua: &Lua, domain: &str, mut records: Vec<(u16, String)>) -> mlua::Result<Table> {
    records.sort();
    let t = lua.create_table()?;
    let by_pref = lua.create_table()?;
    let hosts = lua.create_table()?;
    for (i, (pref, host)) in records.iter().enumerate() {
        let level: Table = match by_pref.get::<Option<Table>>(*pref)? {
            Some(level) => level,
            None => {
                let level = lua.create_table()?;
                by_pref.set(*pref, level.clone())?;
                level
            }
        };
        level.push(host.as_str())?;
        hosts.set(i + 1, host.as_str())?;
    }
    let names: Vec<String> = records
        .iter()
        .map(|(_, h)| h.trim_end_matches('.').to_owned())
        .collect();
    t.set("by_pref", by_pref)?;
    t.set("hosts", hosts)?;
    t.set("site_name", egress_source::site_name(&names, 25))?;
    t.set("domain_name", fqdn(domain.trim()))?;
    t.set("is_domain_literal", false)?;
    t.set("is_mx", true)?;
    Ok(t)
}
