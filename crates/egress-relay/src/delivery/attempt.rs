//! One delivery attempt: one domain of one spooled message, through that domain's
//! route, every pending recipient in one transaction.

use super::OpenSession;
use crate::outbound::{Context, OpenError, Outbound};
use crate::report::Origin;
use crate::txlog::TxLog;
use egress_smtp::Reply;
use egress_spool::{DomainQueue, Envelope, RecipientState};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// Chunks the spooled message is streamed in.
const CHUNK: usize = 64 * 1024;

/// What one recipient's attempt came to.
#[derive(Debug, Clone)]
pub enum Answer {
    /// 2xx to the final dot.
    Delivered(String),
    /// 5xx: bounce.
    Failed(String),
    /// 4xx, or our side failed: retry.
    Deferred(String),
}

impl Answer {
    fn of(reply: &Reply) -> Answer {
        let text = reply.to_string();
        match reply.code / 100 {
            2 => Answer::Delivered(text),
            5 => Answer::Failed(text),
            _ => Answer::Deferred(text),
        }
    }
}

/// The answers of one attempt, by recipient.
#[derive(Debug, Default)]
pub struct Outcome {
    answers: Vec<(String, Answer)>,
}

impl Outcome {
    /// Records the answers in the domain's queue (what stays pending gets the
    /// last error).
    pub fn apply(&self, d: &mut DomainQueue) {
        for (address, answer) in &self.answers {
            let Some(r) = d
                .recipients
                .iter_mut()
                .find(|r| &r.address == address && r.state == RecipientState::Pending)
            else {
                continue;
            };
            match answer {
                Answer::Delivered(reply) => {
                    r.state = RecipientState::Delivered {
                        reply: reply.clone(),
                    }
                }
                Answer::Failed(reply) => {
                    r.state = RecipientState::Failed {
                        reply: reply.clone(),
                    }
                }
                Answer::Deferred(reply) => d.last_error = Some(reply.clone()),
            }
        }
    }

    fn all(&mut self, recipients: &[String], answer: &Answer) {
        for r in recipients {
            self.answers.push((r.clone(), answer.clone()));
        }
    }
}

/// Fails what is still pending once `max_age` has passed.
pub fn expire(d: &mut DomainQueue, max_age: Duration) {
    let why = format!(
        "451 4.4.7 gave up after {} (max_age){}",
        humantime::format_duration(max_age),
        d.last_error
            .as_deref()
            .map(|e| format!("; last error: {e}"))
            .unwrap_or_default()
    );
    for r in d.recipients.iter_mut() {
        if r.state == RecipientState::Pending {
            r.state = RecipientState::Failed { reply: why.clone() };
        }
    }
}

/// Where spooled deliveries say they come from, in the transaction log.
const FROM_SPOOL: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

/// Delivers `domain`'s pending recipients of `env`, whose wire-form data is in
/// `data`: on `session` when the client's RCPTs left one, else through a new route.
pub async fn run(
    ctx: &Context,
    env: &Envelope,
    domain: &str,
    data: &Path,
    session: Option<OpenSession>,
) -> Outcome {
    let mut outcome = Outcome::default();
    let Some(queue) = env.domains.iter().find(|d| d.domain == domain) else {
        return outcome;
    };
    let pending: Vec<String> = queue.pending().map(|r| r.address.clone()).collect();
    let mut log = TxLog::new(FROM_SPOOL, &env.sender, ctx.report.clone());
    log.id = format!("{}/{domain}#{}", env.id, queue.attempts + 1);
    log.tenant = env.tenant.clone();
    let (mut out, confirmed) = match session {
        Some(s) => {
            s.outbound.describe(&mut log);
            let confirmed: Vec<String> = s
                .confirmed
                .into_iter()
                .filter(|r| pending.contains(r))
                .collect();
            (s.outbound, confirmed)
        }
        None => match open(ctx, env, domain, &pending, &mut log, &mut outcome).await {
            Some(opened) => opened,
            None => {
                log.emit("not delivered");
                return outcome;
            }
        },
    };
    if confirmed.is_empty() {
        tokio::spawn(out.quit());
        log.emit("no recipient accepted");
        return outcome;
    }
    let result = send_body(&mut out, data).await;
    match result {
        Ok(reply) => {
            ctx.idle.release(out).await;
            log.decided = Some((reply.code, Origin::Destination));
            for r in &confirmed {
                log.recipient(r, &reply, Origin::Destination);
            }
            outcome.all(&confirmed, &Answer::of(&reply));
            log.outcome = Some(reply.to_string());
            log.emit("delivered from the spool");
        }
        Err(Sent::Refused(reply)) => {
            tokio::spawn(out.quit());
            log.decided = Some((reply.code, Origin::Destination));
            outcome.all(&confirmed, &Answer::of(&reply));
            log.emit(&format!("DATA refused: {reply}"));
        }
        Err(Sent::Lost(e)) => {
            tokio::spawn(out.quit());
            let text = format!("lost the destination session: {e}");
            log.note(&text);
            log.decided = Some((451, Origin::Local));
            outcome.all(&confirmed, &Answer::Deferred(format!("451 4.4.2 {text}")));
            log.emit("not delivered");
        }
    }
    outcome
}

/// Opens the domain's route and forwards each pending recipient; `None` when no
/// recipient can go now (the outcome holds why).
async fn open(
    ctx: &Context,
    env: &Envelope,
    domain: &str,
    pending: &[String],
    log: &mut TxLog,
    outcome: &mut Outcome,
) -> Option<(Outbound, Vec<String>)> {
    // An automation rule's block on the domain (for the message's tenant): a
    // bounce fails the recipients (a DSN follows), a suspension defers them.
    let shaper = &ctx.shaper;
    let tenant = env.tenant.as_deref();
    if let Some(reply) = shaper
        .automated
        .blocked(&shaper.throttles, domain, tenant)
        .await
    {
        log.note(&reply.to_string());
        log.decided = Some((reply.code, Origin::Local));
        outcome.all(pending, &Answer::of(&reply));
        return None;
    }
    let first = pending.first().map(String::as_str);
    let mut out = match Outbound::open(ctx, domain, &env.sender, env.body_8bit, first, log).await {
        Ok(out) => out,
        Err(OpenError::Local(reply)) => {
            log.decided = Some((reply.code, Origin::Local));
            outcome.all(pending, &Answer::Deferred(reply.to_string()));
            return None;
        }
        Err(OpenError::Destination(reply)) => {
            log.decided = Some((reply.code, Origin::Destination));
            outcome.all(pending, &Answer::of(&reply));
            return None;
        }
    };
    let mut confirmed = Vec::new();
    for (i, r) in pending.iter().enumerate() {
        match out.rcpt(r).await {
            Ok(reply) => {
                log.recipient(r, &reply, Origin::Destination);
                if reply.is_positive() {
                    confirmed.push(r.clone());
                } else {
                    outcome.answers.push((r.clone(), Answer::of(&reply)));
                }
            }
            Err(e) => {
                let text = format!("451 4.4.2 lost the destination session: {e}");
                log.note(&text);
                outcome.all(&pending[i..], &Answer::Deferred(text.clone()));
                outcome.all(&confirmed, &Answer::Deferred(text));
                tokio::spawn(out.quit());
                return None;
            }
        }
    }
    Some((out, confirmed))
}

enum Sent {
    /// The destination refused DATA.
    Refused(Reply),
    /// The session or the spool file failed.
    Lost(String),
}

/// DATA, the spooled wire form, and the reply to its end.
async fn send_body(out: &mut Outbound, data: &Path) -> Result<Reply, Sent> {
    match out.data().await {
        Ok(None) => {}
        Ok(Some(refused)) => return Err(Sent::Refused(refused)),
        Err(e) => return Err(Sent::Lost(e.to_string())),
    }
    let mut file = tokio::fs::File::open(data)
        .await
        .map_err(|e| Sent::Lost(format!("spool file {}: {e}", data.display())))?;
    let mut chunk = vec![0u8; CHUNK];
    loop {
        let n = file
            .read(&mut chunk)
            .await
            .map_err(|e| Sent::Lost(format!("spool file {}: {e}", data.display())))?;
        if n == 0 {
            break;
        }
        out.write_body(&chunk[..n])
            .await
            .map_err(|e| Sent::Lost(e.to_string()))?;
    }
    out.final_reply()
        .await
        .map_err(|e| Sent::Lost(e.to_string()))
}
