//! `egressd probe`: one connection through a source, to see what a destination
//! sees — along the route a transaction would follow (egress-relay's probe), then
//! printed for an operator.

use egress_lua::Policy;
use egress_relay::{Boxed, ProbeReport, Relay};
use std::sync::Arc;

/// Probes `target` (a domain, or `HOST:PORT`) through `source_name` and prints
/// the plan followed (site, EHLO name, hosts that failed), the banner, the EHLO
/// reply and the egress address; with `tls`, what STARTTLS showed.
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
    Box::pin(async move {
        let report = Relay::builder(policy)
            .hostname(host_name)
            .product("egressd")
            .probe(source_name, target, tls)
            .await?;
        print_report(&report);
        Ok(())
    })
}

fn print_report(r: &ProbeReport) {
    println!("source:      {}", r.source);
    println!("site:        {}", r.site);
    for (addr, why) in &r.failed {
        println!("failed:      {addr}: {why}");
    }
    println!("destination: {} ({})", r.destination, r.host);
    println!("egress:      {}", r.egress);
    if let Some(banner) = &r.banner {
        print_wire("banner:", banner);
    }
    println!("ehlo:        EHLO {}", r.ehlo);
    print_wire("ehlo reply:", &r.ehlo_reply);
    if let Some(tls) = &r.tls {
        println!("tls:         {} {}", tls.version, tls.cipher);
        println!(
            "certificate: {}",
            tls.certificate.as_deref().unwrap_or("(none presented)")
        );
        match &tls.verified {
            Ok(()) => println!("verified:    yes (system trust store)"),
            Err(why) => println!("verified:    no: {why}"),
        }
    }
}

fn print_wire(label: &str, text: &str) {
    for (i, line) in text.lines().enumerate() {
        println!("{:<12} {line}", if i == 0 { label } else { "" });
    }
}
