//! `egressd probe`: one connection through a source, to see what a destination sees.

use crate::dns::Dns;
use crate::outbound::Context;
use crate::reply::{Reply, ReplyReader};
use egress_lua::Policy;
use egress_source::{effective_ehlo_domain, effective_port, MxListEntry};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

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
    let (read, mut write) = conn.stream.into_split();
    let mut reader = ReplyReader::new(read);
    let banner = reader
        .read(path.banner_timeout)
        .await
        .map_err(|e| format!("banner from {addr}: {e}{hint}"))?;
    print_reply("banner:", &Reply::relayed(&banner));
    write
        .write_all(format!("EHLO {ehlo}\r\n").as_bytes())
        .await
        .map_err(|e| format!("EHLO: {e}"))?;
    println!("ehlo:        EHLO {ehlo}");
    let reply = reader
        .read(path.ehlo_timeout)
        .await
        .map_err(|e| format!("EHLO reply: {e}"))?;
    print_reply("ehlo reply:", &Reply::relayed(&reply));
    let _ = write.write_all(b"QUIT\r\n").await;
    let _ = reader.read(std::time::Duration::from_secs(2)).await;
    Ok(())
}

fn print_reply(label: &str, reply: &Reply) {
    for (i, line) in reply.to_wire().lines().enumerate() {
        println!("{:<12} {line}", if i == 0 { label } else { "" });
    }
}
