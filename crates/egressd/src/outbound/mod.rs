//! The outbound half of a transaction: pick a source, find the destination, connect
//! through the source, and open an SMTP session (egress-smtp's `ClientSession`)
//! to the destination on the client's behalf.

mod idle;
pub mod tls;

use crate::dns::Destination;
use crate::dns::Dns;
use crate::txlog::TxLog;
use egress_connect::{Connector, EgressAddress};
use egress_lua::Policy;
use egress_smtp::{smtp_path, ClientSession, Reply, Response, StartTlsError, Timeouts};
use egress_source::{
    effective_ehlo_domain, effective_port, EgressPathConfig, EgressPool, EgressSource, Tls,
    WeightedRoundRobin,
};
use idle::{IdleSessions, SessionKey};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::net::TcpStream;

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
    /// Destination sessions left open after a transaction.
    pub idle: IdleSessions,
    /// TLS client configurations, by mode and client certificate.
    pub tls: tls::TlsClients,
}

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
            idle: IdleSessions::default(),
            tls: tls::TlsClients::default(),
        }
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

/// The path config's timeouts, as the SMTP client takes them.
pub fn timeouts(path: &EgressPathConfig) -> Timeouts {
    Timeouts {
        banner: path.banner_timeout,
        ehlo: path.ehlo_timeout,
        mail_from: path.mail_from_timeout,
        rcpt_to: path.rcpt_to_timeout,
        data: path.data_timeout,
        data_dot: path.data_dot_timeout,
    }
}

/// An SMTP session with a destination, through an egress source, past MAIL FROM.
pub struct Outbound {
    smtp: ClientSession<TcpStream>,
    key: SessionKey,
    egress: EgressAddress,
}

impl Outbound {
    /// Opens a transaction for `domain`: queue config → pool → weighted pick of a
    /// source → path config → destination hosts → an idle clean session or a new
    /// connection (next host on failure) → banner → EHLO → MAIL. Fills `log`.
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
        let mail_from = format!("<{}>", smtp_path(from));

        let mut last_error = String::new();
        let mut last_esc = [4, 4, 1];
        let route = Route {
            source: &source,
            source_name: &source_name,
            path: &path,
            ehlo: &ehlo,
            mail_from: &mail_from,
            body_8bit,
        };
        for dest in hosts {
            let addr =
                SocketAddr::new(dest.ip, effective_port(&source, dest.entry.as_ref(), &path));
            log.destination = Some(format!("{} [{addr}]", dest.host));
            let mut mode = path.enable_tls;
            let opened = loop {
                let key = SessionKey {
                    source: source.clone(),
                    addr,
                    ehlo: ehlo.clone(),
                    tls: mode,
                };
                if let Some(result) = route.reuse(ctx, &key, log).await {
                    break result;
                }
                match route.connect(ctx, &dest, key, log).await {
                    Err(HostFailure::Handshake(e))
                        if !mode.is_required()
                            && mode != Tls::Disabled
                            && path.opportunistic_tls_reconnect_on_failed_handshake =>
                    {
                        log.note(&format!(
                            "{addr}: {e}; reconnecting in clear (opportunistic_tls_reconnect_on_failed_handshake)"
                        ));
                        mode = Tls::Disabled;
                    }
                    other => break other,
                }
            };
            match opened {
                Ok(out) => return Ok(out),
                Err(HostFailure::Destination(reply)) => return Err(OpenError::Destination(reply)),
                Err(HostFailure::Handshake(e)) => {
                    last_error = format!("egress source '{source_name}': {addr}: {e}");
                    last_esc = [4, 7, 5];
                    log.note(&last_error);
                }
                Err(HostFailure::Other { text, esc }) => {
                    last_error = text;
                    last_esc = esc;
                    log.note(&last_error);
                }
            }
        }
        Err(OpenError::Local(Reply::new(
            451,
            last_esc,
            format!("pool '{}', source '{source_name}': no destination host for {domain} took the message: {last_error}", pool.name),
        )))
    }

    /// Forwards one recipient; the destination's reply.
    pub async fn rcpt(&mut self, address: &str) -> io::Result<Reply> {
        let path = format!("<{}>", smtp_path(address));
        Ok(Reply::relayed(&self.smtp.rcpt(&path).await?))
    }

    /// Sends DATA; `Ok(None)` when the destination is ready (354), else its reply.
    pub async fn data(&mut self) -> io::Result<Option<Reply>> {
        let reply = self.smtp.data().await?;
        Ok((reply.code != 354).then(|| Reply::relayed(&reply)))
    }

    /// Passes framed body octets on.
    pub async fn write_body(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.smtp.write_body(bytes).await
    }

    /// Reads the reply to the end of the message (which the caller has written).
    pub async fn final_reply(&mut self) -> io::Result<Reply> {
        Ok(Reply::relayed(&self.smtp.end_of_data_reply().await?))
    }

    /// Ends the session: QUIT where that is a command, else just closing.
    pub async fn quit(self) {
        self.smtp.quit().await;
    }
}

/// Why one destination host did not give a session.
enum HostFailure {
    /// The destination refused MAIL: its own reply, for the client.
    Destination(Reply),
    /// STARTTLS failed (refused, handshake, certificate) or was required and not
    /// offered.
    Handshake(String),
    /// Connect, proxy, banner, EHLO: our side of things.
    Other { text: String, esc: [u8; 3] },
}

/// What one transaction's routing decided, for each host tried.
struct Route<'a> {
    source: &'a Arc<EgressSource>,
    source_name: &'a str,
    path: &'a Arc<EgressPathConfig>,
    ehlo: &'a str,
    mail_from: &'a str,
    body_8bit: bool,
}

impl Route<'_> {
    /// An idle clean session for `key`, past MAIL FROM; None when there is none.
    async fn reuse(
        &self,
        ctx: &Context,
        key: &SessionKey,
        log: &mut TxLog,
    ) -> Option<Result<Outbound, HostFailure>> {
        while let Some(mut out) = ctx.idle.take(key).await {
            // An idle session the destination has since closed (or is closing,
            // 421) is dropped quietly; anything else is the destination's answer.
            match out.smtp.mail(self.mail_from, self.body_8bit).await {
                Ok(reply) if is_positive(&reply) => {
                    log.reused = true;
                    log.egress = Some(out.egress);
                    log.tls = out.smtp.tls().cloned();
                    return Some(Ok(out));
                }
                Ok(reply) if reply.code != 421 => {
                    ctx.idle.release(out).await;
                    return Some(Err(HostFailure::Destination(Reply::relayed(&reply))));
                }
                _ => {
                    tokio::spawn(out.quit());
                }
            }
        }
        None
    }

    /// A new connection through the source: banner, EHLO, STARTTLS as the key's mode
    /// says, MAIL FROM.
    async fn connect(
        &self,
        ctx: &Context,
        dest: &Destination,
        key: SessionKey,
        log: &mut TxLog,
    ) -> Result<Outbound, HostFailure> {
        let (addr, mode) = (key.addr, key.tls);
        let started = Instant::now();
        let conn = ctx
            .connector
            .connect(self.source, addr, self.path.connect_timeout)
            .await
            .map_err(|e| HostFailure::Other {
                text: e.to_string(),
                esc: [4, 4, 1],
            })?;
        log.connect_ms = Some(started.elapsed().as_millis());
        log.egress = Some(conn.egress);
        let egress = conn.egress;
        let mut out = Outbound {
            smtp: ClientSession::new(conn.stream, timeouts(self.path)),
            key,
            egress,
        };
        let failed = |e: std::io::Error| HostFailure::Other {
            text: format!(
                "egress source '{}' via {egress}: {addr}: {e}{}",
                self.source_name,
                egress.silence_hint()
            ),
            esc: [4, 4, 1],
        };
        if let Err(e) = out.smtp.greet(self.ehlo).await {
            tokio::spawn(out.quit());
            return Err(failed(e));
        }
        if mode != Tls::Disabled && (out.smtp.extensions().starttls || mode.is_required()) {
            let connector = ctx
                .tls
                .connector(self.path, mode.verifies())
                .map_err(HostFailure::Handshake)?;
            let name = tls::server_name(&dest.host, dest.ip);
            let timeout = self.path.starttls_timeout;
            match out
                .smtp
                .starttls(&connector, name, mode.verifies(), self.ehlo, timeout)
                .await
            {
                Ok(info) => log.tls = Some(info.clone()),
                Err(StartTlsError::Io(e)) => {
                    tokio::spawn(out.quit());
                    return Err(failed(e));
                }
                Err(e) => {
                    tokio::spawn(out.quit());
                    return Err(HostFailure::Handshake(e.to_string()));
                }
            }
        }
        match out.smtp.mail(self.mail_from, self.body_8bit).await {
            Ok(reply) if is_positive(&reply) => Ok(out),
            Ok(reply) => {
                // No transaction is open on it: the session can serve the next one.
                ctx.idle.release(out).await;
                Err(HostFailure::Destination(Reply::relayed(&reply)))
            }
            Err(e) => {
                tokio::spawn(out.quit());
                Err(failed(e))
            }
        }
    }
}

fn is_positive(reply: &Response<String>) -> bool {
    (200..300).contains(&reply.code)
}
