//! Where the relay's log records (KumoMTA's, see egress-record) are made — one
//! function per moment, so each record type is made in one place:
//!
//! - [`transaction`]: what a client's transaction came to, when it ends —
//!   `Rejection` for each refusal of ours (RCPT, DATA, the message), `Reception`
//!   for a message we took, and for a message relayed cut-through each
//!   recipient's `Delivery`, `TransientFailure` or `Bounce` from the
//!   destination's reply (RCPT's or the final dot's);
//! - [`attempt`]: each recipient's outcome of a delivery attempt from the spool;
//! - [`given_up`]: a spooled message's recipients expired or bounced by an operator.
//!
//! A cut-through message has no spool id: its `id` is the transaction id (the
//! one in our `Received:` header and the log line), and its `queue` is its
//! recipient's domain (with `tenant@` when the client authenticated), as
//! KumoMTA names a queue.

use crate::report::Origin;
use egress_connect::{EgressAddress, Via};
use egress_record::{
    LogRecord, Message, PeerAddress, RecordSink, RecordType, Response, SourceAddress,
};
use egress_smtp::{Reply, TlsInfo};
use egress_spool::Envelope;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What a transaction's log line knows that its records use (a view of the
/// `TxLog`, so that this module needs nothing of it).
pub struct Facts<'a> {
    pub id: &'a str,
    pub sender: &'a str,
    pub size: u64,
    pub tenant: Option<&'a str>,
    pub pool: Option<&'a str>,
    pub source: Option<&'a str>,
    pub site: Option<&'a str>,
    pub egress: Option<&'a EgressAddress>,
    pub tls: Option<&'a TlsInfo>,
}

/// The inbound session a transaction came in on.
#[derive(Debug, Clone)]
pub struct Inbound {
    /// Its UUID.
    pub session_id: Arc<str>,
    /// EHLO/HELO name.
    pub ehlo: String,
    /// The client.
    pub client: SocketAddr,
}

/// What a transaction's records need beyond its log line; kept only when the
/// embedder takes records.
pub struct Recording {
    pub sink: Arc<dyn RecordSink>,
    pub message: Message,
    /// The client's session (none: a delivery attempt from the spool).
    pub inbound: Option<Inbound>,
    /// Each RCPT's reply, who gave it.
    pub rcpts: Vec<(String, Reply, Origin)>,
    /// The reply that ended the transaction, who gave it, and to what.
    pub last: Option<(Reply, Origin, &'static str)>,
    /// The spool id when the message was spooled.
    pub spool_id: Option<String>,
    /// The destination host (MX name) and address.
    pub peer: Option<(String, SocketAddr)>,
    /// The destination session's UUID.
    pub out_session: Option<Arc<str>>,
    /// Our address on a direct connection.
    pub local: Option<SocketAddr>,
    /// Delivered over LMTP.
    pub lmtp: bool,
    pub created: SystemTime,
    /// The header section is still being read.
    head_open: bool,
    head: Vec<u8>,
}

/// The longest header section kept for loggers.
const MAX_HEAD: usize = 64 * 1024;

impl Recording {
    pub fn new(sink: Arc<dyn RecordSink>, inbound: Option<Inbound>, message: Message) -> Recording {
        let head_open = sink.wants_head() && message.head.is_none();
        Recording {
            sink,
            message,
            inbound,
            rcpts: Vec::new(),
            last: None,
            spool_id: None,
            peer: None,
            out_session: None,
            local: None,
            lmtp: false,
            created: SystemTime::now(),
            head_open,
            head: Vec::new(),
        }
    }

    /// The policy changed the message (`smtp_server_message_received`): its
    /// header section and meta are what records show.
    pub fn message_changed(
        &mut self,
        data: &[u8],
        meta: serde_json::Map<String, serde_json::Value>,
    ) {
        if self.sink.wants_head() {
            let end = memchr::memmem::find(data, b"\r\n\r\n").map_or(data.len(), |e| e + 2);
            self.message.head = Some(Arc::from(&data[..end.min(MAX_HEAD)]));
            self.head_open = false;
        }
        self.message.meta = Arc::new(meta);
    }

    /// Keeps message text until the end of the header section.
    pub fn capture_head(&mut self, text: &[u8]) {
        if !self.head_open {
            return;
        }
        let room = MAX_HEAD.saturating_sub(self.head.len());
        let start = self.head.len().saturating_sub(3);
        self.head.extend_from_slice(&text[..text.len().min(room)]);
        if let Some(end) = memchr::memmem::find(&self.head[start..], b"\r\n\r\n") {
            self.head.truncate(start + end + 2);
            self.head_open = false;
        } else if self.head.len() >= MAX_HEAD {
            self.head_open = false;
        }
        if !self.head_open {
            self.message.head = Some(Arc::from(std::mem::take(&mut self.head)));
        }
    }
}

/// A new session id.
pub fn session_id() -> Arc<str> {
    Arc::from(uuid::Uuid::new_v4().to_string())
}

/// The meta a message received over SMTP carries (KumoMTA's names).
pub fn reception_meta(
    client: SocketAddr,
    listener: SocketAddr,
    hostname: &str,
    ehlo: &str,
    authn_id: Option<&str>,
) -> serde_json::Map<String, serde_json::Value> {
    let mut meta = serde_json::Map::new();
    meta.insert("reception_protocol".into(), "ESMTP".into());
    meta.insert("received_from".into(), client.to_string().into());
    meta.insert("received_via".into(), listener.to_string().into());
    meta.insert("hostname".into(), hostname.into());
    meta.insert("ehlo_domain".into(), ehlo.into());
    if let Some(id) = authn_id {
        meta.insert("authn_id".into(), id.into());
    }
    meta
}

fn response(reply: &Reply, command: &str) -> Response {
    Response::new(reply.code, reply.esc, &reply.lines.join(" "), Some(command))
}

/// KumoMTA's queue name: `[tenant@]domain`.
fn queue_of(recipient: &str, tenant: Option<&str>) -> String {
    let domain = recipient.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
    match tenant {
        Some(t) => format!("{t}@{domain}"),
        None => domain.to_owned(),
    }
}

fn source_address(egress: &EgressAddress, local: Option<SocketAddr>) -> Option<SourceAddress> {
    let (protocol, server) = match egress.via {
        Via::Direct => (None, None),
        Via::HaProxy(a) => (Some("haproxy"), Some(a)),
        Via::Socks5(a) => (Some("socks5"), Some(a)),
    };
    // Through a proxy the port is never known, and the address only when the
    // proxy said it (0.0.0.0 otherwise): the proxy is still worth recording.
    let unspecified = std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
    let address = match (local, egress.ip) {
        (Some(local), _) if protocol.is_none() => local,
        (_, Some(ip)) => SocketAddr::new(ip, 0),
        (_, None) if protocol.is_some() => SocketAddr::new(unspecified, 0),
        (_, None) => return None,
    };
    Some(SourceAddress {
        address: address.to_string(),
        protocol,
        server,
    })
}

fn tls_fields(record: &mut LogRecord, tls: Option<&TlsInfo>) {
    if let Some(tls) = tls {
        record.tls_cipher = Some(tls.cipher.clone());
        record.tls_protocol_version = Some(tls.version.clone());
        record.tls_peer_subject_name = tls
            .peer_subject
            .as_ref()
            .map(|s| s.split(", ").map(str::to_owned).collect());
    }
}

/// A record of the outbound side of `log` (route, source, destination, TLS).
fn outbound(log: &Facts<'_>, rec: &Recording, kind: RecordType, id: &str) -> LogRecord {
    let mut r = LogRecord::new(kind, id, log.sender);
    r.site = log.site.unwrap_or_default().to_owned();
    r.size = log.size;
    r.created = rec.created;
    r.egress_pool = log.pool.map(str::to_owned);
    r.egress_source = log.source.map(str::to_owned);
    r.source_address = log.egress.and_then(|e| source_address(e, rec.local));
    r.peer_address = rec.peer.as_ref().map(|(name, addr)| PeerAddress {
        name: name.clone(),
        addr: addr.ip().to_string(),
    });
    r.delivery_protocol = Some(if rec.lmtp { "LMTP" } else { "ESMTP" }.into());
    r.reception_protocol = Some("ESMTP".into());
    r.session_id = rec.out_session.as_deref().map(str::to_owned);
    tls_fields(&mut r, log.tls);
    r
}

/// A record of the inbound side (the client, its session).
fn inbound(
    log: &Facts<'_>,
    rec: &Recording,
    inb: &Inbound,
    kind: RecordType,
    id: &str,
) -> LogRecord {
    let mut r = LogRecord::new(kind, id, log.sender);
    r.size = log.size;
    r.created = rec.created;
    r.peer_address = Some(PeerAddress {
        name: inb.ehlo.clone(),
        addr: inb.client.to_string(),
    });
    r.reception_protocol = Some("ESMTP".into());
    r.session_id = Some(inb.session_id.to_string());
    r
}

/// A refusal of ours to a client's command: one `Rejection` record.
#[allow(clippy::too_many_arguments)]
pub fn rejection(
    sink: &dyn RecordSink,
    message: &Message,
    inb: &Inbound,
    id: &str,
    sender: &str,
    recipients: Vec<String>,
    reply: &Reply,
    command: Option<&str>,
) {
    let mut r = LogRecord::new(RecordType::Rejection, id, sender);
    r.peer_address = Some(PeerAddress {
        name: inb.ehlo.clone(),
        addr: inb.client.to_string(),
    });
    r.reception_protocol = Some("ESMTP".into());
    r.session_id = Some(inb.session_id.to_string());
    r.queue = recipients
        .first()
        .map(|a| queue_of(a, None))
        .unwrap_or_default();
    r.recipient = recipients;
    r.response = Response::new(reply.code, reply.esc, &reply.lines.join(" "), command);
    sink.record(r, message);
}

/// The records of a client's transaction, when it ends (see the module docs).
pub fn transaction(log: &Facts<'_>, rec: &Recording) {
    let Some(inb) = &rec.inbound else {
        return;
    };
    let tenant = log.tenant;
    let id = rec.spool_id.as_deref().unwrap_or(log.id);
    let emit = |mut r: LogRecord, recipients: Vec<String>| {
        r.queue = recipients
            .first()
            .map(|a| queue_of(a, tenant))
            .unwrap_or_default();
        r.recipient = recipients;
        rec.sink.record(r, &rec.message);
    };
    let rejected = |recipients: Vec<String>, reply: &Reply, command: &str| {
        let sink = &*rec.sink;
        rejection(
            sink,
            &rec.message,
            inb,
            id,
            log.sender,
            recipients,
            reply,
            Some(command),
        );
    };
    for (address, reply, origin) in &rec.rcpts {
        if reply.is_positive() {
            continue;
        }
        if *origin != Origin::Destination {
            rejected(vec![address.clone()], reply, "RCPT TO");
            continue;
        }
        let mut r = outbound(log, rec, RecordType::of_reply(reply.code), id);
        r.size = 0;
        r.response = response(reply, "RCPT TO");
        emit(r, vec![address.clone()]);
    }
    let accepted: Vec<String> = rec
        .rcpts
        .iter()
        .filter(|(_, reply, _)| reply.is_positive())
        .map(|(a, _, _)| a.clone())
        .collect();
    let Some((reply, origin, command)) = &rec.last else {
        return;
    };
    if accepted.is_empty() {
        return;
    }
    if reply.is_positive() {
        let mut r = inbound(log, rec, inb, RecordType::Reception, id);
        r.response = response(reply, command);
        emit(r, accepted.clone());
        if *origin == Origin::Destination {
            for address in accepted {
                let mut r = outbound(log, rec, RecordType::Delivery, id);
                r.num_attempts = 1;
                r.response = response(reply, command);
                emit(r, vec![address]);
            }
        }
    } else if *origin == Origin::Destination {
        for address in accepted {
            let mut r = outbound(log, rec, RecordType::of_reply(reply.code), id);
            r.num_attempts = 1;
            r.response = response(reply, command);
            emit(r, vec![address]);
        }
    } else {
        rejected(accepted, reply, command);
    }
}

fn created_of(env: &Envelope) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(env.created)
}

/// Each recipient's outcome of one delivery attempt from the spool: the reply
/// line the spool keeps for it, and whether it goes again (a 4xx, or our side
/// failed: `TransientFailure`).
pub fn attempt<'a>(
    log: &Facts<'_>,
    rec: &Recording,
    env: &Envelope,
    attempts: u16,
    answers: impl Iterator<Item = (&'a str, &'a str)>,
) {
    for (address, line) in answers {
        // The spool keeps the line, not the command it answered: "." is sure
        // only for a delivery.
        let command = line.starts_with('2').then_some(".");
        let response = Response::from_line(line, command);
        let mut r = outbound(log, rec, RecordType::of_reply(response.code), &env.id);
        r.created = created_of(env);
        r.num_attempts = attempts;
        r.recipient = vec![address.to_owned()];
        r.queue = queue_of(address, env.tenant.as_deref());
        r.response = response;
        rec.sink.record(r, &rec.message);
    }
}

/// A spooled message's recipients given up on, as `kind` — `Expiration`
/// (`max_age` passed) or `AdminBounce` (an operator) — with the reply line the
/// spool keeps.
pub fn given_up(
    sink: &dyn RecordSink,
    message: &Message,
    env: &Envelope,
    kind: RecordType,
    recipients: &[(String, String)],
    attempts: u16,
) {
    for (address, line) in recipients {
        let mut r = LogRecord::new(kind, &env.id, &env.sender);
        r.created = created_of(env);
        r.num_attempts = attempts;
        r.recipient = vec![address.clone()];
        r.queue = queue_of(address, env.tenant.as_deref());
        r.response = Response::from_line(line, None);
        r.reception_protocol = Some("ESMTP".into());
        sink.record(r, message);
    }
}
