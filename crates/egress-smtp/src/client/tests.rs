//! The client session over in-memory pipes: what it writes, and what it makes of
//! what it reads.

use super::*;
use tokio::io::{AsyncReadExt, DuplexStream};

/// A session over an in-memory pipe and the destination's end of it.
fn pair() -> (ClientSession<DuplexStream>, DuplexStream) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    (
        ClientSession::new(a, Timeouts::uniform(Duration::from_secs(2))),
        b,
    )
}

async fn greeted() -> (ClientSession<DuplexStream>, DuplexStream) {
    let (mut smtp, mut dest) = pair();
    dest.write_all(b"220 hi\r\n250-mx\r\n250-8BITMIME\r\n250 PIPELINING\r\n")
        .await
        .unwrap();
    smtp.greet("me.test").await.unwrap();
    (smtp, dest)
}

/// A greeted session (the EHLO already read off the pipe) that has sent MAIL
/// FROM with the first RCPT, the destination answering with `replies`.
async fn after_mail_rcpt(
    replies: &[u8],
) -> (
    ClientSession<DuplexStream>,
    DuplexStream,
    (Response<String>, Option<Response<String>>),
) {
    let (mut smtp, mut dest) = greeted().await;
    let mut ehlo = vec![0; 64];
    let _ = dest.read(&mut ehlo).await.unwrap();
    dest.write_all(replies).await.unwrap();
    let replied = smtp
        .mail_rcpt("<a@b.test>", false, "<x@c.test>")
        .await
        .unwrap();
    (smtp, dest, replied)
}

#[tokio::test]
async fn greeting_reads_extensions() {
    let (smtp, mut dest) = greeted().await;
    assert_eq!(smtp.phase(), Phase::Ready);
    assert!(smtp.extensions().eight_bit_mime && smtp.extensions().pipelining);
    assert!(!smtp.extensions().starttls);
    let mut sent = vec![0; 64];
    let n = dest.read(&mut sent).await.unwrap();
    assert_eq!(&sent[..n], b"EHLO me.test\r\n");
}

#[tokio::test]
async fn mail_and_the_first_rcpt_go_in_one_write_when_pipelining_is_offered() {
    let (smtp, mut dest, (mail, rcpt)) =
        after_mail_rcpt(b"250 2.1.0 ok\r\n550 5.1.1 no such user\r\n").await;
    assert_eq!((mail.code, rcpt.unwrap().code), (250, 550));
    let mut sent = vec![0; 128];
    let n = dest.read(&mut sent).await.unwrap();
    assert_eq!(
        &sent[..n],
        b"MAIL FROM:<a@b.test>\r\nRCPT TO:<x@c.test>\r\n"
    );
    assert_eq!(smtp.phase(), Phase::Mail);
    // A refused MAIL: the RCPT's answer is read and dropped, the session stays usable.
    let (smtp, _dest, (mail, rcpt)) =
        after_mail_rcpt(b"451 4.3.0 try later\r\n503 5.5.1 need MAIL\r\n").await;
    assert_eq!(mail.code, 451);
    assert!(rcpt.is_none());
    assert!(smtp.is_ready());
}

#[tokio::test]
async fn a_mail_refusal_then_close_is_the_answer_and_the_session_is_broken() {
    // Yahoo's TSS04: 421 to MAIL, then the connection closes; the pipelined
    // RCPT is never answered.
    let (mut smtp, mut dest) = greeted().await;
    let mut ehlo = vec![0; 64];
    let _ = dest.read(&mut ehlo).await.unwrap();
    dest.write_all(b"421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred\r\n")
        .await
        .unwrap();
    dest.shutdown().await.unwrap();
    let (mail, rcpt) = smtp
        .mail_rcpt("<a@b.test>", false, "<x@c.test>")
        .await
        .expect("the reply to MAIL, not the RCPT's missing one");
    assert_eq!(mail.code, 421);
    assert!(mail.message.contains("[TSS04]"), "{}", mail.message);
    assert!(rcpt.is_none());
    assert_eq!(smtp.phase(), Phase::Broken);
}

#[tokio::test]
async fn a_refused_banner_is_an_error_that_carries_the_reply() {
    let (mut smtp, mut dest) = pair();
    dest.write_all(b"421 4.7.0 [TSS04] deferred\r\n")
        .await
        .unwrap();
    let e = smtp.greet("me.test").await.unwrap_err();
    assert_eq!(e.to_string(), "banner: 421 [TSS04] deferred");
    let refused = RefusedGreeting::of(&e).expect("the reply travels with the error");
    assert_eq!(refused.reply.code, 421);
    assert_eq!(refused.reply.esc, [4, 7, 0]);
    assert_eq!(smtp.phase(), Phase::Broken);
}

#[tokio::test]
async fn data_can_be_sent_before_its_reply_is_read() {
    let (mut smtp, mut dest, _) = after_mail_rcpt(b"250 ok\r\n250 ok\r\n").await;
    let mut sent = vec![0; 256];
    let _ = dest.read(&mut sent).await.unwrap();
    smtp.send_data().await.unwrap();
    assert_eq!(smtp.phase(), Phase::DataSent);
    let n = dest.read(&mut sent).await.unwrap();
    assert_eq!(&sent[..n], b"DATA\r\n");
    // No body before the reply is read, and not a reusable session either.
    assert!(smtp.write_body(b".\r\n").await.is_err());
    let (mut smtp, _dest, _) = after_mail_rcpt(b"250 ok\r\n250 ok\r\n451 4.3.0 not now\r\n").await;
    smtp.send_data().await.unwrap();
    assert!(!smtp.is_ready());
    // Refused: the transaction is still open, as after `data()`.
    assert_eq!(smtp.data_reply().await.unwrap().code, 451);
    assert_eq!(smtp.phase(), Phase::Mail);
}

#[tokio::test]
async fn commands_out_of_order_are_refused_not_sent() {
    let (mut smtp, _dest) = greeted().await;
    let e = smtp.rcpt("<a@b>").await.unwrap_err();
    assert!(
        e.to_string().contains("RCPT TO while the session is Ready"),
        "{e}"
    );
    assert_eq!(smtp.phase(), Phase::Broken);
    assert!(!smtp.is_clean().await);
}

#[tokio::test]
async fn an_unasked_reply_makes_the_session_unclean() {
    let (mut smtp, mut dest) = greeted().await;
    dest.write_all(b"250 ok\r\n").await.unwrap();
    assert_eq!(smtp.mail("<a@b>", false).await.unwrap().code, 250);
    dest.write_all(b"354 go\r\n").await.unwrap();
    assert_eq!(smtp.rcpt("<c@d>").await.unwrap().code, 354);
    // The transaction is open: not reusable.
    assert!(!smtp.is_clean().await);
    let (mut smtp, mut dest) = greeted().await;
    dest.write_all(b"250 ok\r\n").await.unwrap();
    smtp.mail("<a@b>", false).await.unwrap();
    dest.write_all(b"250 ok\r\n354 go\r\n").await.unwrap();
    smtp.rcpt("<c@d>").await.unwrap();
    smtp.data().await.unwrap();
    smtp.write_body(b".\r\n").await.unwrap();
    // The reply to the message, and one more nobody asked for.
    dest.write_all(b"250 queued\r\n550 5.1.1 stale\r\n")
        .await
        .unwrap();
    assert_eq!(smtp.end_of_data_reply().await.unwrap().code, 250);
    assert!(!smtp.is_clean().await, "a buffered stale reply");
}

#[tokio::test]
async fn late_unasked_input_is_seen_before_reuse() {
    let (mut smtp, mut dest) = greeted().await;
    dest.write_all(b"250 ok\r\n").await.unwrap();
    smtp.mail("<a@b>", false).await.unwrap();
    dest.write_all(b"250 ok\r\n").await.unwrap();
    smtp.rset().await.unwrap();
    assert!(smtp.is_clean().await);
    dest.write_all(b"550 late\r\n").await.unwrap();
    assert!(!smtp.is_clean().await);
    let (mut smtp, dest) = greeted().await;
    drop(dest);
    assert!(!smtp.is_clean().await, "closed by the destination");
}

/// Reads what the client wrote so far (one read).
async fn sent(dest: &mut DuplexStream) -> String {
    let mut buf = vec![0; 512];
    let n = dest.read(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn auth_plain_sends_the_rfc_4616_message_as_the_initial_response() {
    let (mut smtp, mut dest) = pair();
    dest.write_all(b"220 hi\r\n250-mx\r\n250 AUTH LOGIN PLAIN\r\n")
        .await
        .unwrap();
    smtp.greet("me.test").await.unwrap();
    assert!(smtp.extensions().auth_plain);
    let _ = sent(&mut dest).await;
    dest.write_all(b"235 2.7.0 ok\r\n").await.unwrap();
    assert_eq!(smtp.auth_plain("relay", "pw").await.unwrap().code, 235);
    // base64("\0relay\0pw")
    assert_eq!(sent(&mut dest).await, "AUTH PLAIN AHJlbGF5AHB3\r\n");
    assert!(smtp.is_authenticated() && smtp.is_ready());
}

#[tokio::test]
async fn auth_plain_is_not_sent_where_it_is_not_offered() {
    let (mut smtp, _dest) = greeted().await;
    let e = smtp.auth_plain("relay", "pw").await.unwrap_err();
    assert!(e.to_string().contains("does not offer AUTH PLAIN"), "{e}");
}

#[tokio::test]
async fn rset_goes_in_the_same_write_as_mail_when_pipelining_and_alone_when_not() {
    let (mut smtp, mut dest) = greeted().await;
    let _ = sent(&mut dest).await;
    smtp.rset_before_next_mail(Duration::from_secs(1));
    dest.write_all(b"250 ok\r\n250 ok\r\n250 ok\r\n")
        .await
        .unwrap();
    smtp.mail_rcpt("<a@b.test>", false, "<x@c.test>")
        .await
        .unwrap();
    assert_eq!(
        sent(&mut dest).await,
        "RSET\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@c.test>\r\n"
    );
    let (mut smtp, mut dest) = greeted().await;
    let _ = sent(&mut dest).await;
    smtp.set_pipelining(false);
    smtp.rset_before_next_mail(Duration::from_secs(1));
    let mail = tokio::spawn(async move {
        smtp.mail("<a@b.test>", false).await.unwrap();
    });
    assert_eq!(sent(&mut dest).await, "RSET\r\n");
    dest.write_all(b"250 ok\r\n").await.unwrap();
    assert_eq!(sent(&mut dest).await, "MAIL FROM:<a@b.test>\r\n");
    dest.write_all(b"250 ok\r\n").await.unwrap();
    mail.await.unwrap();
}

#[tokio::test]
async fn lmtp_greets_with_lhlo_and_reads_a_reply_per_accepted_recipient() {
    let (mut smtp, mut dest) = pair();
    smtp.set_lmtp(true);
    dest.write_all(b"220 store\r\n250-store\r\n250 PIPELINING\r\n")
        .await
        .unwrap();
    smtp.greet("me.test").await.unwrap();
    assert_eq!(sent(&mut dest).await, "LHLO me.test\r\n");
    dest.write_all(b"250 ok\r\n250 ok\r\n550 5.1.1 unknown\r\n250 ok\r\n354 go\r\n")
        .await
        .unwrap();
    smtp.mail_rcpt("<a@b.test>", false, "<x@c.test>")
        .await
        .unwrap();
    assert_eq!(smtp.rcpt("<nobody@c.test>").await.unwrap().code, 550);
    assert_eq!(smtp.rcpt("<y@c.test>").await.unwrap().code, 250);
    assert_eq!(smtp.data().await.unwrap().code, 354);
    smtp.write_body(b"hi\r\n.\r\n").await.unwrap();
    dest.write_all(b"250 2.0.0 x saved\r\n452 4.2.2 y over quota\r\n")
        .await
        .unwrap();
    let replies = smtp.end_of_data_replies().await.unwrap();
    let codes: Vec<u16> = replies.iter().map(|r| r.code).collect();
    assert_eq!(codes, [250, 452]);
    assert!(smtp.is_ready());
}

/// A greeted session whose destination offers CHUNKING (and PIPELINING when
/// `pipelining`), with MAIL and RCPT accepted; the EHLO, MAIL and RCPT read off.
async fn chunking_transaction(pipelining: bool) -> (ClientSession<DuplexStream>, DuplexStream) {
    let (mut smtp, mut dest) = pair();
    let ehlo: &[u8] = if pipelining {
        b"220 hi\r\n250-mx\r\n250-PIPELINING\r\n250 CHUNKING\r\n"
    } else {
        b"220 hi\r\n250-mx\r\n250 CHUNKING\r\n"
    };
    dest.write_all(ehlo).await.unwrap();
    smtp.greet("me.test").await.unwrap();
    assert!(smtp.extensions().chunking);
    dest.write_all(b"250 ok\r\n250 ok\r\n").await.unwrap();
    smtp.mail_rcpt("<a@b.test>", false, "<x@c.test>")
        .await
        .unwrap();
    let mut sent = vec![0; 256];
    let _ = dest.read(&mut sent).await.unwrap();
    (smtp, dest)
}

#[tokio::test]
async fn a_message_goes_as_one_bdat_last_with_its_command() {
    let (mut smtp, mut dest) = chunking_transaction(true).await;
    smtp.start_bdat().unwrap();
    smtp.bdat(b"Subject: x\r\n\r\n.hi\r\n", true).await.unwrap();
    let mut sent = vec![0; 256];
    let n = dest.read(&mut sent).await.unwrap();
    assert_eq!(&sent[..n], b"BDAT 19 LAST\r\nSubject: x\r\n\r\n.hi\r\n");
    dest.write_all(b"250 2.0.0 queued\r\n").await.unwrap();
    assert_eq!(smtp.end_of_data_reply().await.unwrap().code, 250);
    assert!(smtp.is_ready());
}

#[tokio::test]
async fn chunk_replies_are_read_after_the_last_and_a_refusal_speaks() {
    let (mut smtp, mut dest) = chunking_transaction(true).await;
    smtp.start_bdat().unwrap();
    smtp.bdat(b"abc\r\n", false).await.unwrap();
    smtp.bdat(b"def\r\n", true).await.unwrap();
    let mut sent = vec![0; 256];
    let mut got = Vec::new();
    while got.len() < b"BDAT 5\r\nabc\r\nBDAT 5 LAST\r\ndef\r\n".len() {
        let n = dest.read(&mut sent).await.unwrap();
        got.extend_from_slice(&sent[..n]);
    }
    assert_eq!(got, b"BDAT 5\r\nabc\r\nBDAT 5 LAST\r\ndef\r\n");
    dest.write_all(b"552 5.3.4 too big\r\n503 5.5.1 no\r\n")
        .await
        .unwrap();
    let reply = smtp.end_of_data_reply().await.unwrap();
    assert_eq!(reply.code, 552, "the first refusal");
    assert_eq!(smtp.phase(), Phase::Broken, "not reused");
}

#[tokio::test]
async fn without_pipelining_each_chunk_is_answered_before_the_next() {
    let (mut smtp, mut dest) = chunking_transaction(false).await;
    smtp.start_bdat().unwrap();
    dest.write_all(b"250 2.0.0 5 octets\r\n").await.unwrap();
    smtp.bdat(b"abc\r\n", false).await.unwrap();
    assert_eq!(smtp.chunk_replies_pending, 0);
}

#[tokio::test]
async fn bdat_needs_chunking() {
    let (mut smtp, _dest, _) = after_mail_rcpt(b"250 ok\r\n250 ok\r\n").await;
    assert!(smtp.start_bdat().is_err());
    assert_eq!(smtp.phase(), Phase::Broken);
}
