//! `kumo.dns.lookup_mx`, `lookup_addr`, `lookup_txt`, `lookup_ptr`: DNS from a policy, through
//! the resolver `kumo.dns.configure_resolver` declared (else the system's).
//!
//! A policy call is synchronous and may run while the policy loads (the top level
//! of a file, where helpers such as `policy-extras.shaping` resolve MX hosts) —
//! inside the caller's async runtime, where blocking on a future is not allowed. So
//! each lookup runs on a short-lived thread of its own with a small runtime; lookups
//! are rare (definitions are cached) and bounded by the resolver's timeouts.

use crate::declarations::InitConfig;
use crate::error::located;
use egress_dns::{fqdn, Answer, DnsError, Resolver, ResolverConfig, Security};
use mlua::{Lua, Table};
use std::future::Future;
use std::net::IpAddr;

/// Runs `lookup` on its own thread and runtime (see the module documentation),
/// through the resolver the policy declared in `init`.
fn on_own_thread<T, F>(
    lua: &Lua,
    lookup: impl FnOnce(Resolver) -> F + Send + 'static,
) -> Result<Answer<T>, String>
where
    T: Send + 'static,
    F: Future<Output = Result<Answer<T>, DnsError>>,
{
    let config: Option<ResolverConfig> = lua
        .app_data_ref::<InitConfig>()
        .and_then(|i| i.resolver.clone());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async move {
            let resolver = Resolver::new(config.as_ref()).map_err(|e| e.to_string())?;
            lookup(resolver).await.map_err(|e| e.to_string())
        })
    })
    .join()
    .unwrap_or_else(|_| Err("the lookup thread failed".into()))
}

/// Installs the lookups into `kumo.dns`.
pub(crate) fn install(lua: &Lua, dns: &Table) -> mlua::Result<()> {
    dns.set(
        "lookup_mx",
        lua.create_function(|lua, domain: String| {
            let name = domain.trim().to_owned();
            let answer = on_own_thread(lua, move |r| async move { r.mx(&name).await })
                .map_err(|e| located(lua, format!("kumo.dns.lookup_mx {domain}: {e}")))?;
            mx_table(lua, &domain, answer)
        })?,
    )?;
    dns.set(
        "lookup_addr",
        lua.create_function(|lua, host: String| {
            let name = host.trim().to_owned();
            let ips = on_own_thread(lua, move |r| async move { r.ip(&name).await })
                .map_err(|e| located(lua, format!("kumo.dns.lookup_addr {host}: {e}")))?;
            Ok(ips
                .records
                .iter()
                .map(IpAddr::to_string)
                .collect::<Vec<_>>())
        })?,
    )?;
    dns.set(
        "lookup_txt",
        lua.create_function(|lua, name: String| {
            let asked = name.trim().to_owned();
            on_own_thread(lua, move |r| async move { r.txt(&asked).await })
                .map(|a| a.records)
                .map_err(|e| located(lua, format!("kumo.dns.lookup_txt {name}: {e}")))
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
            on_own_thread(lua, move |r| async move { r.ptr(addr).await })
                .map(|a| a.records.iter().map(|n| fqdn(n)).collect::<Vec<_>>())
                .map_err(|e| located(lua, format!("kumo.dns.lookup_ptr {ip}: {e}")))
        })?,
    )?;
    Ok(())
}

/// KumoMTA's shape: `by_pref`, `hosts` (preference order), `site_name`,
/// `domain_name`, `is_domain_literal`, `is_mx`, `is_secure` (DNSSEC vouches for
/// the MX records: what `treat_mx_list_as_secure` may be set from).
fn mx_table(lua: &Lua, domain: &str, answer: Answer<(u16, String)>) -> mlua::Result<Table> {
    let mut records = answer.records;
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
        // KumoMTA's names end with the root's dot.
        level.push(fqdn(host))?;
        hosts.set(i + 1, fqdn(host))?;
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
    t.set("is_secure", answer.security == Security::Secure)?;
    Ok(t)
}
