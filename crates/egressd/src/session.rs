//! One inbound SMTP session: commands parsed by smtp-proto, each transaction
//! relayed through an egress source as it happens. egressd never holds a message:
//! the client's 250 is the destination's 250.

use crate::data::{DotStuffer, IncomingData};
use crate::outbound::{Context, OpenError, Outbound};
use crate::reply::Reply;
use crate::shutdown::{Shutdown, State};
use crate::txlog::TxLog;
use egress_lua::EsmtpListener;
use smtp_proto::{Error as ParseError, Request};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest command line (RFC 5321 allows 512; we are lenient up to a text line).
const MAX_LINE: usize = 1000;
/// The `.` CR LF that ends DATA, counted in what we receive but not in the message.
const END_MARKER: u64 = 3;

/// The session's transport: buffered input, batched replies (so PIPELINING clients
/// get their replies in one write), the idle timeout and the shutdown signal.
struct Conn {
    stream: TcpStream,
    /// The listener's `client_timeout`: how long the client may stay silent.
    idle: Duration,
    inbox: Vec<u8>,
    outbox: Vec<u8>,
    shutdown: Shutdown,
}

/// The session is over: the client went away, or we ended it (timeout, shutdown)
/// and have already said so. Nothing further is written either way.
struct Ended;

impl Conn {
    fn reply(&mut self, reply: &Reply) {
        self.outbox.extend_from_slice(reply.to_wire().as_bytes());
    }

    async fn flush(&mut self) -> Result<(), Ended> {
        if self.outbox.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(&mut self.outbox);
        // A client that stops reading must not hold the session for ever.
        match tokio::time::timeout(self.idle, self.stream.write_all(&out)).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(Ended),
        }
    }

    /// Reads more input, flushing pending replies first. While no transaction is
    /// open, a draining shutdown ends the session with 421; a forced one always does.
    async fn fill(&mut self, in_transaction: bool) -> Result<(), Ended> {
        self.flush().await?;
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let state = self.shutdown.state();
            if state == State::Force || (state == State::Draining && !in_transaction) {
                self.reply(&Reply::new(
                    421,
                    [4, 3, 2],
                    "egressd is shutting down; please try again later",
                ));
                let _ = self.flush().await;
                return Err(Ended);
            }
            tokio::select! {
                read = tokio::time::timeout(self.idle, self.stream.read(&mut chunk)) => {
                    return match read {
                        Ok(Ok(0)) | Ok(Err(_)) => Err(Ended),
                        Ok(Ok(n)) => {
                            self.inbox.extend_from_slice(&chunk[..n]);
                            Ok(())
                        }
                        Err(_) => {
                            self.reply(&Reply::new(421, [4, 4, 2], "idle for too long, closing"));
                            let _ = self.flush().await;
                            Err(Ended)
                        }
                    };
                }
                _ = self.shutdown.changed() => continue,
            }
        }
    }

    /// The next command line (with its CR LF). Lines over [`MAX_LINE`] are answered
    /// with 500 5.5.2 and skipped.
    async fn next_line(&mut self, in_transaction: bool) -> Result<Vec<u8>, Ended> {
        let mut skipping = false;
        loop {
            if let Some(pos) = self.inbox.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.inbox.drain(..=pos).collect();
                if skipping || line.len() > MAX_LINE {
                    self.reply(&Reply::new(
                        500,
                        [5, 5, 2],
                        format!("line too long (over {MAX_LINE} octets)"),
                    ));
                    skipping = false;
                    continue;
                }
                return Ok(line);
            }
            if self.inbox.len() > MAX_LINE {
                // Drop what we have and the rest of the line when it comes.
                self.inbox.clear();
                skipping = true;
            }
            self.fill(in_transaction).await?;
        }
    }
}

/// A transaction from MAIL FROM to the end of DATA (or RSET).
struct Transaction {
    from: String,
    body_8bit: bool,
    domain: Option<String>,
    outbound: Option<Outbound>,
    accepted: usize,
    log: TxLog,
}

impl Transaction {
    /// Ends it: the log line is written and the destination session closed in the
    /// background, so the client's reply never waits for the destination's 221.
    fn end(mut self, outcome: &str) {
        if let Some(out) = self.outbound.take() {
            tokio::spawn(out.quit());
        }
        self.log.emit(outcome);
    }
}

/// Serves one client until it quits, goes away, or times out.
pub async fn serve(
    ctx: Arc<Context>,
    listener: Arc<EsmtpListener>,
    stream: TcpStream,
    peer: SocketAddr,
    shutdown: Shutdown,
) {
    let mut conn = Conn {
        stream,
        idle: listener.client_timeout,
        inbox: Vec::with_capacity(4096),
        outbox: Vec::new(),
        shutdown,
    };
    let hostname = listener
        .hostname
        .clone()
        .unwrap_or_else(|| ctx.hostname.clone());
    let banner = listener.banner.as_deref().unwrap_or("ESMTP egressd");
    let welcome: String = format!("{hostname} {banner}")
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    conn.reply(&Reply {
        code: 220,
        esc: None,
        lines: vec![welcome],
    });
    // A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d; relay_hosts are
    // written for the address the client really has.
    let client_ip = peer.ip().to_canonical();
    let may_relay = listener
        .relay_hosts
        .iter()
        .any(|net| net.contains(&client_ip));
    let mut helo: Option<String> = None;
    let mut tx: Option<Transaction> = None;

    loop {
        let line = match conn.next_line(tx.is_some()).await {
            Ok(line) => line,
            Err(_) => break,
        };
        let request = Request::parse(&mut line.iter());
        let reply = match request {
            Ok(Request::Ehlo { host }) => greeting(
                &mut tx,
                &mut helo,
                host,
                &hostname,
                Some(listener.max_message_size),
            ),
            Ok(Request::Helo { host }) => greeting(&mut tx, &mut helo, host, &hostname, None),
            Ok(Request::Mail { from }) => {
                if helo.is_none() {
                    Reply::new(503, [5, 5, 1], "send EHLO or HELO first")
                } else if tx.is_some() {
                    Reply::new(503, [5, 5, 1], "a transaction is already open; RSET first")
                } else if from.size as u64 > listener.max_message_size {
                    Reply::new(
                        552,
                        [5, 3, 4],
                        format!(
                            "message size exceeds the limit of {} bytes",
                            listener.max_message_size
                        ),
                    )
                } else {
                    tx = Some(Transaction {
                        body_8bit: from.flags & smtp_proto::MAIL_BODY_8BITMIME != 0,
                        log: TxLog::new(peer, &from.address),
                        from: from.address,
                        domain: None,
                        outbound: None,
                        accepted: 0,
                    });
                    Reply::new(250, [2, 1, 0], "sender OK")
                }
            }
            Ok(Request::Rcpt { to }) => match tx.as_mut() {
                None => Reply::new(503, [5, 5, 1], "send MAIL FROM first"),
                Some(t) => {
                    let max = listener.max_recipients_per_message;
                    let refusal = if !may_relay {
                        Some(Reply::new(
                            550,
                            [5, 7, 1],
                            format!("relaying denied for {client_ip}"),
                        ))
                    } else if t.accepted >= max {
                        Some(Reply::new(452, [4, 5, 3], format!("too many recipients (at most {max} per message); send the rest in another transaction")))
                    } else {
                        None
                    };
                    rcpt(&ctx, t, &to.address, refusal).await
                }
            },
            Ok(Request::Data) => match tx.take() {
                None => Reply::new(503, [5, 5, 1], "send MAIL FROM first"),
                Some(t) if t.accepted == 0 => {
                    let reply = Reply::new(554, [5, 5, 1], "no valid recipients");
                    t.end("no valid recipients");
                    reply
                }
                Some(t) => match data(
                    &ctx,
                    &listener,
                    &mut conn,
                    t,
                    helo.as_deref().unwrap_or(""),
                    &hostname,
                    peer,
                )
                .await
                {
                    Ok(reply) => reply,
                    Err(_) => break,
                },
            },
            Ok(Request::Rset) => {
                if let Some(t) = tx.take() {
                    t.end("reset by RSET");
                }
                Reply::new(250, [2, 0, 0], "reset")
            }
            Ok(Request::Noop { .. }) => Reply::new(250, [2, 0, 0], "OK"),
            Ok(Request::Quit) => {
                conn.reply(&Reply::new(221, [2, 0, 0], "bye"));
                let _ = conn.flush().await;
                break;
            }
            Ok(Request::Vrfy { .. }) => {
                Reply::new(252, [2, 5, 0], "cannot verify; send the message and see")
            }
            Ok(_) => Reply::new(502, [5, 5, 1], "command not implemented"),
            Err(ParseError::UnknownCommand) => Reply::new(500, [5, 5, 1], "unknown command"),
            Err(ParseError::SyntaxError { syntax }) => {
                Reply::new(501, [5, 5, 4], format!("syntax: {syntax}"))
            }
            Err(ParseError::InvalidSenderAddress) => {
                Reply::new(501, [5, 1, 7], "bad sender address syntax")
            }
            Err(ParseError::InvalidRecipientAddress) => {
                Reply::new(501, [5, 1, 3], "bad recipient address syntax")
            }
            Err(ParseError::InvalidParameter { param }) => {
                Reply::new(501, [5, 5, 4], format!("invalid parameter {param}"))
            }
            Err(ParseError::UnsupportedParameter { param }) => {
                Reply::new(555, [5, 5, 4], format!("unsupported parameter {param}"))
            }
            Err(ParseError::ResponseTooLong) => Reply::new(500, [5, 5, 2], "line too long"),
            Err(_) => Reply::new(500, [5, 5, 2], "cannot parse the command"),
        };
        conn.reply(&reply);
    }
    if let Some(t) = tx.take() {
        t.end("client went away mid-transaction");
    }
    let _ = conn.flush().await;
}

/// EHLO (with `max_size`, to advertise extensions) or HELO. A greeting starts over
/// (RFC 5321 §4.1.4): any open transaction ends.
fn greeting(
    tx: &mut Option<Transaction>,
    helo: &mut Option<String>,
    host: String,
    hostname: &str,
    max_size: Option<u64>,
) -> Reply {
    if let Some(t) = tx.take() {
        t.end("reset by a new greeting");
    }
    *helo = Some(host);
    let mut lines = vec![hostname.to_owned()];
    if let Some(max) = max_size {
        lines.extend([
            "PIPELINING".into(),
            format!("SIZE {max}"),
            "8BITMIME".into(),
            "ENHANCEDSTATUSCODES".into(),
        ]);
    }
    Reply {
        code: 250,
        esc: None,
        lines,
    }
}

/// RCPT: a local refusal (relay permission, recipient limit) or the destination's
/// answer; either way it goes into the transaction's log.
async fn rcpt(ctx: &Context, t: &mut Transaction, address: &str, refusal: Option<Reply>) -> Reply {
    let reply = match refusal {
        Some(refusal) => refusal,
        None => forward_rcpt(ctx, t, address).await,
    };
    t.log.recipient(address, &reply);
    if reply.is_positive() {
        t.accepted += 1;
    }
    reply
}

/// One destination domain per transaction; the first RCPT opens the destination
/// session, every RCPT is answered by the destination.
async fn forward_rcpt(ctx: &Context, t: &mut Transaction, address: &str) -> Reply {
    let Some(domain) = address
        .rsplit_once('@')
        .map(|(_, d)| d.trim_end_matches('.').to_ascii_lowercase())
        .filter(|d| !d.is_empty())
    else {
        return Reply::new(550, [5, 1, 3], "recipient must be of the form user@domain");
    };
    match &t.domain {
        Some(fixed) if *fixed != domain => {
            return Reply::new(
                452,
                [4, 5, 3],
                format!("this transaction is for {fixed}; send {domain} in another"),
            );
        }
        _ => {}
    }
    if t.outbound.is_none() {
        match Outbound::open(ctx, &domain, &t.from, t.body_8bit, &mut t.log).await {
            Ok(out) => {
                t.domain = Some(domain);
                t.outbound = Some(out);
            }
            Err(OpenError::Local(reply)) | Err(OpenError::Destination(reply)) => return reply,
        }
    }
    let Some(out) = t.outbound.as_mut() else {
        return Reply::new(451, [4, 3, 0], "internal error: no destination session");
    };
    match out.rcpt(address).await {
        Ok(reply) => reply,
        Err(e) => {
            t.log.note(&e.to_string());
            t.outbound = None;
            Reply::new(451, [4, 4, 2], format!("lost the destination session: {e}"))
        }
    }
}

/// DATA: the destination must say 354 before the client hears it; the body streams
/// through with a `Received:` header in front; the destination's final reply is ours.
async fn data(
    ctx: &Context,
    listener: &EsmtpListener,
    conn: &mut Conn,
    mut t: Transaction,
    helo: &str,
    hostname: &str,
    peer: SocketAddr,
) -> Result<Reply, Ended> {
    let Some(mut out) = t.outbound.take() else {
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
            t.outbound = Some(out);
            t.end(&format!("DATA refused: {refused}"));
            return Ok(refused);
        }
        Err(e) => {
            t.log.note(&e.to_string());
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

    let mut incoming = IncomingData::new();
    let mut stuffer = DotStuffer::default();
    let mut header = Some(received_header(helo, peer, hostname, &t.log.id));
    let mut broken: Option<String> = None;
    let max = listener.max_message_size;
    loop {
        if conn.inbox.is_empty() {
            if let Err(ended) = conn.fill(true).await {
                // The client never got a 250, so it still has the message. Closing
                // without the final dot makes the destination discard its copy.
                t.log.size = incoming.received;
                t.log.emit("client went away during DATA");
                return Err(ended);
            }
        }
        let (used, done) = incoming.ingest(&conn.inbox);
        conn.inbox.drain(..used);
        let chunk = incoming.take_ready(done);
        let too_large = incoming.received > max + END_MARKER;
        if !too_large && broken.is_none() && (!chunk.is_empty() || done) {
            let mut bytes = header.take().map(String::into_bytes).unwrap_or_default();
            stuffer.stuff(&chunk, &mut bytes);
            if done {
                stuffer.finish(&mut bytes);
            }
            if let Err(e) = out.write_body(&bytes).await {
                broken = Some(e.to_string());
            }
        }
        if done {
            break;
        }
    }
    t.log.size = incoming.received;
    if incoming.received > max + END_MARKER {
        t.log.emit("message too large");
        return Ok(Reply::new(
            552,
            [5, 3, 4],
            format!("message exceeds the limit of {max} bytes"),
        ));
    }
    if let Some(e) = broken {
        t.log.note(&e);
        t.log.emit("lost the destination during DATA");
        return Ok(Reply::new(
            451,
            [4, 4, 2],
            format!("lost the destination session during DATA: {e}"),
        ));
    }
    let reply = match out.final_reply().await {
        Ok(reply) => {
            // The transaction is over and the session is in a clean state: keep it
            // for the next transaction through the same source to the same host.
            ctx.release(out);
            reply
        }
        Err(e) => {
            t.log.note(&e.to_string());
            // The destination may have the message; saying 4xx risks a duplicate,
            // saying 2xx risks a loss. We never risk a loss.
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

/// The trace header we add (RFC 5321 §4.4).
fn received_header(helo: &str, peer: SocketAddr, by: &str, id: &str) -> String {
    let helo: String = helo.chars().filter(|c| c.is_ascii_graphic()).collect();
    format!(
        "Received: from {helo} ([{}])\r\n\tby {by} (egressd) with ESMTP id {id};\r\n\t{}\r\n",
        peer.ip().to_canonical(),
        httpdate::fmt_http_date(std::time::SystemTime::now())
    )
}
