//! The outbound half of a transaction: pick a source, find the destination, connect
//! through the source, and speak SMTP to the destination on the client's behalf.

use crate::address::smtp_path;
use crate::dns::Dns;
use crate::reply::{Reply, ReplyReader};
use crate::txlog::TxLog;
use egress_connect::{Connector, EgressAddress};
use egress_lua::Policy;
use egress_source::{
    effective_ehlo_domain, effective_port, EgressPathConfig, EgressPool, EgressSource, Tls,
    WeightedRoundRobin,
};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// What every session shares.
pub struct Context {
    /// The policy.
    pub policy: Arc<Policy>,
    /// DNS for routing and proxy names.
    pub dns: Dns,
    /// Connects through sources, resolving proxy names with `dns`.
    pub connector: Connector,
    /// Our name: banner, `Received:`, EHLO when nothing else says.
    pub hostname: String,
    /// One selector per pool, so the weighted rotation continues across
    /// transactions; rebuilt when the pool's entries change.
    selectors: Mutex<HashMap<String, PoolSelector>>,
    /// Destination sessions left open after a transaction, for the next one with the
    /// same source, address and EHLO name: no connect, no banner, no EHLO.
    idle: Mutex<HashMap<SessionKey, Vec<(Instant, Outbound)>>>,
}

/// What makes an open destination session reusable: the same source definition
/// (a changed definition, after a reload or ttl, never reuses an old route), the
/// same destination address, the same EHLO name.
#[derive(Clone, PartialEq, Eq, Hash)]
struct SessionKey {
    /// Compared and hashed by value (an `Arc` delegates both to the definition).
    source: Arc<EgressSource>,
    addr: SocketAddr,
    ehlo: String,
}

/// How long an idle destination session is kept for reuse.
const IDLE_REUSE: Duration = Duration::from_secs(10);
/// At most this many idle sessions per key.
const MAX_IDLE_PER_KEY: usize = 32;

/// A pool definition and the rotation built from its entries.
type PoolSelector = (Arc<EgressPool>, Arc<WeightedRoundRobin<String>>);

impl Context {
    /// A context over a loaded policy.
    pub fn new(policy: Arc<Policy>, dns: Dns, hostname: String) -> Context {
        let connector = Connector::new(Arc::new(dns.clone()));
        Context {
            policy,
            dns,
            connector,
            hostname,
            selectors: Mutex::default(),
            idle: Mutex::default(),
        }
    }

    /// Keeps a destination session whose transaction ended cleanly, for reuse.
    pub fn release(&self, out: Outbound) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let slot = idle.entry(out.key.clone()).or_default();
        if slot.len() < MAX_IDLE_PER_KEY {
            slot.push((Instant::now(), out));
        } else {
            tokio::spawn(out.quit());
        }
    }

    /// The most recently used idle session for `key` that is still fresh.
    fn take_idle(&self, key: &SessionKey) -> Option<Outbound> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let slot = idle.get_mut(key)?;
        while let Some((since, out)) = slot.pop() {
            if since.elapsed() < IDLE_REUSE {
                return Some(out);
            }
            tokio::spawn(out.quit());
        }
        None
    }

    /// Closes idle sessions that have waited too long; the server calls this
    /// periodically so quiet periods do not hold connections open.
    pub fn reap_idle(&self) {
        for out in self.drain_idle(|since| since.elapsed() >= IDLE_REUSE) {
            tokio::spawn(out.quit());
        }
    }

    /// Says QUIT on every idle session and waits (briefly) for the answers: the
    /// last thing the server does, so destinations see a clean goodbye.
    pub async fn close_idle(&self) {
        let quits: Vec<_> = self
            .drain_idle(|_| true)
            .into_iter()
            .map(|out| tokio::spawn(out.quit()))
            .collect();
        for quit in quits {
            let _ = quit.await;
        }
    }

    /// Removes and returns the idle sessions whose idle-since instant matches.
    fn drain_idle(&self, matches: impl Fn(Instant) -> bool) -> Vec<Outbound> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let mut drained = Vec::new();
        for slot in idle.values_mut() {
            let (gone, keep): (Vec<_>, Vec<_>) = std::mem::take(slot)
                .into_iter()
                .partition(|(since, _)| matches(*since));
            *slot = keep;
            drained.extend(gone.into_iter().map(|(_, out)| out));
        }
        idle.retain(|_, slot| !slot.is_empty());
        drained
    }

    fn selector(&self, pool: &Arc<EgressPool>) -> Result<Arc<WeightedRoundRobin<String>>, String> {
        let mut selectors = self.selectors.lock().unwrap_or_else(|e| e.into_inner());
        // A definition reloaded after its ttl is usually unchanged: compare the
        // entries, not the allocation, so the rotation carries on across refreshes.
        if let Some((known, wrr)) = selectors.get(&pool.name) {
            if known.entries == pool.entries {
                return Ok(wrr.clone());
            }
        }
        let wrr = Arc::new(pool.selector().map_err(|e| e.to_string())?);
        selectors.insert(pool.name.clone(), (pool.clone(), wrr.clone()));
        Ok(wrr)
    }
}

/// Why a transaction could not be opened towards the destination.
pub enum OpenError {
    /// Our side failed (policy, source, DNS, connect): a 4xx so the client retries.
    Local(Reply),
    /// The destination answered MAIL with a failure: its own reply.
    Destination(Reply),
}

fn local(code: [u8; 3], text: String, log: &mut TxLog) -> OpenError {
    log.note(&text);
    OpenError::Local(Reply::new(451, code, text))
}

/// An SMTP session with a destination, through an egress source, past MAIL FROM.
pub struct Outbound {
    reader: ReplyReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    path: Arc<EgressPathConfig>,
    key: SessionKey,
    egress: EgressAddress,
    /// The destination offered 8BITMIME in its EHLO reply.
    eight_bit: bool,
}

impl Outbound {
    /// Opens a transaction for `domain`: queue config → pool → weighted pick of a
    /// source → path config → destination hosts → connect (next host on failure) →
    /// banner → EHLO → MAIL. Fills `log` as it goes.
    pub async fn open(
        ctx: &Context,
        domain: &str,
        from: &str,
        body_8bit: bool,
        log: &mut TxLog,
    ) -> Result<Outbound, OpenError> {
        let policy = &ctx.policy;
        let queue = policy
            .queue_config(domain, None, None, None)
            .await
            .map_err(|e| local([4, 3, 0], format!("policy error: {e}"), log))?;
        log.pool = Some(queue.egress_pool.clone());
        let pool = policy
            .egress_pool(&queue.egress_pool)
            .await
            .map_err(|e| local([4, 3, 0], format!("pool '{}': {e}", queue.egress_pool), log))?;
        let selector = ctx.selector(&pool).map_err(|e| local([4, 3, 0], e, log))?;
        let source_name = selector.pick().clone();
        log.source = Some(source_name.clone());
        let source = policy
            .egress_source(&source_name)
            .await
            .map_err(|e| local([4, 3, 0], format!("pool '{}': {e}", pool.name), log))?;
        let path = policy
            .egress_path_config(domain, &source_name, None)
            .await
            .map_err(|e| {
                local(
                    [4, 3, 0],
                    format!("pool '{}', source '{source_name}': {e}", pool.name),
                    log,
                )
            })?;
        if matches!(path.enable_tls, Tls::Required | Tls::RequiredInsecure) {
            return Err(local(
                [4, 7, 5],
                format!("pool '{}', source '{source_name}': the path config for {domain} requires TLS, which this egressd does not offer yet", pool.name),
                log,
            ));
        }
        let hosts = ctx
            .dns
            .destinations(domain, queue.mx_list())
            .await
            .map_err(|e| {
                local(
                    [4, 4, 3],
                    format!(
                        "pool '{}', source '{source_name}': cannot route {domain}: {e}",
                        pool.name
                    ),
                    log,
                )
            })?;
        let ehlo = effective_ehlo_domain(&path, &source, &ctx.hostname).to_owned();

        let mut last_error = String::new();
        for dest in hosts {
            let addr =
                SocketAddr::new(dest.ip, effective_port(&source, dest.entry.as_ref(), &path));
            log.destination = Some(format!("{} [{addr}]", dest.host));
            let key = SessionKey {
                source: source.clone(),
                addr,
                ehlo: ehlo.clone(),
            };
            while let Some(mut out) = ctx.take_idle(&key) {
                // An idle session the destination has since closed (or is closing,
                // 421) is dropped quietly; anything else is the destination's answer.
                match out.mail(from, body_8bit).await {
                    Ok(Greeted::Ready) => {
                        log.reused = true;
                        log.egress = Some(out.egress);
                        return Ok(out);
                    }
                    Ok(Greeted::MailRefused(reply)) if reply.code != 421 => {
                        ctx.release(out);
                        return Err(OpenError::Destination(reply));
                    }
                    _ => {}
                }
            }
            let started = Instant::now();
            let conn = match ctx
                .connector
                .connect(&source, addr, path.connect_timeout)
                .await
            {
                Ok(conn) => conn,
                Err(e) => {
                    last_error = e.to_string();
                    log.note(&last_error);
                    continue;
                }
            };
            log.connect_ms = Some(started.elapsed().as_millis());
            log.egress = Some(conn.egress);
            let (read, writer) = conn.stream.into_split();
            let mut out = Outbound {
                reader: ReplyReader::new(read),
                writer,
                path: path.clone(),
                key,
                egress: conn.egress,
                eight_bit: false,
            };
            match out.greet(&ehlo, from, body_8bit).await {
                Ok(Greeted::Ready) => return Ok(out),
                Ok(Greeted::MailRefused(reply)) => {
                    // No transaction is open on it: the session can serve the next one.
                    ctx.release(out);
                    return Err(OpenError::Destination(reply));
                }
                Err(e) => {
                    last_error = format!(
                        "egress source '{source_name}' via {}: {addr}: {e}{}",
                        conn.egress,
                        conn.egress.silence_hint()
                    );
                    log.note(&last_error);
                }
            }
        }
        Err(OpenError::Local(Reply::new(
            451,
            [4, 4, 1],
            format!("pool '{}', source '{source_name}': no destination host for {domain} took the message: {last_error}", pool.name),
        )))
    }

    async fn greet(&mut self, ehlo: &str, from: &str, body_8bit: bool) -> io::Result<Greeted> {
        let banner = self
            .reader
            .read(self.path.banner_timeout)
            .await
            .map_err(|e| phase("waiting for the banner", e))?;
        if banner.code != 220 {
            return Err(io::Error::other(format!(
                "banner: {}",
                Reply::relayed(&banner)
            )));
        }
        let reply = self
            .command(&format!("EHLO {ehlo}"), self.path.ehlo_timeout, "EHLO")
            .await?;
        if (200..300).contains(&reply.code) {
            self.eight_bit = reply
                .message
                .lines()
                .any(|l| l.trim().eq_ignore_ascii_case("8BITMIME"));
        } else {
            let helo = self
                .command(&format!("HELO {ehlo}"), self.path.ehlo_timeout, "HELO")
                .await?;
            if !(200..300).contains(&helo.code) {
                return Err(io::Error::other(format!(
                    "EHLO and HELO refused: {}",
                    Reply::relayed(&helo)
                )));
            }
        }
        self.mail(from, body_8bit).await
    }

    /// MAIL FROM, with BODY=8BITMIME only when the client declared it and the
    /// destination offers it.
    async fn mail(&mut self, from: &str, body_8bit: bool) -> io::Result<Greeted> {
        let body = if body_8bit && self.eight_bit {
            " BODY=8BITMIME"
        } else {
            ""
        };
        let mail = self
            .command(
                &format!("MAIL FROM:<{}>{body}", smtp_path(from)),
                self.path.mail_from_timeout,
                "MAIL FROM",
            )
            .await?;
        if (200..300).contains(&mail.code) {
            Ok(Greeted::Ready)
        } else {
            Ok(Greeted::MailRefused(Reply::relayed(&mail)))
        }
    }

    async fn command(
        &mut self,
        line: &str,
        timeout: Duration,
        what: &str,
    ) -> io::Result<smtp_proto::Response<String>> {
        // The same deadline bounds sending the command: a destination that stops
        // reading must not hold the transaction for ever.
        tokio::time::timeout(
            timeout,
            self.writer.write_all(format!("{line}\r\n").as_bytes()),
        )
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("could not send within {timeout:?}"),
            )
        })
        .and_then(|r| r)
        .map_err(|e| phase(what, e))?;
        self.reader.read(timeout).await.map_err(|e| phase(what, e))
    }

    /// Forwards one recipient; the destination's reply.
    pub async fn rcpt(&mut self, address: &str) -> io::Result<Reply> {
        let timeout = self.path.rcpt_to_timeout;
        Ok(Reply::relayed(
            &self
                .command(
                    &format!("RCPT TO:<{}>", smtp_path(address)),
                    timeout,
                    "RCPT TO",
                )
                .await?,
        ))
    }

    /// Sends DATA; `Ok(None)` when the destination is ready (354), else its reply.
    pub async fn data(&mut self) -> io::Result<Option<Reply>> {
        let reply = self.command("DATA", self.path.data_timeout, "DATA").await?;
        Ok((reply.code != 354).then(|| Reply::relayed(&reply)))
    }

    /// Passes body bytes on (already dot-stuffed).
    pub async fn write_body(&mut self, bytes: &[u8]) -> io::Result<()> {
        tokio::time::timeout(self.path.data_timeout, self.writer.write_all(bytes))
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    "destination stopped reading the message",
                )
            })?
    }

    /// Reads the reply to the final dot (which the caller has written).
    pub async fn final_reply(&mut self) -> io::Result<Reply> {
        let reply = self
            .reader
            .read(self.path.data_dot_timeout)
            .await
            .map_err(|e| phase("waiting for the reply to the message", e))?;
        Ok(Reply::relayed(&reply))
    }

    /// Ends the session politely, without waiting long for the answer.
    pub async fn quit(mut self) {
        let _ = self.command("QUIT", Duration::from_secs(2), "QUIT").await;
    }
}

enum Greeted {
    Ready,
    MailRefused(Reply),
}

fn phase(what: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}
