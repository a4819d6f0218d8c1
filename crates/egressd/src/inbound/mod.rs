//! One inbound SMTP session: commands parsed by smtp-proto, each transaction
//! relayed through an egress source as it happens. egressd never holds a message:
//! the client's 250 is the destination's 250.
//!
//! `transport` reads and writes against deadlines; `transaction` forwards RCPTs and
//! streams DATA; this module dispatches commands.

mod transaction;
mod transport;

use crate::outbound::Context;
use crate::shutdown::Shutdown;
use egress_lua::EsmtpListener;
use egress_smtp::{words, Reply};
use smtp_proto::Request;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use transaction::{Trace, Transaction};
use transport::{Conn, Limits};

/// Serves one client until it quits, goes away, or times out.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: Arc<Context>,
    listener: Arc<EsmtpListener>,
    stream: S,
    peer: SocketAddr,
    shutdown: Shutdown,
) {
    let limits = Limits {
        client_timeout: listener.client_timeout,
        data_timeout: listener.data_timeout,
        max_session_duration: listener.max_session_duration,
    };
    let mut conn = Conn::new(stream, limits, shutdown);
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
        if let Some(refusal) = eight_bit_refusal(&line) {
            conn.reply(&refusal);
            continue;
        }
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
                    let body_8bit = from.flags & smtp_proto::MAIL_BODY_8BITMIME != 0;
                    tx = Some(Transaction::new(peer, from.address, body_8bit));
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
                    t.rcpt(&ctx, &to.address, refusal).await
                }
            },
            Ok(Request::Data) => match tx.take() {
                None => Reply::new(503, [5, 5, 1], "send MAIL FROM first"),
                Some(t) if t.accepted == 0 => {
                    let reply = Reply::new(554, [5, 5, 1], "no valid recipients");
                    t.end("no valid recipients");
                    reply
                }
                Some(t) => {
                    let trace = Trace {
                        helo: helo.as_deref().unwrap_or(""),
                        peer,
                        hostname: &hostname,
                    };
                    match transaction::data(&ctx, &listener, &mut conn, t, trace).await {
                        Ok(reply) => reply,
                        Err(_) => break,
                    }
                }
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
            Err(e) => parse_refusal(&e),
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

/// The reply to a line smtp-proto could not parse.
fn parse_refusal(e: &smtp_proto::Error) -> Reply {
    use smtp_proto::Error::*;
    let (code, esc) = match e {
        UnknownCommand => (500, [5, 5, 1]),
        InvalidSenderAddress => (501, [5, 1, 7]),
        InvalidRecipientAddress => (501, [5, 1, 3]),
        UnsupportedParameter { .. } => (555, [5, 5, 4]),
        SyntaxError { .. } | InvalidParameter { .. } => (501, [5, 5, 4]),
        _ => (500, [5, 5, 2]),
    };
    Reply::new(code, esc, words::parse_error(e))
}

/// egressd does not offer SMTPUTF8, so addresses must be ASCII (RFC 6531 §3.4):
/// an 8-bit MAIL or RCPT is refused, naming the address, and never altered.
/// Other commands with 8-bit octets are syntax errors.
fn eight_bit_refusal(line: &[u8]) -> Option<Reply> {
    if line.is_ascii() {
        return None;
    }
    let shown = line.trim_ascii_end().escape_ascii().to_string();
    let verb = line.get(..4).map(|v| v.to_ascii_uppercase());
    Some(match verb.as_deref() {
        Some(b"MAIL") | Some(b"RCPT") => Reply::new(
            553,
            [5, 6, 7],
            format!("{shown}: the address has non-ASCII octets and SMTPUTF8 is not offered here"),
        ),
        _ => Reply::new(
            500,
            [5, 5, 2],
            format!("{shown}: non-ASCII octets in a command"),
        ),
    })
}
