//! MTA-STS (RFC 8461) against real peers: dnsmasq publishes the MX and the
//! `_mta-sts` TXT record, Python's http.server serves the policy over HTTPS on
//! port 443 with a certificate from the test CA, and Postfix is the MX with (or
//! without) a certificate for its name.

mod common;

use common::{Embedded, TlsPolicyEvents};
use egress_e2e::{postfix_tls_main_cf, swaks, wait_until, Dnsmasq, Postfix, SmtpSink};
use egress_e2e::{StsPolicyHost, TestCa};
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The CA this test process trusts (`SSL_CERT_FILE`, read once per process).
fn trusted() -> &'static TestCa {
    static CA: OnceLock<TestCa> = OnceLock::new();
    CA.get_or_init(|| {
        let ca = TestCa::new();
        std::env::set_var("SSL_CERT_FILE", ca.ca_file());
        ca
    })
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A destination domain: its MX (a Postfix with a certificate for `mx.DOMAIN`
/// from `ca`, relaying to `sink`), its policy host on `policy_ip`, its records.
struct Destination {
    postfix: Postfix,
    policy: StsPolicyHost,
    records: Vec<String>,
}

fn destination(
    domain: &str,
    policy_ip: &str,
    ca: &TestCa,
    policy: &str,
    sink: &SmtpSink,
) -> Destination {
    let mx = format!("mx.{domain}");
    let issued = ca.issue(&mx, Some(ip("127.0.0.1")));
    let postfix = Postfix::start_with(sink.addr, &postfix_tls_main_cf(&issued));
    let policy = StsPolicyHost::start(ip(policy_ip), domain, trusted(), policy);
    let records = vec![
        format!("--mx-host={domain},{mx},10"),
        format!("--host-record={mx},127.0.0.1"),
        format!("--host-record=mta-sts.{domain},{policy_ip}"),
        format!("--txt-record=_mta-sts.{domain},v=STSv1; id=20261202"),
    ];
    Destination {
        postfix,
        policy,
        records,
    }
}

fn policy_text(mode: &str, mx: &str) -> String {
    format!("version: STSv1\r\nmode: {mode}\r\nmx: {mx}\r\nmax_age: 86400\r\n")
}

/// A relay routing by MX through `dns`; each domain's port from `ports`; the
/// path's TLS `OpportunisticInsecure`, so only MTA-STS can demand verification.
fn relay(dns: &Dnsmasq, ports: &[(&str, u16)], events: &Arc<TlsPolicyEvents>) -> Embedded {
    let table: Vec<String> = ports
        .iter()
        .map(|(d, p)| format!("['{d}'] = {p}"))
        .collect();
    Embedded::start_reporting(&format!(
        "kumo.on('init', function()
           kumo.start_esmtp_listener {{ listen = '{{listen}}' }}
           kumo.dns.configure_resolver {{ name_servers = {{ '{}' }} }}
         end)
         local PORT = {{ {} }}
         kumo.on('get_queue_config', function(domain)
           return kumo.make_queue_config {{ egress_pool = 'main' }}
         end)
         {}
         kumo.on('get_egress_path_config', function(domain, source, site)
           return kumo.make_egress_path {{ smtp_port = PORT[domain], enable_tls = 'OpportunisticInsecure' }}
         end)",
        dns.addr,
        table.join(", "),
        egress_e2e::IP2_POOL
    ), events.clone())
}

/// One destination domain (certificate from the trusted CA), its DNS, and a
/// relay that routes to it.
fn only_destination(
    domain: &str,
    policy_ip: &str,
    policy: &str,
    sink: &SmtpSink,
) -> (Destination, Dnsmasq, Embedded) {
    let dest = destination(domain, policy_ip, trusted(), policy, sink);
    let records: Vec<&str> = dest.records.iter().map(String::as_str).collect();
    let dns = Dnsmasq::start(&records);
    let d = relay(
        &dns,
        &[(domain, dest.postfix.addr.port())],
        &Arc::new(TlsPolicyEvents::default()),
    );
    (dest, dns, d)
}

#[test]
fn enforce_delivers_only_over_verified_tls_to_listed_mx_hosts() {
    let sink = SmtpSink::start();
    let ca = trusted();
    let good = destination(
        "sts.test",
        "127.0.0.41",
        ca,
        &policy_text("enforce", "mx.sts.test"),
        &sink,
    );
    let wrong_mx = destination(
        "wrongmx.test",
        "127.0.0.42",
        ca,
        &policy_text("enforce", "*.elsewhere.test"),
        &sink,
    );
    let untrusted_ca = TestCa::new();
    let untrusted = destination(
        "bad.test",
        "127.0.0.43",
        &untrusted_ca,
        &policy_text("enforce", "mx.bad.test"),
        &sink,
    );
    let records: Vec<&str> = [&good, &wrong_mx, &untrusted]
        .iter()
        .flat_map(|d| d.records.iter().map(String::as_str))
        .collect();
    let dns = Dnsmasq::start(&records);
    let events = Arc::new(TlsPolicyEvents::default());
    let d = relay(
        &dns,
        &[
            ("sts.test", good.postfix.addr.port()),
            ("wrongmx.test", wrong_mx.postfix.addr.port()),
            ("bad.test", untrusted.postfix.addr.port()),
        ],
        &events,
    );

    // Listed MX, valid certificate: delivered over TLS, the policy fetched once
    // for two messages.
    for n in 1..=2 {
        let s = swaks(
            d.addr,
            "u@sts.test",
            &["--header", &format!("Subject: sts {n}")],
        );
        assert!(s.ok, "{}\n{}", s.transcript, d.log());
    }
    // wait_for returns the dumps once they stop changing (never half-written).
    let delivered = sink.wait_for(2);
    assert_eq!(delivered.len(), 2);
    for m in delivered {
        assert!(m.contains("using TLS"), "Postfix was reached over TLS: {m}");
    }
    assert_eq!(
        good.policy.fetches(),
        1,
        "the second message used the cached policy"
    );
    // `egressd resolve` (the admin API's resolve-egress-path) shows the policy.
    let resolved = d.resolve("sts.test", None);
    assert_eq!(resolved["mta_sts"]["mode"], "enforce", "{resolved:#}");
    assert_eq!(resolved["mta_sts"]["id"], "20261202");
    assert_eq!(resolved["mta_sts"]["mx"][0], "mx.sts.test");
    assert_eq!(good.policy.fetches(), 1, "resolve used the cache too");
    assert!(
        d.log().contains("mta_sts=enforce (id 20261202)"),
        "{}",
        d.log()
    );

    // The MX is not in the policy: refused, never sent.
    let s = swaks(d.addr, "u@wrongmx.test", &[]);
    let reply = s.first_reply("451");
    assert!(
        reply.contains("4.7.5")
            && reply.contains("MTA-STS policy of wrongmx.test")
            && reply.contains("no MX host matches"),
        "{}",
        s.transcript
    );

    // The MX's certificate does not verify: refused, not sent in clear, although
    // the path alone would have accepted any certificate.
    let s = swaks(d.addr, "u@bad.test", &[]);
    let reply = s.first_reply("451");
    assert!(
        reply.contains("4.7.5") && reply.contains("MTA-STS policy of bad.test"),
        "{}",
        s.transcript
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sink.messages().len(), 2, "nothing else was delivered");
    // What the metrics count: three policies fetched, the second message's hit,
    // two refusals.
    assert_eq!(
        (
            events.count("fetched"),
            events.count("cache_hit"),
            events.count("refused")
        ),
        (3, 1, 2)
    );
    // What TLS reporting says: sessions under each domain's MTA-STS policy (the
    // second message to sts.test may have reused the first one's session).
    let (kind, (ok, failed), _) = d.tls_reported("sts.test");
    assert!(
        kind == "sts" && ok >= 1 && failed == 0,
        "{:#}",
        d.tls_report()
    );
    assert_eq!(
        d.tls_reported("wrongmx.test"),
        ("sts".into(), (0, 1), Some("validation-failure".into()))
    );
    assert_eq!(
        d.tls_reported("bad.test"),
        ("sts".into(), (0, 1), Some("certificate-not-trusted".into()))
    );
    let bad = d.tls_policy("bad.test");
    assert_eq!(bad["policy"]["mx-host"][0], "mx.bad.test");
    assert_eq!(bad["policy"]["policy-string"][1], "mode: enforce");
    assert_eq!(
        bad["failure-details"][0]["receiving-mx-hostname"],
        "mx.bad.test"
    );
}

#[test]
fn testing_mode_delivers_and_notes_what_enforce_would_refuse() {
    let sink = SmtpSink::start();
    let (_dest, _dns, d) = only_destination(
        "testing.test",
        "127.0.0.44",
        &policy_text("testing", "mx.other.test"),
        &sink,
    );
    let s = swaks(d.addr, "u@testing.test", &[]);
    assert!(s.ok, "{}\n{}", s.transcript, d.log());
    assert!(wait_until(Duration::from_secs(15), || sink
        .messages()
        .len()
        == 1));
    let log = d.log();
    assert!(
        log.contains("mta_sts=testing")
            && log.contains("no MX host matches")
            && log.contains("delivering anyway (testing)"),
        "{log}"
    );
    // Testing mode is what TLS reporting is for: the session is reported as the
    // failure enforce would have made (and not also as a success).
    assert_eq!(
        d.tls_reported("testing.test"),
        ("sts".into(), (0, 1), Some("validation-failure".into()))
    );
}

#[test]
fn a_policy_is_fetched_again_when_its_txt_id_changes_and_only_then() {
    let sink = SmtpSink::start();
    let (dest, mut dns, d) = only_destination(
        "renew.test",
        "127.0.0.46",
        &policy_text("enforce", "mx.renew.test"),
        &sink,
    );
    let send = |n: usize| {
        let s = swaks(
            d.addr,
            "u@renew.test",
            &["--header", &format!("Subject: renew {n}")],
        );
        assert!(s.ok, "{}\n{}", s.transcript, d.log());
        sink.wait_for(n);
    };
    send(1);
    assert_eq!(dest.policy.fetches(), 1);

    // The policy host now serves another policy, but the TXT id is the same: the
    // cached policy stays in force (dnsmasq serves its records with a TTL of 0,
    // so the id is asked again once the least recheck interval has passed).
    dest.policy
        .set_policy(&policy_text("testing", "mx.elsewhere.test"));
    std::thread::sleep(Duration::from_millis(1200));
    send(2);
    assert_eq!(dest.policy.fetches(), 1, "same id: not fetched again");
    assert_eq!(d.resolve("renew.test", None)["mta_sts"]["mode"], "enforce");

    // A new id: fetched again, and the new policy is the one in force.
    let renewed: Vec<String> = dest
        .records
        .iter()
        .map(|r| r.replace("id=20261202", "id=20261203"))
        .collect();
    dns.restart(&renewed.iter().map(String::as_str).collect::<Vec<_>>());
    std::thread::sleep(Duration::from_millis(1200));
    send(3);
    assert_eq!(dest.policy.fetches(), 2, "a new id: fetched again");
    let resolved = d.resolve("renew.test", None);
    assert_eq!(
        (&resolved["mta_sts"]["mode"], &resolved["mta_sts"]["id"]),
        (&"testing".into(), &"20261203".into()),
        "{resolved:#}"
    );
    let log = d.log();
    assert!(
        log.contains("mta_sts=testing (id 20261203)")
            && log.contains("delivering anyway (testing)"),
        "{log}"
    );
}
