//! One log line per transaction, with everything an operator asks afterwards.

use crate::records::{self, Recording};
use crate::report::{Origin, PathHandle, Report, Unrouted};
use egress_connect::EgressAddress;
use egress_smtp::{Reply, TlsInfo};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// What happened in one transaction; logged once, when it ends.
pub struct TxLog {
    /// Names the transaction in the log and in our `Received:` header.
    pub id: String,
    /// The client's address.
    pub client: SocketAddr,
    /// MAIL FROM.
    pub sender: String,
    /// Each RCPT and the reply it got.
    pub recipients: Vec<(String, String)>,
    /// The tenant the queue config was asked for (the AUTH identity).
    pub tenant: Option<String>,
    /// The pool the queue config named.
    pub pool: Option<String>,
    /// The source picked.
    pub source: Option<String>,
    /// The destination's site (its MX host names, factored).
    pub site: Option<String>,
    /// What the destination saw, and the route.
    pub egress: Option<EgressAddress>,
    /// The host (and address) connected to, or last tried.
    pub destination: Option<String>,
    /// Time to connect through the source.
    pub connect_ms: Option<u128>,
    /// The destination session was reused from an earlier transaction.
    pub reused: bool,
    /// What STARTTLS to the destination negotiated (None: in clear).
    pub tls: Option<TlsInfo>,
    /// The reply to DATA's final dot (or why the transaction ended).
    pub outcome: Option<String>,
    /// Local failures along the way, in order.
    pub notes: Vec<String>,
    /// Message size as received.
    pub size: u64,
    /// The reply that decided the transaction (the final dot's, else the last
    /// refusal) and who gave it; `None`: the client ended it.
    pub decided: Option<(u16, Origin)>,
    /// The path's report handle, once a source was picked.
    pub path: Option<Arc<PathHandle>>,
    /// What its log records need, when the embedder takes records.
    pub recording: Option<Box<Recording>>,
    report: Arc<dyn Report>,
    started: Instant,
}

impl TxLog {
    /// A transaction that began with MAIL FROM.
    pub fn new(client: SocketAddr, sender: &str, report: Arc<dyn Report>) -> TxLog {
        TxLog {
            id: transaction_id(),
            client,
            sender: sender.to_owned(),
            recipients: Vec::new(),
            tenant: None,
            pool: None,
            source: None,
            site: None,
            egress: None,
            destination: None,
            connect_ms: None,
            reused: false,
            tls: None,
            outcome: None,
            notes: Vec::new(),
            size: 0,
            decided: None,
            path: None,
            recording: None,
            report,
            started: Instant::now(),
        }
    }

    /// Records a local failure (a connect error, a policy error).
    pub fn note(&mut self, text: &str) {
        self.notes.push(text.replace('\n', " | "));
    }

    /// Records a recipient's reply (a refusal decides the transaction unless a
    /// later reply does).
    pub fn recipient(&mut self, address: &str, reply: &Reply, origin: Origin) {
        if !reply.is_positive() {
            self.decided = Some((reply.code, origin));
        }
        self.recipients
            .push((address.to_owned(), reply.to_string()));
        if let Some(rec) = self.recording.as_mut() {
            rec.rcpts.push((address.to_owned(), reply.clone(), origin));
        }
    }

    /// The reply that decides the transaction (to `command`: `"DATA"`, `"."`),
    /// and who gave it.
    pub fn decide(&mut self, reply: &Reply, origin: Origin, command: &'static str) {
        self.decided = Some((reply.code, origin));
        if let Some(rec) = self.recording.as_mut() {
            rec.last = Some((reply.clone(), origin, command));
        }
    }

    /// The destination host (MX name) and address tried.
    pub fn peer(&mut self, host: &str, addr: SocketAddr) {
        self.destination = Some(format!("{host} [{addr}]"));
        if let Some(rec) = self.recording.as_mut() {
            rec.peer = Some((host.to_owned(), addr));
        }
    }

    /// What its log records take from it.
    pub fn facts(&self) -> records::Facts<'_> {
        records::Facts {
            id: &self.id,
            sender: &self.sender,
            size: self.size,
            tenant: self.tenant.as_deref(),
            pool: self.pool.as_deref(),
            source: self.source.as_deref(),
            site: self.site.as_deref(),
            egress: self.egress.as_ref(),
            tls: self.tls.as_ref(),
        }
    }

    /// Emits the line and the transaction's log records, and reports it.
    pub fn emit(self, outcome: &str) {
        if let Some(rec) = &self.recording {
            records::transaction(&self.facts(), rec);
        }
        let took = self.started.elapsed();
        let (code, origin) = match self.decided {
            Some((code, origin)) => (Some(code), origin),
            None => (None, Origin::Client),
        };
        match &self.path {
            Some(path) => path.report.transaction(code, origin, self.size, took),
            None => self.report.unrouted(Unrouted {
                pool: self.pool.as_deref(),
                site: self.site.as_deref(),
                code,
                origin,
                took,
            }),
        }
        // The line's pieces are built only when the line is written.
        if !tracing::enabled!(target: "transaction", tracing::Level::INFO) {
            return;
        }
        // A local failure noted on the way out is also the refusal a recipient
        // heard: the line carries it once, as that recipient's reply.
        let notes: Vec<&str> = self
            .notes
            .iter()
            .map(String::as_str)
            .filter(|n| !self.recipients.iter().any(|(_, r)| r.contains(n)))
            .collect();
        let recipients: Vec<String> = self
            .recipients
            .iter()
            .map(|(a, r)| format!("<{a}> {r}"))
            .collect();
        let (egress_ip, proxy) = match &self.egress {
            Some(e) => (
                e.ip.map(|ip| ip.to_string())
                    .unwrap_or_else(|| "unknown".into()),
                e.proxy()
                    .map(|(kind, addr)| format!("{kind} {addr}"))
                    .unwrap_or_else(|| "none".into()),
            ),
            None => ("-".into(), "-".into()),
        };
        tracing::info!(
            target: "transaction",
            id = %self.id,
            client = %self.client,
            sender = %format!("<{}>", self.sender),
            recipients = %recipients.join(", "),
            tenant = self.tenant.as_deref().unwrap_or("-"),
            pool = self.pool.as_deref().unwrap_or("-"),
            source = self.source.as_deref().unwrap_or("-"),
            site = self.site.as_deref().unwrap_or("-"),
            egress = %egress_ip,
            proxy = %proxy,
            destination = self.destination.as_deref().unwrap_or("-"),
            size = self.size,
            connect_ms = self.connect_ms.map(|m| m as i64).unwrap_or(-1),
            reused = self.reused,
            tls = %self.tls.as_ref().map(|t| t.to_string()).unwrap_or_else(|| "none".into()),
            tls_peer = %self.tls.as_ref().and_then(|t| t.verified.then(|| t.peer_subject.clone()).flatten()).unwrap_or_else(|| "-".into()),
            total_ms = took.as_millis() as u64,
            outcome = %self.outcome.as_deref().unwrap_or(outcome),
            notes = %notes.join(" ; "),
            "transaction"
        );
    }
}

/// A short id, unique within this process and unlikely to repeat across restarts:
/// seconds since the epoch and a counter, in hex.
pub fn transaction_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    format!(
        "{secs:x}{:06x}",
        NEXT.fetch_add(1, Ordering::Relaxed) & 0xff_ffff
    )
}
