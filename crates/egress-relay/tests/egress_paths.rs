//! KumoMTA's egress-path keys a relay honours, each checked at a real destination:
//! RSET between messages, recipient batches, the 8-bit check, host lists, the
//! lookup strategy (smtp-sink, the scripted destination, dnsmasq).

mod common;

use common::Embedded;
use egress_e2e::{
    header, mx_entry, path_policy, relay_policy, swaks, Dnsmasq, Raw, ScriptedDestination,
};
use egress_e2e::{smtplib_send, SmtpSink};
use std::net::{IpAddr, SocketAddr};

/// A relay to `mx` whose path config is `kumo.make_egress_path { path }`.
fn with_path(mx: &str, path: &str) -> Embedded {
    Embedded::start(&path_policy(mx, path))
}

/// The commands of one destination connection, MAIL to MAIL.
fn verbs(dest: &ScriptedDestination, connection: usize) -> Vec<String> {
    dest.commands()
        .into_iter()
        .filter(|(c, _)| *c == connection)
        .map(|(_, v)| v)
        .collect()
}

#[test]
fn enable_rset_sends_rset_between_messages_on_a_reused_session() {
    for (enable_rset, expected) in [
        (
            true,
            vec![
                "EHLO", "MAIL", "RCPT", "DATA", "RSET", "MAIL", "RCPT", "DATA",
            ],
        ),
        (
            false,
            vec!["EHLO", "MAIL", "RCPT", "DATA", "MAIL", "RCPT", "DATA"],
        ),
    ] {
        let dest = ScriptedDestination::pipelining();
        let d = with_path(
            &mx_entry(dest.addr),
            &format!("enable_rset = {enable_rset}"),
        );
        assert!(swaks(d.addr, "a@dest.test", &[]).ok);
        assert!(swaks(d.addr, "b@dest.test", &[]).ok);
        assert_eq!(dest.received().len(), 2);
        assert_eq!(dest.connections(), 1, "the session is reused");
        assert_eq!(verbs(&dest, 0), expected, "enable_rset = {enable_rset}");
    }
}

/// Five recipients with `max_recipients_per_batch = 2`: the client hears 452 4.5.3
/// past the batch and sends the rest again (as Postfix and smtplib callers do);
/// the destination sees three transactions, all on one session.
#[test]
fn max_recipients_per_batch_splits_recipients_into_transactions_on_one_session() {
    let dest = ScriptedDestination::pipelining();
    let d = with_path(&mx_entry(dest.addr), "max_recipients_per_batch = 2");
    let mut left: Vec<String> = (1..=5).map(|i| format!("r{i}@dest.test")).collect();
    let mut sends = 0;
    while !left.is_empty() && sends < 5 {
        sends += 1;
        let to: Vec<&str> = left.iter().map(String::as_str).collect();
        let out = smtplib_send(d.addr, "app@src.test", &to, "Subject: batch\r\n\r\nhi\r\n");
        let refused = out.lines().next().unwrap_or_default().to_owned();
        if sends == 1 {
            assert!(
                refused.contains("452") && refused.contains("max_recipients_per_batch"),
                "{out}"
            );
        }
        left.retain(|r| refused.contains(r.as_str()));
    }
    assert!(
        left.is_empty(),
        "still refused after {sends} sends: {left:?}"
    );
    let received = dest.received();
    let sizes: Vec<usize> = received.iter().map(|m| m.recipients.len()).collect();
    assert_eq!(sizes, [2, 2, 1]);
    assert!(received.iter().all(|m| m.connection == 0), "one session");
    assert_eq!(dest.connections(), 1);
}

/// An 8-bit message (BODY=8BITMIME) to a destination that does not offer 8BITMIME
/// is refused before any of it is sent; `ignore_8bit_checks = true` sends it.
#[test]
fn an_8bit_message_is_not_sent_to_a_7bit_destination_unless_ignore_8bit_checks() {
    // smtp-sink -8: no 8BITMIME in its EHLO reply.
    let sink = SmtpSink::start_with(IpAddr::from([127, 0, 0, 1]), &["-8"]);
    for (ignore, expected) in [(false, "554 5.6.3"), (true, "250")] {
        let d = with_path(
            &mx_entry(sink.addr),
            &format!("ignore_8bit_checks = {ignore}"),
        );
        let (mut c, _) = Raw::connect(d.addr);
        c.cmd("EHLO app.test");
        assert!(c
            .cmd("MAIL FROM:<a@src.test> BODY=8BITMIME")
            .starts_with("250"));
        let rcpt = c.cmd("RCPT TO:<u@dest.test>");
        assert!(
            rcpt.starts_with(expected),
            "ignore_8bit_checks = {ignore}: {rcpt}"
        );
        if !ignore {
            assert!(rcpt.contains("does not offer 8BITMIME"), "{rcpt}");
            assert!(rcpt.contains("ignore_8bit_checks"), "{rcpt}");
            continue;
        }
        assert!(c.cmd("DATA").starts_with("354"));
        c.send("Subject: caf\u{e9}\r\n\r\nna\u{ef}ve\r\n.\r\n".as_bytes());
        assert!(c.reply().starts_with("250"));
    }
    assert_eq!(
        sink.wait_for(1).len(),
        1,
        "only the ignore_8bit_checks message"
    );
}

/// Two MX hosts on 127.0.0.3 and 127.0.0.4 (the same port), from dnsmasq.
fn two_mx_hosts() -> (Dnsmasq, SmtpSink, SmtpSink) {
    let first = SmtpSink::start_with(IpAddr::from([127, 0, 0, 3]), &[]);
    let second = SmtpSink::start_on(SocketAddr::from(([127, 0, 0, 4], first.addr.port())), &[]);
    let dns = Dnsmasq::start(&[
        "--mx-host=dest.test,mx1.dest.test,10",
        "--mx-host=dest.test,mx2.dest.test,20",
        "--host-record=mx1.dest.test,127.0.0.3",
        "--host-record=mx2.dest.test,127.0.0.4",
    ]);
    (dns, first, second)
}

/// A relay resolving through `dns`, routing by MX, with `path` on port `port`.
fn by_mx(dns: &Dnsmasq, port: u16, path: &str, source: &str) -> Embedded {
    Embedded::start(&format!(
        "kumo.on('init', function()
           kumo.start_esmtp_listener {{ listen = '{{listen}}' }}
           kumo.dns.configure_resolver {{ name_servers = {{ '{}' }} }}
         end)
         kumo.on('get_queue_config', function(domain)
           return kumo.make_queue_config {{ egress_pool = 'main' }}
         end)
         kumo.on('get_egress_pool', function(name)
           return kumo.make_egress_pool {{ name = name, entries = {{ {{ name = 'out' }} }} }}
         end)
         kumo.on('get_egress_source', function(name)
           return kumo.make_egress_source {{ name = name {source} }}
         end)
         kumo.on('get_egress_path_config', function(domain, source, site)
           return kumo.make_egress_path {{ smtp_port = {port}, {path} }}
         end)",
        dns.addr
    ))
}

#[test]
fn skip_hosts_removes_hosts_and_prohibited_hosts_refuses_the_destination() {
    let (dns, first, second) = two_mx_hosts();
    let port = first.addr.port();

    let d = by_mx(&dns, port, "skip_hosts = { '127.0.0.3' }", "");
    let s = swaks(d.addr, "u@dest.test", &["--header", "Subject: skipped"]);
    assert!(s.ok, "{}", s.transcript);
    assert_eq!(second.wait_for(1).len(), 1, "mx2 took it");
    assert!(first.messages().is_empty(), "mx1 is skipped");

    let d = by_mx(&dns, port, "skip_hosts = { '127.0.0.0/29' }", "");
    let s = swaks(d.addr, "u@dest.test", &[]);
    let reply = s.first_reply("451");
    assert!(
        reply.contains("4.4.4") && reply.contains("solely of hosts on the skip_hosts list"),
        "{}",
        s.transcript
    );

    let d = by_mx(&dns, port, "prohibited_hosts = { '127.0.0.4' }", "");
    let s = swaks(d.addr, "u@dest.test", &[]);
    let reply = s.first_reply("550");
    assert!(
        reply.contains("5.4.4 mx2.dest.test [127.0.0.4] is in prohibited_hosts"),
        "{}",
        s.transcript
    );
    assert_eq!(first.messages().len(), 0, "nothing went to mx1 either");
}

/// Unset, prohibited_hosts refuses only egressd's own listeners: a destination on
/// loopback is fine, the relay's own address is a loop.
#[test]
fn by_default_a_route_to_our_own_listener_is_refused_as_a_loop() {
    let d = Embedded::start(&relay_policy("", "{listen}", ""));
    let s = swaks(d.addr, "u@dest.test", &[]);
    let reply = s.first_reply("550");
    assert!(
        reply.contains("5.4.4") && reply.contains("one of egressd's own listeners"),
        "{}",
        s.transcript
    );
}

#[test]
fn ip_lookup_strategy_picks_the_address_family() {
    let v4 = SmtpSink::start();
    let v6 = SmtpSink::start_on(SocketAddr::new("::1".parse().unwrap(), v4.addr.port()), &[]);
    let dns = Dnsmasq::start(&[
        "--mx-host=dest.test,mx.dest.test,10",
        "--host-record=mx.dest.test,127.0.0.1,::1",
    ]);
    let port = v4.addr.port();
    for (strategy, sink) in [
        ("Ipv4Only", &v4),
        ("Ipv6Only", &v6),
        ("Ipv6ThenIpv4", &v6),
        ("Ipv4AndIpv6", &v4),
    ] {
        let before = sink.messages().len();
        let d = by_mx(
            &dns,
            port,
            &format!("ip_lookup_strategy = '{strategy}'"),
            "",
        );
        let s = swaks(d.addr, "u@dest.test", &[]);
        assert!(s.ok, "{strategy}: {}", s.transcript);
        let m = sink.wait_for(before + 1);
        assert_eq!(m.len(), before + 1, "{strategy}");
    }
    let m = v6.messages();
    assert!(
        m.iter()
            .all(|m| header(m, "X-Client-Addr") == Some("ipv6:::1")),
        "{m:?}"
    );
}

/// A spooled transaction (two domains): recipients past the batch are accepted for
/// the spool, and the delivery attempt sends them in further transactions on the
/// session the client's RCPTs opened.
#[test]
fn a_spooled_transaction_sends_recipients_past_the_batch_on_the_same_session() {
    let spool = tempfile::tempdir().unwrap();
    let dest = ScriptedDestination::pipelining();
    let other = ScriptedDestination::pipelining();
    let policy = egress_e2e::spool_policy(
        spool.path(),
        10_000_000,
        &[
            ("dest.test", mx_entry(dest.addr)),
            ("other.test", mx_entry(other.addr)),
        ],
    ) + "kumo.on('get_egress_path_config', function(domain, source, site)
           return kumo.make_egress_path { max_recipients_per_batch = 2 }
         end)";
    let d = Embedded::start(&policy);
    let to: Vec<String> = std::iter::once("x@other.test".to_owned())
        .chain((1..=5).map(|i| format!("r{i}@dest.test")))
        .collect();
    let to: Vec<&str> = to.iter().map(String::as_str).collect();
    let out = smtplib_send(
        d.addr,
        "app@src.test",
        &to,
        "Subject: spooled\r\n\r\nhi\r\n",
    );
    assert!(out.starts_with("refused {}"), "{out}");
    assert!(
        egress_e2e::wait_until(std::time::Duration::from_secs(15), || dest.received().len()
            == 3),
        "{:?}\n{}",
        dest.received(),
        d.log()
    );
    let sizes: Vec<usize> = dest.received().iter().map(|m| m.recipients.len()).collect();
    assert_eq!(sizes, [2, 2, 1]);
    assert_eq!(dest.connections(), 1, "one session carried all three");
    assert_eq!(other.received().len(), 1);
}
