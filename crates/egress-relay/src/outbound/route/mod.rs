//! Routing one transaction: queue config → pool → destination hosts and their
//! site → a source the pool's rotation proposes and shaping allows → its path
//! config → an idle clean session, or a new connection through the source →
//! banner, EHLO, STARTTLS as the path says → MAIL FROM.
//!
//! A source that fails locally (bind, proxy, every host unreachable) does not cost
//! the client the message: the next eligible source in the pool is tried, once
//! each, before the client gets a 4xx.

mod session;
mod tls_policy;
mod tls_rpt;

use super::automation::Watch;
use super::dane;
use super::mta_sts::parse::Mode;
use super::plan::{self, NoRoute};
use super::shaping::Ineligible;
use super::tls_report::ResultType;
use super::{auth, idle::SessionKey, Context, OpenError, Outbound};
use crate::dns::Destination;
use crate::txlog::TxLog;
use egress_smtp::{words, Reply, Response};
use egress_source::{EgressPathConfig, EgressPool, EgressSource, Tls};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tls_policy::{Reported, StsApplied};

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
    first_rcpts: &[&str],
    log: &mut TxLog,
) -> Result<Outbound, OpenError> {
    let first_rcpts: Vec<String> = first_rcpts.iter().map(|r| super::bracketed(r)).collect();
    let routed = plan::route(ctx, domain, log.tenant.as_deref())
        .await
        .map_err(|NoRoute { esc, text }| local(esc, text, log))?;
    let pool = &routed.pool;
    log.pool = Some(pool.name.clone());
    let selector = ctx.selector(pool).map_err(|e| local([4, 3, 0], e, log))?;
    let site = &routed.routing.site;
    log.site = Some(site.clone());
    let mail_from = super::bracketed(from);

    // The rotation proposes; the rest of the pool (heaviest first) stands by in
    // case the proposed source is not eligible or fails.
    let candidates = Candidates {
        pool,
        proposed: selector.pick(),
        started: false,
        standby: None,
    };

    let mut skipped: Vec<String> = Vec::new();
    let mut earliest: Option<Duration> = None;
    let mut failure: Option<(String, [u8; 3], String)> = None;
    for name in candidates {
        let plan = match plan::for_source(ctx, &routed.routing, domain, name).await {
            Ok(plan) => plan,
            Err(e) => {
                failure = Some((name.to_owned(), [4, 3, 0], e.into_text()));
                continue;
            }
        };
        let path = &plan.path;
        if let Err(Ineligible {
            reason,
            retry_after,
        }) = ctx.shaper.eligible(name, site, path).await
        {
            earliest = Some(earliest.map_or(retry_after, |e| e.min(retry_after)));
            skipped.push(reason);
            continue;
        }
        log.source = Some(name.to_owned());
        if let Err(reply) = ctx.shaper.message(name, site, path).await {
            log.note(&reply.to_string());
            return Err(OpenError::Local(reply));
        }
        let watch = Watch::over(path, name, site, domain, log.tenant.as_deref());
        let route = Route {
            ctx,
            domain,
            by_mx: routed.routing.by_mx,
            pool: &pool.name,
            source: &plan.source,
            path,
            site,
            ehlo: plan.ehlo.clone(),
            mail_from: &mail_from,
            // An LMTP store answers each recipient after the message: one at a
            // time there; elsewhere at most the path's batch.
            first_rcpts: &first_rcpts[..first_rcpts.len().min(if path.use_lmtp {
                1
            } else {
                path.max_recipients_per_batch.max(1)
            })],
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
        match route.through_hosts(&plan.hosts, log).await {
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
    /// Every connection slot of the limit named (its key) is taken: wait for one
    /// (or for a session to come back idle), up to `connect_timeout`.
    Busy(Reply, String),
    /// STARTTLS failed (refused, handshake, certificate) or was required and not
    /// offered; what TLS reporting counts it as (None: our own configuration).
    Handshake(String, Option<ResultType>),
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
    /// Sent with MAIL FROM (pipelined where the destination offers it),
    /// bracketed.
    first_rcpts: &'a [String],
    body_8bit: bool,
    /// The path's automation rules, for a greeting the destination refuses.
    watch: Option<Arc<Watch>>,
}

impl Route<'_> {
    /// Each host in turn (next on failure), each with the reconnect-in-clear option.
    async fn through_hosts(
        &self,
        hosts: &Result<Vec<(Destination, SocketAddr)>, Reply>,
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
        let hosts = hosts
            .as_ref()
            .map_err(|refused| Tried::Refused(refused.clone()))?
            .iter()
            .map(|(dest, addr)| (dest, *addr))
            .collect();
        let StsApplied { hosts, reported } = self.mta_sts(hosts, log).await?;
        // The MTA-STS policy TLS reporting names (testing mode exists for it), and
        // the one that is enforced.
        let sts_reported = match &reported {
            Reported::Policy(p) => Some(p),
            _ => None,
        };
        let sts = sts_reported.filter(|p| p.policy.mode == Mode::Enforce);
        let mut last = (String::from("no host"), [4, 4, 1]);
        let mut refused_connections = 0;
        for (dest, addr) in hosts.iter().copied() {
            log.peer(&dest.host, addr);
            let mut mode = self.path.enable_tls;
            if sts.is_some() {
                // MTA-STS enforce: TLS with a certificate valid for the MX name.
                mode = Tls::Required;
            }
            let dane = match self.dane(dest, log).await {
                Ok(demand) => demand,
                Err(text) => {
                    let tlsa = self.tlsa_policy(&[], dest);
                    self.tls_failed_under(&tlsa, dest, addr, Some(ResultType::DnssecInvalid));
                    log.note(&text);
                    last = (text, [4, 7, 5]);
                    continue;
                }
            };
            match &dane {
                dane::Demand::Authenticate(_) => mode = Tls::Required,
                // MTA-STS may still ask for the certificate to be checked.
                dane::Demand::EncryptOnly if sts.is_none() => mode = Tls::RequiredInsecure,
                _ => {}
            }
            let dane = match dane {
                dane::Demand::Authenticate(records) => Some(records),
                _ => None,
            };
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
                    verified_name: (mode.verifies() || dane.is_some()).then(|| dest.host.clone()),
                    dane: dane.clone(),
                };
                if let Some(result) = self.reuse(&key, log).await {
                    break result;
                }
                let connected = self.connect(dest, key, started.elapsed(), log).await;
                if let (Err(HostFailure::Handshake(..)), Some(how_long)) =
                    (&connected, self.path.remember_broken_tls)
                {
                    ctx.sites.tls_failed(self.site, how_long);
                }
                match connected {
                    Err(HostFailure::Busy(reply, limit)) => {
                        let report = &self.ctx.report;
                        if started.elapsed() >= self.path.connect_timeout {
                            report.throttle_refusal(&self.source.name, "connection_limit");
                            break Err(HostFailure::Shaping(reply));
                        }
                        if !waited {
                            waited = true;
                            report.throttle_wait(&self.source.name, "connection_limit");
                        }
                        // A limit that spans hosts (a provider's, a source's) may be
                        // held by an idle session to another host, which this
                        // transaction cannot reuse: it is closed now rather than at
                        // its idle_timeout (else waiters for one site starve while
                        // another site's sessions sit idle). Its slot comes back
                        // once its QUIT is answered, so the limit is never exceeded,
                        // not even for a moment.
                        if let Some(idle) = ctx.idle.take_holding(&limit) {
                            idle.quit().await;
                            continue;
                        }
                        // A session may come back idle, or a slot free up.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(HostFailure::Handshake(e, result))
                        if !mode.is_required()
                            && mode != Tls::Disabled
                            && self.path.opportunistic_tls_reconnect_on_failed_handshake =>
                    {
                        self.tls_failed(sts_reported, &dane, dest, addr, result);
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
                    if !log.reused && out.smtp.tls().is_some() && !reported.is_counted() {
                        let policy = self.tls_policy(sts_reported, &dane, dest);
                        ctx.tls_reports.success(&policy);
                    }
                    return Ok(out);
                }
                Err(HostFailure::Refused(reply)) => return Err(Tried::Refused(reply)),
                Err(HostFailure::Destination(reply)) => return Err(Tried::Destination(reply)),
                Err(HostFailure::Shaping(reply)) | Err(HostFailure::Busy(reply, _)) => {
                    return Err(Tried::Shaping(reply))
                }
                Err(HostFailure::Handshake(e, result)) => {
                    self.tls_failed(sts_reported, &dane, dest, addr, result);
                    if dane.is_some() {
                        self.ctx.report.dane("failed");
                    } else if sts.is_some() {
                        self.ctx.report.mta_sts("refused");
                    }
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
}

fn is_positive(reply: &Response<String>) -> bool {
    (200..300).contains(&reply.code)
}
