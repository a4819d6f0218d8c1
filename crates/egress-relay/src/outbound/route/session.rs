//! One destination host's session for a route: an idle clean one taken back
//! (`reuse`), or a new connection through the source (`connect`: banner,
//! EHLO/LHLO, STARTTLS, AUTH, the 8-bit check), then MAIL FROM (`begin`).

use super::tls_rpt::tls_report_result;
use super::{is_positive, HostFailure, Route};
use crate::dns::Destination;
use crate::outbound::auth::{self, AuthFailure};
use crate::outbound::dane::verify::DaneVerifier;
use crate::outbound::idle::SessionKey;
use crate::outbound::tls::{server_name, Check};
use crate::outbound::{timeouts, Outbound};
use crate::report::path_handle;
use crate::txlog::TxLog;
use egress_smtp::{ClientSession, RefusedGreeting, Reply, Response, StartTlsError};
use egress_source::Tls;
use std::sync::Arc;
use std::time::{Duration, Instant};

impl Route<'_> {
    /// MAIL FROM, with the first RCPTs when there are; MAIL's reply (the RCPTs'
    /// wait in the session for `Outbound::rcpt`).
    async fn begin(&self, out: &mut Outbound) -> std::io::Result<Response<String>> {
        out.told.clear();
        if self.first_rcpts.is_empty() {
            return out.smtp.mail(self.mail_from, self.body_8bit).await;
        }
        let rcpts: Vec<&str> = self.first_rcpts.iter().map(String::as_str).collect();
        let (mail, replies) = out
            .smtp
            .mail_rcpts(self.mail_from, self.body_8bit, &rcpts)
            .await?;
        for (rcpt, reply) in self.first_rcpts.iter().zip(replies) {
            out.told.push_back((rcpt.clone(), Reply::relayed(&reply)));
        }
        Ok(mail)
    }

    /// An idle clean session for `key`, past MAIL FROM; None when there is none.
    pub(super) async fn reuse(
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
            out.chunking = self.path.enable_chunking;
            out.rcpts = self.first_rcpts.len();
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
                    out.stamp(log);
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
    pub(super) async fn connect(
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
            .map_err(|(reply, limit)| HostFailure::Busy(reply, limit))?;
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
        let local = match egress.via {
            egress_connect::Via::Direct => conn.stream.local_addr().ok(),
            _ => None,
        };
        let mut out = Outbound {
            smtp: ClientSession::new(conn.stream, timeouts(self.path)),
            key,
            egress,
            leases,
            shaper: ctx.shaper.clone(),
            deliveries: 1,
            max_deliveries: self.path.max_deliveries_per_connection,
            report,
            told: Default::default(),
            watch: None,
            idle_timeout: self.path.idle_timeout,
            lmtp: self.path.use_lmtp,
            max_batch: self.path.max_recipients_per_batch,
            rcpts: self.first_rcpts.len(),
            rset: self.path.enable_rset.then_some(self.path.rset_timeout),
            chunking: self.path.enable_chunking,
            host: Arc::from(dest.host.as_str()),
            local,
            session_id: crate::records::session_id(),
        };
        out.stamp(log);
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
            let check = match &out.key.dane {
                Some(records) => Check::Dane(Arc::new(DaneVerifier::new(
                    records.clone(),
                    crate::outbound::tls::provider(),
                ))),
                None if mode.verifies() => Check::TrustStore,
                None => Check::Nothing,
            };
            let connector = match ctx.tls.connector(self.path, &check) {
                Ok(c) => c,
                Err(e) => {
                    tokio::spawn(out.quit());
                    return Err(HostFailure::Handshake(e, None));
                }
            };
            let sni = server_name(&dest.host, dest.ip);
            let timeout = self.path.starttls_timeout;
            let verifies = !matches!(check, Check::Nothing);
            match out
                .smtp
                .starttls(&connector, sni, verifies, &self.ehlo, timeout)
                .await
            {
                Ok(info) => {
                    log.tls = Some(info.clone());
                    if let Check::Dane(verifier) = &check {
                        if let Some(record) = verifier.matched() {
                            log.note(&format!("dane=verified (TLSA {record})"));
                            ctx.report.dane("verified");
                        }
                    }
                }
                Err(StartTlsError::Io(e)) => {
                    tokio::spawn(out.quit());
                    return Err(failed(e));
                }
                Err(e) => {
                    tokio::spawn(out.quit());
                    let result = tls_report_result(&e);
                    return Err(HostFailure::Handshake(e.to_string(), Some(result)));
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
