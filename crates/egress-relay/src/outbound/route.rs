//! Routing one transaction: queue config → pool → destination hosts and their
//! site → a source the pool's rotation proposes and shaping allows → its path
//! config → an idle clean session, or a new connection through the source →
//! banner, EHLO, STARTTLS as the path says → MAIL FROM.
//!
//! A source that fails locally (bind, proxy, every host unreachable) does not cost
//! the client the message: the next eligible source in the pool is tried, once
//! each, before the client gets a 4xx.

use super::automation::Watch;
use super::shaping::Ineligible;
use super::tls::server_name;
use super::{idle::SessionKey, timeouts, Context, OpenError, Outbound};
use crate::dns::Destination;
use crate::report::path_handle;
use crate::txlog::TxLog;
use egress_smtp::{
    smtp_path, words, ClientSession, RefusedGreeting, Reply, Response, StartTlsError,
};
use egress_source::{
    effective_ehlo_domain, effective_port, EgressPathConfig, EgressPool, EgressSource, Tls,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn local(code: [u8; 3], text: String, log: &mut TxLog) -> OpenError {
    log.note(&text);
    OpenError::Local(Reply::new(451, code, text))
}

/// See the module documentation.
pub async fn open(
    ctx: &Context,
    domain: &str,
    from: &str,
    body_8bit: bool,
    first_rcpt: Option<&str>,
    log: &mut TxLog,
) -> Result<Outbound, OpenError> {
    let policy = &ctx.policy;
    let first_rcpt = first_rcpt.map(super::rcpt_path);
    let queue = policy
        .queue_config(domain, log.tenant.as_deref(), None, None)
        .await
        .map_err(|e| local([4, 3, 0], format!("policy error: {e}"), log))?;
    log.pool = Some(queue.egress_pool.clone());
    let pool = policy
        .egress_pool(&queue.egress_pool)
        .await
        .map_err(|e| local([4, 3, 0], format!("pool '{}': {e}", queue.egress_pool), log))?;
    let selector = ctx.selector(&pool).map_err(|e| local([4, 3, 0], e, log))?;
    let routing = ctx
        .routing
        .get(&ctx.dns, domain, &queue)
        .await
        .map_err(|e| {
            local(
                [4, 4, 3],
                format!("pool '{}': cannot route {domain}: {e}", pool.name),
                log,
            )
        })?;
    let (hosts, site) = (&routing.hosts, &routing.site);
    log.site = Some(site.clone());
    let mail_from = format!("<{}>", smtp_path(from));

    // The rotation proposes; the rest of the pool (heaviest first) stands by in
    // case the proposed source is not eligible or fails.
    let candidates = Candidates {
        pool: &pool,
        proposed: selector.pick(),
        started: false,
        standby: None,
    };

    let mut skipped: Vec<String> = Vec::new();
    let mut earliest: Option<Duration> = None;
    let mut failure: Option<(String, [u8; 3], String)> = None;
    for name in candidates {
        let source = match policy.egress_source(name).await {
            Ok(source) => source,
            Err(e) => {
                failure = Some((name.to_owned(), [4, 3, 0], e.to_string()));
                continue;
            }
        };
        let path = match policy.egress_path_config(domain, name, Some(site)).await {
            Ok(path) => {
                ctx.shaper
                    .automated
                    .apply(&ctx.shaper.throttles, path, name, site, domain)
                    .await
            }
            Err(e) => {
                failure = Some((name.to_owned(), [4, 3, 0], e.to_string()));
                continue;
            }
        };
        if let Err(Ineligible {
            reason,
            retry_after,
        }) = ctx.shaper.eligible(name, site, &path).await
        {
            earliest = Some(earliest.map_or(retry_after, |e| e.min(retry_after)));
            skipped.push(reason);
            continue;
        }
        log.source = Some(name.to_owned());
        if let Err(reply) = ctx.shaper.message(name, site, &path).await {
            log.note(&reply.to_string());
            return Err(OpenError::Local(reply));
        }
        let watch = Watch::over(&path, name, site, domain, log.tenant.as_deref());
        let route = Route {
            ctx,
            pool: &pool.name,
            source: &source,
            path: &path,
            site,
            ehlo: effective_ehlo_domain(&path, &source, &ctx.hostname).to_owned(),
            mail_from: &mail_from,
            first_rcpt: first_rcpt.as_deref(),
            body_8bit,
            watch: watch.clone(),
        };
        let observe = |reply: Reply, internal: bool| {
            let (watch, shaper) = (watch.clone(), ctx.shaper.clone());
            async move {
                if let Some(watch) = watch {
                    watch.observe(&shaper, &reply, internal).await;
                }
            }
        };
        match route.through_hosts(hosts, log).await {
            Ok(mut out) => {
                out.watch = watch;
                out.idle_timeout = path.idle_timeout;
                return Ok(out);
            }
            Err(Tried::Destination(reply)) => {
                observe(reply.clone(), false).await;
                return Err(OpenError::Destination(reply));
            }
            Err(Tried::Shaping(reply)) => {
                log.note(&reply.to_string());
                observe(reply.clone(), true).await;
                return Err(OpenError::Local(reply));
            }
            Err(Tried::Failed { text, esc }) => {
                observe(Reply::new(451, esc, &text), true).await;
                failure = Some((name.to_owned(), esc, text));
            }
        }
    }
    let pool_name = &pool.name;
    Err(match failure {
        Some((source, esc, text)) => local(
            esc,
            format!("pool '{pool_name}', source '{source}': no destination host for {domain} took the message: {text}"),
            log,
        ),
        None => local(
            [4, 7, 1],
            format!(
                "pool '{pool_name}' at {site}: no eligible source ({}); the earliest is eligible in {}",
                skipped.join("; "),
                words::duration(earliest.unwrap_or_default().max(Duration::from_millis(1)))
            ),
            log,
        ),
    })
}

/// The sources to try, in order: the one the rotation proposed, then the rest of
/// the pool — listed (and sorted) only when the proposed one will not do.
struct Candidates<'a> {
    pool: &'a EgressPool,
    proposed: &'a str,
    started: bool,
    standby: Option<std::vec::IntoIter<&'a str>>,
}

impl<'a> Iterator for Candidates<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        if !std::mem::replace(&mut self.started, true) {
            return Some(self.proposed);
        }
        let (pool, proposed) = (self.pool, self.proposed);
        self.standby
            .get_or_insert_with(|| standby(pool, proposed).into_iter())
            .next()
    }
}

/// The pool's other sources with weight, heaviest first: those tried when the
/// proposed one is not eligible or fails.
fn standby<'a>(pool: &'a EgressPool, proposed: &str) -> Vec<&'a str> {
    let mut names: Vec<&str> = heaviest_first(pool)
        .into_iter()
        .filter(|name| *name != proposed)
        .collect();
    names.dedup();
    names
}

/// The pool's sources with weight, heaviest first (equal weights in pool order).
pub(crate) fn heaviest_first(pool: &EgressPool) -> Vec<&str> {
    let mut weighted: Vec<_> = pool.entries.iter().filter(|e| e.weight > 0).collect();
    weighted.sort_by_key(|e| std::cmp::Reverse(e.weight));
    weighted.into_iter().map(|e| e.name.as_str()).collect()
}

/// How trying one source ended, when it did not give a session.
enum Tried {
    /// The destination refused MAIL: its own reply, for the client.
    Destination(Reply),
    /// A limit said no (connection limit busy, connection rate): the client retries.
    Shaping(Reply),
    /// Every host failed for this source.
    Failed { text: String, esc: [u8; 3] },
}

/// Why one destination host did not give a session.
enum HostFailure {
    Destination(Reply),
    Shaping(Reply),
    /// Every connection slot is taken: wait for one (or for a session to come back
    /// idle), up to `connect_timeout`.
    Busy(Reply),
    /// STARTTLS failed (refused, handshake, certificate) or was required and not
    /// offered.
    Handshake(String),
    /// Connect, proxy, banner, EHLO: our side of things.
    Other {
        text: String,
        esc: [u8; 3],
    },
}

/// What one transaction's routing decided for one source, for each host tried.
struct Route<'a> {
    ctx: &'a Context,
    pool: &'a str,
    source: &'a Arc<EgressSource>,
    path: &'a Arc<EgressPathConfig>,
    site: &'a str,
    ehlo: String,
    mail_from: &'a str,
    /// Sent with MAIL FROM (pipelined where the destination offers it).
    first_rcpt: Option<&'a str>,
    body_8bit: bool,
    /// The path's automation rules, for a greeting the destination refuses.
    watch: Option<Arc<Watch>>,
}

impl Route<'_> {
    /// Each host in turn (next on failure), each with the reconnect-in-clear option.
    async fn through_hosts(
        &self,
        hosts: &[Destination],
        log: &mut TxLog,
    ) -> Result<Outbound, Tried> {
        let mut last = (String::from("no host"), [4, 4, 1]);
        for dest in hosts {
            let addr = SocketAddr::new(
                dest.ip,
                effective_port(self.source, dest.entry.as_ref(), self.path),
            );
            log.destination = Some(format!("{} [{addr}]", dest.host));
            let mut mode = self.path.enable_tls;
            let started = Instant::now();
            let mut waited = false;
            let opened = loop {
                let key = SessionKey {
                    source: self.source.clone(),
                    addr,
                    ehlo: self.ehlo.clone(),
                    tls: mode,
                };
                if let Some(result) = self.reuse(&key, log).await {
                    break result;
                }
                match self.connect(dest, key, started.elapsed(), log).await {
                    Err(HostFailure::Busy(reply)) => {
                        let report = &self.ctx.report;
                        if started.elapsed() >= self.path.connect_timeout {
                            report.throttle_refusal(&self.source.name, "connection_limit");
                            break Err(HostFailure::Shaping(reply));
                        }
                        if !waited {
                            waited = true;
                            report.throttle_wait(&self.source.name, "connection_limit");
                        }
                        // A session may come back idle, or a slot free up.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(HostFailure::Handshake(e))
                        if !mode.is_required()
                            && mode != Tls::Disabled
                            && self.path.opportunistic_tls_reconnect_on_failed_handshake =>
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
                Err(HostFailure::Destination(reply)) => return Err(Tried::Destination(reply)),
                Err(HostFailure::Shaping(reply)) | Err(HostFailure::Busy(reply)) => {
                    return Err(Tried::Shaping(reply))
                }
                Err(HostFailure::Handshake(e)) => {
                    last = (
                        format!("egress source '{}': {addr}: {e}", self.source.name),
                        [4, 7, 5],
                    );
                    log.note(&last.0);
                }
                Err(HostFailure::Other { text, esc }) => {
                    log.note(&text);
                    last = (text, esc);
                }
            }
        }
        Err(Tried::Failed {
            text: last.0,
            esc: last.1,
        })
    }

    /// MAIL FROM, with the first RCPT when there is one; MAIL's reply (the RCPT's
    /// waits in the session for `Outbound::rcpt`).
    async fn begin(&self, out: &mut Outbound) -> std::io::Result<Response<String>> {
        match self.first_rcpt {
            Some(rcpt) => {
                let (mail, first) = out
                    .smtp
                    .mail_rcpt(self.mail_from, self.body_8bit, rcpt)
                    .await?;
                out.first_rcpt = first.map(|r| Reply::relayed(&r));
                Ok(mail)
            }
            None => {
                out.first_rcpt = None;
                out.smtp.mail(self.mail_from, self.body_8bit).await
            }
        }
    }

    /// An idle clean session for `key`, past MAIL FROM; None when there is none.
    async fn reuse(
        &self,
        key: &SessionKey,
        log: &mut TxLog,
    ) -> Option<Result<Outbound, HostFailure>> {
        let ctx = self.ctx;
        while let Some(mut out) = ctx.idle.take(key).await {
            // An idle session the destination has since closed (or is closing,
            // 421) is dropped quietly; anything else is the destination's answer.
            match self.begin(&mut out).await {
                Ok(reply) if is_positive(&reply) => {
                    log.reused = true;
                    log.egress = Some(out.egress);
                    log.tls = out.smtp.tls().cloned();
                    out.deliveries += 1;
                    // A session serves every pool its source is in: the handles
                    // follow the pool of this transaction.
                    if out.report.as_ref().is_some_and(|p| p.pool != self.pool) {
                        out.report =
                            path_handle(&*ctx.report, &self.source.name, self.pool, self.site);
                    }
                    if let Some(path) = &out.report {
                        path.report.connection_reused();
                    }
                    log.path = out.report.clone();
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

    /// A new connection through the source, within its connection rate and limits:
    /// banner, EHLO, STARTTLS as the key's mode says, MAIL FROM.
    async fn connect(
        &self,
        dest: &Destination,
        key: SessionKey,
        waited: Duration,
        log: &mut TxLog,
    ) -> Result<Outbound, HostFailure> {
        let ctx = self.ctx;
        let (addr, mode) = (key.addr, key.tls);
        let name = &self.source.name;
        let leases = ctx
            .shaper
            .connection_slots(name, self.site, self.path, waited)
            .await
            .map_err(HostFailure::Busy)?;
        if let Err(reply) = ctx.shaper.connection_rate(name, self.site, self.path).await {
            ctx.shaper.release(&leases).await;
            return Err(HostFailure::Shaping(reply));
        }
        let started = Instant::now();
        let conn = match ctx
            .connector
            .connect(self.source, addr, self.path.connect_timeout)
            .await
        {
            Ok(conn) => conn,
            Err(e) => {
                ctx.shaper.release(&leases).await;
                let mut text = e.to_string();
                if let Some(reason) = ctx.shaper.connect_failed(self.source, &e).await {
                    text.push_str(&format!("; source suspended ({reason})"));
                }
                return Err(HostFailure::Other {
                    text,
                    esc: [4, 4, 1],
                });
            }
        };
        let took = started.elapsed();
        log.connect_ms = Some(took.as_millis());
        log.egress = Some(conn.egress);
        let report = path_handle(&*ctx.report, name, self.pool, self.site);
        if let Some(path) = &report {
            path.report.connection_opened(took);
        }
        log.path = report.clone();
        let egress = conn.egress;
        let mut out = Outbound {
            smtp: ClientSession::new(conn.stream, timeouts(self.path)),
            key,
            egress,
            leases,
            shaper: ctx.shaper.clone(),
            deliveries: 1,
            max_deliveries: self.path.max_deliveries_per_connection,
            report,
            first_rcpt: None,
            watch: None,
            idle_timeout: self.path.idle_timeout,
        };
        let failed = |e: std::io::Error| HostFailure::Other {
            text: format!(
                "egress source '{name}' via {egress}: {addr}: {e}{}",
                egress.silence_hint()
            ),
            esc: [4, 4, 1],
        };
        if let Err(e) = out.smtp.greet(&self.ehlo).await {
            // A refused banner or EHLO is the destination's word: the rules hear it
            // (the next host is still tried).
            if let (Some(watch), Some(refused)) = (&self.watch, RefusedGreeting::of(&e)) {
                let reply = Reply::relayed(&refused.reply);
                watch.observe(&ctx.shaper, &reply, false).await;
            }
            tokio::spawn(out.quit());
            return Err(failed(e));
        }
        if mode != Tls::Disabled && (out.smtp.extensions().starttls || mode.is_required()) {
            let connector = match ctx.tls.connector(self.path, mode.verifies()) {
                Ok(c) => c,
                Err(e) => {
                    tokio::spawn(out.quit());
                    return Err(HostFailure::Handshake(e));
                }
            };
            let sni = server_name(&dest.host, dest.ip);
            let timeout = self.path.starttls_timeout;
            match out
                .smtp
                .starttls(&connector, sni, mode.verifies(), &self.ehlo, timeout)
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
        match self.begin(&mut out).await {
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
