//! DATA: the body read through egress-smtp's `BodyReader` — exact end, written
//! CR LF-only and dot-stuffed, never held whole — with our `Received:` header in
//! front, into one of two places:
//!
//! - **cut-through** (one destination domain): streamed to the destination, whose
//!   reply to the final dot is the client's. Our 354 goes out as DATA goes to the
//!   destination, and the destination's answer to DATA is read when the first
//!   message text is ready to pass on — one round trip less per message. A
//!   destination that refuses DATA has its reply given to the client after the
//!   message text, which is then discarded (the client still has the message);
//! - **spooled** (several domains): written to egress-spool and made durable, then
//!   `250` with the spool id; delivery goes on from the spool (`delivery/`).

use super::transaction::Transaction;
use super::transport::{Conn, Ended, Waiting};
use super::Listener;
use crate::delivery::OpenSession;
use crate::outbound::{Context, Outbound};
use crate::report::{Origin, Refusal};
use egress_policy::InvalidLineEndings;
use egress_smtp::{BodyReader, LineEndings, Reply, TlsInfo};
use egress_spool::{Envelope, SpoolError, SpoolWriter};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

/// Pass body octets on once this many are ready.
const FLUSH_AT: usize = 64 * 1024;
/// The `.` CR LF that ends DATA, counted in what we receive but not in the message.
const END_MARKER: u64 = 3;

/// Where the session is, for the `Received:` header (and the policy's
/// `conn_meta`).
pub struct Trace<'a> {
    pub helo: &'a str,
    pub peer: SocketAddr,
    pub hostname: &'a str,
    pub product: &'a str,
    pub tls: Option<&'a TlsInfo>,
    pub authenticated: bool,
    pub conn_meta: &'a [(&'static str, String)],
}

/// Where framed body octets go.
pub(super) trait BodySink {
    /// Whether it takes the message text itself (BDAT) rather than DATA's framing.
    fn unstuffed(&self) -> bool {
        false
    }
    /// Takes octets, `last` with the final ones (a sink that has failed ignores
    /// them and remembers why).
    async fn put(&mut self, bytes: &[u8], last: bool);
    /// The message is refused: drop what was taken.
    fn discard(&mut self);
}

/// To the destination, while it is still taking the message.
pub(super) struct Forward {
    out: Option<Outbound>,
    /// The text goes as BDAT chunks (the destination offers CHUNKING).
    bdat: bool,
    /// DATA was sent and its reply is still to be read: before any octet goes.
    go_ahead_pending: bool,
    /// The destination answered DATA with a refusal: its reply, for the client
    /// once the message text has been read.
    refused: Option<Reply>,
    broken: Option<String>,
}

impl BodySink for Forward {
    fn unstuffed(&self) -> bool {
        self.bdat
    }

    async fn put(&mut self, bytes: &[u8], last: bool) {
        let Some(out) = self.out.as_mut() else {
            return;
        };
        if self.bdat {
            if let Err(e) = out.bdat(bytes, last).await {
                self.lost(&e);
            }
            return;
        }
        if std::mem::take(&mut self.go_ahead_pending) {
            match out.data_reply().await {
                Ok(None) => {}
                Ok(Some(refused)) => {
                    self.refused = Some(refused);
                    return self.discard();
                }
                Err(e) => return self.lost(&e),
            }
        }
        if let Err(e) = out.write_body(bytes).await {
            self.lost(&e);
        }
    }

    fn discard(&mut self) {
        // Closed without the end marker: the destination discards its partial copy.
        if let Some(out) = self.out.take() {
            tokio::spawn(out.quit());
        }
    }
}

impl Forward {
    /// The destination session failed mid-message: remember why, and close it.
    fn lost(&mut self, e: &std::io::Error) {
        self.broken = Some(e.to_string());
        self.discard();
    }
}

/// Into the spool.
pub(super) struct ToSpool {
    writer: Option<SpoolWriter>,
    failed: Option<SpoolError>,
}

impl BodySink for ToSpool {
    async fn put(&mut self, bytes: &[u8], _last: bool) {
        if let Some(writer) = self.writer.as_mut() {
            // Page-cache writes; the fsyncs happen at commit, on a blocking thread.
            if let Err(e) = writer.write(bytes) {
                self.failed = Some(e);
                self.writer = None;
            }
        }
    }

    fn discard(&mut self) {
        self.writer = None;
    }
}

/// How reading the body ended, when the client sent it all.
enum Read {
    /// Whole and acceptable.
    Whole,
    /// Refused (bare line ending under `Deny`, too large): the reply, and the
    /// outcome for the log.
    Refused(Reply, String),
}

/// The client went away or timed out mid-message: it never got a 250, so it still
/// has the message.
const CLIENT_GONE: &str = "client went away or timed out during DATA";

/// DATA for `t`: cut-through or spooled (see the module documentation).
/// `Err(Ended)` when the client went away or timed out mid-message.
pub async fn data<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: &Arc<Context>,
    inbound: &Listener,
    conn: &mut Conn<S>,
    t: Transaction,
    trace: Trace<'_>,
) -> Result<Reply, Ended> {
    if t.is_spooled() {
        spooled(ctx, inbound, conn, t, trace).await
    } else {
        cut_through(ctx, inbound, conn, t, trace).await
    }
}

async fn cut_through<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: &Context,
    inbound: &Listener,
    conn: &mut Conn<S>,
    t: Transaction,
    trace: Trace<'_>,
) -> Result<Reply, Ended> {
    let (mut t, mut sink) = match open_forward(t).await {
        Ok(opened) => opened,
        Err(reply) => return Ok(reply),
    };
    conn.reply(&go_ahead());
    if sink.bdat {
        t.log.note("message sent with BDAT (CHUNKING)");
    }
    let t = match receive_whole(inbound, conn, t, &trace, &mut sink).await {
        Ok(t) => t,
        Err(answered) => return answered,
    };
    Ok(finish_forward(ctx, t, sink).await)
}

/// Starts the message on the destination session the RCPTs opened: BDAT to a
/// destination that offers CHUNKING (nothing to send before the text), else DATA,
/// its reply read with the first text. `Err`: the reply the client gets (the
/// transaction has ended).
pub(super) async fn open_forward(mut t: Transaction) -> Result<(Transaction, Forward), Reply> {
    let Some(mut out) = t.legs.first_mut().and_then(|l| l.outbound.take()) else {
        let reply = Reply::new(451, [4, 3, 0], "internal error: no destination session");
        t.log.decide(&reply, Origin::Local, "DATA");
        t.log.emit("no destination session");
        return Err(reply);
    };
    let bdat = out.takes_bdat();
    let started = if bdat {
        out.start_bdat()
    } else {
        out.send_data().await
    };
    if let Err(e) = started {
        t.log.note(&e.to_string());
        let reply = Reply::new(451, [4, 4, 2], format!("lost the destination session: {e}"));
        t.log.decide(&reply, Origin::Local, "DATA");
        tokio::spawn(out.quit());
        t.end("lost the destination at DATA");
        return Err(reply);
    }
    let sink = Forward {
        out: Some(out),
        bdat,
        go_ahead_pending: !bdat,
        refused: None,
        broken: None,
    };
    Ok((t, sink))
}

/// The message has gone to the destination (or not): its reply to the final dot
/// (or why there is none) is the client's, and the transaction ends.
pub(super) async fn finish_forward(ctx: &Context, mut t: Transaction, sink: Forward) -> Reply {
    if let Some(refused) = sink.refused {
        t.log.decide(&refused, Origin::Destination, "DATA");
        t.end(&format!("DATA refused: {refused}"));
        return refused;
    }
    let (Some(mut out), None) = (sink.out, &sink.broken) else {
        let e = sink.broken.unwrap_or_default();
        t.log.note(&e);
        let reply = Reply::new(
            451,
            [4, 4, 2],
            format!("lost the destination session during DATA: {e}"),
        );
        t.log.decide(&reply, Origin::Local, ".");
        t.log.emit("lost the destination during DATA");
        return reply;
    };
    let reply = match out.final_reply().await {
        Ok(reply) => {
            // The transaction is over: keep the session for the next one through the
            // same source to the same host, if it is clean.
            ctx.idle.release(out).await;
            t.log.decide(&reply, Origin::Destination, ".");
            reply
        }
        Err(e) => {
            t.log.note(&e.to_string());
            // The destination may have the message; saying 4xx risks a duplicate,
            // saying 2xx risks a loss. We never risk a loss.
            let reply = Reply::new(
                451,
                [4, 4, 2],
                format!("no reply from the destination to the message: {e}"),
            );
            t.log.decide(&reply, Origin::Local, ".");
            reply
        }
    };
    t.log.outcome = Some(reply.to_string());
    t.end("delivered");
    reply
}

async fn spooled<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: &Arc<Context>,
    inbound: &Listener,
    conn: &mut Conn<S>,
    t: Transaction,
    trace: Trace<'_>,
) -> Result<Reply, Ended> {
    let (t, delivery, mut sink, id) = match open_spool(inbound, t) {
        Ok(opened) => opened,
        Err(reply) => return Ok(reply),
    };
    conn.reply(&go_ahead());
    let t = match receive_whole(inbound, conn, t, &trace, &mut sink).await {
        Ok(t) => t,
        Err(answered) => return answered,
    };
    Ok(commit_spool(ctx, t, delivery, sink, id).await)
}

/// A spool writer for the message, and its id. `Err`: the reply the client gets
/// (the transaction has ended).
pub(super) fn open_spool(
    inbound: &Listener,
    mut t: Transaction,
) -> Result<(Transaction, Arc<crate::Delivery>, ToSpool, String), Reply> {
    let Some(delivery) = inbound.spool.clone() else {
        let reply = Reply::new(451, [4, 3, 0], "internal error: no spool");
        t.log.decide(&reply, Origin::Local, "DATA");
        t.end("no spool");
        return Err(reply);
    };
    let writer = match delivery.spool().writer() {
        Ok(w) => w,
        Err(e) => return Err(spool_failed(t, &e)),
    };
    let id = writer.id().to_owned();
    let sink = ToSpool {
        writer: Some(writer),
        failed: None,
    };
    Ok((t, delivery, sink, id))
}

/// The message is in the spool's writer: made durable with its envelope, then
/// `250` (and delivery begins), or the reason it could not be.
pub(super) async fn commit_spool(
    ctx: &Arc<Context>,
    mut t: Transaction,
    delivery: Arc<crate::Delivery>,
    sink: ToSpool,
    id: String,
) -> Reply {
    let writer = match (sink.writer, sink.failed) {
        (Some(w), None) => w,
        (_, Some(e)) => return spool_failed(t, &e),
        (None, None) => {
            return spool_failed(
                t,
                &SpoolError::Io {
                    path: id,
                    error: std::io::Error::other("writer gone"),
                },
            )
        }
    };
    let mut envelope = Envelope::new(
        &id,
        &t.from,
        t.body_8bit,
        t.legs.iter().map(|l| {
            let all: Vec<String> = l.confirmed.iter().chain(&l.deferred).cloned().collect();
            (l.domain.clone(), all)
        }),
    );
    envelope.tenant = t.log.tenant.clone();
    if let Some(rec) = &t.log.recording {
        envelope.meta = (*rec.message.meta).clone();
    }
    let committed = {
        let envelope = envelope.clone();
        crate::delivery::blocking(move || writer.commit(&envelope)).await
    };
    if let Err(e) = committed {
        return spool_failed(t, &e);
    }
    // Durable: now the client may hear 250, and the sessions its RCPTs opened
    // deliver at once.
    let sessions: Vec<OpenSession> = t
        .legs
        .iter_mut()
        .filter_map(|l| {
            let outbound = l.outbound.take()?;
            Some(OpenSession {
                domain: l.domain.clone(),
                outbound,
                confirmed: l.confirmed.clone(),
            })
        })
        .collect();
    let domains = t.legs.len();
    delivery.accept(ctx.clone(), envelope, sessions);
    let reply = Reply::new(
        250,
        [2, 0, 0],
        format!("queued as {id}; delivering to {domains} domains"),
    );
    t.log.decide(&reply, Origin::Local, ".");
    if let Some(rec) = t.log.recording.as_mut() {
        rec.spool_id = Some(id.clone());
    }
    t.log.note(&format!("spooled as {id}"));
    t.log.outcome = Some(reply.to_string());
    t.end("spooled");
    reply
}

pub(super) fn go_ahead() -> Reply {
    Reply::new(354, [2, 0, 0], "send the message, end with <CRLF>.<CRLF>")
}

/// The spool could not take the message: 452 4.3.1 when full, else 451 4.3.0;
/// nothing was kept.
fn spool_failed(mut t: Transaction, e: &SpoolError) -> Reply {
    let reply = match e {
        SpoolError::Full { .. } => Reply::new(
            452,
            [4, 3, 1],
            format!("cannot take the message now: {e}; try again later"),
        ),
        SpoolError::Io { .. } => {
            Reply::new(451, [4, 3, 0], format!("cannot spool the message: {e}"))
        }
    };
    tracing::warn!("spool: {e}");
    t.log.decide(&reply, Origin::Local, ".");
    t.end(&format!("not spooled: {e}"));
    reply
}

/// [`receive`], ending the transaction when the body is refused or the client
/// goes: `Ok` with the transaction when the whole body was taken, else what DATA
/// returns.
pub(super) async fn receive_whole<S: AsyncRead + AsyncWrite + Unpin, K: BodySink>(
    inbound: &Listener,
    conn: &mut Conn<S>,
    mut t: Transaction,
    trace: &Trace<'_>,
    sink: &mut K,
) -> Result<Transaction, Result<Reply, Ended>> {
    match receive(inbound, conn, &mut t, trace, sink).await {
        Ok(Read::Whole) => Ok(t),
        Ok(Read::Refused(reply, outcome)) => {
            t.end(&outcome);
            Err(Ok(reply))
        }
        Err(ended) => {
            t.end(CLIENT_GONE);
            Err(Err(ended))
        }
    }
}

/// Reads the body into `sink` until the end marker; a refusal is answered (and
/// counted) here, logged by the caller.
async fn receive<S: AsyncRead + AsyncWrite + Unpin, K: BodySink>(
    inbound: &Listener,
    conn: &mut Conn<S>,
    t: &mut Transaction,
    trace: &Trace<'_>,
    sink: &mut K,
) -> Result<Read, Ended> {
    let listener = &inbound.config;
    let deadline = conn.deadline(Waiting::Data);
    let endings = line_endings(listener.invalid_line_endings);
    let mut reader = if sink.unstuffed() {
        BodyReader::unstuffed(endings)
    } else {
        BodyReader::new(endings)
    };
    let mut pending = received_header(trace, &t.log.id).into_bytes();
    let max = listener.max_message_size;
    let mut discarded = false;
    loop {
        if conn.inbox.is_empty() {
            if let Err(ended) = conn.fill(deadline, Waiting::Data, true).await {
                // The destination (closed without the end marker) or the spool (the
                // writer dropped) keeps nothing.
                sink.discard();
                t.log.size = reader.received();
                t.log.decided = None;
                return Err(ended);
            }
        }
        // Room for what this input makes, so the buffer grows once, not per line.
        pending.reserve(conn.inbox.len());
        let (used, done) = reader.feed(&conn.inbox, &mut pending);
        conn.inbox.drain(..used);
        if !discarded && (reader.refused() || reader.received() > max + END_MARKER) {
            sink.discard();
            discarded = true;
        }
        if discarded {
            pending.clear();
        } else if pending.len() >= FLUSH_AT || done {
            if let Some(rec) = t.log.recording.as_mut() {
                rec.capture_head(&pending);
            }
            sink.put(&pending, done).await;
            pending.clear();
        }
        if done {
            break;
        }
    }
    conn.shrink();
    t.log.size = reader.received();
    if let Some(invalid) = reader.invalid().filter(|_| reader.refused()) {
        inbound.refused(Refusal::InvalidLineEndings);
        let reply = Reply::new(
            550,
            [5, 6, 0],
            format!("message refused: it contains {invalid}"),
        );
        t.log.decide(&reply, Origin::Local, ".");
        return Ok(Read::Refused(reply, format!("refused: {invalid}")));
    }
    if reader.received() > max + END_MARKER {
        inbound.refused(Refusal::MessageTooLarge);
        let reply = Reply::new(
            552,
            [5, 3, 4],
            format!("message exceeds the limit of {max} bytes"),
        );
        t.log.decide(&reply, Origin::Local, ".");
        return Ok(Read::Refused(reply, "message too large".into()));
    }
    if let Some(invalid) = reader.invalid() {
        t.log.note(&format!("line endings made CR LF: {invalid}"));
    }
    Ok(Read::Whole)
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
    DATE.with_borrow_mut(|date| {
        format!(
            "Received: from {helo} ([{}])\r\n\tby {} ({}) with {protocol} id {id}{tls};\r\n\t{}\r\n",
            trace.peer.ip().to_canonical(),
            trace.hostname,
            trace.product,
            date.now()
        )
    })
}

thread_local! {
    /// The `Received:` date, made once a second per worker thread rather than for
    /// every message.
    static DATE: std::cell::RefCell<Date> = const { std::cell::RefCell::new(Date { second: 0, text: String::new() }) };
}

/// A formatted date and the second it is for.
struct Date {
    second: u64,
    text: String,
}

impl Date {
    fn now(&mut self) -> &str {
        let now = std::time::SystemTime::now();
        let second = now
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if second != self.second || self.text.is_empty() {
            self.second = second;
            self.text = httpdate::fmt_http_date(now);
        }
        &self.text
    }
}
