//! Next hops that are not plain MX hosts, each a real peer: a Postfix smarthost
//! that wants a password (AUTH PLAIN over verified TLS; Dovecot checks it), a
//! destination whose TLS is broken (remember_broken_tls), and a Dovecot mail
//! store over LMTP.

mod common;

use common::Embedded;
use egress_e2e::{mx_entry, path_policy, sasl_smarthost, swaks, Dovecot, Postfix, Raw};
use egress_e2e::{wait_until, SmtpSink, TestCa};
use std::sync::OnceLock;
use std::time::Duration;

/// The CA this test process trusts (`SSL_CERT_FILE`, read once per process by the
/// relay's TLS): every test here issues from it, or from another CA on purpose.
fn trusted() -> &'static TestCa {
    static CA: OnceLock<TestCa> = OnceLock::new();
    CA.get_or_init(|| {
        let ca = TestCa::new();
        std::env::set_var("SSL_CERT_FILE", ca.ca_file());
        ca
    })
}

/// A relay to `mx` whose path config is `kumo.make_egress_path { path }`.
fn with_path(mx: &str, path: &str) -> Embedded {
    Embedded::start(&path_policy(mx, path))
}

fn count(log: &str, needle: &str) -> usize {
    log.matches(needle).count()
}

#[test]
fn a_smarthost_that_wants_a_password_gets_it_over_verified_tls_only() {
    let sink = SmtpSink::start();
    let (smarthost, auth) = sasl_smarthost(sink.addr, trusted(), "alice", "s3cret-pw");
    let mx = mx_entry(smarthost.addr);

    // KumoMTA's key source forms: a plain string is a file (its trailing line
    // break is not part of the password), `key_data` the password itself.
    let password_file = auth.dir().join("relay.pass");
    std::fs::write(&password_file, "s3cret-pw\n").unwrap();
    for password in [
        format!("'{}'", password_file.display()),
        "{ key_data = 's3cret-pw' }".to_owned(),
    ] {
        let d = with_path(
            &mx,
            &format!(
                "enable_tls = 'Required', smtp_auth_plain_username = 'alice', \
                 smtp_auth_plain_password = {password}"
            ),
        );
        let s = swaks(d.addr, "u@dest.test", &["--header", "Subject: authed"]);
        assert!(
            s.ok,
            "{}\nsmarthost log:\n{}",
            s.transcript,
            smarthost.maillog()
        );
        assert!(
            !d.log().contains("s3cret-pw"),
            "the password is never logged"
        );
    }
    assert!(wait_until(Duration::from_secs(15), || sink
        .messages()
        .len()
        == 2));
    assert_eq!(count(&smarthost.maillog(), "sasl_username=alice"), 2);

    // A wrong password: the smarthost's 535 is the client's answer.
    let d = with_path(
        &mx,
        "enable_tls = 'Required', smtp_auth_plain_username = 'alice', \
         smtp_auth_plain_password = { key_data = 'wrong' }",
    );
    let s = swaks(d.addr, "u@dest.test", &[]);
    let reply = s.first_reply("535");
    assert!(reply.starts_with("535"), "{}", s.transcript);

    // No TLS on the path: refused before the credential is sent — the smarthost
    // sees no AUTH at all.
    let before = smarthost.maillog();
    let d = with_path(
        &mx,
        "enable_tls = 'Disabled', smtp_auth_plain_username = 'alice', \
         smtp_auth_plain_password = { key_data = 's3cret-pw' }",
    );
    let s = swaks(d.addr, "u@dest.test", &[]);
    let reply = s.first_reply("451");
    assert!(
        reply.contains("allow_smtp_auth_plain_without_tls"),
        "{}",
        s.transcript
    );
    std::thread::sleep(Duration::from_millis(500));
    let after = smarthost.maillog();
    assert_eq!(
        (
            count(&after, "sasl_"),
            count(&after, "authentication failed")
        ),
        (
            count(&before, "sasl_"),
            count(&before, "authentication failed")
        ),
        "no AUTH reached the smarthost:\n{after}"
    );
    assert_eq!(sink.messages().len(), 2);
}

/// KumoMTA sends AUTH PLAIN with an empty password when a path sets only
/// `smtp_auth_plain_username`; so does egressd. smtp-sink offers AUTH PLAIN and
/// records the command it hears.
#[test]
fn a_username_alone_is_sent_with_an_empty_password() {
    use base64::Engine;
    let sink = SmtpSink::start_recording_commands();
    let d = with_path(
        &mx_entry(sink.addr),
        "enable_tls = 'Disabled', allow_smtp_auth_plain_without_tls = true, \
         smtp_auth_plain_username = 'alice'",
    );
    let s = swaks(d.addr, "u@dest.test", &[]);
    assert!(s.ok, "{}\n{}", s.transcript, d.log());
    let commands = sink.commands();
    let auth: Vec<&String> = commands.iter().filter(|c| c.starts_with("AUTH ")).collect();
    assert_eq!(auth.len(), 1, "{commands:?}");
    let response = auth[0].strip_prefix("AUTH PLAIN ").expect("AUTH PLAIN");
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(response)
        .unwrap();
    assert_eq!(decoded, b"\0alice\0", "{commands:?}");
    // AUTH comes after EHLO and before MAIL.
    let at = |verb: &str| commands.iter().position(|c| c.starts_with(verb));
    assert!(
        at("EHLO") < at("AUTH") && at("AUTH") < at("MAIL"),
        "{commands:?}"
    );
}

/// A destination whose certificate does not verify: with `remember_broken_tls`
/// the second message goes in clear without another handshake; without it,
/// every message meets the same failure.
#[test]
fn remember_broken_tls_sends_in_clear_without_another_handshake() {
    trusted();
    let untrusted = TestCa::new();
    let sink = SmtpSink::start();
    let issued = untrusted.issue("broken.test", Some("127.0.0.1".parse().unwrap()));
    let postfix = Postfix::start_with(sink.addr, &egress_e2e::postfix_tls_main_cf(&issued));
    let mx = mx_entry(postfix.addr);

    let d = with_path(&mx, "enable_tls = 'Opportunistic'");
    for _ in 0..2 {
        let s = swaks(d.addr, "u@dest.test", &[]);
        assert!(!s.ok, "the handshake fails every time: {}", s.transcript);
    }
    let failures = count(&postfix.maillog(), "SSL_accept error");
    assert!(failures >= 2, "{}", postfix.maillog());

    let d = with_path(
        &mx,
        "enable_tls = 'Opportunistic', remember_broken_tls = '1h'",
    );
    let first = swaks(d.addr, "u@dest.test", &[]);
    assert!(!first.ok, "{}", first.transcript);
    let second = swaks(d.addr, "u@dest.test", &["--header", "Subject: in clear"]);
    assert!(second.ok, "{}\n{}", second.transcript, d.log());
    // wait_for returns the dump once it stops changing (never half-written).
    let m = sink.wait_for(1).remove(0);
    assert!(
        m.contains("Subject: in clear") && !m.contains("using TLS"),
        "{m}"
    );
    assert_eq!(
        count(&postfix.maillog(), "SSL_accept error"),
        failures + 1,
        "one handshake for the first message, none for the second:\n{}",
        postfix.maillog()
    );
    assert!(d.log().contains("remember_broken_tls"), "{}", d.log());
}

/// Dovecot's LMTP store: an existing user's message is stored once; a missing
/// user hears the store's own 550; a second recipient in the same transaction
/// is told to come back (452), so each recipient hears its own reply.
#[test]
fn use_lmtp_delivers_into_a_mail_store_one_recipient_per_transaction() {
    let store = Dovecot::start(&["alice", "bob"]);
    let d = with_path(&mx_entry(store.addr), "use_lmtp = true");

    let s = swaks(
        d.addr,
        "alice@store.test",
        &["--header", "Subject: lmtp one"],
    );
    assert!(s.ok, "{}\n{}", s.transcript, store.log());
    assert!(wait_until(Duration::from_secs(10), || store
        .messages("alice")
        .len()
        == 1));
    assert!(store.messages("alice")[0].contains("Subject: lmtp one"));

    let s = swaks(d.addr, "nobody@store.test", &[]);
    let reply = s.first_reply("550");
    assert!(reply.starts_with("550 5.1.1"), "{}", s.transcript);

    let (mut c, _) = Raw::connect(d.addr);
    c.cmd("EHLO app.test");
    assert!(c.cmd("MAIL FROM:<app@src.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<alice@store.test>").starts_with("250"));
    let second = c.cmd("RCPT TO:<bob@store.test>");
    assert!(
        second.starts_with("452 4.5.3") && second.contains("use_lmtp"),
        "{second}"
    );
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: lmtp two\r\n\r\nhello\r\n.\r\n");
    let reply = c.reply();
    assert!(reply.starts_with("250"), "{reply}");
    assert!(wait_until(Duration::from_secs(10), || store
        .messages("alice")
        .len()
        == 2));
    assert!(
        store.messages("bob").is_empty(),
        "bob was told to come back"
    );
    assert!(c.cmd("MAIL FROM:<app@src.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<bob@store.test>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: lmtp three\r\n\r\nhello\r\n.\r\n");
    assert!(c.reply().starts_with("250"));
    assert!(wait_until(Duration::from_secs(10), || store
        .messages("bob")
        .len()
        == 1));
}

/// A spooled transaction (two domains) with two recipients in the LMTP store: the
/// delivery attempt reads the store's reply for each and both Maildirs hold the
/// message once.
#[test]
fn a_spooled_transaction_reads_a_reply_per_recipient_from_the_lmtp_store() {
    let store = Dovecot::start(&["alice", "bob"]);
    let other = egress_e2e::ScriptedDestination::pipelining();
    let spool = tempfile::tempdir().unwrap();
    let policy = egress_e2e::spool_policy(
        spool.path(),
        10_000_000,
        &[
            ("store.test", mx_entry(store.addr)),
            ("other.test", mx_entry(other.addr)),
        ],
    ) + "kumo.on('get_egress_path_config', function(domain, source, site)
           return kumo.make_egress_path { use_lmtp = (domain == 'store.test') }
         end)";
    let d = Embedded::start(&policy);
    let out = egress_e2e::smtplib_send(
        d.addr,
        "app@src.test",
        &["x@other.test", "alice@store.test", "bob@store.test"],
        "Subject: spooled lmtp\r\n\r\nhello\r\n",
    );
    assert!(out.starts_with("refused {}"), "{out}");
    assert!(
        wait_until(Duration::from_secs(15), || {
            store.messages("alice").len() == 1 && store.messages("bob").len() == 1
        }),
        "{}\n{}",
        d.log(),
        store.log()
    );
    assert!(store.messages("bob")[0].contains("Subject: spooled lmtp"));
    assert_eq!(other.received().len(), 1);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(store.messages("alice").len(), 1, "delivered once");
}
