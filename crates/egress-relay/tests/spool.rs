//! Messages for several domains (issue: several-domain messages): spooled durably,
//! delivered per domain through its own route, retried, bounced with a DSN; against
//! a real Postfix, Python's smtplib and smtp-sink. (Restarts after `kill -9` and the
//! spool listing of the admin API are egressd's tests.)

mod common;

use common::Embedded;
use egress_e2e::{
    mx_entry, smtplib_send, spool_files, spool_policy, swaks, wait_until, Postfix, SmtpSink,
};
use std::time::Duration;

#[test]
fn postfix_hands_over_a_two_domain_message_and_both_domains_get_it_once() {
    let (a, b) = (SmtpSink::start(), SmtpSink::start());
    let spool = tempfile::tempdir().unwrap();
    let d = Embedded::start(&spool_policy(
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

#[test]
fn a_permanent_failure_bounces_to_the_sender_with_the_original_headers() {
    let (a, sender_domain) = (SmtpSink::start(), SmtpSink::start());
    let c = SmtpSink::start_with("127.0.0.1".parse().unwrap(), &["-f", "."]);
    let spool = tempfile::tempdir().unwrap();
    let d = Embedded::start(&spool_policy(
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
fn a_full_spool_answers_452_4_3_1_and_keeps_nothing() {
    let (a, b) = (SmtpSink::start(), SmtpSink::start());
    let spool = tempfile::tempdir().unwrap();
    let d = Embedded::start(&spool_policy(
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
    let d = Embedded::start(&spool_policy(
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
