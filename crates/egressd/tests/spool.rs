//! Messages for several domains (issue: several-domain messages): spooled durably,
//! delivered per domain through its own route, retried, bounced with a DSN; against
//! a real Postfix, Python's smtplib, smtp-sink, and `kill -9`.

mod common;

use common::{swaks, Egressd};
use egress_e2e::{free_port, mx_entry, require, Postfix, SmtpSink};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Routes each domain in `routes` to its mx entry (others to `[127.0.0.1]:9`,
/// nothing listening), retries every second, spools into `spool` bounded by
/// `max_bytes`, with an HTTP listener on `{http}`.
fn spool_policy(spool: &Path, max_bytes: u64, routes: &[(&str, String)]) -> String {
    let table: Vec<String> = routes
        .iter()
        .map(|(domain, mx)| format!("['{domain}'] = '{mx}'"))
        .collect();
    format!(
        "kumo.on('init', function()
           kumo.start_esmtp_listener {{ listen = '{{listen}}' }}
           kumo.start_http_listener {{ listen = '{{http}}' }}
           kumo.define_spool {{ name = 'data', path = '{}', max_spool_bytes = {max_bytes} }}
         end)
         local MX = {{ {} }}
         kumo.on('get_queue_config', function(domain)
           return kumo.make_queue_config {{ egress_pool = 'main', retry_interval = '1s', max_retry_interval = '2s',
             protocol = {{ smtp = {{ mx_list = {{ MX[domain] or '[127.0.0.1]:9' }} }} }} }}
         end)
         {}",
        spool.display(),
        table.join(", "),
        egress_e2e::IP2_POOL
    )
}

fn spool_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    done()
}

#[test]
fn postfix_hands_over_a_two_domain_message_and_both_domains_get_it_once() {
    let (a, b) = (SmtpSink::start(), SmtpSink::start());
    let spool = tempfile::tempdir().unwrap();
    let d = Egressd::start(&spool_policy(
        spool.path(),
        1 << 20,
        &[("a.test", mx_entry(a.addr)), ("b.test", mx_entry(b.addr))],
    ));
    let postfix = Postfix::start(d.addr);
    let s = swaks(postfix.addr, "u@a.test,v@b.test", &[]);
    assert!(s.ok, "{}", s.transcript);
    let (ma, mb) = (a.wait_for(1), b.wait_for(1));
    assert_eq!((ma.len(), mb.len()), (1, 1), "egressd:\n{}", d.log());
    // Postfix logs status=sent for both recipients (one relay transaction).
    assert!(
        wait_until(Duration::from_secs(10), || postfix
            .maillog()
            .matches("status=sent")
            .count()
            >= 2),
        "{}",
        postfix.maillog()
    );
    assert!(
        !postfix.maillog().contains("status=deferred"),
        "{}",
        postfix.maillog()
    );
    // Exactly once each, and the spool empties.
    assert!(
        wait_until(Duration::from_secs(5), || spool_files(spool.path())
            .is_empty()),
        "{:?}\n{}",
        spool_files(spool.path()),
        d.log()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!((a.messages().len(), b.messages().len()), (1, 1));
    assert!(d.log().contains("spooled as"), "{}", d.log());
}

/// One transaction, three domains, with Python's smtplib (an application library
/// with no queue of its own).
fn smtplib_send(server: SocketAddr, from: &str, to: &[&str], body: &str) -> String {
    let script = format!(
        "import smtplib\n\
         s = smtplib.SMTP('{}', {}, timeout=30)\n\
         s.ehlo('app.test')\n\
         refused = s.sendmail('{from}', {:?}, {:?})\n\
         print('refused', refused)\n\
         print('limits', s.esmtp_features.get('limits'))\n\
         s.quit()\n",
        server.ip(),
        server.port(),
        to,
        body
    );
    let out = Command::new(require("python3"))
        .arg("-c")
        .arg(script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "smtplib: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn smtplib_three_domains_one_down_all_delivered_after_the_sink_returns() {
    let (a, b) = (SmtpSink::start(), SmtpSink::start());
    let c_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let spool = tempfile::tempdir().unwrap();
    let d = Egressd::start(&spool_policy(
        spool.path(),
        1 << 20,
        &[
            ("a.test", mx_entry(a.addr)),
            ("b.test", mx_entry(b.addr)),
            ("c.test", mx_entry(c_addr)),
        ],
    ));
    let said = smtplib_send(
        d.addr,
        "app@sender.test",
        &["x@a.test", "y@b.test", "z@c.test"],
        "Subject: three\r\n\r\nhello\r\n",
    );
    assert!(said.contains("refused {}"), "{said}");
    assert!(said.contains("limits RCPTMAX=1024"), "{said}");
    assert_eq!((a.wait_for(1).len(), b.wait_for(1).len()), (1, 1));
    // c.test waits in the spool, visible to the operator.
    let listed = d.ctl(&["spool"]);
    let text = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(
        text.contains("c.test: 1 pending"),
        "{text}{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert!(!text.contains("a.test: 1 pending"), "{text}");
    let c = SmtpSink::start_on(c_addr, &[]);
    let got = c.wait_for(1);
    assert_eq!(got.len(), 1, "egressd:\n{}", d.log());
    assert!(got[0].contains("Subject: three"));
    assert!(wait_until(Duration::from_secs(5), || spool_files(
        spool.path()
    )
    .is_empty()));
    assert_eq!((a.messages().len(), b.messages().len()), (1, 1));
    assert!(
        d.log().contains("/c.test#"),
        "each attempt is logged: {}",
        d.log()
    );
}

#[test]
fn a_permanent_failure_bounces_to_the_sender_with_the_original_headers() {
    let (a, sender_domain) = (SmtpSink::start(), SmtpSink::start());
    let c = SmtpSink::start_with("127.0.0.1".parse().unwrap(), &["-f", "."]);
    let spool = tempfile::tempdir().unwrap();
    let d = Egressd::start(&spool_policy(
        spool.path(),
        1 << 20,
        &[
            ("a.test", mx_entry(a.addr)),
            ("c.test", mx_entry(c.addr)),
            ("sender.test", mx_entry(sender_domain.addr)),
        ],
    ));
    smtplib_send(
        d.addr,
        "alice@sender.test",
        &["x@a.test", "carol@c.test"],
        "Subject: quarterly numbers\r\nX-Trace: 42\r\n\r\nbody\r\n",
    );
    assert_eq!(a.wait_for(1).len(), 1);
    let dsn = sender_domain.wait_for(1);
    assert_eq!(dsn.len(), 1, "egressd:\n{}", d.log());
    let dsn = &dsn[0];
    assert!(
        dsn.contains("multipart/report; report-type=delivery-status"),
        "{dsn}"
    );
    assert!(
        dsn.contains("Final-Recipient: rfc822; carol@c.test"),
        "{dsn}"
    );
    assert!(dsn.contains("Action: failed"), "{dsn}");
    assert!(dsn.contains("Diagnostic-Code: smtp; 5"), "{dsn}");
    assert!(dsn.contains("Subject: quarterly numbers"), "{dsn}");
    assert!(dsn.contains("X-Trace: 42"), "{dsn}");
    // A null sender gets none.
    smtplib_send(
        d.addr,
        "",
        &["y@a.test", "dave@c.test"],
        "Subject: bounce\r\n\r\nx\r\n",
    );
    assert_eq!(a.wait_for(2).len(), 2);
    assert!(wait_until(Duration::from_secs(5), || spool_files(
        spool.path()
    )
    .is_empty()));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(sender_domain.messages().len(), 1);
}

#[test]
fn a_message_spooled_before_kill_9_is_delivered_once_after_restart() {
    let a = SmtpSink::start();
    let b_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let spool = tempfile::tempdir().unwrap();
    let policy = spool_policy(
        spool.path(),
        1 << 20,
        &[("a.test", mx_entry(a.addr)), ("b.test", mx_entry(b_addr))],
    );
    let mut first = Egressd::start(&policy);
    let s = swaks(first.addr, "u@a.test,v@b.test", &[]);
    assert!(s.ok, "{}", s.transcript);
    assert_eq!(a.wait_for(1).len(), 1);
    // a.test's delivery is recorded before the next schedule; let it land.
    std::thread::sleep(Duration::from_millis(500));
    assert!(Command::new("kill")
        .args(["-KILL", &first.pid().to_string()])
        .status()
        .unwrap()
        .success());
    assert!(first.wait_exit(Duration::from_secs(5)));
    assert_eq!(
        spool_files(spool.path()).len(),
        2,
        "{:?}",
        spool_files(spool.path())
    );
    let b = SmtpSink::start_on(b_addr, &[]);
    let second = Egressd::start(&policy);
    assert_eq!(b.wait_for(1).len(), 1, "after restart:\n{}", second.log());
    assert!(wait_until(Duration::from_secs(5), || spool_files(
        spool.path()
    )
    .is_empty()));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        (a.messages().len(), b.messages().len()),
        (1, 1),
        "exactly once each"
    );
}

#[test]
fn a_full_spool_answers_452_4_3_1_and_keeps_nothing() {
    let (a, b) = (SmtpSink::start(), SmtpSink::start());
    let spool = tempfile::tempdir().unwrap();
    let d = Egressd::start(&spool_policy(
        spool.path(),
        300,
        &[("a.test", mx_entry(a.addr)), ("b.test", mx_entry(b.addr))],
    ));
    let big = format!("Subject: big\r\n\r\n{}\r\n", "x".repeat(2000));
    let s = swaks(d.addr, "u@a.test,v@b.test", &["--body", &big]);
    assert!(!s.ok);
    assert!(s.has_reply("452 4.3.1"), "{}", s.transcript);
    assert!(
        spool_files(spool.path()).is_empty(),
        "{:?}",
        spool_files(spool.path())
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!((a.messages().len(), b.messages().len()), (0, 0));
}

#[test]
fn single_domain_traffic_never_touches_the_spool() {
    let a = SmtpSink::start();
    let spool = tempfile::tempdir().unwrap();
    let d = Egressd::start(&spool_policy(
        spool.path(),
        1 << 20,
        &[("a.test", mx_entry(a.addr))],
    ));
    for _ in 0..3 {
        let s = swaks(d.addr, "u@a.test,w@a.test", &[]);
        assert!(s.ok, "{}", s.transcript);
        // Cut-through: the client's 250 is the destination's own.
        assert!(s.has_reply("250 2.0.0 Ok"), "{}", s.transcript);
        assert!(!s.transcript.contains("queued as"), "{}", s.transcript);
    }
    assert_eq!(a.wait_for(3).len(), 3);
    assert!(spool_files(spool.path()).is_empty());
    assert!(!d.log().contains("spooled as"));
}
