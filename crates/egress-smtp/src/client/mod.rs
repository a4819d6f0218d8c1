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
mod chunking;
mod greeting;
mod transaction;

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
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

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
    /// BDAT chunks are being sent ([`ClientSession::bdat`]).
    Chunks,
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
    /// BDAT chunks sent whose replies are still to be read (pipelined).
    chunk_replies_pending: usize,
    /// A BDAT chunk was refused: that reply speaks for the message.
    chunk_refused: Option<Response<String>>,
    /// Reused for a BDAT command and its chunk, sent in one write.
    chunk_wire: Vec<u8>,
}

/// Why STARTTLS did not give a TLS session.
#[derive(Debug)]
pub enum StartTlsError {
    /// The destination did not offer STARTTLS in its EHLO reply.
    NotOffered,
    /// It answered STARTTLS with something other than 220 (its words).
    Refused(String),
    /// The handshake failed (in words).
    Handshake(String),
    /// The certificate was refused: what was wrong with it, and in words.
    Certificate {
        /// What was wrong with it.
        fault: crate::tls::CertificateFault,
        /// The failure in words.
        text: String,
    },
    /// The connection failed around it.
    Io(io::Error),
}

impl std::fmt::Display for StartTlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartTlsError::NotOffered => write!(f, "STARTTLS required but not offered"),
            StartTlsError::Refused(r) => write!(f, "STARTTLS refused: {r}"),
            StartTlsError::Handshake(e) | StartTlsError::Certificate { text: e, .. } => {
                write!(f, "TLS handshake: {e}")
            }
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
            chunk_replies_pending: 0,
            chunk_refused: None,
            chunk_wire: Vec::new(),
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
            Ok(Err(e)) => {
                let text = describe_tls_error(&e);
                return Err(match crate::tls::certificate_fault(&e) {
                    Some(fault) => StartTlsError::Certificate { fault, text },
                    None => StartTlsError::Handshake(text),
                });
            }
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
        // The destination counts the connection until it has closed its end too:
        // wait (briefly) for that, so that whoever frees this connection's slot in
        // a shared limit afterwards never has the destination see one more.
        let mut rest = [0u8; 512];
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Ok(n) = self.stream.read(&mut rest).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
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
mod tests;
