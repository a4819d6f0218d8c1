//! A client that pipelines (RFC 2920) — MAIL, several RCPTs and DATA in one
//! write, as Postfix's SMTP client does — through egressd to a Postfix that
//! refuses one recipient: the replies come in order and in one write, the
//! refused recipient is refused, the others get the message; with every
//! recipient refused, DATA is refused too.

mod common;

use common::Embedded;
use egress_e2e::{mx_entry, path_policy, Postfix, ScriptedDestination, SmtpSink};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A Postfix destination (it offers PIPELINING and CHUNKING) that refuses
/// `refused@dest.test` and relays the rest to `sink`.
fn postfix_refusing_one(sink: &SmtpSink) -> Postfix {
    Postfix::start_with(
        sink.addr,
        "smtpd_recipient_restrictions = \
         check_recipient_access inline:{ { refused@dest.test = REJECT no such user here } }, \
         permit_mynetworks, reject\n",
    )
}

/// Connects, greets, then sends `commands` in one write and reads once: what
/// the first read returned (everything egressd had answered by then, in one
/// write if it answers pipelined commands together).
fn pipelined(addr: SocketAddr, commands: &str) -> (TcpStream, String) {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buf = vec![0; 64 * 1024];
    let mut greeting = String::new();
    c.write_all(b"EHLO client.test\r\n").unwrap();
    while !greeting.contains("\r\n250 ") {
        let n = read(&mut c, &mut buf);
        assert!(n > 0, "egressd closed: {greeting}");
        greeting.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    c.write_all(commands.as_bytes()).unwrap();
    let n = read(&mut c, &mut buf);
    (c, String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// One read, again when a signal interrupted it (another test's child exiting).
fn read(c: &mut TcpStream, buf: &mut [u8]) -> usize {
    loop {
        match c.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other.unwrap(),
        }
    }
}

fn codes(replies: &str) -> Vec<&str> {
    replies
        .lines()
        .filter(|l| l.len() >= 4 && l.as_bytes()[3] == b' ')
        .map(|l| &l[..3])
        .collect()
}

#[test]
fn pipelined_commands_are_answered_in_order_in_one_write() {
    let sink = SmtpSink::start();
    let postfix = postfix_refusing_one(&sink);
    let d = Embedded::start(&path_policy(&mx_entry(postfix.addr), ""));
    let (mut c, replies) = pipelined(
        d.addr,
        "MAIL FROM:<sender@client.test>\r\n\
         RCPT TO:<first@dest.test>\r\n\
         RCPT TO:<refused@dest.test>\r\n\
         RCPT TO:<third@dest.test>\r\n\
         DATA\r\n",
    );
    assert_eq!(
        codes(&replies),
        ["250", "250", "554", "250", "354"],
        "all five replies in the first read, in order: {replies}\n{}",
        d.log()
    );
    assert!(replies.contains("no such user here"), "{replies}");
    c.write_all(b"Subject: pipelined\r\n\r\nhello\r\n.\r\nQUIT\r\n")
        .unwrap();
    let mut rest = String::new();
    let _ = c.read_to_string(&mut rest);
    assert_eq!(codes(&rest), ["250", "221"], "{rest}");
    let got = sink.wait_for(1);
    assert!(
        got[0].contains("X-Rcpt-Args: <first@dest.test>"),
        "{}",
        got[0]
    );
    assert!(got[0].contains("<third@dest.test>"), "{}", got[0]);
    assert!(!got[0].contains("refused@dest.test"), "{}", got[0]);
}

#[test]
fn with_every_recipient_refused_data_is_refused() {
    let sink = SmtpSink::start();
    let postfix = postfix_refusing_one(&sink);
    let d = Embedded::start(&path_policy(&mx_entry(postfix.addr), ""));
    let (mut c, mut replies) = pipelined(
        d.addr,
        "MAIL FROM:<sender@client.test>\r\n\
         RCPT TO:<refused@dest.test>\r\n\
         DATA\r\n\
         QUIT\r\n",
    );
    let mut more = String::new();
    let _ = c.read_to_string(&mut more);
    replies.push_str(&more);
    let codes = codes(&replies);
    assert_eq!(codes[..2], ["250", "554"], "{replies}");
    assert!(
        codes[2].starts_with('5') || codes[2].starts_with('4'),
        "DATA refused, not 354: {replies}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(sink.messages().is_empty());
}

/// The destination sees the pipelined recipients in one group after MAIL, on
/// one session, and each recipient once.
#[test]
fn recipients_go_to_the_destination_together_and_once() {
    let dest = ScriptedDestination::pipelining();
    let d = Embedded::start(&path_policy(&mx_entry(dest.addr), ""));
    let (mut c, replies) = pipelined(
        d.addr,
        "MAIL FROM:<sender@client.test>\r\n\
         RCPT TO:<a@dest.test>\r\n\
         RCPT TO:<b-refused@dest.test>\r\n\
         RCPT TO:<c@dest.test>\r\n\
         RCPT TO:<d@dest.test>\r\n\
         DATA\r\n",
    );
    assert_eq!(
        codes(&replies),
        ["250", "250", "550", "250", "250", "354"],
        "{replies}"
    );
    c.write_all(b"Subject: x\r\n\r\nhi\r\n.\r\nQUIT\r\n")
        .unwrap();
    let mut rest = String::new();
    let _ = c.read_to_string(&mut rest);
    assert_eq!(codes(&rest)[0], "250", "{rest}");
    let verbs: Vec<String> = dest.commands().into_iter().map(|(_, v)| v).collect();
    assert_eq!(
        verbs,
        ["EHLO", "MAIL", "RCPT", "RCPT", "RCPT", "RCPT", "DATA"],
        "{}",
        d.log()
    );
    let received = dest.received();
    assert_eq!(received.len(), 1);
    let accepted: Vec<&str> = received[0]
        .recipients
        .iter()
        .filter(|(_, ok)| *ok)
        .map(|(r, _)| r.as_str())
        .collect();
    assert_eq!(
        accepted,
        ["<a@dest.test>", "<c@dest.test>", "<d@dest.test>"]
    );
}
