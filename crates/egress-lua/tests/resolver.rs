//! `kumo.dns.configure_resolver` called in `init`, where KumoMTA's docs say to call
//! it, is the resolver every Lua state's `kumo.dns.lookup_*` uses — not only the
//! state `init` ran in. Checked against a real dnsmasq whose PTR answer differs
//! from /etc/hosts.

use egress_e2e::Dnsmasq;
use egress_lua::{Policy, PolicyOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_state_looks_up_through_the_resolver_init_configured() {
    let dns = Dnsmasq::start(&["--ptr-record=77.2.0.192.in-addr.arpa,seventy-seven.test"]);
    let policy = Policy::from_source(
        "resolver.lua",
        &format!(
            "kumo.on('init', function()
               kumo.dns.configure_resolver {{ name_servers = {{ '{}' }} }}
             end)
             kumo.on('get_egress_source', function(name)
               -- The first call holds its state, so the second runs in the other.
               if name == 'slow' then kumo.sleep(0.5) end
               local ptr = kumo.dns.lookup_ptr('192.0.2.77')[1]
               return kumo.make_egress_source {{ name = name, ehlo_domain = ptr:gsub('%.$', '') }}
             end)",
            dns.addr
        ),
        PolicyOptions {
            states: 2,
            ..PolicyOptions::default()
        },
    )
    .unwrap();
    let (slow, fast) = tokio::join!(policy.egress_source("slow"), async {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        policy.egress_source("fast").await
    });
    for source in [slow.unwrap(), fast.unwrap()] {
        assert_eq!(
            source.ehlo_domain.as_deref(),
            Some("seventy-seven.test"),
            "{}",
            source.name
        );
    }
}
