//! KumoMTA's provider blocks in shaping.toml (issue: provider blocks + automation):
//! a provider's keys apply to every domain whose MX hosts all match it, in the
//! documented order against default, domain and source blocks, and its
//! `provider_connection_limit` holds across all of its sites together. MX records
//! come from a real dnsmasq; the destination is a scripted one that is slow enough
//! for transactions to overlap.

mod common;

use common::Embedded;
use egress_e2e::{swaks, Dnsmasq, ScriptedDestination, IP2_POOL};
use std::time::Duration;

/// A relay whose path configs come from policy-extras.shaping over `shaping`
/// (TOML), with DNS from `dns`; every domain routes by MX through pool `main`.
fn start(dns: &Dnsmasq, shaping: &str) -> (Embedded, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shaping.toml");
    std::fs::write(&file, shaping).unwrap();
    let relay = Embedded::start(&format!(
        "kumo.on('init', function() kumo.start_esmtp_listener {{ listen = '{{listen}}' }} end)
         kumo.dns.configure_resolver {{ name_servers = {{ '{}' }} }}
         kumo.on('get_queue_config', function(domain)
           return kumo.make_queue_config {{ egress_pool = 'main' }}
         end)
         {IP2_POOL}
         kumo.on('get_egress_path_config', require('policy-extras.shaping'):setup {{ '{}' }})",
        dns.addr,
        file.display()
    ));
    (relay, dir)
}

fn yahoo_dns() -> Dnsmasq {
    Dnsmasq::start(&[
        "--mx-host=yahoo.test,mta5.am0.yahoodns.net,10",
        "--mx-host=ymail.test,mta7.am0.yahoodns.net,10",
        "--mx-host=mixed.test,mta5.am0.yahoodns.net,10",
        "--mx-host=mixed.test,mx.other.test,20",
        "--mx-host=other.test,mx.other.test,10",
        "--mx-host=shop.yahoo-hosted.test,mx.other.test,10",
        "--host-record=mta5.am0.yahoodns.net,127.0.0.1",
        "--host-record=mta7.am0.yahoodns.net,127.0.0.1",
        "--host-record=mx.other.test,127.0.0.1",
    ])
}

const SHAPING: &str = r#"
["default"]
smtp_port = PORT
max_deliveries_per_connection = 100
connection_limit = 10

[provider."yahoo"]
match = [ {MXSuffix = ".yahoodns.net"}, {DomainSuffix = ".yahoo-hosted.test"} ]
max_deliveries_per_connection = 20
provider_connection_limit = 3
provider_max_message_rate = "5000/h"

[provider."yahoo".sources."ip-3"]
max_deliveries_per_connection = 5

["ymail.test"]
mx_rollup = false
max_deliveries_per_connection = 7
"#;

fn path_config(resolved: &serde_json::Value) -> &serde_json::Value {
    &resolved["sources"][0]["path_config"]
}

#[test]
fn a_providers_keys_apply_where_every_mx_host_matches_in_the_documented_order() {
    let dns = yahoo_dns();
    let (d, _dir) = start(&dns, &SHAPING.replace("PORT", "2525"));
    let deliveries = |domain: &str, source: &str| {
        path_config(&d.resolve(domain, Some(source)))["max_deliveries_per_connection"].clone()
    };
    // default < provider < provider + source < the domain's own block.
    assert_eq!(deliveries("yahoo.test", "ip-2"), 20);
    assert_eq!(deliveries("yahoo.test", "ip-3"), 5);
    assert_eq!(deliveries("ymail.test", "ip-2"), 7);
    assert_eq!(
        deliveries("shop.yahoo-hosted.test", "ip-2"),
        20,
        "DomainSuffix"
    );
    assert_eq!(deliveries("other.test", "ip-2"), 100);
    assert_eq!(
        deliveries("mixed.test", "ip-2"),
        100,
        "one MX host outside the provider: not the provider's"
    );
    // The provider's limits are shared entries, per source, across its sites.
    let yahoo = d.resolve("yahoo.test", Some("ip-2"));
    let path = path_config(&yahoo);
    // resolve says which provider matched, and where each value came from.
    assert_eq!(path["providers"], serde_json::json!(["yahoo"]), "{path}");
    let from = |key: &str| {
        path["provenance"][key]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        from("max_deliveries_per_connection").ends_with("[provider.\"yahoo\"]"),
        "{path}"
    );
    assert!(
        from("connection_limit").ends_with("[\"default\"]"),
        "{path}"
    );
    assert!(
        from("provider_connection_limit").ends_with("[provider.\"yahoo\"]"),
        "{path}"
    );
    let ip3 = d.resolve("yahoo.test", Some("ip-3"));
    assert!(
        path_config(&ip3)["provenance"]["max_deliveries_per_connection"]
            .as_str()
            .unwrap_or_default()
            .ends_with("[provider.\"yahoo\".sources.\"ip-3\"]"),
        "{ip3}"
    );
    assert_eq!(
        path["additional_connection_limits"]["shaping-provider-yahoo-ip-2-limit"], 3,
        "{path}"
    );
    assert_eq!(
        path["additional_message_rate_throttles"]["shaping-provider-yahoo-ip-2-rate"], "5000/h",
        "{path}"
    );
    let other = d.resolve("other.test", Some("ip-2"));
    assert!(
        path_config(&other)["additional_connection_limits"]
            .as_object()
            .is_none_or(|m| m.is_empty()),
        "{other}"
    );
}

#[test]
fn provider_connection_limit_holds_across_the_providers_sites() {
    let dns = yahoo_dns();
    let dest = ScriptedDestination::slow(Duration::from_millis(700));
    let (d, _dir) = start(
        &dns,
        &SHAPING.replace("PORT", &dest.addr.port().to_string()),
    );
    // Six transactions at once: three to each of two yahoo sites.
    let clients: Vec<_> = (0..6)
        .map(|i| {
            let addr = d.addr;
            let domain = if i % 2 == 0 {
                "yahoo.test"
            } else {
                "ymail.test"
            };
            std::thread::spawn(move || swaks(addr, &format!("u{i}@{domain}"), &[]))
        })
        .collect();
    for c in clients {
        let s = c.join().unwrap();
        assert!(s.ok, "{}", s.transcript);
    }
    assert_eq!(dest.received().len(), 6);
    assert_eq!(
        dest.max_concurrent(),
        3,
        "provider_connection_limit = 3 across mta5 and mta7 (each site alone allows 10)"
    );
}

/// What the shaping helper says at load is said in words, on one line, once —
/// not a resolver's debug dump with a stack traceback, not once per Lua state.
#[test]
fn shaping_setup_warnings_are_words_said_once() {
    let dns = yahoo_dns();
    let (d, _dir) = start(
        &dns,
        r#"
["default"]
max_ready = 100

["nomx.test"]
max_deliveries_per_connection = 3
"#,
    );
    let log = d.log();
    let site = log
        .lines()
        .filter(|l| l.contains("cannot find the site of nomx.test"))
        .collect::<Vec<_>>();
    assert_eq!(site.len(), 1, "{log}");
    assert!(
        site[0].contains("nomx.test: no such domain (no MX record)")
            || site[0].contains("nomx.test: no MX record"),
        "{}",
        site[0]
    );
    assert!(
        !log.contains("Query {") && !log.contains("stack traceback"),
        "{log}"
    );
    let ignored = log
        .lines()
        .filter(|l| {
            l.contains("kumo.make_egress_path: `max_ready` is accepted and has no effect in egressd: egressd has no scheduled or ready queue")
        })
        .count();
    assert_eq!(ignored, 1, "{log}");
}
