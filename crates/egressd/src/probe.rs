//! `egressd probe`: one connection through a source, to see what a destination sees.

use crate::dns::Dns;
use crate::outbound::{timeouts, Context};
use egress_lua::Policy;
use egress_smtp::{ClientSession, Reply};
use egress_source::{effective_ehlo_domain, effective_port, MxListEntry};
use std::net::SocketAddr;
use std::sync::Arc;

/// Connects to `target` through `source_name`, prints banner, EHLO reply and the
/// egress address, then QUITs.
pub async fn probe(
    policy: Arc<Policy>,
    source_name: &str,
    target: &str,
    host_name: String,
) -> Result<(), String> {
    let entry: MxListEntry = target.parse().map_err(|e| format!("target: {e}"))?;
    let init = policy.init();
    let dns = Dns::new(init.resolver.as_ref()).map_err(|e| format!("DNS: {e}"))?;
    let ctx = Context::new(policy.clone(), dns, host_name);
    let source = policy
        .egress_source(source_name)
        .await
        .map_err(|e| e.to_string())?;
    let path = policy
        .egress_path_config(entry.name(), source_name, None)
        .await
        .map_err(|e| e.to_string())?;
    let ips = ctx
        .dns
        .addresses(entry.name())
        .await
        .map_err(|e| format!("resolving {}: {e}", entry.name()))?;
    let ip = ips
        .first()
        .ok_or_else(|| format!("{} has no address", entry.name()))?;
    let addr = SocketAddr::new(*ip, effective_port(&source, Some(&entry), &path));
    let ehlo = effective_ehlo_domain(&path, &source, &ctx.hostname).to_owned();

    let conn = ctx
        .connector
        .connect(&source, addr, path.connect_timeout)
        .await
        .map_err(|e| e.to_string())?;
    println!("source:      {source_name}");
    println!("destination: {addr}");
    println!("egress:      {}", conn.egress);
    let hint = conn.egress.silence_hint();
    let mut smtp = ClientSession::new(conn.stream, timeouts(&path));
    let greeted = smtp.greet(&ehlo).await;
    if let Some(banner) = smtp.banner() {
        print_reply("banner:", &Reply::relayed(banner));
    }
    let reply = greeted.map_err(|e| format!("{addr}: {e}{hint}"))?;
    println!("ehlo:        EHLO {ehlo}");
    print_reply("ehlo reply:", &Reply::relayed(&reply));
    smtp.quit().await;
    Ok(())
}

fn print_reply(label: &str, reply: &Reply) {
    for (i, line) in reply.to_wire().lines().enumerate() {
        println!("{:<12} {line}", if i == 0 { label } else { "" });
    }
}
