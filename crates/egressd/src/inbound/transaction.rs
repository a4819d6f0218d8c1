//! A transaction from MAIL FROM to the end of DATA: RCPTs forwarded to the
//! destination, and the body streamed through egress-smtp's `BodyReader` — read
//! exactly, written CR LF-only and dot-stuffed, never held whole.

use super::transport::{Conn, Ended, Waiting};
use super::Listener;
use crate::metrics::{Metrics, Origin, Refusal};
use crate::outbound::{Context, OpenError, Outbound};
use crate::txlog::TxLog;
use egress_lua::InvalidLineEndings;
use egress_smtp::{BodyReader, LineEndings, Reply, TlsInfo};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

/// Send body octets to the destination once this many are ready.
const FLUSH_AT: usize = 64 * 1024;
/// The `.` CR LF that ends DATA, counted in what we receive but not in the message.
const END_MARKER: u64 = 3;

/// A transaction from MAIL FROM to the end of DATA (or RSET).
pub struct Transaction {
    pub from: String,
    pub body_8bit: bool,
    pub domain: Option<String>,
    pub outbound: Option<Outbound>,
    pub accepted: usize,
    pub log: TxLog,
}

impl Transaction {
    /// A transaction that MAIL FROM opened.
    pub fn new(
        peer: SocketAddr,
        from: String,
        body_8bit: bool,
        metrics: Arc<Metrics>,
    ) -> Transaction {
        Transaction {
            log: TxLog::new(peer, &from, metrics),
            from,
            body_8bit,
            domain: None,
            outbound: None,
            accepted: 0,
        }
    }

    /// Ends it: the log line is written and the destination session closed in the
    /// background, so the client's reply never waits for the destination's 221.
    pub fn end(mut self, outcome: &str) {
        if let Some(out) = self.outbound.take() {
            tokio::spawn(out.quit());
        }
        self.log.emit(outcome);
    }

    /// RCPT: a local refusal (relay permission, recipient limit) or the
    /// destination's answer; either way it goes into the log.
    pub async fn rcpt(&mut self, ctx: &Context, address: &str, refusal: Option<Reply>) -> Reply {
        let (reply, origin) = match refusal {
            Some(refusal) => (refusal, Origin::Local),
            None => self.forward_rcpt(ctx, address).await,
        };
        self.log.recipient(address, &reply, origin);
        if reply.is_positive() {
            self.accepted += 1;
        }
        reply
    }

    /// One destination domain per transaction; the first RCPT opens the
    /// destination session, every RCPT is answered by the destination.
    async fn forward_rcpt(&mut self, ctx: &Context, address: &str) -> (Reply, Origin) {
        let local = |reply: Reply| (reply, Origin::Local);
        let Some(domain) = address
            .rsplit_once('@')
            .map(|(_, d)| d.trim_end_matches('.').to_ascii_lowercase())
            .filter(|d| !d.is_empty())
        else {
            return local(Reply::new(
                550,
                [5, 1, 3],
                "recipient must be of the form user@domain",
            ));
        };
        if let Some(fixed) = &self.domain {
            if *fixed != domain {
                return local(Reply::new(
                    452,
                    [4, 5, 3],
                    format!("this transaction is for {fixed}; send {domain} in another"),
                ));
            }
        }
        if self.outbound.is_none() {
            match Outbound::open(ctx, &domain, &self.from, self.body_8bit, &mut self.log).await {
                Ok(out) => {
                    self.domain = Some(domain);
                    self.outbound = Some(out);
                }
                Err(OpenError::Local(reply)) => return local(reply),
                Err(OpenError::Destination(reply)) => return (reply, Origin::Destination),
            }
        }
        let Some(out) = self.outbound.as_mut() else {
            return local(Reply::new(
                451,
                [4, 3, 0],
                "internal error: no destination session",
            ));
        };
        match out.rcpt(address).await {
            Ok(reply) => (reply, Origin::Destination),
            Err(e) => {
                self.log.note(&e.to_string());
                if let Some(out) = self.outbound.take() {
                    tokio::spawn(out.quit());
                }
                local(Reply::new(
                    451,
                    [4, 4, 2],
                    format!("lost the destination session: {e}"),
                ))
            }
        }
    }
}

/// Where the session is, for the `Received:` header.
pub struct Trace<'a> {
    pub helo: &'a str,
    pub peer: SocketAddr,
    pub hostname: &'a str,
    pub tls: Option<&'a TlsInfo>,
    pub authenticated: bool,
}

/// DATA: the destination must say 354 before the client hears it; the body streams
/// through with a `Received:` header in front; the destination's final reply is
/// ours. `Err(Ended)` when the client went away or timed out mid-message.
pub async fn data<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: &Context,
    inbound: &Listener,
    conn: &mut Conn<S>,
    mut t: Transaction,
    trace: Trace<'_>,
) -> Result<Reply, Ended> {
    let listener = &inbound.config;
    let Some(mut out) = t.outbound.take() else {
        t.log.decided = Some((451, Origin::Local));
        t.log.emit("no destination session");
        return Ok(Reply::new(
            451,
            [4, 3, 0],
            "internal error: no destination session",
        ));
    };
    match out.data().await {
        Ok(None) => {}
        Ok(Some(refused)) => {
            t.log.decided = Some((refused.code, Origin::Destination));
            t.outbound = Some(out);
            t.end(&format!("DATA refused: {refused}"));
            return Ok(refused);
        }
        Err(e) => {
            t.log.note(&e.to_string());
            t.log.decided = Some((451, Origin::Local));
            t.end("lost the destination at DATA");
            return Ok(Reply::new(
                451,
                [4, 4, 2],
                format!("lost the destination session: {e}"),
            ));
        }
    }
    conn.reply(&Reply::new(
        354,
        [2, 0, 0],
        "send the message, end with <CRLF>.<CRLF>",
    ));

    let deadline = conn.deadline(Waiting::Data);
    let mut reader = BodyReader::new(line_endings(listener.invalid_line_endings));
    let mut pending = received_header(&trace, &t.log.id).into_bytes();
    // The destination session, while the message is still going to it. Taken away
    // (and closed without the end marker, so the destination discards its partial
    // copy) when the message is refused or the destination fails.
    let mut sending = Some(out);
    let mut broken: Option<String> = None;
    let max = listener.max_message_size;
    loop {
        if conn.inbox.is_empty() {
            if let Err(ended) = conn.fill(deadline, Waiting::Data, true).await {
                // The client never got a 250, so it still has the message. Closing
                // without the end marker makes the destination discard its copy.
                t.log.size = reader.received();
                t.log.decided = None;
                t.log.emit("client went away or timed out during DATA");
                return Err(ended);
            }
        }
        let (used, done) = reader.feed(&conn.inbox, &mut pending);
        conn.inbox.drain(..used);
        if reader.refused() || reader.received() > max + END_MARKER {
            if let Some(out) = sending.take() {
                tokio::spawn(out.quit());
            }
            pending.clear();
        }
        if let Some(out) = sending.as_mut() {
            if pending.len() >= FLUSH_AT || done {
                if let Err(e) = out.write_body(&pending).await {
                    broken = Some(e.to_string());
                    if let Some(out) = sending.take() {
                        tokio::spawn(out.quit());
                    }
                }
                pending.clear();
            }
        }
        if done {
            break;
        }
    }
    conn.shrink();
    t.log.size = reader.received();
    if let Some(invalid) = reader.invalid().filter(|_| reader.refused()) {
        inbound.refused(Refusal::InvalidLineEndings);
        t.log.decided = Some((550, Origin::Local));
        t.log.emit(&format!("refused: {invalid}"));
        return Ok(Reply::new(
            550,
            [5, 6, 0],
            format!("message refused: it contains {invalid}"),
        ));
    }
    if reader.received() > max + END_MARKER {
        inbound.refused(Refusal::MessageTooLarge);
        t.log.decided = Some((552, Origin::Local));
        t.log.emit("message too large");
        return Ok(Reply::new(
            552,
            [5, 3, 4],
            format!("message exceeds the limit of {max} bytes"),
        ));
    }
    if let Some(invalid) = reader.invalid() {
        t.log.note(&format!("line endings made CR LF: {invalid}"));
    }
    let (Some(mut out), None) = (sending, &broken) else {
        let e = broken.unwrap_or_default();
        t.log.note(&e);
        t.log.decided = Some((451, Origin::Local));
        t.log.emit("lost the destination during DATA");
        return Ok(Reply::new(
            451,
            [4, 4, 2],
            format!("lost the destination session during DATA: {e}"),
        ));
    };
    let reply = match out.final_reply().await {
        Ok(reply) => {
            // The transaction is over: keep the session for the next one through the
            // same source to the same host, if it is clean.
            ctx.idle.release(out).await;
            t.log.decided = Some((reply.code, Origin::Destination));
            reply
        }
        Err(e) => {
            t.log.note(&e.to_string());
            // The destination may have the message; saying 4xx risks a duplicate,
            // saying 2xx risks a loss. We never risk a loss.
            t.log.decided = Some((451, Origin::Local));
            Reply::new(
                451,
                [4, 4, 2],
                format!("no reply from the destination to the message: {e}"),
            )
        }
    };
    t.log.outcome = Some(reply.to_string());
    t.end("delivered");
    Ok(reply)
}

fn line_endings(setting: InvalidLineEndings) -> LineEndings {
    match setting {
        InvalidLineEndings::Deny => LineEndings::Deny,
        InvalidLineEndings::Fix => LineEndings::Fix,
        InvalidLineEndings::Allow => LineEndings::Allow,
    }
}

/// The trace header we add (RFC 5321 §4.4), with the protocol named as RFC 3848
/// does (ESMTP, ESMTPS over TLS, ESMTPSA over TLS and authenticated) and the TLS
/// version and cipher when there is TLS.
fn received_header(trace: &Trace<'_>, id: &str) -> String {
    let helo: String = trace
        .helo
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .collect();
    let (protocol, tls) = match (trace.tls, trace.authenticated) {
        (Some(t), true) => (
            "ESMTPSA",
            format!("\r\n\t(version={} cipher={})", t.version, t.cipher),
        ),
        (Some(t), false) => (
            "ESMTPS",
            format!("\r\n\t(version={} cipher={})", t.version, t.cipher),
        ),
        (None, true) => ("ESMTPA", String::new()),
        (None, false) => ("ESMTP", String::new()),
    };
    format!(
        "Received: from {helo} ([{}])\r\n\tby {} (egressd) with {protocol} id {id}{tls};\r\n\t{}\r\n",
        trace.peer.ip().to_canonical(),
        trace.hostname,
        httpdate::fmt_http_date(std::time::SystemTime::now())
    )
}
