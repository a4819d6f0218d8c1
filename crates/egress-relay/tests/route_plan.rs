//! One route decision for every caller: `resolve`, `probe` and a real transaction
//! agree — the site, the path config with an operator's override in force
//! (`ehlo_domain`), and the hosts `skip_hosts` leaves (the first MX host is
//! skipped, so all three go to the second). DNS from a real dnsmasq; the
//! destination is smtp-sink on 127.0.0.4.

mod common;

use common::Embedded;
use egress_e2e::{header, swaks, Dnsmasq, SmtpSink};
use egress_relay::OverrideScope;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

#[test]
fn resolve_probe_and_a_transaction_follow_the_same_plan() {
    let sink = SmtpSink::start_with(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 4)), &[]);
    let dns = Dnsmasq::start(&[
        "--mx-host=agree.test,mx-a.agree.test,10",
        "--mx-host=agree.test,mx-b.agree.test,20",
        "--host-record=mx-a.agree.test,127.0.0.1",
        "--host-record=mx-b.agree.test,127.0.0.4",
    ]);
    let d = Embedded::start(&format!(
        "kumo.on('init', function()
           kumo.start_esmtp_listener {{ listen = '{{listen}}' }}
           kumo.dns.configure_resolver {{ name_servers = {{ '{}' }} }}
         end)
         kumo.on('get_queue_config', function(domain)
           return kumo.make_queue_config {{ egress_pool = 'main' }}
         end)
         {}
         kumo.on('get_egress_path_config', function(domain, source, site)
           return kumo.make_egress_path {{
             smtp_port = {}, skip_hosts = {{ '127.0.0.1' }}, ehlo_domain = 'policy.example.test',
             enable_tls = 'Disabled',
           }}
         end)",
        dns.addr,
        egress_e2e::IP2_POOL,
        sink.addr.port()
    ));

    // An operator overrides the EHLO name for ip-2 sending to agree.test.
    let scope = OverrideScope::Domain {
        source: "ip-2".into(),
        domain: "agree.test".into(),
    };
    let set = d.block_on(d.relay.admin().set_override(
        &scope,
        "ehlo_domain",
        "override.example.test".into(),
        Duration::from_secs(600),
    ));
    assert_eq!(set, Ok(()));
    // A key the path config does not have is refused, naming it.
    let bad = d.block_on(d.relay.admin().set_override(
        &scope,
        "ehlo_domian",
        "x".into(),
        Duration::from_secs(600),
    ));
    assert!(bad.unwrap_err().contains("ehlo_domian"));

    // resolve
    let resolved = d.resolve("agree.test", Some("ip-2"));
    let source = &resolved["sources"][0];
    assert_eq!(source["ehlo_domain"], "override.example.test", "{resolved}");
    assert_eq!(
        source["path_config"]["ehlo_domain"],
        "override.example.test"
    );
    let addresses: Vec<&str> = source["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["address"].as_str().unwrap())
        .collect();
    assert_eq!(addresses, ["127.0.0.4"], "{resolved}");
    let site = resolved["site_name"].as_str().unwrap().to_owned();

    // probe
    let probed = d
        .block_on(d.relay.probe("ip-2", "agree.test", false))
        .unwrap_or_else(|e| panic!("probe: {e}"));
    assert_eq!(probed.ehlo, "override.example.test");
    assert_eq!(probed.site, site);
    assert_eq!(
        probed.destination.ip(),
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 4))
    );
    assert_eq!(probed.host, "mx-b.agree.test");
    assert!(
        probed.failed.is_empty(),
        "the skipped host is not tried: {:?}",
        probed.failed
    );
    assert!(
        probed.ehlo_reply.starts_with("250"),
        "{}",
        probed.ehlo_reply
    );
    assert_eq!(
        probed.path_config.ehlo_domain.as_deref(),
        Some("override.example.test")
    );

    // a transaction
    let s = swaks(d.addr, "u@agree.test", &[]);
    assert!(s.ok, "{}\n{}", s.transcript, d.log());
    let m = sink.wait_for(1);
    assert_eq!(header(&m[0], "X-Helo-Args"), Some("override.example.test"));
    assert_eq!(header(&m[0], "X-Client-Addr"), Some("127.0.0.2"));
    assert!(d.log().contains(&format!("site=\"{site}\"")), "{}", d.log());

    // The override ended: all three are back to the policy's name.
    d.block_on(d.relay.admin().end_override(&scope, "ehlo_domain"));
    let resolved = d.resolve("agree.test", Some("ip-2"));
    assert_eq!(resolved["sources"][0]["ehlo_domain"], "policy.example.test");
    let probed = d
        .block_on(d.relay.probe("ip-2", "agree.test", false))
        .unwrap();
    assert_eq!(probed.ehlo, "policy.example.test");
}
