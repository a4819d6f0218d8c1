//! Routing one transaction: queue config → pool → destination hosts and their
//! site → a source the pool's rotation proposes and shaping allows → its path
//! config → an idle clean session, or a new connection through the source →
//! banner, EHLO, STARTTLS as the path says → MAIL FROM.
//!
//! A source that fails locally (bind, proxy, every host unreachable) does not cost
//! the client the message: the next eligible source in the pool is tried, once
//! each, before the client gets a 4xx.

use super::auth::{self, AuthFailure};
use super::automation::Watch;
use super::hosts;
use super::mta_sts;
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
            domain,
            by_mx: routing.by_mx,
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
            Err(Tried::Refused(reply)) => {
                log.note(&reply.to_string());
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
    /// The path forbids what this needs (a prohibited or all-skipped host list, a
    /// credential it will not send, an 8-bit message to a 7-bit destination):
    /// our reply, and no other source is tried.
    Refused(Reply),
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
    /// See [`Tried::Refused`].
    Refused(Reply),
    /// Connect, proxy, banner, EHLO: our side of things. `connected`: the TCP
    /// connection was made (a timeout or protocol failure after it, which ends the
    /// attempt unless `try_next_host_on_transport_error`).
    Other {
        text: String,
        esc: [u8; 3],
        connected: bool,
    },
}

/// What one transaction's routing decided for one source, for each host tried.
struct Route<'a> {
    ctx: &'a Context,
    /// The destination domain.
    domain: &'a str,
    /// Its hosts are its MX hosts (MTA-STS applies).
    by_mx: bool,
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
        let ctx = self.ctx;
        if let Some(left) = ctx.sites.delayed(self.site) {
            return Err(Tried::Refused(Reply::new(
                451,
                [4, 4, 1],
                format!(
                    "No answer from any hosts listed in MX: {} failed to connect more than {} times in a row \
                     (consecutive_connection_failures_before_delay); delayed for another {}",
                    self.site,
                    self.path.consecutive_connection_failures_before_delay,
                    words::duration(left.max(Duration::from_secs(1)))
                ),
            )));
        }
        let hosts = hosts::for_path(
            hosts,
            self.path,
            |d| effective_port(self.source, d.entry.as_ref(), self.path),
            &ctx.own_addresses,
        )
        .map_err(Tried::Refused)?;
        let (hosts, sts) = self.mta_sts(hosts, log).await?;
        let mut last = (String::from("no host"), [4, 4, 1]);
        let mut refused_connections = 0;
        for (dest, addr) in hosts.iter().copied() {
            log.destination = Some(format!("{} [{addr}]", dest.host));
            let mut mode = self.path.enable_tls;
            if sts.is_some() {
                // MTA-STS enforce: TLS with a certificate valid for the MX name.
                mode = Tls::Required;
            }
            if let (None, Some(_), Some(left)) = (
                &sts,
                self.path.remember_broken_tls,
                ctx.sites.broken_tls(self.site),
            ) {
                if mode.is_required() {
                    let text = format!(
                        "egress source '{}': {addr}: {} is remembered as having broken TLS for another {} \
                         (remember_broken_tls) and enable_tls = '{mode:?}'; not tried",
                        self.source.name,
                        self.site,
                        words::duration(left.max(Duration::from_secs(1)))
                    );
                    log.note(&text);
                    last = (text, [4, 7, 5]);
                    continue;
                }
                if mode != Tls::Disabled {
                    log.note(&format!(
                        "{addr}: STARTTLS not attempted: {} is remembered as having broken TLS (remember_broken_tls)",
                        self.site
                    ));
                    mode = Tls::Disabled;
                }
            }
            let started = Instant::now();
            let mut waited = false;
            let opened = loop {
                let key = SessionKey {
                    source: self.source.clone(),
                    addr,
                    ehlo: self.ehlo.clone(),
                    tls: mode,
                    credential: auth::credential(self.path),
                    lmtp: self.path.use_lmtp,
                };
                if let Some(result) = self.reuse(&key, log).await {
                    break result;
                }
                let connected = self.connect(dest, key, started.elapsed(), log).await;
                if let (Err(HostFailure::Handshake(_)), Some(how_long)) =
                    (&connected, self.path.remember_broken_tls)
                {
                    ctx.sites.tls_failed(self.site, how_long);
                }
                match connected {
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
                Ok(out) => {
                    ctx.sites.connected(self.site);
                    return Ok(out);
                }
                Err(HostFailure::Refused(reply)) => return Err(Tried::Refused(reply)),
                Err(HostFailure::Destination(reply)) => return Err(Tried::Destination(reply)),
                Err(HostFailure::Shaping(reply)) | Err(HostFailure::Busy(reply)) => {
                    return Err(Tried::Shaping(reply))
                }
                Err(HostFailure::Handshake(e)) => {
                    let policy = sts
                        .as_ref()
                        .map(|p| {
                            format!(
                                " (MTA-STS policy of {}, id {}, mode enforce)",
                                self.domain, p.id
                            )
                        })
                        .unwrap_or_default();
                    last = (
                        format!("egress source '{}': {addr}: {e}{policy}", self.source.name),
                        [4, 7, 5],
                    );
                    log.note(&last.0);
                }
                Err(HostFailure::Other {
                    text,
                    esc,
                    connected,
                }) => {
                    log.note(&text);
                    last = (text, esc);
                    if !connected {
                        refused_connections += 1;
                    } else if !self.path.try_next_host_on_transport_error {
                        last.0.push_str(
                            "; the next host is not tried (try_next_host_on_transport_error = false)",
                        );
                        break;
                    }
                }
            }
        }
        if refused_connections == hosts.len()
            && ctx.sites.connection_failed(
                self.site,
                self.path.consecutive_connection_failures_before_delay,
            )
        {
            last.0.push_str(&format!(
                "; {} is delayed for {} (consecutive_connection_failures_before_delay = {})",
                self.site,
                words::duration(super::memory::FAILURE_DELAY),
                self.path.consecutive_connection_failures_before_delay
            ));
        }
        Err(Tried::Failed {
            text: last.0,
            esc: last.1,
        })
    }

    /// The domain's MTA-STS policy applied to its MX hosts: with `enforce`, only
    /// the hosts its patterns match (none: `451 4.7.5`), and the policy; with
    /// `testing`, every host, and what enforce would have refused noted.
    async fn mta_sts<'h>(
        &self,
        hosts: Vec<(&'h Destination, SocketAddr)>,
        log: &mut TxLog,
    ) -> Result<(Vec<(&'h Destination, SocketAddr)>, Option<mta_sts::InForce>), Tried> {
        if !(self.path.enable_mta_sts && self.by_mx) {
            return Ok((hosts, None));
        }
        let budget = self.path.connect_timeout.min(Duration::from_secs(10));
        let Some(sts) = self
            .ctx
            .mta_sts
            .policy(&self.ctx.dns, self.domain, budget)
            .await
        else {
            return Ok((hosts, None));
        };
        let policy = &sts.policy;
        log.note(&format!("mta_sts={} (id {})", policy.mode, sts.id));
        let matching: Vec<_> = hosts
            .iter()
            .copied()
            .filter(|(d, _)| {
                policy
                    .mx
                    .iter()
                    .any(|p| mta_sts::parse::mx_matches(p, &d.host))
            })
            .collect();
        let refusal = matching.is_empty().then(|| {
            format!(
                "MTA-STS policy of {} (id {}, mode {}): no MX host matches its mx patterns ({})",
                self.domain,
                sts.id,
                policy.mode,
                policy.mx.join(", ")
            )
        });
        match policy.mode {
            mta_sts::parse::Mode::Enforce => match refusal {
                Some(text) => Err(Tried::Refused(Reply::new(451, [4, 7, 5], text))),
                None => Ok((matching, Some(sts))),
            },
            _ => {
                if let Some(text) = refusal {
                    log.note(&format!("{text}; delivering anyway (testing)"));
                }
                Ok((hosts, None))
            }
        }
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
            if let Some(refusal) = self.eight_bit_refusal(&out) {
                ctx.idle.release(out).await;
                return Some(Err(HostFailure::Refused(refusal)));
            }
            // The path of this transaction decides, not the one that opened it.
            out.smtp.set_pipelining(self.path.enable_pipelining);
            out.rset = self.path.enable_rset.then_some(self.path.rset_timeout);
            out.max_batch = self.path.max_recipients_per_batch;
            out.rcpts = usize::from(self.first_rcpt.is_some());
            if let Some(timeout) = out.rset {
                out.smtp.rset_before_next_mail(timeout);
            }
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
                    connected: false,
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
            lmtp: self.path.use_lmtp,
            max_batch: self.path.max_recipients_per_batch,
            rcpts: usize::from(self.first_rcpt.is_some()),
            rset: self.path.enable_rset.then_some(self.path.rset_timeout),
        };
        out.smtp.set_lmtp(self.path.use_lmtp);
        out.smtp.set_pipelining(self.path.enable_pipelining);
        // Failures before MAIL FROM are the connection plan's: the next host is
        // tried. One at MAIL FROM is a transport error within the transaction.
        let failed_at = |e: std::io::Error, connected: bool| HostFailure::Other {
            text: format!(
                "egress source '{name}' via {egress}: {addr}: {e}{}",
                egress.silence_hint()
            ),
            esc: [4, 4, 1],
            connected,
        };
        let failed = |e| failed_at(e, false);
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
        if let Err(e) = auth::authenticate(&mut out.smtp, self.path, addr).await {
            tokio::spawn(out.quit());
            return Err(match e {
                AuthFailure::Refused(reply) => HostFailure::Refused(reply),
                AuthFailure::Destination(reply) => HostFailure::Destination(reply),
                AuthFailure::Unavailable(text) => HostFailure::Other {
                    text,
                    esc: [4, 7, 0],
                    connected: false,
                },
            });
        }
        if let Some(refusal) = self.eight_bit_refusal(&out) {
            ctx.idle.release(out).await;
            return Err(HostFailure::Refused(refusal));
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
                Err(failed_at(e, true))
            }
        }
    }

    /// The message is 8-bit (BODY=8BITMIME) and the destination does not offer
    /// 8BITMIME: RFC 6152 leaves converting it or returning it; egressd never
    /// alters a message, so it is refused before any of it is sent — unless the
    /// path says `ignore_8bit_checks`.
    fn eight_bit_refusal(&self, out: &Outbound) -> Option<Reply> {
        let offered = out.smtp.extensions().eight_bit_mime;
        (self.body_8bit && !offered && !self.path.ignore_8bit_checks).then(|| {
            Reply::new(
                554,
                [5, 6, 3],
                format!(
                    "{} does not offer 8BITMIME and the message is 8-bit (BODY=8BITMIME); it is \
                     not sent rather than altered (a path with ignore_8bit_checks = true sends it as it is)",
                    out.key.addr
                ),
            )
        })
    }
}

fn is_positive(reply: &Response<String>) -> bool {
    (200..300).contains(&reply.code)
}
