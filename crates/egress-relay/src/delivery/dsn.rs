//! Delivery status notifications (RFC 3464): what egressd sends the envelope sender
//! when recipients of a spooled message failed for good — a `multipart/report`
//! with a text part, the `message/delivery-status` part, and the original
//! message's headers (`text/rfc822-headers`). Never for the null sender, so a
//! notification can never cause another.

use egress_spool::{Envelope, RecipientState};
use std::io::Read;
use std::path::Path;

/// The most of the original message read for its headers.
const MAX_HEADERS: u64 = 64 * 1024;

/// A message egressd spools itself.
pub struct Message {
    /// Its wire form (CR LF, dot-stuffed, ending `CR LF . CR LF`).
    pub wire: Vec<u8>,
    /// The recipient's domain.
    pub domain: String,
    /// The recipient (the original sender).
    pub recipient: String,
}

/// The notification for `env`'s failed recipients, if one is due.
pub fn for_failures(env: &Envelope, hostname: &str, product: &str, data: &Path) -> Option<Message> {
    if env.sender.is_empty() {
        return None;
    }
    let failed: Vec<(&str, &str)> = env
        .domains
        .iter()
        .flat_map(|d| d.recipients.iter())
        .filter_map(|r| match &r.state {
            RecipientState::Failed { reply } => Some((r.address.as_str(), reply.as_str())),
            _ => None,
        })
        .collect();
    if failed.is_empty() {
        return None;
    }
    let domain = env.sender.rsplit_once('@')?.1.to_ascii_lowercase();
    let text = report(env, hostname, product, &failed, &original_headers(data));
    Some(Message {
        wire: frame(&text),
        domain,
        recipient: env.sender.clone(),
    })
}

/// The enhanced status code in a reply (`550 5.1.1 …` → `5.1.1`), else `5.0.0`.
fn status(reply: &str) -> String {
    reply
        .split_whitespace()
        .nth(1)
        .filter(|s| {
            let parts: Vec<&str> = s.split('.').collect();
            parts.len() == 3
                && parts
                    .iter()
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        })
        .unwrap_or("5.0.0")
        .to_owned()
}

fn report(
    env: &Envelope,
    hostname: &str,
    product: &str,
    failed: &[(&str, &str)],
    headers: &str,
) -> String {
    let boundary = format!("{}.{hostname}/{product}", env.id);
    let date = httpdate::fmt_http_date(std::time::SystemTime::now());
    let arrival = httpdate::fmt_http_date(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(env.created),
    );
    let mut listing = String::new();
    let mut fields = String::new();
    for (address, reply) in failed {
        listing.push_str(&format!("<{address}>: {reply}\r\n"));
        fields.push_str(&format!(
            "\r\nFinal-Recipient: rfc822; {address}\r\nAction: failed\r\nStatus: {}\r\nDiagnostic-Code: smtp; {reply}\r\n",
            status(reply)
        ));
    }
    format!(
        "From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n\
         To: <{sender}>\r\n\
         Subject: Undelivered Mail Returned to Sender\r\n\
         Date: {date}\r\n\
         Message-ID: <{id}.dsn@{hostname}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\
         \r\n\
         This is a MIME-encapsulated message.\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\
         \r\n\
         This is {product} at {hostname}. Your message (spool id {id}) could not be\r\n\
         delivered to the following recipients:\r\n\
         \r\n\
         {listing}\
         \r\n\
         --{boundary}\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n\
         Reporting-MTA: dns; {hostname}\r\n\
         X-Egressd-Queue-ID: {id}\r\n\
         Arrival-Date: {arrival}\r\n\
         {fields}\
         \r\n\
         --{boundary}\r\n\
         Content-Type: text/rfc822-headers\r\n\
         \r\n\
         {headers}\
         \r\n\
         --{boundary}--\r\n",
        sender = env.sender,
        id = env.id,
    )
}

/// The original message's header section, from its spooled wire form (dots
/// unstuffed, CR LF kept).
fn original_headers(data: &Path) -> String {
    let mut head = Vec::new();
    if let Ok(file) = std::fs::File::open(data) {
        let _ = file.take(MAX_HEADERS).read_to_end(&mut head);
    }
    let text = String::from_utf8_lossy(&head);
    let section = text.split("\r\n\r\n").next().unwrap_or("");
    let mut out = String::new();
    for line in section.split("\r\n") {
        // The end marker (a message with no body) is not a header.
        if line == "." {
            break;
        }
        out.push_str(line.strip_prefix('.').unwrap_or(line));
        out.push_str("\r\n");
    }
    out
}

/// A CR LF text in SMTP's wire form: leading dots stuffed, the end marker added.
fn frame(text: &str) -> Vec<u8> {
    let mut wire = Vec::with_capacity(text.len() + 8);
    for line in text.trim_end_matches("\r\n").split("\r\n") {
        if line.starts_with('.') {
            wire.push(b'.');
        }
        wire.extend_from_slice(line.as_bytes());
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b".\r\n");
    wire
}

#[cfg(test)]
mod tests {
    use super::*;
    use egress_spool::Envelope;

    #[test]
    fn a_failure_becomes_a_report_with_status_diagnostic_and_original_headers() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("m.msg");
        std::fs::write(
            &data,
            b"Received: x\r\nSubject: quarterly\r\n..dotted: h\r\n\r\nbody\r\n.\r\n",
        )
        .unwrap();
        let mut env = Envelope::new("abc", "alice@a.test", false, [("c.test", ["carol@c.test"])]);
        env.domains[0].recipients[0].state = RecipientState::Failed {
            reply: "550 5.1.1 no such user".into(),
        };
        let dsn = for_failures(&env, "relay.test", "egressd", &data).unwrap();
        assert_eq!(
            (dsn.domain.as_str(), dsn.recipient.as_str()),
            ("a.test", "alice@a.test")
        );
        let text = String::from_utf8(dsn.wire).unwrap();
        assert!(text.contains("Content-Type: multipart/report; report-type=delivery-status"));
        assert!(text.contains("Final-Recipient: rfc822; carol@c.test\r\nAction: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 no such user"));
        assert!(text.contains("Subject: quarterly\r\n"));
        // Unstuffed for the report, stuffed again for the wire.
        assert!(text.contains("\r\n..dotted: h\r\n"));
        assert!(text.ends_with("--\r\n.\r\n"));
        env.sender.clear();
        assert!(
            for_failures(&env, "relay.test", "egressd", &data).is_none(),
            "never for <>"
        );
    }

    #[test]
    fn statuses_come_from_the_reply_or_default_to_5_0_0() {
        assert_eq!(status("550 5.7.1 blocked"), "5.7.1");
        assert_eq!(status("554 transaction failed"), "5.0.0");
        assert_eq!(status("gave up after 7days (max_age)"), "5.0.0");
    }
}
