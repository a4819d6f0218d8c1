//! Attacks and accidents egressd must survive (issue: hardening): SMTP smuggling,
//! stale replies on reused sessions, floods from one address, slowloris, a runaway
//! policy, connect bursts, 8-bit addresses, and errors in words.

mod common;

use common::Egressd;
use egress_e2e::{connect_from, Dnsmasq, ScriptedDestination, SmtpSink, IP2_POOL};
use egress_e2e::{swaks, Raw};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use egress_e2e::{mx_entry as mx, relay_policy as policy};

/// Opens a transaction to `rcpt` and sends DATA; returns the client ready for body.
fn open_data(addr: SocketAddr, rcpt: &str) -> Raw {
    let (mut c, banner) = Raw::connect(addr);
    assert!(banner.starts_with("220"), "{banner}");
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<sender@client.test>").starts_with("250"));
    let r = c.cmd(&format!("RCPT TO:<{rcpt}>"));
    assert!(r.starts_with("250"), "{r}");
    let r = c.cmd("DATA");
    assert!(r.starts_with("354"), "{r}");
    c
}

/// A body whose first "end" is a dot after a bare LF, followed by a whole second
/// transaction: CVE-2023-51764's shape.
const SMUGGLE_BARE_LF: &[u8] = b"Subject: innocent\r\n\r\nhello\n.\r\nMAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@dest.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n.\r\n";
/// The same with `CR LF . CR CR LF`, which smtp-proto's receiver took for the end.
const SMUGGLE_DOT_CR_CR_LF: &[u8] = b"Subject: innocent\r\n\r\nhello\r\n.\r\r\nMAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@dest.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n.\r\n";

/// smtp-sink, like Postfix before its smuggling fix, ends lines at a bare LF: the
/// destination an attacker hopes for.
#[test]
fn smuggled_messages_are_refused_under_deny() {
    let sink = SmtpSink::start();
    let d = Egressd::start(&policy("", &mx(sink.addr), ""));
    for attack in [SMUGGLE_BARE_LF, SMUGGLE_DOT_CR_CR_LF] {
        let mut c = open_data(d.addr, "rcpt@dest.test");
        c.send(attack);
        let reply = c.reply();
        assert!(reply.starts_with("550 5.6.0"), "{reply}");
        assert!(reply.contains("bare"), "{reply}");
        // The session goes on: nothing of the attack is taken as a command.
        assert!(c.cmd("NOOP").starts_with("250"));
        assert!(c.cmd("QUIT").starts_with("221"));
    }
    // A clean message afterwards is the only thing the destination ever accepted.
    assert!(swaks(d.addr, "rcpt@dest.test", &[]).ok);
    let messages = sink.wait_for(1);
    std::thread::sleep(Duration::from_millis(500));
    let messages = if messages.len() == 1 {
        sink.messages()
    } else {
        messages
    };
    assert_eq!(messages.len(), 1, "{messages:#?}");
    assert!(!messages[0].contains("evil"), "{}", messages[0]);
    assert!(d.log().contains("refused: a bare"), "{}", d.log());
}

#[test]
fn smuggled_messages_stay_one_message_under_fix() {
    let sink = SmtpSink::start();
    let d = Egressd::start(&policy("invalid_line_endings = 'Fix'", &mx(sink.addr), ""));
    for attack in [SMUGGLE_BARE_LF, SMUGGLE_DOT_CR_CR_LF] {
        let mut c = open_data(d.addr, "rcpt@dest.test");
        c.send(attack);
        let reply = c.reply();
        assert!(reply.starts_with("250"), "{reply}");
        assert!(c.cmd("QUIT").starts_with("221"));
    }
    sink.wait_for(2);
    std::thread::sleep(Duration::from_millis(500));
    let messages = sink.messages();
    assert_eq!(
        messages.len(),
        2,
        "exactly one message per attack: {messages:#?}"
    );
    for m in &messages {
        // The would-be second transaction arrived as text of the first.
        assert!(m.contains("Subject: innocent"), "{m}");
        assert!(m.contains("MAIL FROM:<evil@attacker.test>"), "{m}");
        assert!(m.contains("Subject: smuggled"), "{m}");
    }
}

#[test]
fn a_destination_session_with_an_unasked_reply_is_never_reused() {
    let dest = ScriptedDestination::start(true);
    let d = Egressd::start(&policy("", &mx(dest.addr), ""));
    // The first client's message is answered 250, then the destination sends an
    // unasked 550 on the same connection.
    assert!(swaks(d.addr, "first@dest.test", &[]).ok);
    // The second client must get its own replies: 250 for its recipient and its
    // message, not the stale 550.
    let s = swaks(d.addr, "second@dest.test", &[]);
    assert!(s.ok, "{}", s.transcript);
    assert!(
        !s.transcript.contains("answers nothing"),
        "{}",
        s.transcript
    );
    let received = dest.received();
    assert_eq!(received.len(), 2, "{received:?}");
    assert_eq!(dest.connections(), 2, "the unclean session was not reused");
    // And a refused recipient is reported refused, on a clean reused session too.
    let s = swaks(d.addr, "refused@dest.test", &[]);
    assert!(!s.ok);
    assert!(s.has_reply("550 5.1.1"), "{}", s.transcript);
}

#[test]
fn one_address_cannot_take_every_connection() {
    let sink = SmtpSink::start();
    // The attacker is an outsider: 127.0.0.66 is not among the listener's
    // relay_hosts, so not among its client_limit_exceptions either.
    let d = Egressd::start(&policy(
        "max_connections = 300, relay_hosts = { '127.0.0.1/32' }",
        &mx(sink.addr),
        "",
    ));
    let attacker: IpAddr = "127.0.0.66".parse().unwrap();
    let mut held = Vec::new();
    let (mut served, mut refused) = (0, 0);
    for _ in 0..400 {
        let Ok(stream) = connect_from(attacker, d.addr) else {
            continue;
        };
        let (c, banner) = Raw::over(stream);
        if banner.starts_with("220") {
            served += 1;
        } else {
            assert!(banner.starts_with("421 4.7.0"), "{banner}");
            assert!(banner.contains("127.0.0.66"), "{banner}");
            assert!(banner.contains("max_connection"), "{banner}");
            refused += 1;
        }
        held.push(c);
    }
    assert_eq!(served, 50, "max_connections_per_client defaults to 50");
    assert_eq!(refused, 350);
    // While the attacker holds its 50, a client from another address is served.
    let s = swaks(d.addr, "rcpt@dest.test", &[]);
    assert!(s.ok, "{}", s.transcript);
    assert_eq!(sink.wait_for(1).len(), 1);
}

#[test]
fn slowloris_clients_are_closed_by_the_command_deadline() {
    let d = Egressd::start(&policy("client_timeout = '2s'", "[127.0.0.1]:9", ""));
    let started = Instant::now();
    let clients: Vec<_> = (0..20)
        .map(|_| {
            let addr = d.addr;
            std::thread::spawn(move || {
                let (mut c, banner) = Raw::connect(addr);
                assert!(banner.starts_with("220"));
                // One octet every 400 ms, never a whole line: each octet would have
                // restarted an idle timer.
                // Fifty octets (20 s) is ten times the deadline.
                for b in b"EHLO slow.client.test".iter().cycle().take(50) {
                    c.send(&[*b]);
                    if let Some(reply) = c.reply_within(Duration::from_millis(400)) {
                        return reply;
                    }
                }
                "still open after 20 s".to_owned()
            })
        })
        .collect();
    for client in clients {
        let last = client.join().unwrap();
        assert!(last.starts_with("421 4.4.2"), "{last}");
        assert!(last.contains("client_timeout"), "{last}");
    }
    // Every client was closed near its 2 s deadline, far from "never".
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_runaway_policy_is_interrupted_and_others_keep_relaying() {
    let sink = SmtpSink::start();
    let policy_text = policy("", &mx(sink.addr), "").replace(
        "kumo.on('get_queue_config', function(domain)",
        "kumo.on('get_queue_config', function(domain)
           if domain == 'loop.test' then while true do end end",
    );
    let d = Egressd::start_with_args(&policy_text, &["--policy-time-limit", "1s"]);
    let looping = {
        let addr = d.addr;
        std::thread::spawn(move || swaks(addr, "rcpt@loop.test", &[]))
    };
    // While the looping handler holds a Lua state, other domains relay.
    let s = swaks(d.addr, "rcpt@ok.test", &[]);
    assert!(s.ok, "{}", s.transcript);
    let s = looping.join().unwrap();
    assert!(!s.ok);
    let reply = s.first_reply("451");
    assert!(reply.starts_with("451 4.3.0"), "{}", s.transcript);
    assert!(
        reply.contains("get_queue_config") && reply.contains("1s"),
        "{reply}"
    );
    // The interrupted state went back to the pool: the loop again, then others.
    for _ in 0..3 {
        assert!(swaks(d.addr, "rcpt@loop.test", &[]).has_reply("451 4.3.0"));
        assert!(swaks(d.addr, "rcpt@ok.test", &[]).ok);
    }
    assert_eq!(sink.wait_for(4).len(), 4);
    // SIGTERM while a runaway call is in flight still ends the process promptly.
    let looping = {
        let addr = d.addr;
        std::thread::spawn(move || swaks(addr, "rcpt@loop.test", &[]))
    };
    std::thread::sleep(Duration::from_millis(300));
    let mut d = d;
    let pid = d.pid();
    let stopped = Instant::now();
    nix_kill(pid);
    assert!(d.wait_exit(Duration::from_secs(40)), "egressd did not exit");
    assert!(stopped.elapsed() < Duration::from_secs(35));
    let _ = looping.join();
}

fn nix_kill(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn a_burst_of_a_thousand_connects_is_answered() {
    let d = Egressd::start(&policy(
        "max_connections = 2000, max_connections_per_client = 0, max_connection_rate_per_client = 'unlimited'",
        "[127.0.0.1]:9",
        "",
    ));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let answered = rt.block_on(async {
        let addr = d.addr;
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(1000));
        let tasks: Vec<_> = (0..1000)
            .map(|_| {
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    use tokio::io::AsyncReadExt;
                    barrier.wait().await;
                    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
                    let mut banner = [0u8; 3];
                    tokio::time::timeout(Duration::from_secs(20), s.read_exact(&mut banner))
                        .await
                        .ok()?
                        .ok()?;
                    Some((banner == *b"220", s))
                })
            })
            .collect();
        let mut held = Vec::new();
        for t in tasks {
            if let Ok(Some((true, s))) = t.await {
                held.push(s);
            }
        }
        held.len()
    });
    assert_eq!(answered, 1000);
    assert!(d.log().contains("backlog=2000"), "{}", d.log());
}

#[test]
fn eight_bit_addresses_are_refused_not_altered() {
    let dest = ScriptedDestination::start(false);
    let d = Egressd::start(&policy("", &mx(dest.addr), ""));
    let (mut c, _) = Raw::connect(d.addr);
    c.cmd("EHLO client.test");
    let r = c.cmd("MAIL FROM:<us\u{e9}r@client.test>");
    assert!(r.starts_with("553 5.6.7"), "{r}");
    assert!(
        r.contains("us\\xc3\\xa9r@client.test") && r.contains("SMTPUTF8"),
        "{r}"
    );
    assert!(c.cmd("MAIL FROM:<user@client.test>").starts_with("250"));
    let r = c.cmd("RCPT TO:<j\u{f6}rg@dest.test>");
    assert!(r.starts_with("553 5.6.7"), "{r}");
    assert!(c.cmd("RCPT TO:<jorg@dest.test>").starts_with("250"));
    assert!(c.cmd("QUIT").starts_with("221"));
    // Nothing 8-bit reached the destination, and no replacement character either.
    std::thread::sleep(Duration::from_millis(300));
    for m in dest.received() {
        for (to, _) in &m.recipients {
            assert!(to.is_ascii(), "{to}");
        }
    }
}

#[test]
fn routing_failures_are_said_in_words() {
    let dns = Dnsmasq::start(&["--mx-host=example.test,mx1.example.test,10"]);
    let d = Egressd::start(&format!(
        "kumo.on('init', function()
           kumo.start_esmtp_listener {{ listen = '{{listen}}' }}
           kumo.dns.configure_resolver {{ name_servers = {{ '{}' }} }}
         end)
         {IP2_POOL}",
        dns.addr
    ));
    let s = swaks(d.addr, "rcpt@nothing-here.test", &[]);
    let reply = s.first_reply("451");
    assert!(
        reply.contains("nothing-here.test: no such domain")
            || reply.contains("nothing-here.test: no MX and no address record"),
        "{}",
        s.transcript
    );
    assert!(!reply.contains("Query") && !reply.contains('{'), "{reply}");
    let s = swaks(d.addr, "rcpt@example.test", &[]);
    let reply = s.first_reply("451");
    assert!(reply.contains("mx1.example.test: no"), "{}", s.transcript);
    assert!(!d.log().contains("Query {"), "{}", d.log());
}
