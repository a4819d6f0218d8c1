//! The inbound session's transport: buffered input read against deadlines, replies
//! batched (so PIPELINING clients get theirs in one write), and the shutdown signal.
//!
//! Deadlines, not idle timers: a command line must be complete within
//! `client_timeout` of when we started waiting for it, a message within
//! `data_timeout` of the 354, and the whole session within `max_session_duration`
//! — a client sending one octet at a time gains nothing.

use crate::shutdown::{Shutdown, State};
use egress_smtp::{describe_tls_error, words, MaybeTls, Reply, TlsInfo};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// Longest command line (RFC 5321 allows 512; we are lenient up to a text line).
pub const MAX_LINE: usize = 1000;
/// The most read at a time while a message streams through.
const DATA_READ: usize = 64 * 1024;
/// What an idle session keeps for input between commands.
const COMMAND_READ: usize = 4 * 1024;

/// How long the last words of a session we end may take to write.
const CLOSE_WRITE: Duration = Duration::from_secs(5);

/// The session is over: the client went away, or we ended it (timeout, shutdown)
/// and have already said so. Nothing further is written either way.
#[derive(Debug)]
pub struct Ended;

/// What a read is waiting for, which decides its deadline and what we say when
/// it passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// A command line: `client_timeout` from when we started waiting.
    Command,
    /// Message text: `data_timeout` from the 354.
    Data,
}

/// The limits a transport enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// For a whole command line.
    pub client_timeout: Duration,
    /// For a whole message.
    pub data_timeout: Duration,
    /// For the whole session.
    pub max_session_duration: Duration,
}

/// One client connection (TCP in the server; any byte stream in tests and fuzzing).
pub struct Conn<S> {
    stream: MaybeTls<S>,
    limits: Limits,
    session_end: Instant,
    /// Received and not yet consumed.
    pub inbox: Vec<u8>,
    outbox: Vec<u8>,
    /// What the next read of message text asks for: it doubles while reads fill
    /// it, up to [`DATA_READ`], so a small message is read into the command
    /// buffer (no large allocation made and freed per message) and a large one
    /// soon streams through 64 KiB at a time.
    data_read: usize,
    shutdown: Shutdown,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// A connection that has just been accepted.
    pub fn new(stream: S, limits: Limits, shutdown: Shutdown) -> Conn<S> {
        Conn {
            stream: MaybeTls::Plain(stream),
            limits,
            session_end: Instant::now() + limits.max_session_duration,
            inbox: Vec::new(),
            outbox: Vec::new(),
            data_read: COMMAND_READ,
            shutdown,
        }
    }

    /// STARTTLS, after our 220 has been queued: sends it, drops anything the client
    /// pipelined after the command (it was sent in clear and must not be read as if
    /// it came over TLS — the CVE-2011-0411 class), and runs the handshake within
    /// `client_timeout`.
    pub async fn starttls(
        &mut self,
        acceptor: &tokio_rustls::TlsAcceptor,
    ) -> Result<TlsInfo, Ended> {
        self.flush().await?;
        self.inbox.clear();
        let Some(plain) = self.stream.take_plain() else {
            return Err(Ended);
        };
        let accepted =
            tokio::time::timeout(self.limits.client_timeout, acceptor.accept(plain)).await;
        match accepted {
            Ok(Ok(tls)) => {
                let info = TlsInfo::of(tls.get_ref().1, false);
                self.stream = MaybeTls::Tls(Box::new(tokio_rustls::TlsStream::Server(tls)));
                Ok(info)
            }
            Ok(Err(e)) => {
                tracing::debug!("inbound TLS handshake failed: {}", describe_tls_error(&e));
                Err(Ended)
            }
            Err(_) => Err(Ended),
        }
    }

    /// When the current wait must end.
    pub fn deadline(&self, waiting: Waiting) -> Instant {
        let span = match waiting {
            Waiting::Command => self.limits.client_timeout,
            Waiting::Data => self.limits.data_timeout,
        };
        (Instant::now() + span).min(self.session_end)
    }

    /// Queues a reply; [`flush`](Self::flush) (or the next read) sends it.
    pub fn reply(&mut self, reply: &Reply) {
        reply.write_wire(&mut self.outbox);
    }

    /// Sends queued replies. A client that stops reading must not hold the session
    /// for ever: the write gets `client_timeout`.
    pub async fn flush(&mut self) -> Result<(), Ended> {
        if self.outbox.is_empty() {
            return Ok(());
        }
        let written = tokio::time::timeout(
            self.limits.client_timeout,
            self.stream.write_all(&self.outbox),
        )
        .await;
        self.outbox.clear();
        match written {
            Ok(Ok(())) => Ok(()),
            _ => Err(Ended),
        }
    }

    /// Reads more input (flushing replies first), by `deadline`. While no
    /// transaction is open, a draining shutdown ends the session with 421; a forced
    /// one always does.
    pub async fn fill(
        &mut self,
        deadline: Instant,
        waiting: Waiting,
        in_transaction: bool,
    ) -> Result<(), Ended> {
        self.flush().await?;
        let want = match waiting {
            Waiting::Command => COMMAND_READ,
            Waiting::Data => self.data_read,
        };
        if self.inbox.capacity() - self.inbox.len() < want / 4 {
            self.inbox.reserve(want);
        }
        let room = self.inbox.capacity() - self.inbox.len();
        loop {
            let state = self.shutdown.state();
            if state == State::Force || (state == State::Draining && !in_transaction) {
                return self
                    .close(Reply::new(
                        421,
                        [4, 3, 2],
                        "this server is shutting down; please try again later",
                    ))
                    .await;
            }
            tokio::select! {
                read = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.inbox)) => {
                    return match read {
                        Ok(Ok(0)) | Ok(Err(_)) => Err(Ended),
                        Ok(Ok(n)) => {
                            if waiting == Waiting::Data && n >= room {
                                self.data_read = (self.data_read * 2).min(DATA_READ);
                            }
                            Ok(())
                        }
                        Err(_) => {
                            let reply = self.expired(waiting);
                            self.close(reply).await
                        }
                    };
                }
                _ = self.shutdown.changed() => continue,
            }
        }
    }

    /// Lets go of input memory a burst of message text left behind, so an idle
    /// session costs little.
    pub fn shrink(&mut self) {
        self.data_read = COMMAND_READ;
        if self.inbox.is_empty() && self.inbox.capacity() > COMMAND_READ {
            self.inbox = Vec::new();
        }
    }

    /// The next command line (with its line ending), into `line` (a buffer the
    /// session reuses, so a command costs no allocation). Lines over [`MAX_LINE`]
    /// are answered with 500 5.5.2 and skipped.
    pub async fn next_line(
        &mut self,
        line: &mut Vec<u8>,
        in_transaction: bool,
    ) -> Result<(), Ended> {
        let deadline = self.deadline(Waiting::Command);
        let mut skipping = false;
        let mut scanned = 0;
        loop {
            if let Some(pos) = memchr::memchr(b'\n', &self.inbox[scanned..]) {
                let end = scanned + pos + 1;
                line.clear();
                line.extend_from_slice(&self.inbox[..end]);
                self.inbox.drain(..end);
                scanned = 0;
                if skipping || line.len() > MAX_LINE {
                    self.reply(&Reply::new(
                        500,
                        [5, 5, 2],
                        format!("line too long (over {MAX_LINE} octets)"),
                    ));
                    skipping = false;
                    continue;
                }
                return Ok(());
            }
            scanned = self.inbox.len();
            if self.inbox.len() > MAX_LINE {
                // Drop what we have and the rest of the line when it comes.
                self.inbox.clear();
                scanned = 0;
                skipping = true;
            }
            self.fill(deadline, Waiting::Command, in_transaction)
                .await?;
        }
    }

    fn expired(&self, waiting: Waiting) -> Reply {
        if Instant::now() >= self.session_end {
            return Reply::new(
                421,
                [4, 4, 2],
                format!(
                    "session lasted {} (max_session_duration); closing, please reconnect",
                    words::duration(self.limits.max_session_duration)
                ),
            );
        }
        match waiting {
            Waiting::Command => Reply::new(
                421,
                [4, 4, 2],
                format!(
                    "no complete command within {} (client_timeout); closing",
                    words::duration(self.limits.client_timeout)
                ),
            ),
            Waiting::Data => Reply::new(
                421,
                [4, 4, 2],
                format!(
                    "message not received within {} (data_timeout); closing",
                    words::duration(self.limits.data_timeout)
                ),
            ),
        }
    }

    /// Says why and ends the session; a client that does not read gets a few
    /// seconds, not another full timeout.
    async fn close(&mut self, reply: Reply) -> Result<(), Ended> {
        self.reply(&reply);
        let _ = tokio::time::timeout(CLOSE_WRITE, self.stream.write_all(&self.outbox)).await;
        self.outbox.clear();
        Err(Ended)
    }
}
