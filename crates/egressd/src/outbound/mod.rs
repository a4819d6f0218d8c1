//! The outbound half of a transaction: pick a source, find the destination, connect
//! through the source, and open an SMTP session (egress-smtp's `ClientSession`)
//! to the destination on the client's behalf.

mod idle;

use crate::dns::Dns;
use crate::txlog::TxLog;
use egress_connect::{Connector, EgressAddress};
use egress_lua::Policy;
use egress_smtp::{smtp_path, ClientSession, Reply, Response, Timeouts};
use egress_source::{
    effective_ehlo_domain, effective_port, EgressPathConfig, EgressPool, Tls, WeightedRoundRobin,
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
        let mail_from = format!("<{}>", smtp_path(from));

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
            while let Some(mut out) = ctx.idle.take(&key).await {
                // An idle session the destination has since closed (or is closing,
                // 421) is dropped quietly; anything else is the destination's answer.
                match out.smtp.mail(&mail_from, body_8bit).await {
                    Ok(reply) if is_positive(&reply) => {
                        log.reused = true;
                        log.egress = Some(out.egress);
                        return Ok(out);
                    }
                    Ok(reply) if reply.code != 421 => {
                        ctx.idle.release(out).await;
                        return Err(OpenError::Destination(Reply::relayed(&reply)));
                    }
                    _ => tokio::spawn(out.quit()),
                };
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
            let mut out = Outbound {
                smtp: ClientSession::new(conn.stream, timeouts(&path)),
                key,
                egress: conn.egress,
            };
            let opened = match out.smtp.greet(&ehlo).await {
                Ok(_) => out.smtp.mail(&mail_from, body_8bit).await,
                Err(e) => Err(e),
            };
            match opened {
                Ok(reply) if is_positive(&reply) => return Ok(out),
                Ok(reply) => {
                    // No transaction is open on it: the session can serve the next one.
                    ctx.idle.release(out).await;
                    return Err(OpenError::Destination(Reply::relayed(&reply)));
                }
                Err(e) => {
                    last_error = format!(
                        "egress source '{source_name}' via {}: {addr}: {e}{}",
                        conn.egress,
                        conn.egress.silence_hint()
                    );
                    log.note(&last_error);
                    tokio::spawn(out.quit());
                }
            }
        }
        Err(OpenError::Local(Reply::new(
            451,
            [4, 4, 1],
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

fn is_positive(reply: &Response<String>) -> bool {
    (200..300).contains(&reply.code)
}
