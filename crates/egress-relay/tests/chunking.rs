//! BDAT (RFC 3030) to destinations that offer CHUNKING — Postfix does — and DATA
//! to those that do not (smtp-sink) or when the path says `enable_chunking =
//! false`; the message arrives the same either way: lines that start with a dot,
//! a message larger than one chunk.

mod common;

use common::Embedded;
use egress_e2e::{mx_entry, path_policy, swaks, Postfix, SmtpSink};

/// A body with dot-led lines (stuffed by the client, unstuffed for BDAT) and
/// `lines` numbered lines after them.
fn body(lines: usize) -> String {
    let mut text = String::from(".leading dot\n..two dots\n.\n");
    for n in 0..lines {
        text.push_str(&format!(
            "line {n:06} of the message text, long enough to add up\n"
        ));
    }
    text
}

/// Sends `body` through a relay to `mx` with `path`; the text the sink received.
fn relayed(sink: &SmtpSink, mx: &str, path: &str, text: &str, nth: usize) -> (String, String) {
    let d = Embedded::start(&path_policy(mx, path));
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), text).unwrap();
    let s = swaks(
        d.addr,
        "rcpt@dest.test",
        &["--body", &format!("@{}", file.path().display())],
    );
    assert!(s.ok, "{}\n{}", s.transcript, d.log());
    let got = sink.wait_for(nth);
    (got[nth - 1].clone(), d.log())
}

/// The lines of `text` a client meant: what any hop must deliver (smtp-sink
/// writes them unstuffed, LF-terminated).
fn assert_delivered(received: &str, lines: usize) {
    for expected in [
        "\n.leading dot\n",
        "\n..two dots\n",
        "\n.\n",
        &format!("\nline {:06} of the message text", lines - 1),
    ] {
        assert!(
            received.contains(expected),
            "{expected:?} missing from {}",
            &received[..received.len().min(1500)]
        );
    }
    assert!(!received.contains("\n...two dots"), "stuffed twice");
}

#[test]
fn bdat_to_postfix_which_offers_chunking_and_the_text_arrives_intact() {
    let sink = SmtpSink::start();
    let postfix = Postfix::start(sink.addr);
    // About 120 KB: more than one 64 KiB chunk.
    let lines = 2_000;
    let (received, log) = relayed(&sink, &mx_entry(postfix.addr), "", &body(lines), 1);
    assert!(log.contains("message sent with BDAT (CHUNKING)"), "{log}");
    assert_delivered(&received, lines);

    let (received, log) = relayed(
        &sink,
        &mx_entry(postfix.addr),
        "enable_chunking = false",
        &body(10),
        2,
    );
    assert!(
        !log.contains("BDAT"),
        "enable_chunking = false: DATA\n{log}"
    );
    assert_delivered(&received, 10);
}

#[test]
fn data_to_smtp_sink_which_does_not_offer_chunking() {
    let sink = SmtpSink::start();
    let (received, log) = relayed(&sink, &mx_entry(sink.addr), "", &body(10), 1);
    assert!(!log.contains("BDAT"), "{log}");
    assert_delivered(&received, 10);
}
