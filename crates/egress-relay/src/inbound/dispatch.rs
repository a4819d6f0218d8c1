//! Answers the commands of one session. State that outlives a transaction (the
//! greeting, TLS, the authenticated identity) lives in [`Session`]; a transaction's
//! in [`Transaction`].

use super::auth::{self, Authenticated};
use super::body::{self, Trace};
use super::listener_domains;
use super::transaction::Transaction;
use super::transport::{Conn, Ended, Limits};
use super::whole;
use super::Listener;
use crate::outbound::Context;
use crate::records;
use crate::report::Refusal;
use crate::shutdown::Shutdown;
use egress_smtp::{words, Reply, TlsInfo};
use smtp_proto::Request;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

/// One client's session.
pub struct Session<S> {
    ctx: Arc<Context>,
    listener: Arc<Listener>,
    conn: Conn<S>,
    peer: SocketAddr,
    /// The client may relay by address (`relay_hosts`).
    relay_host: bool,
    helo: Option<String>,
    tx: Option<Transaction>,
    tls: Option<TlsInfo>,
    authenticated: Option<String>,
    auth_failures: u32,
    /// The session's UUID in log records (made at its first record).
    session_id: Option<Arc<str>>,
    /// The meta its messages carry in log records (made at its first message,
    /// made again after a greeting or AUTH changes it).
    record_meta: Option<Arc<serde_json::Map<String, serde_json::Value>>>,
}

/// What the loop does after a command.
enum Next {
    Reply(Reply),
    /// The reply was already queued (or nothing is due).
    Continue,
    Close,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// A session that has just been accepted.
    pub fn new(
        ctx: Arc<Context>,
        listener: Arc<Listener>,
        stream: S,
        peer: SocketAddr,
        shutdown: Shutdown,
    ) -> Self {
        let config = &listener.config;
        let limits = Limits {
            client_timeout: config.client_timeout,
            data_timeout: config.data_timeout,
            max_session_duration: config.max_session_duration,
        };
        // A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d; relay_hosts are
        // written for the address the client really has.
        let client_ip = peer.ip().to_canonical();
        let relay_host = config
            .relay_hosts
            .iter()
            .any(|net| net.contains(&client_ip));
        Session {
            conn: Conn::new(stream, limits, shutdown),
            ctx,
            listener,
            peer,
            relay_host,
            helo: None,
            tx: None,
            tls: None,
            authenticated: None,
            auth_failures: 0,
            session_id: None,
            record_meta: None,
        }
    }

    /// Serves until the client quits, goes away, or times out.
    pub async fn run(mut self) {
        let banner = self
            .listener
            .config
            .banner
            .as_deref()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("ESMTP {}", self.ctx.product));
        let welcome: String = format!("{} {banner}", self.listener.hostname)
            .chars()
            .filter(|c| !c.is_control())
            .collect();
        self.conn.reply(&Reply {
            code: 220,
            esc: None,
            lines: vec![welcome],
        });
        let mut line = Vec::with_capacity(128);
        loop {
            if let Err(Ended) = self.conn.next_line(&mut line, self.tx.is_some()).await {
                break;
            }
            match self.command(&line).await {
                Next::Reply(reply) => self.conn.reply(&reply),
                Next::Continue => {}
                Next::Close => break,
            }
        }
        if let Some(t) = self.tx.take() {
            t.end("client went away mid-transaction");
        }
        let _ = self.conn.flush().await;
    }

    async fn command(&mut self, line: &[u8]) -> Next {
        if let Some(refusal) = eight_bit_refusal(line) {
            return Next::Reply(refusal);
        }
        let request = match Request::parse(&mut line.iter()) {
            Ok(request) => request,
            Err(e) => return Next::Reply(parse_refusal(&e)),
        };
        Next::Reply(match request {
            Request::Ehlo { host } => self.greeting(host, true),
            Request::Helo { host } => self.greeting(host, false),
            Request::StartTls => return self.starttls().await,
            Request::Auth {
                mechanism,
                initial_response,
            } => return self.auth(mechanism, &initial_response).await,
            Request::Mail { from } => {
                let sender = from.address.clone();
                let reply = self.mail(from);
                if !reply.is_positive() {
                    self.rejected(&sender, &reply, "MAIL FROM");
                }
                reply
            }
            Request::Rcpt { to } => self.rcpt(&to.address).await,
            Request::Data => match self.data().await {
                Ok(reply) => reply,
                Err(Ended) => return Next::Close,
            },
            Request::Rset => {
                if let Some(t) = self.tx.take() {
                    t.end("reset by RSET");
                }
                Reply::new(250, [2, 0, 0], "reset")
            }
            Request::Noop { .. } => Reply::new(250, [2, 0, 0], "OK"),
            Request::Quit => {
                if let Some(t) = self.tx.take() {
                    t.end("client ended the transaction (QUIT)");
                }
                self.conn.reply(&Reply::new(221, [2, 0, 0], "bye"));
                let _ = self.conn.flush().await;
                return Next::Close;
            }
            Request::Vrfy { .. } => {
                Reply::new(252, [2, 5, 0], "cannot verify; send the message and see")
            }
            _ => Reply::new(502, [5, 5, 1], "command not implemented"),
        })
    }

    /// EHLO (extensions advertised) or HELO. A greeting starts over (RFC 5321
    /// §4.1.4): any open transaction ends.
    fn greeting(&mut self, host: String, extended: bool) -> Reply {
        if let Some(t) = self.tx.take() {
            t.end("reset by a new greeting");
        }
        self.helo = Some(host);
        self.record_meta = None;
        let mut lines = vec![self.listener.hostname.clone()];
        if extended {
            lines.extend([
                "PIPELINING".into(),
                format!("SIZE {}", self.listener.config.max_message_size),
                "8BITMIME".into(),
                "ENHANCEDSTATUSCODES".into(),
                // RFC 9422: a client that knows the limit splits for it instead of
                // meeting 452 4.5.3.
                format!(
                    "LIMITS RCPTMAX={}",
                    self.listener.config.max_recipients_per_message
                ),
            ]);
            if self.tls.is_none() {
                lines.push("STARTTLS".into());
            } else if self.listener.auth && self.authenticated.is_none() {
                lines.push("AUTH PLAIN LOGIN".into());
            }
        }
        Reply {
            code: 250,
            esc: None,
            lines,
        }
    }

    /// STARTTLS: 220, then the handshake; the client must greet again, and nothing
    /// it pipelined after the command is read (see `Conn::starttls`).
    async fn starttls(&mut self) -> Next {
        if self.tls.is_some() {
            return Next::Reply(Reply::new(503, [5, 5, 1], "TLS is already active"));
        }
        if self.tx.is_some() {
            return Next::Reply(Reply::new(
                503,
                [5, 5, 1],
                "finish or RSET the transaction before STARTTLS",
            ));
        }
        self.conn
            .reply(&Reply::new(220, [2, 0, 0], "ready to start TLS"));
        match self.conn.starttls(&self.listener.tls).await {
            Ok(info) => {
                // RFC 3207 §4.2: everything learnt before TLS is forgotten.
                self.tls = Some(info);
                self.helo = None;
                Next::Continue
            }
            Err(Ended) => Next::Close,
        }
    }

    async fn auth(&mut self, mechanism: u64, initial: &str) -> Next {
        if self.tls.is_none() {
            // No credentials are read in clear, not even an initial response.
            return Next::Reply(Reply::new(
                538,
                [5, 7, 11],
                "encryption required for authentication: STARTTLS first",
            ));
        }
        if !self.listener.auth {
            return Next::Reply(Reply::new(502, [5, 5, 1], "AUTH is not offered here"));
        }
        if self.authenticated.is_some() {
            return Next::Reply(Reply::new(503, [5, 5, 1], "already authenticated"));
        }
        if self.helo.is_none() || self.tx.is_some() {
            return Next::Reply(Reply::new(
                503,
                [5, 5, 1],
                "AUTH comes after EHLO and before MAIL",
            ));
        }
        let meta = self.conn_meta();
        let policy = self.ctx.policy.clone();
        match auth::authenticate(&mut self.conn, &*policy, mechanism, initial, &meta).await {
            Err(Ended) => Next::Close,
            Ok(Authenticated::Yes(identity)) => {
                tracing::info!(client = %self.peer, identity = %identity, "authenticated");
                self.authenticated = Some(identity);
                self.record_meta = None;
                Next::Reply(Reply::new(235, [2, 7, 0], "authentication succeeded"))
            }
            Ok(Authenticated::No { reply, failed }) => {
                if failed {
                    self.auth_failures += 1;
                    self.listener.refused(Refusal::AuthFailed);
                    tracing::info!(client = %self.peer, failures = self.auth_failures, "authentication failed");
                }
                if self.auth_failures >= auth::MAX_FAILURES {
                    self.conn.reply(&reply);
                    self.conn.reply(&Reply::new(
                        421,
                        [4, 7, 0],
                        format!(
                            "{} failed authentication attempts; closing",
                            self.auth_failures
                        ),
                    ));
                    let _ = self.conn.flush().await;
                    return Next::Close;
                }
                Next::Reply(reply)
            }
        }
    }

    /// What the `smtp_server_auth_plain` and `get_listener_domain` handlers get as
    /// `conn_meta` (KumoMTA's names).
    fn conn_meta(&self) -> Vec<(&'static str, String)> {
        let mut meta = vec![
            ("received_from", self.peer.to_string()),
            ("received_via", self.listener.config.listen.to_string()),
            ("hostname", self.listener.hostname.clone()),
        ];
        if let Some(tls) = &self.tls {
            meta.push(("tls", tls.to_string()));
        }
        if let Some(identity) = &self.authenticated {
            meta.push(("authz_id", identity.clone()));
        }
        meta
    }

    /// The inbound side of log records: the session and the message's meta.
    fn inbound_facts(&mut self) -> Option<(Arc<dyn egress_record::RecordSink>, records::Inbound)> {
        let sink = self.ctx.records.clone().filter(|r| r.enabled())?;
        let session_id = self
            .session_id
            .get_or_insert_with(records::session_id)
            .clone();
        Some((
            sink,
            records::Inbound {
                session_id,
                ehlo: self.helo.clone().unwrap_or_default(),
                client: self.peer,
            },
        ))
    }

    /// What a new transaction's records need, when records are taken.
    fn recording(&mut self) -> Option<Box<records::Recording>> {
        let (sink, inbound) = self.inbound_facts()?;
        let meta = match &self.record_meta {
            Some(meta) => meta.clone(),
            None => {
                let meta = Arc::new(records::reception_meta(
                    self.peer,
                    self.listener.config.listen,
                    &self.listener.hostname,
                    &inbound.ehlo,
                    self.authenticated.as_deref(),
                ));
                self.record_meta = Some(meta.clone());
                meta
            }
        };
        let message = egress_record::Message { head: None, meta };
        Some(Box::new(records::Recording::new(
            sink,
            Some(inbound),
            message,
        )))
    }

    /// A refusal of ours outside a transaction's end (MAIL FROM): its record.
    fn rejected(&mut self, sender: &str, reply: &Reply, command: &str) {
        if let Some((sink, inbound)) = self.inbound_facts() {
            let id = crate::txlog::transaction_id();
            let message = egress_record::Message::default();
            records::rejection(
                &*sink,
                &message,
                &inbound,
                &id,
                sender,
                Vec::new(),
                reply,
                Some(command),
            );
        }
    }

    /// Relaying is allowed by address or by authentication.
    fn may_relay(&self) -> bool {
        self.relay_host || self.authenticated.is_some()
    }

    fn mail(&mut self, from: smtp_proto::MailFrom<String>) -> Reply {
        let max = self.listener.config.max_message_size;
        if self.helo.is_none() {
            Reply::new(503, [5, 5, 1], "send EHLO or HELO first")
        } else if self.tx.is_some() {
            Reply::new(503, [5, 5, 1], "a transaction is already open; RSET first")
        } else if !self.may_relay() && self.listener.auth && !self.listener.listener_domains {
            // (With listener domains RCPT decides: a domain may be open to anyone.)
            Reply::new(
                530,
                [5, 7, 0],
                "authentication required: STARTTLS, then AUTH",
            )
        } else if from.size as u64 > max {
            Reply::new(
                552,
                [5, 3, 4],
                format!("message size exceeds the limit of {max} bytes"),
            )
        } else if let Some(why) = self.ctx.records.as_ref().and_then(|r| r.refusal()) {
            Reply::new(451, [4, 3, 0], format!("cannot take mail now: {why}"))
        } else {
            let body_8bit = from.flags & smtp_proto::MAIL_BODY_8BITMIME != 0;
            let mut t = Transaction::new(
                self.peer,
                from.address,
                body_8bit,
                self.ctx.report.clone(),
                self.listener.spool.is_some(),
            );
            // What egressd knows of the tenant at routing time: who authenticated.
            t.log.tenant = self.authenticated.clone();
            t.log.recording = self.recording();
            self.tx = Some(t);
            Reply::new(250, [2, 1, 0], "sender OK")
        }
    }

    async fn rcpt(&mut self, address: &str) -> Reply {
        let client_ip = self.peer.ip().to_canonical();
        let mut may_relay = Ok(self.may_relay());
        if let (Ok(false), true, Some(t)) = (&may_relay, self.listener.listener_domains, &self.tx) {
            let meta = self.conn_meta();
            let listen = self.listener.config.listen.to_string();
            may_relay = listener_domains::permits(
                &*self.ctx.policy,
                &listen,
                &meta,
                client_ip,
                &t.log.sender,
                address,
            )
            .await;
        }
        let max = self.listener.config.max_recipients_per_message;
        let Some(t) = self.tx.as_mut() else {
            return Reply::new(503, [5, 5, 1], "send MAIL FROM first");
        };
        let refusal = match may_relay {
            // The policy could not say: a 4xx, the client keeps the message.
            Err(policy_failed) => Some(policy_failed),
            Ok(false) => {
                self.listener.refused(Refusal::RelayDenied);
                Some(Reply::new(
                    550,
                    [5, 7, 1],
                    format!("relaying denied for {client_ip}"),
                ))
            }
            Ok(true) if t.accepted >= max => Some(Reply::new(
                452,
                [4, 5, 3],
                format!(
                    "too many recipients (at most {max} per message); send the rest in another transaction"
                ),
            )),
            Ok(true) => None,
        };
        // Recipients a pipelining client has sent after this one, which may go to
        // the destination with it; never past the recipient limit.
        let ahead = if refusal.is_none() {
            pipelined_recipients(&self.conn.inbox)
        } else {
            Vec::new()
        };
        let room = max.saturating_sub(t.accepted + 1);
        t.rcpt(&self.ctx, address, refusal, &ahead, room).await
    }

    async fn data(&mut self) -> Result<Reply, Ended> {
        match self.tx.take() {
            None => Ok(Reply::new(503, [5, 5, 1], "send MAIL FROM first")),
            Some(t) if t.accepted == 0 => {
                let reply = Reply::new(554, [5, 5, 1], "no valid recipients");
                t.end("no valid recipients");
                Ok(reply)
            }
            Some(t) => {
                let conn_meta = match self.ctx.policy.handles_message_received() {
                    true => self.conn_meta(),
                    false => Vec::new(),
                };
                let trace = Trace {
                    helo: self.helo.as_deref().unwrap_or(""),
                    peer: self.peer,
                    hostname: &self.listener.hostname,
                    product: &self.ctx.product,
                    tls: self.tls.as_ref(),
                    authenticated: self.authenticated.is_some(),
                    conn_meta: &conn_meta,
                };
                // A policy that acts on each message gets it whole first.
                if self.ctx.policy.handles_message_received() {
                    whole::data(&self.ctx, &self.listener, &mut self.conn, t, trace).await
                } else {
                    body::data(&self.ctx, &self.listener, &mut self.conn, t, trace).await
                }
            }
        }
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

/// The recipients of the complete RCPT commands at the start of `inbox` (what
/// a pipelining client sent after the command being answered), as the session
/// will read them: the same line limit, 8-bit check and parser, stopping at the
/// first line that is not such an RCPT.
fn pipelined_recipients(inbox: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = inbox;
    while let Some(end) = memchr::memchr(b'\n', rest) {
        let line = &rest[..=end];
        rest = &rest[end + 1..];
        if line.len() > super::transport::MAX_LINE || eight_bit_refusal(line).is_some() {
            break;
        }
        match Request::parse(&mut line.iter()) {
            Ok(Request::Rcpt { to }) => found.push(to.address),
            _ => break,
        }
    }
    found
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
