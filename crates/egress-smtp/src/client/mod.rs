//! The client side of an SMTP session: one connection to a destination, commands in
//! the order RFC 5321 allows, each reply read before the next is due.
//!
//! The session knows where it is in the dialogue ([`Phase`]), refuses a command out
//! of order instead of sending it, and says whether it may carry another
//! transaction ([`ClientSession::is_clean`]): only when the last reply read answered
//! the end of a message, a refused MAIL or RSET, and nothing unread is waiting. A
//! session that fails that test would hand the next transaction replies that belong
//! to somebody else.

mod auth;
mod greeting;

use greeting::parse_extensions;
pub use greeting::{Extensions, RefusedGreeting};

use crate::reply::ReplyBuffer;
use crate::tls::{describe_tls_error, MaybeTls, TlsInfo};
use crate::words;
use rustls::pki_types::ServerName;
use smtp_proto::Response;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// How long to wait for each reply (RFC 5321 §4.5.3.2 has the classic values;
/// KumoMTA's path config names them `*_timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// The 220 greeting.
    pub banner: Duration,
    /// EHLO or HELO.
    pub ehlo: Duration,
    /// MAIL FROM.
    pub mail_from: Duration,
    /// Each RCPT TO.
    pub rcpt_to: Duration,
    /// DATA's 354, and each write of the body.
    pub data: Duration,
    /// The reply to the end of the message.
    pub data_dot: Duration,
}

impl Timeouts {
    /// The same wait for every reply (tests, probes, tools).
    pub fn uniform(wait: Duration) -> Timeouts {
        Timeouts {
            banner: wait,
            ehlo: wait,
            mail_from: wait,
            rcpt_to: wait,
            data: wait,
            data_dot: wait,
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        let m = |n: u64| Duration::from_secs(60 * n);
        Timeouts {
            banner: m(5),
            ehlo: m(5),
            mail_from: m(5),
            rcpt_to: m(5),
            data: m(2),
            data_dot: m(10),
        }
    }
}

/// Where the session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Connected; the banner has not been read.
    Connected,
    /// Greeted (EHLO or HELO accepted), no transaction open.
    Ready,
    /// MAIL FROM accepted: RCPT, DATA or RSET may follow.
    Mail,
    /// DATA written, its reply not read yet ([`ClientSession::send_data`]).
    DataSent,
    /// DATA answered 354: the body is being written.
    Body,
    /// A step failed or a rule was broken: the session can only be closed.
    Broken,
}

/// An SMTP session with a destination over any byte stream (TCP, a proxy, TLS).
///
/// ```no_run
/// # async fn demo() -> std::io::Result<()> {
/// use egress_smtp::{ClientSession, Timeouts};
/// let tcp = tokio::net::TcpStream::connect("127.0.0.1:25").await?;
/// let mut smtp = ClientSession::new(tcp, Timeouts::default());
/// smtp.greet("mta1.example.com").await?;
/// assert_eq!(smtp.mail("<a@example.com>", false).await?.code, 250);
/// smtp.rcpt("<b@example.org>").await?;
/// if smtp.data().await?.code == 354 {
///     smtp.write_body(b"Subject: hi\r\n\r\nhello\r\n.\r\n").await?;
///     let reply = smtp.end_of_data_reply().await?;
///     println!("{} {}", reply.code, reply.message);
/// }
/// smtp.quit().await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ClientSession<S> {
    stream: MaybeTls<S>,
    replies: ReplyBuffer,
    timeouts: Timeouts,
    phase: Phase,
    extensions: Extensions,
    banner: Option<Response<String>>,
    tls: Option<TlsInfo>,
    /// LMTP (RFC 2033): LHLO, and one reply per accepted recipient after the dot.
    lmtp: bool,
    /// PIPELINING may be used when offered.
    pipelining_allowed: bool,
    /// RSET goes before the next MAIL, with this wait for its reply.
    rset_pending: Option<Duration>,
    /// RCPTs of the open transaction the destination accepted.
    accepted: usize,
    /// AUTH succeeded.
    authenticated: bool,
}

/// Why STARTTLS did not give a TLS session.
#[derive(Debug)]
pub enum StartTlsError {
    /// The destination did not offer STARTTLS in its EHLO reply.
    NotOffered,
    /// It answered STARTTLS with something other than 220 (its words).
    Refused(String),
    /// The handshake or the certificate check failed (in words).
    Handshake(String),
    /// The connection failed around it.
    Io(io::Error),
}

impl std::fmt::Display for StartTlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartTlsError::NotOffered => write!(f, "STARTTLS required but not offered"),
            StartTlsError::Refused(r) => write!(f, "STARTTLS refused: {r}"),
            StartTlsError::Handshake(e) => write!(f, "TLS handshake: {e}"),
            StartTlsError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for StartTlsError {}

impl<S: AsyncRead + AsyncWrite + Unpin> ClientSession<S> {
    /// A session over a fresh connection; nothing is read or written yet.
    pub fn new(stream: S, timeouts: Timeouts) -> Self {
        ClientSession {
            stream: MaybeTls::Plain(stream),
            replies: ReplyBuffer::default(),
            timeouts,
            phase: Phase::Connected,
            extensions: Extensions::default(),
            banner: None,
            tls: None,
            lmtp: false,
            pipelining_allowed: true,
            rset_pending: None,
            accepted: 0,
            authenticated: false,
        }
    }

    /// Speak LMTP (RFC 2033) instead of SMTP: LHLO instead of EHLO, and after the
    /// message one reply per accepted recipient
    /// ([`end_of_data_replies`](Self::end_of_data_replies)). Set before greeting.
    pub fn set_lmtp(&mut self, lmtp: bool) {
        self.lmtp = lmtp;
    }

    /// Whether PIPELINING may be used when the destination offers it (the
    /// default); false sends each command after the previous reply.
    pub fn set_pipelining(&mut self, allowed: bool) {
        self.pipelining_allowed = allowed;
    }

    /// Sends RSET before the next MAIL FROM (in the same write when pipelining),
    /// waiting `timeout` for its reply: a reused session starts from a known
    /// state even if something was left over.
    pub fn rset_before_next_mail(&mut self, timeout: Duration) {
        self.rset_pending = Some(timeout);
    }

    /// Commands may be pipelined now.
    fn pipelining(&self) -> bool {
        self.pipelining_allowed && self.extensions.pipelining
    }

    /// EHLO, or LHLO for LMTP.
    fn hello(&self) -> &'static str {
        if self.lmtp {
            "LHLO"
        } else {
            "EHLO"
        }
    }

    /// What TLS negotiated, once STARTTLS succeeded.
    pub fn tls(&self) -> Option<&TlsInfo> {
        self.tls.as_ref()
    }

    /// STARTTLS after the greeting: the command, the handshake (SNI from `name`
    /// when it is a DNS name; none for an address) within `timeout`, then EHLO again
    /// with the capabilities offered over TLS. `verified` says whether `connector`
    /// checks certificates (for [`TlsInfo::verified`]). Any octets the destination
    /// sent after its 220 are refused: they were written before TLS and would be read
    /// as if they came through it.
    pub async fn starttls(
        &mut self,
        connector: &tokio_rustls::TlsConnector,
        name: ServerName<'static>,
        verified: bool,
        ehlo_name: &str,
        timeout: Duration,
    ) -> Result<&TlsInfo, StartTlsError> {
        self.expect(Phase::Ready, "STARTTLS")
            .map_err(StartTlsError::Io)?;
        if !self.extensions.starttls {
            return Err(StartTlsError::NotOffered);
        }
        let reply = self
            .command("STARTTLS", timeout, "STARTTLS")
            .await
            .map_err(StartTlsError::Io)?;
        if reply.code != 220 {
            self.phase = Phase::Broken;
            return Err(StartTlsError::Refused(format!(
                "{} {}",
                reply.code,
                one_line(&reply.message)
            )));
        }
        if self.replies.pending() > 0 {
            self.phase = Phase::Broken;
            return Err(StartTlsError::Handshake(
                "the destination sent data after its 220 to STARTTLS, before TLS began".into(),
            ));
        }
        let Some(plain) = self.stream.take_plain() else {
            return Err(StartTlsError::Io(self.misuse("STARTTLS over TLS")));
        };
        self.phase = Phase::Broken;
        let tls = match tokio::time::timeout(timeout, connector.connect(name, plain)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => return Err(StartTlsError::Handshake(describe_tls_error(&e))),
            Err(_) => {
                return Err(StartTlsError::Handshake(format!(
                    "no handshake within {} (starttls_timeout)",
                    words::duration(timeout)
                )))
            }
        };
        let info = TlsInfo::of(tls.get_ref().1, verified);
        self.stream = MaybeTls::Tls(Box::new(tokio_rustls::TlsStream::Client(tls)));
        self.phase = Phase::Ready;
        let ehlo = self
            .command(
                &format!("{} {ehlo_name}", self.hello()),
                self.timeouts.ehlo,
                "EHLO after STARTTLS",
            )
            .await
            .map_err(StartTlsError::Io)?;
        if !is_positive(&ehlo) {
            self.phase = Phase::Broken;
            return Err(StartTlsError::Refused(format!(
                "EHLO after STARTTLS: {} {}",
                ehlo.code,
                one_line(&ehlo.message)
            )));
        }
        self.extensions = parse_extensions(&ehlo.message);
        Ok(self.tls.insert(info))
    }

    /// Where the session stands.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The destination's greeting, once read.
    pub fn banner(&self) -> Option<&Response<String>> {
        self.banner.as_ref()
    }

    /// What the destination offered at EHLO.
    pub fn extensions(&self) -> Extensions {
        self.extensions
    }

    /// Reads the banner and greets with EHLO (HELO if EHLO is refused). Any answer
    /// but 220 and 2xx is an error carrying the destination's words.
    pub async fn greet(&mut self, ehlo_name: &str) -> io::Result<Response<String>> {
        self.expect(Phase::Connected, "the banner")?;
        let banner = self
            .read(self.timeouts.banner, "waiting for the banner")
            .await?;
        if banner.code != 220 {
            self.phase = Phase::Broken;
            return Err(io::Error::other(RefusedGreeting {
                step: "banner",
                reply: banner,
            }));
        }
        self.banner = Some(banner);
        let ehlo = self
            .command(
                &format!("{} {ehlo_name}", self.hello()),
                self.timeouts.ehlo,
                self.hello(),
            )
            .await?;
        if is_positive(&ehlo) {
            self.extensions = parse_extensions(&ehlo.message);
            self.phase = Phase::Ready;
            return Ok(ehlo);
        }
        if self.lmtp {
            // LMTP has no HELO to fall back to (RFC 2033 §4.1).
            self.phase = Phase::Broken;
            return Err(io::Error::other(RefusedGreeting {
                step: "LHLO refused",
                reply: ehlo,
            }));
        }
        let helo = self
            .command(&format!("HELO {ehlo_name}"), self.timeouts.ehlo, "HELO")
            .await?;
        if !is_positive(&helo) {
            self.phase = Phase::Broken;
            return Err(io::Error::other(RefusedGreeting {
                step: "EHLO and HELO refused",
                reply: helo,
            }));
        }
        self.phase = Phase::Ready;
        Ok(helo)
    }

    /// `MAIL FROM:{path}` (the path with its angle brackets), with BODY=8BITMIME
    /// when `body_8bit` and the destination offers it. The destination's reply;
    /// a refusal leaves the session ready for another MAIL.
    pub async fn mail(&mut self, path: &str, body_8bit: bool) -> io::Result<Response<String>> {
        self.expect(Phase::Ready, "MAIL FROM")?;
        let line = self.mail_line(path, body_8bit);
        let reply = if self.rset_pending.is_some() && self.pipelining() {
            let wire = format!("RSET\r\n{line}\r\n");
            self.write(wire.as_bytes(), self.timeouts.mail_from, "MAIL FROM")
                .await?;
            self.rset_reply().await?;
            self.read(self.timeouts.mail_from, "MAIL FROM").await?
        } else {
            self.rset_alone().await?;
            self.command(&line, self.timeouts.mail_from, "MAIL FROM")
                .await?
        };
        self.accepted = 0;
        if is_positive(&reply) {
            self.phase = Phase::Mail;
        }
        Ok(reply)
    }

    /// The pending RSET on its own (not pipelined), if there is one.
    async fn rset_alone(&mut self) -> io::Result<()> {
        if let Some(timeout) = self.rset_pending {
            let line = b"RSET\r\n";
            self.write(line, timeout, "RSET").await?;
            self.rset_reply().await?;
        }
        Ok(())
    }

    /// Reads the reply to the pending RSET; anything but 2xx breaks the session.
    async fn rset_reply(&mut self) -> io::Result<()> {
        let Some(timeout) = self.rset_pending.take() else {
            return Ok(());
        };
        let reply = self.read(timeout, "RSET").await?;
        if !is_positive(&reply) {
            self.phase = Phase::Broken;
            return Err(io::Error::other(format!(
                "RSET: {} {}",
                reply.code,
                one_line(&reply.message)
            )));
        }
        Ok(())
    }

    /// The MAIL FROM command line, with BODY=8BITMIME when the body is 8-bit and
    /// the destination offers it.
    fn mail_line(&self, path: &str, body_8bit: bool) -> String {
        match body_8bit && self.extensions.eight_bit_mime {
            true => format!("MAIL FROM:{path} BODY=8BITMIME"),
            false => format!("MAIL FROM:{path}"),
        }
    }

    /// `MAIL FROM` and the first `RCPT TO` (both paths with angle brackets): in one
    /// write when the destination offers PIPELINING (RFC 2920), saving a round trip
    /// per transaction; one after the other otherwise. The RCPT reply is `None` when
    /// MAIL was refused (pipelined, the RCPT's own answer to a command without a
    /// transaction is read and dropped, so the dialogue stays in step).
    pub async fn mail_rcpt(
        &mut self,
        path: &str,
        body_8bit: bool,
        rcpt: &str,
    ) -> io::Result<(Response<String>, Option<Response<String>>)> {
        if !self.pipelining() {
            let mail = self.mail(path, body_8bit).await?;
            if !is_positive(&mail) {
                return Ok((mail, None));
            }
            let rcpt = self.rcpt(rcpt).await?;
            return Ok((mail, Some(rcpt)));
        }
        self.expect(Phase::Ready, "MAIL FROM")?;
        let rset = if self.rset_pending.is_some() {
            "RSET\r\n"
        } else {
            ""
        };
        let wire = format!(
            "{rset}{}\r\nRCPT TO:{rcpt}\r\n",
            self.mail_line(path, body_8bit)
        );
        self.write(wire.as_bytes(), self.timeouts.mail_from, "MAIL FROM")
            .await?;
        self.rset_reply().await?;
        self.accepted = 0;
        let mail = self.read(self.timeouts.mail_from, "MAIL FROM").await?;
        if !is_positive(&mail) {
            // The RCPT's answer to a command without a transaction is read and
            // dropped to keep the dialogue in step. A destination that refuses MAIL
            // and closes (Yahoo's `421 4.7.0 [TSS04]`) sends none: its reply to MAIL
            // is the answer either way, and the failed read leaves the session
            // broken, so it is only closed.
            let _ = self.read(self.timeouts.rcpt_to, "RCPT TO").await;
            return Ok((mail, None));
        }
        let rcpt = self.read(self.timeouts.rcpt_to, "RCPT TO").await?;
        self.phase = Phase::Mail;
        self.accepted += usize::from(is_positive(&rcpt));
        Ok((mail, Some(rcpt)))
    }

    /// `RCPT TO:{path}`; the destination's reply.
    pub async fn rcpt(&mut self, path: &str) -> io::Result<Response<String>> {
        self.expect(Phase::Mail, "RCPT TO")?;
        let reply = self
            .command(&format!("RCPT TO:{path}"), self.timeouts.rcpt_to, "RCPT TO")
            .await?;
        self.accepted += usize::from(is_positive(&reply));
        Ok(reply)
    }

    /// `DATA`; after a 354 the body may be written, anything else is the
    /// destination's refusal (the transaction stays open until RSET).
    pub async fn data(&mut self) -> io::Result<Response<String>> {
        self.send_data().await?;
        self.data_reply().await
    }

    /// Writes `DATA` without waiting for its reply, so a relay can tell its own
    /// client to go ahead at the same time and read the destination's answer
    /// ([`data_reply`](Self::data_reply)) only when message text is ready to go —
    /// one round trip off every message.
    pub async fn send_data(&mut self) -> io::Result<()> {
        self.expect(Phase::Mail, "DATA")?;
        self.write(b"DATA\r\n", self.timeouts.data, "DATA").await?;
        self.phase = Phase::DataSent;
        Ok(())
    }

    /// The reply to a [`send_data`](Self::send_data): after a 354 the body may be
    /// written, anything else is the destination's refusal (the transaction stays
    /// open until RSET).
    pub async fn data_reply(&mut self) -> io::Result<Response<String>> {
        self.expect(Phase::DataSent, "the reply to DATA")?;
        let reply = self.read(self.timeouts.data, "DATA").await?;
        self.phase = match reply.code {
            354 => Phase::Body,
            _ => Phase::Mail,
        };
        Ok(reply)
    }

    /// Writes framed body octets (dot-stuffed, CR LF only; the caller's
    /// [`BodyReader`](crate::BodyReader) makes them), the end marker last.
    pub async fn write_body(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.expect(Phase::Body, "message text")?;
        self.write(bytes, self.timeouts.data, "sending the message")
            .await
    }

    /// The replies to the end of the message: one for SMTP; for LMTP one per
    /// recipient the destination accepted, in RCPT order (RFC 2033 §4.2). The
    /// transaction is over whatever the codes: the session is ready again.
    pub async fn end_of_data_replies(&mut self) -> io::Result<Vec<Response<String>>> {
        if self.lmtp {
            self.lmtp_replies().await
        } else {
            Ok(vec![self.final_reply().await?])
        }
    }

    async fn lmtp_replies(&mut self) -> io::Result<Vec<Response<String>>> {
        self.expect(Phase::Body, "the replies to the message")?;
        let mut replies = Vec::with_capacity(self.accepted);
        for _ in 0..self.accepted.max(1) {
            replies.push(
                self.read(
                    self.timeouts.data_dot,
                    "waiting for the replies to the message",
                )
                .await?,
            );
        }
        self.phase = Phase::Ready;
        Ok(replies)
    }

    /// The reply to the end of the message (whose marker the caller has written).
    /// The transaction is over whatever the code: the session is ready again. For
    /// LMTP with more than one recipient use
    /// [`end_of_data_replies`](Self::end_of_data_replies).
    pub async fn end_of_data_reply(&mut self) -> io::Result<Response<String>> {
        if self.lmtp && self.accepted > 1 {
            // Every reply is read so the session stays in step; the first refusal
            // (else the first acceptance) speaks for the message.
            let replies = self.lmtp_replies().await?;
            let first_refusal = replies.iter().position(|r| !is_positive(r)).unwrap_or(0);
            return Ok(replies
                .into_iter()
                .nth(first_refusal)
                .unwrap_or_else(|| Response {
                    code: 451,
                    esc: [4, 4, 2],
                    message: "no reply".into(),
                }));
        }
        self.final_reply().await
    }

    async fn final_reply(&mut self) -> io::Result<Response<String>> {
        self.expect(Phase::Body, "the reply to the message")?;
        let reply = self
            .read(
                self.timeouts.data_dot,
                "waiting for the reply to the message",
            )
            .await?;
        self.phase = Phase::Ready;
        Ok(reply)
    }

    /// `RSET`: ends an open transaction, so the session can carry another.
    pub async fn rset(&mut self) -> io::Result<Response<String>> {
        if !matches!(self.phase, Phase::Ready | Phase::Mail) {
            return Err(self.misuse("RSET"));
        }
        let reply = self
            .command("RSET", self.timeouts.mail_from, "RSET")
            .await?;
        if is_positive(&reply) {
            self.phase = Phase::Ready;
        } else {
            self.phase = Phase::Broken;
        }
        Ok(reply)
    }

    /// The dialogue is between transactions with every reply read — what can be
    /// known without asking the socket. [`is_clean`](Self::is_clean) also polls it,
    /// and is what must be asked before a session carries a new transaction.
    pub fn is_ready(&self) -> bool {
        self.phase == Phase::Ready && self.replies.pending() == 0
    }

    /// True when the session can carry a new transaction: greeted, no transaction
    /// open, every reply read, and nothing unread has arrived since. Octets that
    /// arrived unasked (a reply to a command nobody is waiting for, or the
    /// destination closing) make the session unusable for good.
    pub async fn is_clean(&mut self) -> bool {
        if !self.is_ready() {
            return false;
        }
        let stream = &mut self.stream;
        let mut probe = [0u8; 1];
        // One poll: `Pending` is the only answer that means "nothing waiting".
        let waiting = poll_fn(|cx| {
            let mut buf = ReadBuf::new(&mut probe);
            Poll::Ready(!Pin::new(&mut *stream).poll_read(cx, &mut buf).is_pending())
        })
        .await;
        if waiting {
            self.phase = Phase::Broken;
        }
        !waiting
    }

    /// Ends the session: QUIT when that is a command here (waiting briefly for the
    /// 221), or just closing when the dialogue is mid-message or broken — a QUIT
    /// written into a message body would become text.
    pub async fn quit(mut self) {
        if matches!(self.phase, Phase::Ready | Phase::Mail) {
            let _ = self.command("QUIT", Duration::from_secs(2), "QUIT").await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.stream.shutdown()).await;
    }

    /// The stream in clear (under TLS, when there is TLS), for a caller that needs
    /// its details such as addresses; None after a failed handshake.
    pub fn get_ref(&self) -> Option<&S> {
        self.stream.get_ref()
    }

    fn expect(&mut self, phase: Phase, what: &str) -> io::Result<()> {
        if self.phase == phase {
            Ok(())
        } else {
            Err(self.misuse(what))
        }
    }

    fn misuse(&mut self, what: &str) -> io::Error {
        let was = self.phase;
        self.phase = Phase::Broken;
        io::Error::other(format!(
            "SMTP client used out of order: {what} while the session is {was:?}"
        ))
    }

    async fn command(
        &mut self,
        line: &str,
        timeout: Duration,
        what: &str,
    ) -> io::Result<Response<String>> {
        let mut wire = Vec::with_capacity(line.len() + 2);
        wire.extend_from_slice(line.as_bytes());
        wire.extend_from_slice(b"\r\n");
        self.write(&wire, timeout, what).await?;
        self.read(timeout, what).await
    }

    async fn write(&mut self, bytes: &[u8], timeout: Duration, what: &str) -> io::Result<()> {
        // The deadline bounds writing too: a destination that stops reading must
        // not hold the transaction for ever.
        let written = tokio::time::timeout(timeout, self.stream.write_all(bytes)).await;
        let result = match written {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => io::Error::new(e.kind(), format!("{what}: {e}")),
            Err(_) => io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "{what}: the destination stopped reading for {}",
                    words::duration(timeout)
                ),
            ),
        };
        self.phase = Phase::Broken;
        Err(result)
    }

    async fn read(&mut self, timeout: Duration, what: &str) -> io::Result<Response<String>> {
        match self.replies.read(&mut self.stream, timeout).await {
            Ok(reply) => Ok(reply),
            Err(e) => {
                self.phase = Phase::Broken;
                Err(io::Error::new(e.kind(), format!("{what}: {e}")))
            }
        }
    }
}

fn is_positive(reply: &Response<String>) -> bool {
    (200..300).contains(&reply.code)
}

fn one_line(message: &str) -> String {
    message
        .split('\n')
        .map(|l| l.chars().filter(|c| !c.is_control()).collect::<String>())
        .collect::<Vec<_>>()
        .join(" / ")
}

#[cfg(test)]
mod tests {
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
        let (mut smtp, _dest, _) =
            after_mail_rcpt(b"250 ok\r\n250 ok\r\n451 4.3.0 not now\r\n").await;
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
}
