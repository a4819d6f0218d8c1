//! KumoMTA's log record: one JSON object per event, field names and value shapes
//! as its `JsonLogRecord` writes them, so its consumers (the tailer, the
//! pipelines reading zstd segments, webhooks) take ours unchanged.

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::{Map, Value};
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

/// What a record tells (KumoMTA's names). egressd writes `Reception`,
/// `Delivery`, `TransientFailure`, `Bounce`, `Rejection`, `Expiration` and
/// `AdminBounce`; the rest exist so that a `per_record` table naming them loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum RecordType {
    /// A message accepted from a client.
    Reception,
    /// The destination accepted the message for a recipient.
    Delivery,
    /// A permanent failure: delivery to the recipient is over.
    Bounce,
    /// A temporary failure: the message will be tried again (from the spool), or
    /// the client that holds it was told to try again (cut-through).
    TransientFailure,
    /// The message outlived `max_age` in the spool.
    Expiration,
    /// An operator failed the message.
    AdminBounce,
    /// An out-of-band bounce report.
    OOB,
    /// A feedback (ARF) report.
    Feedback,
    /// egressd refused a client's command (4xx or 5xx of its own).
    Rejection,
    /// Moved from one queue to another by an operator.
    AdminRebind,
    /// Moved from the deferred injection queue.
    DeferredInjectionRebind,
    /// Why a message went to the scheduled queue.
    Delayed,
    /// Transferred to another node.
    XferOut,
    /// Transferred from another node.
    XferIn,
    /// In `per_record`: every type not named.
    Any,
}

impl RecordType {
    /// Every type, in KumoMTA's order.
    pub const ALL: [RecordType; 15] = [
        RecordType::Reception,
        RecordType::Delivery,
        RecordType::Bounce,
        RecordType::TransientFailure,
        RecordType::Expiration,
        RecordType::AdminBounce,
        RecordType::OOB,
        RecordType::Feedback,
        RecordType::Rejection,
        RecordType::AdminRebind,
        RecordType::DeferredInjectionRebind,
        RecordType::Delayed,
        RecordType::XferOut,
        RecordType::XferIn,
        RecordType::Any,
    ];

    /// The name as written in records and `per_record` keys.
    pub fn name(self) -> &'static str {
        match self {
            RecordType::Reception => "Reception",
            RecordType::Delivery => "Delivery",
            RecordType::Bounce => "Bounce",
            RecordType::TransientFailure => "TransientFailure",
            RecordType::Expiration => "Expiration",
            RecordType::AdminBounce => "AdminBounce",
            RecordType::OOB => "OOB",
            RecordType::Feedback => "Feedback",
            RecordType::Rejection => "Rejection",
            RecordType::AdminRebind => "AdminRebind",
            RecordType::DeferredInjectionRebind => "DeferredInjectionRebind",
            RecordType::Delayed => "Delayed",
            RecordType::XferOut => "XferOut",
            RecordType::XferIn => "XferIn",
            RecordType::Any => "Any",
        }
    }

    /// The type named `name`, exactly as KumoMTA spells it.
    pub fn from_name(name: &str) -> Option<RecordType> {
        RecordType::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The outcome a reply code means for a recipient: 2xx `Delivery`, 4xx
    /// `TransientFailure`, else `Bounce`.
    pub fn of_reply(code: u16) -> RecordType {
        match code {
            200..=299 => RecordType::Delivery,
            400..=499 => RecordType::TransientFailure,
            _ => RecordType::Bounce,
        }
    }
}

/// RFC 3463's enhanced status code, split as KumoMTA writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct EnhancedCode {
    /// 2, 4 or 5.
    pub class: u8,
    /// The subject.
    pub subject: u16,
    /// The detail.
    pub detail: u16,
}

/// A reply from (or to) the peer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Response {
    /// The SMTP code.
    pub code: u16,
    /// The enhanced status code, when the reply had one.
    pub enhanced_code: Option<EnhancedCode>,
    /// The text after the codes, lines joined by a space.
    pub content: String,
    /// What it answered: `"MAIL FROM"`, `"RCPT TO"`, `"DATA"`, `"."` (the final
    /// dot), … — `None` when it answered no command (a connection refused).
    pub command: Option<String>,
}

impl Response {
    /// A response; `content`'s line breaks become spaces.
    pub fn new(code: u16, esc: Option<[u8; 3]>, content: &str, command: Option<&str>) -> Response {
        Response {
            code,
            enhanced_code: esc.map(|[class, subject, detail]| EnhancedCode {
                class,
                subject: subject.into(),
                detail: detail.into(),
            }),
            content: single_line(content),
            command: command.map(str::to_owned),
        }
    }
}

impl Response {
    /// A reply in its one-line form, `"451 4.4.2 text"` (the enhanced code
    /// optional), as the spool keeps replies.
    pub fn from_line(line: &str, command: Option<&str>) -> Response {
        let (code, rest) = match line.split_once(' ') {
            Some((c, rest)) => (c.parse().unwrap_or(0), rest),
            None => (line.parse().unwrap_or(0), ""),
        };
        let (first, text) = rest.split_once(' ').unwrap_or((rest, ""));
        let (esc, content) = match parse_esc(first) {
            Some(esc) => (Some(esc), text),
            None => (None, rest),
        };
        Response::new(code, esc, content, command)
    }
}

fn parse_esc(text: &str) -> Option<[u8; 3]> {
    let mut parts = text.split('.').map(|p| p.parse::<u8>().ok());
    match (parts.next()??, parts.next()??, parts.next()??, parts.next()) {
        (class @ (2 | 4 | 5), subject, detail, None) => Some([class, subject, detail]),
        _ => None,
    }
}

fn single_line(text: &str) -> String {
    text.replace("\r\n", " ").replace(['\r', '\n'], " ")
}

/// The peer: the destination host (its MX name) or the client (its EHLO name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerAddress {
    /// MX host name when delivering; the EHLO name when receiving.
    pub name: String,
    /// Its address (`ip` for a destination, `ip:port` for a client, as
    /// KumoMTA writes them).
    pub addr: String,
}

/// The address the destination saw, and the proxy that carried the connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceAddress {
    /// `ip:port`; the port is `0` when a proxy made the connection.
    pub address: String,
    /// `"haproxy"` or `"socks5"` when a proxy carried it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<&'static str>,
    /// The proxy's `ip:port`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<SocketAddr>,
}

/// One log record.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRecord {
    /// `type`.
    pub kind: RecordType,
    /// The message's id: the spool id, or the transaction id for a message relayed
    /// cut-through (the id in our `Received:` header).
    pub id: String,
    /// The envelope sender.
    pub sender: String,
    /// The recipients: one is written as a string, several as an array.
    pub recipient: Vec<String>,
    /// The queue: KumoMTA's `[campaign:][tenant@]domain` of the recipient.
    pub queue: String,
    /// The destination site (`source->site`, KumoMTA's naming); empty for a
    /// Reception or Rejection.
    pub site: String,
    /// The message's size in octets (0 before DATA).
    pub size: u64,
    /// The reply.
    pub response: Response,
    /// The peer.
    pub peer_address: Option<PeerAddress>,
    /// When the event happened.
    pub timestamp: SystemTime,
    /// When the message was received.
    pub created: SystemTime,
    /// Delivery attempts made so far.
    pub num_attempts: u16,
    /// The bounce classifier's verdict; `"Uncategorized"` until one classifies.
    pub bounce_classification: String,
    /// The pool the queue config named.
    pub egress_pool: Option<String>,
    /// The source chosen.
    pub egress_source: Option<String>,
    /// The address the destination saw.
    pub source_address: Option<SourceAddress>,
    /// ARF report (always `null` here).
    pub feedback_report: Option<Value>,
    /// Meta values the logger asked for.
    pub meta: Map<String, Value>,
    /// Headers the logger asked for (names as in the message).
    pub headers: Map<String, Value>,
    /// `"ESMTP"` (or `"LMTP"`) for a delivery attempt.
    pub delivery_protocol: Option<String>,
    /// `"ESMTP"` for what came in over SMTP.
    pub reception_protocol: Option<String>,
    /// The node's UUID (stamped by the logger; shared, as every record of a node
    /// carries the same one).
    pub nodeid: std::sync::Arc<str>,
    /// The TLS cipher suite, when TLS was used.
    pub tls_cipher: Option<String>,
    /// `"TLSv1.3"`, `"TLSv1.2"`.
    pub tls_protocol_version: Option<String>,
    /// The peer certificate's subject, one `KEY=value` per entry.
    pub tls_peer_subject_name: Option<Vec<String>>,
    /// The provider (shaping's provider block) the site belongs to.
    pub provider_name: Option<String>,
    /// The SMTP session: inbound for Reception/Rejection, outbound otherwise.
    pub session_id: Option<String>,
}

impl LogRecord {
    /// A record of `kind` for message `id` from `sender`, made now; every other
    /// field empty.
    pub fn new(kind: RecordType, id: &str, sender: &str) -> LogRecord {
        let now = SystemTime::now();
        LogRecord {
            kind,
            id: id.to_owned(),
            sender: sender.to_owned(),
            recipient: Vec::new(),
            queue: String::new(),
            site: String::new(),
            size: 0,
            response: Response::default(),
            peer_address: None,
            timestamp: now,
            created: now,
            num_attempts: 0,
            bounce_classification: UNCATEGORIZED.to_owned(),
            egress_pool: None,
            egress_source: None,
            source_address: None,
            feedback_report: None,
            meta: Map::new(),
            headers: Map::new(),
            delivery_protocol: None,
            reception_protocol: None,
            nodeid: nil_uuid(),
            tls_cipher: None,
            tls_protocol_version: None,
            tls_peer_subject_name: None,
            provider_name: None,
            session_id: None,
        }
    }

    /// The record as KumoMTA's JSON (one line, no newline).
    pub fn to_json(&self) -> String {
        // Serializing plain strings and numbers into a String cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// [`to_json`](Self::to_json), appended to `out` (a buffer a writer reuses).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        // Writing plain strings and numbers into a Vec cannot fail.
        let _ = serde_json::to_writer(out, self);
    }
}

/// The classification a record has until a classifier says otherwise.
pub const UNCATEGORIZED: &str = "Uncategorized";
/// The node id of a record no logger has stamped yet.
pub const NIL_UUID: &str = "00000000-0000-0000-0000-000000000000";

fn nil_uuid() -> std::sync::Arc<str> {
    static NIL: std::sync::OnceLock<std::sync::Arc<str>> = std::sync::OnceLock::new();
    NIL.get_or_init(|| std::sync::Arc::from(NIL_UUID)).clone()
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_nanos(t).to_string()
}

impl Serialize for LogRecord {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Written by hand for KumoMTA's shapes: `recipient` one-or-many, each
        // time twice (unix seconds and RFC 3339), TLS fields only when present.
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("type", &self.kind)?;
        m.serialize_entry("id", &self.id)?;
        m.serialize_entry("sender", &self.sender)?;
        match self.recipient.as_slice() {
            [one] => m.serialize_entry("recipient", one)?,
            many => m.serialize_entry("recipient", many)?,
        }
        m.serialize_entry("queue", &self.queue)?;
        m.serialize_entry("site", &self.site)?;
        m.serialize_entry("size", &self.size)?;
        m.serialize_entry("response", &self.response)?;
        m.serialize_entry("peer_address", &self.peer_address)?;
        m.serialize_entry("timestamp", &unix_seconds(self.timestamp))?;
        m.serialize_entry("event_time", &rfc3339(self.timestamp))?;
        m.serialize_entry("created", &unix_seconds(self.created))?;
        m.serialize_entry("created_time", &rfc3339(self.created))?;
        m.serialize_entry("num_attempts", &self.num_attempts)?;
        m.serialize_entry("bounce_classification", &self.bounce_classification)?;
        m.serialize_entry("egress_pool", &self.egress_pool)?;
        m.serialize_entry("egress_source", &self.egress_source)?;
        m.serialize_entry("source_address", &self.source_address)?;
        m.serialize_entry("feedback_report", &self.feedback_report)?;
        m.serialize_entry("meta", &self.meta)?;
        m.serialize_entry("headers", &self.headers)?;
        m.serialize_entry("delivery_protocol", &self.delivery_protocol)?;
        m.serialize_entry("reception_protocol", &self.reception_protocol)?;
        m.serialize_entry("nodeid", &*self.nodeid)?;
        let optional = [
            ("tls_cipher", self.tls_cipher.as_ref()),
            ("tls_protocol_version", self.tls_protocol_version.as_ref()),
            ("provider_name", self.provider_name.as_ref()),
            ("session_id", self.session_id.as_ref()),
        ];
        for (name, value) in optional {
            if let Some(value) = value {
                m.serialize_entry(name, value)?;
            }
        }
        if let Some(subject) = &self.tls_peer_subject_name {
            m.serialize_entry("tls_peer_subject_name", subject)?;
        }
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_recipient_is_a_string_several_an_array() {
        let mut r = LogRecord::new(RecordType::Reception, "id1", "a@x.example");
        r.recipient = vec!["b@y.example".into()];
        let one: Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(one["recipient"], "b@y.example");
        r.recipient.push("c@y.example".into());
        let many: Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(many["recipient"][1], "c@y.example");
    }

    #[test]
    fn times_are_written_twice_and_tls_only_when_known() {
        let mut r = LogRecord::new(RecordType::Delivery, "id1", "a@x.example");
        r.timestamp = UNIX_EPOCH + std::time::Duration::from_millis(1_757_675_281_440);
        let v: Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["timestamp"], 1_757_675_281u64);
        assert_eq!(v["event_time"], "2025-09-12T11:08:01.440000000Z");
        assert!(v.get("tls_cipher").is_none());
        assert_eq!(v["bounce_classification"], "Uncategorized");
        assert!(v["feedback_report"].is_null());
    }

    #[test]
    fn a_spooled_reply_line_is_split_again() {
        let r = Response::from_line("451 4.4.2 lost the destination session", Some("."));
        assert_eq!(
            (r.code, r.content.as_str()),
            (451, "lost the destination session")
        );
        assert_eq!(
            r.enhanced_code.map(|e| (e.class, e.subject, e.detail)),
            Some((4, 4, 2))
        );
        let plain = Response::from_line("550 no such user", None);
        assert_eq!(
            (plain.enhanced_code, plain.content.as_str()),
            (None, "no such user")
        );
    }

    #[test]
    fn a_multiline_reply_is_one_line() {
        let resp = Response::new(
            550,
            Some([5, 1, 1]),
            "no such user\r\nreally",
            Some("RCPT TO"),
        );
        let v = serde_json::to_value(&resp).unwrap();
        assert_eq!(v["content"], "no such user really");
        assert_eq!(v["enhanced_code"]["subject"], 1);
        assert_eq!(v["command"], "RCPT TO");
    }
}
