//! DANE (RFC 7672) against real peers: zones signed with ldnsutils and served by
//! NSD, egressd validating them with the zones' keys as `trust_anchor_file`, and
//! Postfix as the MX. The `Test` resolver form covers the rows of the decision
//! table a real server cannot easily produce (SERVFAIL, unusable records).

mod common;

use common::{Embedded, TlsPolicyEvents};
use egress_e2e::SelfSigned;
use egress_e2e::Zone;
use egress_e2e::{postfix_tls_main_cf, swaks, tlsa_3_1_1, Postfix, SignedZones, SmtpSink, TestCa};
use std::sync::Arc;
use std::time::Duration;

/// A relay whose paths enable DANE and otherwise disable TLS: TLS in a session
/// can only come from DANE.
fn relay(resolver: &str, port: u16, results: &Arc<TlsPolicyEvents>) -> Embedded {
    relay_with_ports(resolver, port, &[], results)
}

/// As [`relay`], with a destination port per recipient domain (`port` for the rest).
fn relay_with_ports(
    resolver: &str,
    port: u16,
    by_domain: &[(&str, u16)],
    results: &Arc<TlsPolicyEvents>,
) -> Embedded {
    let ports: String = by_domain
        .iter()
        .map(|(domain, port)| format!("['{domain}'] = {port}, "))
        .collect();
    Embedded::start_reporting(
        &format!(
            "kumo.on('init', function()
               kumo.start_esmtp_listener {{ listen = '{{listen}}' }}
               kumo.dns.configure_resolver {resolver}
             end)
             kumo.on('get_queue_config', function(domain)
               return kumo.make_queue_config {{ egress_pool = 'main' }}
             end)
             {}
             local ports = {{ {ports} }}
             kumo.on('get_egress_path_config', function(domain, source, site)
               return kumo.make_egress_path {{
                 smtp_port = ports[domain] or {port}, enable_tls = 'Disabled', enable_dane = true,
                 enable_mta_sts = false,
               }}
             end)",
            egress_e2e::IP2_POOL
        ),
        results.clone(),
    )
}

/// A Postfix MX with a certificate (from a CA nobody trusts: DANE-EE needs no
/// PKI), relaying to `sink`; the `3 1 1` data of its key; and the CA, which holds
/// the certificate's files for as long as Postfix reads them.
fn mx(sink: &SmtpSink) -> (Postfix, String, TestCa) {
    let ca = TestCa::new();
    let issued = ca.issue("mx.dane.test", Some("127.0.0.1".parse().unwrap()));
    let postfix = Postfix::start_with(sink.addr, &postfix_tls_main_cf(&issued));
    (postfix, tlsa_3_1_1(&issued.cert), ca)
}

#[test]
fn tlsa_records_over_a_validated_chain_decide_the_session() {
    let sink = SmtpSink::start();
    let (postfix, key, _ca) = mx(&sink);
    let wrong = "11".repeat(32);
    let signed = format!(
        "@ IN NS ns\nns IN A 127.0.0.1\n\
         good IN MX 10 mx-good\nmx-good IN A 127.0.0.1\n_25._tcp.mx-good IN TLSA 3 1 1 {key}\n\
         bad IN MX 10 mx-bad\nmx-bad IN A 127.0.0.1\n_25._tcp.mx-bad IN TLSA 3 1 1 {wrong}\n\
         bogus IN MX 10 mx-bogus\nmx-bogus IN A 127.0.0.1\n\
         _25._tcp.mx-bogus IN TLSA 3 1 1 {}\n\
         plain IN NS ns.plain\nns.plain IN A 127.0.0.1\n",
        "33".repeat(32)
    );
    let zones = SignedZones::start(&[
        Zone {
            origin: "dane.test",
            records: &signed,
            signed: true,
            // The record is changed under its signature: a bogus answer.
            tamper: Some((&"33".repeat(32), &key)),
        },
        Zone {
            origin: "plain.dane.test",
            records: "@ IN NS ns\nns IN A 127.0.0.1\n@ IN MX 10 mx\nmx IN A 127.0.0.1\n",
            signed: false,
            tamper: None,
        },
    ]);
    let results = Arc::new(TlsPolicyEvents::default());
    let d = relay(&zones.validating_resolver(), postfix.addr.port(), &results);

    // Secure chain, a matching 3 1 1 record: TLS although the path disables it,
    // and the log names the record that matched.
    let s = swaks(d.addr, "u@good.dane.test", &["--header", "Subject: good"]);
    assert!(s.ok, "{}\n{}", s.transcript, d.log());
    let delivered = sink.wait_for(1);
    assert!(delivered[0].contains("using TLS"), "{}", delivered[0]);
    assert!(
        d.log()
            .contains(&format!("dane=verified (TLSA 3 1 1 {key})")),
        "{}",
        d.log()
    );

    // The record does not match the certificate: deferred, nothing in clear.
    let s = swaks(d.addr, "u@bad.dane.test", &[]);
    let reply = s.first_reply("451");
    assert!(
        reply.contains("4.7.5") && reply.contains("DANE: no TLSA record matches"),
        "{}",
        s.transcript
    );

    // The TLSA answer fails validation: deferred.
    let s = swaks(d.addr, "u@bogus.dane.test", &[]);
    let reply = s.first_reply("451");
    assert!(
        reply.contains("4.7.5") && reply.contains("mx-bogus.dane.test"),
        "{}",
        s.transcript
    );

    // An unsigned zone (delegated without DS): DANE does not apply, the path's
    // enable_tls does — Disabled, so the message goes in clear.
    let s = swaks(d.addr, "u@plain.dane.test", &["--header", "Subject: plain"]);
    assert!(s.ok, "{}\n{}", s.transcript, d.log());
    let delivered = sink.wait_for(2);
    let plain = delivered
        .iter()
        .find(|m| m.contains("Subject: plain"))
        .expect("the plain message");
    assert!(!plain.contains("using TLS"), "{plain}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sink.messages().len(), 2, "nothing else was delivered");
    assert_eq!(
        (
            results.count("verified"),
            results.count("failed"),
            results.count("deferred")
        ),
        (1, 1, 1)
    );
    // What TLS reporting says, per domain: the DANE policy of each MX host.
    assert_eq!(
        d.tls_reported("good.dane.test"),
        ("tlsa".into(), (1, 0), None)
    );
    assert_eq!(
        d.tls_reported("bad.dane.test"),
        ("tlsa".into(), (0, 1), Some("validation-failure".into()))
    );
    assert_eq!(
        d.tls_reported("bogus.dane.test"),
        ("tlsa".into(), (0, 1), Some("dnssec-invalid".into()))
    );
    let good = d.tls_policy("good.dane.test");
    assert_eq!(good["policy"]["policy-string"][0], format!("3 1 1 {key}"));
    assert_eq!(good["policy"]["mx-host"][0], "mx-good.dane.test");
}

#[test]
fn test_resolver_rows_servfail_and_unusable_records() {
    let sink = SmtpSink::start();
    let (postfix, _, _ca) = mx(&sink);
    let zone = "$ORIGIN dane.test.\n$TTL 300\n\
        pkix IN MX 10 mx-pkix\nmx-pkix IN A 127.0.0.1\n\
        _25._tcp.mx-pkix IN TLSA 1 1 1 0000000000000000000000000000000000000000000000000000000000000000\n\
        broken IN MX 10 mx-broken\nmx-broken IN A 127.0.0.1\n";
    let results = Arc::new(TlsPolicyEvents::default());
    let d = relay(
        &format!(
            "{{ Test = {{ zones = {{ {{ zone = [[{zone}]], secure = true }} }}, \
               servfail = {{ '_25._tcp.mx-broken.dane.test' }} }} }}"
        ),
        postfix.addr.port(),
        &results,
    );

    // Only a PKIX-EE record: unusable, so TLS is required but not checked.
    let s = swaks(d.addr, "u@pkix.dane.test", &["--header", "Subject: pkix"]);
    assert!(s.ok, "{}\n{}", s.transcript, d.log());
    let delivered = sink.wait_for(1);
    assert!(delivered[0].contains("using TLS"), "{}", delivered[0]);
    assert!(d.log().contains("dane=encrypt_only"), "{}", d.log());

    // SERVFAIL for the TLSA records of a host with a secure chain: deferred.
    let s = swaks(d.addr, "u@broken.dane.test", &[]);
    let reply = s.first_reply("451");
    assert!(
        reply.contains("4.7.5") && reply.contains("SERVFAIL"),
        "{}",
        s.transcript
    );
    assert_eq!(
        (results.count("encrypt_only"), results.count("deferred")),
        (1, 1)
    );
}

/// DANE-TA (2 0 1): the record pins the CA that Postfix presents in its chain;
/// the chain is validated to it and the MX name checked — a host whose name the
/// certificate does not carry is refused although the anchor matches.
#[test]
fn dane_ta_checks_the_chain_to_the_published_anchor_and_the_mx_name() {
    let sink = SmtpSink::start();
    let ca = TestCa::new();
    let issued = ca.issue("mx-ta.dane.test", None);
    // The certificate file Postfix presents: the server's certificate, then the CA.
    let chain = ca.ca_file().with_file_name("mx-ta-chain.pem");
    std::fs::write(
        &chain,
        std::fs::read_to_string(&issued.cert).unwrap()
            + &std::fs::read_to_string(ca.ca_file()).unwrap(),
    )
    .unwrap();
    let presented = egress_e2e::Issued {
        cert: chain,
        key: issued.key.clone(),
    };
    let postfix = Postfix::start_with(sink.addr, &postfix_tls_main_cf(&presented));
    let anchor = egress_e2e::tlsa_2_0_1(&ca.ca_file());
    let records = format!(
        "@ IN NS ns\nns IN A 127.0.0.1\n\
         ta IN MX 10 mx-ta\nmx-ta IN A 127.0.0.1\n_25._tcp.mx-ta IN TLSA 2 0 1 {anchor}\n\
         wrongname IN MX 10 mx-other\nmx-other IN A 127.0.0.1\n\
         _25._tcp.mx-other IN TLSA 2 0 1 {anchor}\n"
    );
    let zones = SignedZones::start(&[Zone {
        origin: "dane.test",
        records: &records,
        signed: true,
        tamper: None,
    }]);
    let results = Arc::new(TlsPolicyEvents::default());
    let d = relay(&zones.validating_resolver(), postfix.addr.port(), &results);
    let s = swaks(d.addr, "u@ta.dane.test", &["--header", "Subject: ta"]);
    assert!(s.ok, "{}\n{}", s.transcript, d.log());
    assert!(sink.wait_for(1)[0].contains("using TLS"));
    assert!(
        d.log()
            .contains(&format!("dane=verified (TLSA 2 0 1 {anchor})")),
        "{}",
        d.log()
    );
    let s = swaks(d.addr, "u@wrongname.dane.test", &[]);
    let reply = s.first_reply("451");
    assert!(
        reply.contains("4.7.5") && reply.contains("DANE-TA"),
        "{}",
        s.transcript
    );
    assert_eq!((results.count("verified"), results.count("failed")), (1, 1));
}

/// RFC 7672 §3.1.1: with DANE-EE the TLSA match alone authenticates the server —
/// no name, expiry, CA or basic-constraints checks. Three Postfix MXs present a
/// self-signed certificate made by `openssl req -x509` (marked CA:TRUE), an
/// expired one and one for another name: each is delivered over TLS as verified;
/// a record that matches none is still refused. A domain in a zone no trust
/// anchor covers (RFC 4035 §4.3: indeterminate) is insecure, so the path's
/// `enable_tls` decides — not refused as bogus.
#[test]
fn dane_ee_trusts_the_key_whatever_the_certificate_says() {
    let sink = SmtpSink::start();
    let ca = TestCa::new();
    let kinds = [
        ("ca", SelfSigned::OpensslCa, "mx-ca.dane.test"),
        ("expired", SelfSigned::Expired, "mx-expired.dane.test"),
        ("elsewhere", SelfSigned::Plain, "somewhere-else.example"),
    ];
    let mut mxs = Vec::new();
    let mut records = String::from("@ IN NS ns\nns IN A 127.0.0.1\n");
    for (label, kind, cert_name) in kinds {
        let issued = ca.self_signed(cert_name, kind);
        let key = tlsa_3_1_1(&issued.cert);
        records.push_str(&format!(
            "{label} IN MX 10 mx-{label}\nmx-{label} IN A 127.0.0.1\n\
             _25._tcp.mx-{label} IN TLSA 3 1 1 {key}\n"
        ));
        mxs.push((
            label,
            Postfix::start_with(sink.addr, &postfix_tls_main_cf(&issued)),
        ));
    }
    records.push_str(&format!(
        "mismatch IN MX 10 mx-mismatch\nmx-mismatch IN A 127.0.0.1\n\
         _25._tcp.mx-mismatch IN TLSA 3 1 1 {}\n",
        "22".repeat(32)
    ));
    let zones = SignedZones::start(&[
        Zone {
            origin: "dane.test",
            records: &records,
            signed: true,
            tamper: None,
        },
        // Served by the same server, neither signed nor under dane.test: no
        // trust anchor covers it.
        Zone {
            origin: "outside.test",
            records: "@ IN NS ns\nns IN A 127.0.0.1\n@ IN MX 10 mx\nmx IN A 127.0.0.1\n",
            signed: false,
            tamper: None,
        },
    ]);
    let domains: Vec<(String, u16)> = mxs
        .iter()
        .map(|(label, postfix)| (format!("{label}.dane.test"), postfix.addr.port()))
        .chain([
            ("mismatch.dane.test".to_owned(), mxs[0].1.addr.port()),
            ("outside.test".to_owned(), sink.addr.port()),
        ])
        .collect();
    let by_domain: Vec<(&str, u16)> = domains.iter().map(|(d, p)| (d.as_str(), *p)).collect();
    let results = Arc::new(TlsPolicyEvents::default());
    let d = relay_with_ports(&zones.validating_resolver(), 9, &by_domain, &results);

    for (i, (label, _)) in mxs.iter().enumerate() {
        let subject = format!("Subject: {label}");
        let s = swaks(
            d.addr,
            &format!("u@{label}.dane.test"),
            &["--header", &subject],
        );
        assert!(s.ok, "{label}: {}\n{}", s.transcript, d.log());
        let delivered = sink.wait_for(i + 1);
        let m = delivered
            .iter()
            .find(|m| m.contains(&subject))
            .unwrap_or_else(|| panic!("{label} was not delivered"));
        assert!(m.contains("using TLS"), "{label}: {m}");
    }
    assert_eq!(results.count("verified"), 3, "{}", d.log());
    assert_eq!(d.log().matches("dane=verified (TLSA 3 1 1 ").count(), 3);

    let s = swaks(d.addr, "u@mismatch.dane.test", &[]);
    let reply = s.first_reply("451");
    assert!(
        reply.contains("4.7.5") && reply.contains("DANE: no TLSA record matches"),
        "{}",
        s.transcript
    );

    let s = swaks(d.addr, "u@outside.test", &["--header", "Subject: outside"]);
    assert!(s.ok, "{}\n{}", s.transcript, d.log());
    let delivered = sink.wait_for(4);
    let outside = delivered
        .iter()
        .find(|m| m.contains("Subject: outside"))
        .expect("the message to outside.test");
    assert!(!outside.contains("using TLS"), "{outside}");
    assert_eq!(sink.messages().len(), 4, "the mismatch was not delivered");
}
