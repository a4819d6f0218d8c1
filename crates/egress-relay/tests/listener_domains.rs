//! `get_listener_domain` and `policy-extras.listener_domains` (KumoMTA's event and
//! helper): a client outside `relay_hosts` relays to a `relay_to` domain and is
//! refused (`550 5.7.1`) for any other; `relay_from` opens a sender domain to a
//! network; `*` is the default, replaced whole by a more explicit entry;
//! `*.domain` wildcards; a listener's own table. swaks connects from 127.0.0.50
//! and 127.0.0.60, outside `relay_hosts = { '127.0.0.1/32' }`; smtp-sink records
//! what arrived.

mod common;

use common::Embedded;
use egress_e2e::{swaks, SmtpSink, Swaks};

/// The shapes of KumoMTA's files, written here: its docker-swarm example's
/// `["*"]` default and `relay_to` domain, and the helper's documented wildcard,
/// exclusion, `relay_from` and per-listener tables.
const DOMAINS: &str = r#"
["*"]
# The default for domains without an entry of their own.
relay_to = false
log_oob = true
log_arf = true
relay_from = [ '127.0.0.60/32' ]

["example.test"]
relay_to = true

["*.wild.test"]
relay_to = true
log_oob = true

["www.wild.test"]
relay_to = false
log_arf = false
log_oob = false

["send.test"]
relay_from = [ '127.0.0.50/32' ]
"#;

fn relay(sink: &SmtpSink, file: &std::path::Path) -> Embedded {
    Embedded::start(&format!(
        "local listener_domains = require 'policy-extras.listener_domains'
         kumo.on('init', function()
           kumo.start_esmtp_listener {{ listen = '{{listen}}', relay_hosts = {{ '127.0.0.1/32' }} }}
         end)
         kumo.on('get_queue_config', function(domain)
           return kumo.make_queue_config {{ egress_pool = 'main', protocol = {{ smtp = {{ mx_list = {{ '[127.0.0.1]:{}' }} }} }} }}
         end)
         {}
         kumo.on('get_listener_domain', listener_domains:setup {{
           '{}',
           -- This listener's own table (inline, as its address is known here).
           {{ listener = {{ ['{{listen}}'] = {{ ['*.closed.test'] = {{ relay_to = false }},
                                              ['open.closed.test'] = {{ relay_to = true }} }} }} }},
         }})",
        sink.addr.port(),
        egress_e2e::IP2_POOL,
        file.display()
    ))
}

fn from(d: &Embedded, client: &str, sender: &str, rcpt: &str) -> Swaks {
    swaks(
        d.addr,
        rcpt,
        &[
            "--local-interface",
            client,
            "--from",
            sender,
            "--header",
            &format!("Subject: {rcpt}"),
        ],
    )
}

#[test]
fn listener_domains_open_relaying_to_and_from_the_domains_they_name() {
    let sink = SmtpSink::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("listener_domains.toml");
    std::fs::write(&file, DOMAINS).unwrap();
    let d = relay(&sink, &file);
    let outsider = "127.0.0.50";

    let relayed = [
        "u@example.test",     // relay_to
        "u@mx.wild.test",     // *.wild.test
        "u@a.b.wild.test",    // *.wild.test, deeper
        "u@open.closed.test", // this listener's own table, exact
    ];
    for rcpt in relayed {
        let s = from(&d, outsider, "a@client.test", rcpt);
        assert!(s.ok, "{rcpt}: {}\n{}", s.transcript, d.log());
    }
    let refused = [
        "u@other.test",      // the "*" default: relay_to = false
        "u@wild.test",       // a wildcard does not match its parent
        "u@www.wild.test",   // an explicit entry beats the wildcard
        "u@any.closed.test", // this listener's wildcard says no
    ];
    for rcpt in refused {
        let s = from(&d, outsider, "a@client.test", rcpt);
        let reply = s.first_reply("550");
        assert!(
            reply.starts_with("550 5.7.1") && reply.contains("relaying denied"),
            "{rcpt}: {}",
            s.transcript
        );
    }

    // relay_from: the sender's domain opens relaying for its network.
    let s = from(&d, outsider, "a@send.test", "u@anywhere.test");
    assert!(s.ok, "{}\n{}", s.transcript, d.log());
    // The "*" default's relay_from covers 127.0.0.60 for any sender domain
    // without an entry of its own...
    let s = from(&d, "127.0.0.60", "a@client.test", "u@elsewhere.test");
    assert!(s.ok, "{}\n{}", s.transcript, d.log());
    // ...but send.test's own entry replaces the default whole.
    let s = from(&d, "127.0.0.60", "a@send.test", "u@elsewhere.test");
    assert!(
        s.first_reply("550").starts_with("550 5.7.1"),
        "{}",
        s.transcript
    );

    // relay_hosts still relay anywhere.
    let s = swaks(d.addr, "u@other.test", &["--header", "Subject: inside"]);
    assert!(s.ok, "{}", s.transcript);

    let delivered = sink.wait_for(relayed.len() + 3);
    assert_eq!(delivered.len(), relayed.len() + 3);
    for rcpt in relayed {
        assert!(
            delivered
                .iter()
                .any(|m| m.contains(&format!("Subject: {rcpt}"))),
            "{rcpt} was delivered"
        );
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(
        sink.messages().len(),
        relayed.len() + 3,
        "nothing refused arrived"
    );
}

/// A handler that fails is a local failure: `451 4.3.0` naming the event (the
/// client keeps the message), never a refusal, and nothing is relayed.
#[test]
fn a_failing_listener_domain_handler_defers() {
    let sink = SmtpSink::start();
    let d = Embedded::start(&format!(
        "kumo.on('init', function()
           kumo.start_esmtp_listener {{ listen = '{{listen}}', relay_hosts = {{ '127.0.0.1/32' }} }}
         end)
         kumo.on('get_queue_config', function(domain)
           return kumo.make_queue_config {{ egress_pool = 'main', protocol = {{ smtp = {{ mx_list = {{ '[127.0.0.1]:{}' }} }} }} }}
         end)
         {}
         kumo.on('get_listener_domain', function(domain, listener, conn_meta)
           error('the domain table is unreachable')
         end)",
        sink.addr.port(),
        egress_e2e::IP2_POOL,
    ));
    let s = from(&d, "127.0.0.50", "a@client.test", "u@example.test");
    let reply = s.first_reply("451");
    assert!(
        reply.starts_with("451 4.3.0")
            && reply.contains("get_listener_domain")
            && reply.contains("the domain table is unreachable"),
        "{}",
        s.transcript
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(sink.messages().is_empty());
}
