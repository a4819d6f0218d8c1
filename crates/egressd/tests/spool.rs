//! Several-domain messages where the process matters (issue: several-domain
//! messages): the spool listed by the admin API while a domain is down, and a
//! message spooled before `kill -9` delivered once after a restart. The rest of the
//! spool's tests run in egress-relay's.

mod common;

use common::Egressd;
use egress_e2e::{
    free_port, mx_entry, smtplib_send, spool_files, spool_policy, swaks, wait_until, SmtpSink,
};
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

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
