//! Automation rules from shaping.toml (issue: provider blocks + automation): a
//! mailbox provider's reply steers the sources. Yahoo's `421 4.7.0 [TSS04]` to one
//! source suspends that source at Yahoo's sites (a provider rule) — on this relay
//! and on a second one sharing redis-server — while other sites still get mail
//! from it; a Threshold
//! rule fires on the Nth match; egressd's own replies match only with
//! `match_internal`. MX records from a real dnsmasq; the destination is a scripted
//! one that answers MAIL from 127.0.0.2 as Yahoo does.

mod common;

use common::Embedded;
use egress_e2e::{by_client_addr, swaks, Dnsmasq, ScriptedDestination, SmtpSink};
use egress_e2e::{RedisCluster, RedisServer, SharedRedis};
use std::net::IpAddr;

const TSS04: &str = "421 4.7.0 [TSS04] Messages from 127.0.0.2 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.example/421-ts04";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn dns() -> Dnsmasq {
    Dnsmasq::start(&[
        "--mx-host=yahoo.test,mta5.am0.yahoodns.net,10",
        "--host-record=mta5.am0.yahoodns.net,127.0.0.1",
        "--mx-host=ymail.test,mta7.am0.yahoodns.net,10",
        "--host-record=mta7.am0.yahoodns.net,127.0.0.1",
        "--mx-host=other.test,mx.other.test,10",
        "--mx-host=down.test,mx.other.test,10",
        "--mx-host=down2.test,mx.other.test,10",
        "--mx-host=bounce.test,mx.other.test,10",
        "--host-record=mx.other.test,127.0.0.1",
    ])
}

/// A relay over `shaping` (TOML, `PORT` replaced by `yahoo`'s port and `SINK` by
/// `other`'s), pool `main` = ip-2 (127.0.0.2) and ip-3 (127.0.0.3) in turn, DNS
/// from `dns`, and `init` more init calls (Redis).
fn relay(dns: &Dnsmasq, shaping: &str, init: &str) -> (Embedded, tempfile::TempDir) {
    relay_with_pool(dns, shaping, init, "{ name = 'ip-2' }, { name = 'ip-3' }")
}

/// As [`relay`], with the pool's entries (Lua).
fn relay_with_pool(
    dns: &Dnsmasq,
    shaping: &str,
    init: &str,
    entries: &str,
) -> (Embedded, tempfile::TempDir) {
    relay_with(dns, shaping, init, entries, "")
}

/// As [`relay_with_pool`], with more Lua (`extra`) in the policy.
fn relay_with(
    dns: &Dnsmasq,
    shaping: &str,
    init: &str,
    entries: &str,
    extra: &str,
) -> (Embedded, tempfile::TempDir) {
    relay_over_files(dns, &[shaping], init, entries, extra)
}

/// As [`relay_with`], over several shaping files loaded in order (as KumoMTA's
/// default file, then its community file).
fn relay_over_files(
    dns: &Dnsmasq,
    shapings: &[&str],
    init: &str,
    entries: &str,
    extra: &str,
) -> (Embedded, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (i, text) in shapings.iter().enumerate() {
        let file = dir.path().join(format!("shaping-{i}.toml"));
        std::fs::write(&file, text).unwrap();
        files.push(format!("'{}'", file.display()));
    }
    let relay = Embedded::start(&format!(
        "kumo.on('init', function()
           kumo.start_esmtp_listener {{ listen = '{{listen}}' }}
           {init}
         end)
         kumo.dns.configure_resolver {{ name_servers = {{ '{}' }} }}
         kumo.on('get_queue_config', function(domain)
           return kumo.make_queue_config {{ egress_pool = 'main', retry_interval = '1s', max_retry_interval = '2s' }}
         end)
         kumo.on('get_egress_pool', function(name)
           return kumo.make_egress_pool {{ name = name, entries = {{ {entries} }} }}
         end)
         kumo.on('get_egress_source', function(name)
           local addr = {{ ['ip-2'] = '127.0.0.2', ['ip-3'] = '127.0.0.3' }}
           return kumo.make_egress_source {{ name = name, source_address = addr[name] }}
         end)
         kumo.on('get_egress_path_config', require('policy-extras.shaping'):setup {{ {} }})
         {extra}",
        dns.addr,
        files.join(", ")
    ));
    (relay, dir)
}

fn shaping(yahoo: &ScriptedDestination, other: &SmtpSink, rule: &str) -> String {
    format!(
        r#"
["default"]
smtp_port = {}

["other.test"]
mx_rollup = false
smtp_port = {}

[provider."yahoo"]
match = [ {{MXSuffix = ".yahoodns.net"}} ]

{rule}
"#,
        yahoo.addr.port(),
        other.addr.port()
    )
}

const SUSPEND_ON_TSS04: &str = r#"
[[provider."yahoo".automation]]
regex = [ "\\[TS01\\]", "\\[TSS04\\]" ]
action = "Suspend"
duration = "2 hours"
"#;

/// Sends `n` messages to `domain`; the replies that were not accepted.
fn send(d: &Embedded, domain: &str, n: usize) -> Vec<String> {
    (0..n)
        .filter_map(|i| {
            let s = swaks(d.addr, &format!("u{i}@{domain}"), &[]);
            (!s.ok).then(|| s.first_reply("4"))
        })
        .collect()
}

#[test]
fn tss04_suspends_the_source_at_the_providers_sites_on_every_node_sharing_redis() {
    tss04_suspends_on_every_node(&RedisServer::start());
}

#[test]
fn tss04_suspends_the_source_on_every_node_sharing_a_redis_cluster() {
    tss04_suspends_on_every_node(&RedisCluster::start());
}

fn tss04_suspends_on_every_node(redis: &impl SharedRedis) {
    let dns = dns();
    let yahoo = ScriptedDestination::refusing_mail_from(&[ip("127.0.0.2")], TSS04);
    let other = SmtpSink::start();
    let text = shaping(&yahoo, &other, SUSPEND_ON_TSS04);
    let init = redis.throttles_init();
    let (a, _da) = relay(&dns, &text, &init);
    let (b, _db) = relay(&dns, &text, &init);

    // Node A: ip-2's one attempt gets Yahoo's words; everything else leaves from ip-3.
    let refused = send(&a, "yahoo.test", 6);
    assert_eq!(refused.len(), 1, "{refused:?}\n{}", a.log());
    assert!(refused[0].starts_with("421 4.7.0 [TSS04]"), "{refused:?}");
    assert_eq!(yahoo.connections_from(ip("127.0.0.2")), 1);
    assert_eq!(yahoo.received().len(), 5);
    let log = a.log();
    assert!(
        log.contains("automation: source suspended")
            && log.contains("[provider.\"yahoo\"].automation[1]")
            && log.contains("action=\"Suspend\""),
        "{log}"
    );

    // The suspension is in the shared store, with the rule as its reason.
    let suspensions = a.block_on(a.relay.admin().suspensions());
    let s = suspensions
        .iter()
        .find(|s| s.key.id() == "ip-2->provider:yahoo")
        .unwrap_or_else(|| panic!("{suspensions:?}"));
    assert!(
        s.reason.contains("automation") && s.reason.contains("[TSS04]"),
        "{s:?}"
    );
    let left = s
        .until
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(
        left > std::time::Duration::from_secs(7000),
        "about two hours: {left:?}"
    );

    // Node B never tries ip-2 at Yahoo's sites: neither this one nor another
    // (mta7) where nothing was refused — it is the provider's rule.
    assert!(send(&b, "yahoo.test", 4).is_empty());
    assert!(send(&b, "ymail.test", 2).is_empty());
    assert!(send(&a, "ymail.test", 2).is_empty());
    assert_eq!(yahoo.connections_from(ip("127.0.0.2")), 1);
    assert_eq!(yahoo.received().len(), 13);

    // Another site still gets mail from ip-2.
    assert!(send(&a, "other.test", 4).is_empty());
    let counts = by_client_addr(&other.wait_for(4));
    assert_eq!(counts.get("127.0.0.2"), Some(&2), "{counts:?}");
}

/// The shapes of KumoMTA's shipped community file, written here: rules added to a
/// provider the default file matches, a provider with rules and no match list
/// (its "gmail" — the default file says "google"), a provider with an MXSuffix
/// ending in a dot, a provider-wide limit, and a domain block with its own rules.
const COMMUNITY: &str = r#"
[[provider."gmail".automation]]
regex = "\\[TSS04\\]"
trigger = {Threshold="1/hr"}
action = "Suspend"
duration = "1 hour"

[[provider."gmail".automation]]
regex = "unusual rate"
trigger = {Threshold="2/hr"}
action = {SetConfig={name="max_message_rate", value="10/minute"}}
duration = "30m"

[[provider."yahoo".automation]]
regex = "421 4\\.7\\.0 \\[TSS04\\]"
trigger = {Threshold="2/hr"}
action = "Suspend"
duration = "2 hours"

["other.test"]
max_deliveries_per_connection = 20

[["other.test".automation]]
regex = "VS98-IP0 deferred"
trigger = {Threshold="2/hr"}
action = "Suspend"
duration = "1 hour"

[provider."netvigator"]
match=[
        {MXSuffix=".netvigator.test."},
]
provider_connection_limit = 5
max_deliveries_per_connection = 8
consecutive_connection_failures_before_delay = 5
enable_tls = 'Required'

[[provider."netvigator".automation]]
regex = "try again later"
trigger = {Threshold="3/hr"}
action = "Suspend"
duration = "1 hour"
"#;

#[test]
fn a_provider_with_no_match_list_loads_and_its_rules_never_fire() {
    let dns = dns();
    let yahoo = ScriptedDestination::refusing_mail_from(&[ip("127.0.0.2")], TSS04);
    let other = SmtpSink::start();
    let default = shaping(
        &yahoo,
        &other,
        "[provider.\"google\"]\nmatch = [ {MXSuffix = \".google.test\"} ]\n",
    );
    let (d, _dir) = relay_over_files(
        &dns,
        &[&default, COMMUNITY],
        "",
        "{ name = 'ip-2' }, { name = 'ip-3' }",
        "",
    );
    // Yahoo's rule (from the community file, matched by the default file's block)
    // fires on ip-2's second TSS04; "gmail"'s rule for the same words never does.
    let refused = send(&d, "yahoo.test", 8);
    assert_eq!(refused.len(), 2, "{refused:?}\n{}", d.log());
    assert_eq!(yahoo.connections_from(ip("127.0.0.2")), 2);
    let log = d.log();
    assert!(log.contains("[provider.\"yahoo\"].automation[1]"), "{log}");
    assert!(!log.contains("provider.\"gmail\""), "{log}");
    let keys: Vec<String> = d
        .block_on(d.relay.admin().suspensions())
        .into_iter()
        .map(|s| s.key.id())
        .collect();
    assert_eq!(keys, vec!["ip-2->provider:yahoo".to_owned()]);
    // The other providers' settings apply where they match.
    assert!(send(&d, "other.test", 2).is_empty());
    let resolved = d.resolve("other.test", Some("ip-3"));
    assert_eq!(
        resolved["sources"][0]["path_config"]["max_deliveries_per_connection"], 20,
        "{resolved}"
    );
}

#[test]
fn a_threshold_rule_fires_on_the_nth_match_not_before() {
    let dns = dns();
    let yahoo = ScriptedDestination::refusing_mail_from(
        &[ip("127.0.0.2")],
        "421 4.7.0 [TS01] Messages from 127.0.0.2 temporarily deferred",
    );
    let other = SmtpSink::start();
    let rule = r#"
[[provider."yahoo".automation]]
regex = "\\[TS01\\]"
action = "Suspend"
trigger = { Threshold = "3/hr" }
duration = "1 hour"
"#;
    let (d, _dir) = relay(&dns, &shaping(&yahoo, &other, rule), "");
    let refused = send(&d, "yahoo.test", 10);
    // ip-2 is proposed every other time until its third TS01; then never again.
    assert_eq!(refused.len(), 3, "{refused:?}");
    assert_eq!(yahoo.connections_from(ip("127.0.0.2")), 3);
    assert_eq!(yahoo.received().len(), 7);
}

#[test]
fn replies_egressd_makes_match_only_rules_that_ask_for_them() {
    let dns = dns();
    let yahoo = ScriptedDestination::start(false);
    let other = SmtpSink::start();
    // down.test and down2.test route to a port nothing listens on: egressd's own
    // failure text names it.
    let rules = r#"
["down.test"]
mx_rollup = false
smtp_port = 9
[["down.test".automation]]
regex = "127\\.0\\.0\\.1:9\\b"
action = "Suspend"
duration = "1 hour"

["down2.test"]
mx_rollup = false
smtp_port = 9
[["down2.test".automation]]
regex = "127\\.0\\.0\\.1:9\\b"
action = "Suspend"
duration = "1 hour"
match_internal = true
"#;
    let (d, _dir) = relay(&dns, &shaping(&yahoo, &other, rules), "");
    let suspended = || -> Vec<String> {
        d.block_on(d.relay.admin().suspensions())
            .into_iter()
            .map(|s| s.key.id())
            .collect()
    };
    assert_eq!(send(&d, "down.test", 1).len(), 1);
    assert!(suspended().is_empty(), "{:?}", suspended());
    assert_eq!(send(&d, "down2.test", 1).len(), 1);
    let keys = suspended();
    assert!(
        keys.iter().any(|k| k.ends_with("->mx.other.test")),
        "{keys:?}\n{}",
        d.log()
    );
}

#[test]
fn set_config_overrides_a_limit_at_once_and_resolve_shows_it() {
    let dns = dns();
    // Recipients containing "refused" get `550 5.1.1 no such user here`.
    let yahoo = ScriptedDestination::start(false);
    let other = SmtpSink::start();
    let rule = r#"
[[provider."yahoo".automation]]
regex = "no such user here"
action = { SetConfig = { name = "max_message_rate", value = "2/h" } }
duration = "1 hour"
"#;
    let (d, _dir) = relay_with_pool(
        &dns,
        &shaping(&yahoo, &other, rule),
        "",
        "{ name = 'ip-2' }",
    );
    // Before the rule fires there is no rate: a burst all goes.
    assert!(send(&d, "yahoo.test", 3).is_empty());
    let s = swaks(d.addr, "refused@yahoo.test", &[]);
    assert!(s.has_reply("550 5.1.1"), "{}", s.transcript);
    // Now two per hour: a burst of five gets two through, the rest a 451 naming it.
    let refused = send(&d, "yahoo.test", 5);
    assert_eq!(refused.len(), 3, "{refused:?}\n{}", d.log());
    assert!(
        refused
            .iter()
            .all(|r| r.starts_with("451 4.7.1") && r.contains("max_message_rate")),
        "{refused:?}"
    );
    assert_eq!(yahoo.received().len(), 5, "3 before, 2 after");
    let resolved = d.resolve("yahoo.test", Some("ip-2"));
    let source = &resolved["sources"][0];
    assert_eq!(source["path_config"]["max_message_rate"], "2/h", "{source}");
    assert_eq!(
        source["overrides"][0]["name"], "max_message_rate",
        "{source}"
    );
    assert_eq!(
        source["overrides"][0]["scope"],
        "ip-2->mta5.am0.yahoodns.net"
    );
    assert!(d.log().contains("automation: path setting overridden"));
}

#[test]
fn bounce_refuses_the_domain_and_suspend_tenant_defers_only_that_tenant() {
    let dns = dns();
    // Recipients containing "refused" get `550 5.1.1 no such user here`.
    let yahoo = ScriptedDestination::start(false);
    let other = SmtpSink::start();
    let rules = r#"
[[provider."yahoo".automation]]
regex = "no such user here"
action = "SuspendTenant"
duration = "1 hour"

["bounce.test"]
mx_rollup = false
[["bounce.test".automation]]
regex = "no such user here"
action = "Bounce"
duration = "1 hour"
"#;
    // The tenant is the AUTH identity (AUTH is offered over STARTTLS).
    let (d, _dir) = relay_with(
        &dns,
        &shaping(&yahoo, &other, rules),
        "",
        "{ name = 'ip-2' }",
        "kumo.on('smtp_server_auth_plain', function(authz, authc, password)
           return password == 'secret'
         end)",
    );
    let as_acme = [
        "--tls",
        "--auth",
        "PLAIN",
        "--auth-user",
        "acme",
        "--auth-password",
        "secret",
    ];
    // Without a tenant, a tenant rule does nothing.
    let s = swaks(d.addr, "refused@yahoo.test", &[]);
    assert!(s.has_reply("550 5.1.1"), "{}", s.transcript);
    assert!(send(&d, "yahoo.test", 1).is_empty(), "{}", d.log());
    // Tenant acme's refusal defers acme's mail to yahoo.test, and only acme's.
    let s = swaks(d.addr, "refused@yahoo.test", &as_acme);
    assert!(s.has_reply("550 5.1.1"), "{}", s.transcript);
    let s = swaks(d.addr, "someone@yahoo.test", &as_acme);
    let reply = s.first_reply("4");
    assert!(
        reply.starts_with("451 4.7.1") && reply.contains("from tenant 'acme' is suspended"),
        "{}",
        s.transcript
    );
    assert!(
        send(&d, "yahoo.test", 1).is_empty(),
        "no tenant: still delivered"
    );
    assert_eq!(yahoo.received().len(), 2);

    // Bounce: once the destination refused someone at bounce.test, every RCPT for
    // bounce.test is refused here, naming the rule; nothing more reaches it.
    let s = swaks(d.addr, "refused@bounce.test", &[]);
    assert!(s.has_reply("550 5.1.1"), "{}", s.transcript);
    let s = swaks(d.addr, "someone@bounce.test", &[]);
    let reply = s.first_reply("5");
    assert!(reply.starts_with("550 5.7.1"), "{}", s.transcript);
    assert!(
        reply.contains("mail for bounce.test is refused")
            && reply.contains("[\"bounce.test\"].automation[1]"),
        "{reply}"
    );
    assert_eq!(yahoo.received().len(), 2);
    // Other domains are untouched.
    assert!(send(&d, "other.test", 1).is_empty());
}

#[test]
fn a_bounced_domain_fails_its_spooled_recipients_with_a_dsn() {
    let dns = dns();
    let yahoo = ScriptedDestination::start(false);
    let other = SmtpSink::start();
    let spool = tempfile::tempdir().unwrap();
    // bounce.test's host is down (port 9): egressd's own failure, matched because
    // the rule asks for internal replies, bounces the domain.
    let rules = r#"
["bounce.test"]
mx_rollup = false
smtp_port = 9
[["bounce.test".automation]]
regex = "127\\.0\\.0\\.1:9\\b"
action = "Bounce"
duration = "1 hour"
match_internal = true
"#;
    let (d, _dir) = relay_with(
        &dns,
        &shaping(&yahoo, &other, rules),
        &format!(
            "kumo.define_spool {{ name = 'data', path = '{}', max_spool_bytes = 10000000 }}",
            spool.path().display()
        ),
        "{ name = 'ip-2' }",
        "",
    );
    // One message for two domains: spooled; yahoo.test gets it, bounce.test's
    // recipient waits for a retry, which the bounce now answers with a DSN.
    let s = swaks(d.addr, "a@yahoo.test,b@bounce.test", &[]);
    assert!(s.ok, "{}", s.transcript);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !d.log().contains("delivery status notification spooled")
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let log = d.log();
    assert!(
        log.contains("delivery status notification spooled"),
        "{log}"
    );
    assert!(log.contains("mail for bounce.test is refused"), "{log}");
    assert_eq!(yahoo.received().len(), 1);
}

#[test]
fn a_refused_banner_is_matched_like_any_reply() {
    let dns = dns();
    let yahoo = ScriptedDestination::refusing_banner_to(&[ip("127.0.0.2")], TSS04);
    let other = SmtpSink::start();
    let (d, _dir) = relay(&dns, &shaping(&yahoo, &other, SUSPEND_ON_TSS04), "");
    // A refused greeting is a failure of the source at this host, so the
    // transaction moves on to ip-3 at once; the rule suspends ip-2 at Yahoo's sites,
    // and it is not tried again.
    assert!(send(&d, "yahoo.test", 6).is_empty(), "{}", d.log());
    assert_eq!(yahoo.connections_from(ip("127.0.0.2")), 1);
    assert_eq!(yahoo.received().len(), 6);
    let log = d.log();
    assert!(
        log.contains("automation: source suspended") && log.contains("reply=421 4.7.0 [TSS04]"),
        "{log}"
    );
}

#[test]
fn a_suspension_ends_after_its_duration_and_says_so() {
    let dns = dns();
    let yahoo = ScriptedDestination::refusing_mail_from(&[ip("127.0.0.2")], TSS04);
    let other = SmtpSink::start();
    let rule = SUSPEND_ON_TSS04.replace("2 hours", "1s");
    let (d, _dir) = relay(&dns, &shaping(&yahoo, &other, &rule), "");
    assert_eq!(send(&d, "yahoo.test", 4).len(), 1);
    assert_eq!(yahoo.connections_from(ip("127.0.0.2")), 1);
    // Said at INFO within a renewal tick (5 s) of the end; then ip-2 is chosen again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !d.log().contains("has ended") && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let log = d.log();
    assert!(
        log.contains("automation: the suspension of ip-2->provider:yahoo by")
            && log.contains("has ended"),
        "{log}"
    );
    assert_eq!(send(&d, "yahoo.test", 2).len(), 1, "ip-2 is tried again");
    assert_eq!(yahoo.connections_from(ip("127.0.0.2")), 2);
}
