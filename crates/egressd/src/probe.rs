//! `egressd probe`: one connection through a source, to see what a destination sees.

use egress_lua::Policy;
use egress_relay::outbound::tls::{server_name, Check};
use egress_relay::outbound::{timeouts, Context};
use egress_relay::{Boxed, Dns};
use egress_smtp::{ClientSession, Reply, StartTlsError, TlsInfo};
use egress_source::{effective_ehlo_domain, effective_port, MxListEntry};
use std::net::SocketAddr;
use std::sync::Arc;

/// Connects to `target` through `source_name`, prints banner, EHLO reply and the
/// egress address, then QUITs. With `tls`, also STARTTLS: protocol, cipher, the
/// certificate's subject and whether it verified against the trust store (when it
/// does not, the handshake is repeated without verification to show what is there).
///
/// Boxed, so the binary does not compile the probe's futures again (see
/// `egress_relay::Relay::accept`).
pub fn probe<'a>(
    policy: Arc<Policy>,
    source_name: &'a str,
    target: &'a str,
    host_name: String,
    tls: bool,
) -> Boxed<'a, Result<(), String>> {
    Box::pin(probe_target(policy, source_name, target, host_name, tls))
}

async fn probe_target(
    policy: Arc<Policy>,
    source_name: &str,
    target: &str,
    host_name: String,
    tls: bool,
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

    let connect = || async {
        let conn = ctx
            .connector
            .connect(&source, addr, path.connect_timeout)
            .await
            .map_err(|e| e.to_string())?;
        let egress = conn.egress;
        let mut smtp = ClientSession::new(conn.stream, timeouts(&path));
        let greeted = smtp.greet(&ehlo).await;
        Ok::<_, String>((smtp, egress, greeted))
    };
    let (mut smtp, egress, greeted) = connect().await?;
    println!("source:      {source_name}");
    println!("destination: {addr}");
    println!("egress:      {egress}");
    let hint = egress.silence_hint();
    if let Some(banner) = smtp.banner() {
        print_reply("banner:", &Reply::relayed(banner));
    }
    let reply = greeted.map_err(|e| format!("{addr}: {e}{hint}"))?;
    println!("ehlo:        EHLO {ehlo}");
    print_reply("ehlo reply:", &Reply::relayed(&reply));
    if !tls {
        smtp.quit().await;
        return Ok(());
    }
    let name = server_name(entry.name(), *ip);
    let verified = ctx.tls.connector(&path, &Check::TrustStore)?;
    let failure = match smtp
        .starttls(&verified, name.clone(), true, &ehlo, path.starttls_timeout)
        .await
    {
        Ok(info) => {
            print_tls(info, None);
            smtp.quit().await;
            return Ok(());
        }
        Err(StartTlsError::Handshake(why) | StartTlsError::Certificate { text: why, .. }) => why,
        Err(e) => return Err(format!("{addr}: {e}")),
    };
    // Once more without verification, to show what the destination presents.
    let (mut smtp, _, greeted) = connect().await?;
    greeted.map_err(|e| format!("{addr}: {e}{hint}"))?;
    let insecure = ctx.tls.connector(&path, &Check::Nothing)?;
    let info = smtp
        .starttls(&insecure, name, false, &ehlo, path.starttls_timeout)
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    print_tls(info, Some(&failure));
    smtp.quit().await;
    Ok(())
}

fn print_tls(info: &TlsInfo, failure: Option<&str>) {
    println!("tls:         {} {}", info.version, info.cipher);
    println!(
        "certificate: {}",
        info.peer_subject.as_deref().unwrap_or("(none presented)")
    );
    match failure {
        None => println!("verified:    yes (system trust store)"),
        Some(why) => println!("verified:    no: {why}"),
    }
}

fn print_reply(label: &str, reply: &Reply) {
    for (i, line) in reply.to_wire().lines().enumerate() {
        println!("{:<12} {line}", if i == 0 { label } else { "" });
    }
}
