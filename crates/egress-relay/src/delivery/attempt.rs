//! One delivery attempt: one domain of one spooled message, through that domain's
//! route, every pending recipient in one transaction.

use super::OpenSession;
use crate::outbound::{Context, OpenError, Outbound};
use crate::records::{self, Recording};
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
    /// The reply line the spool keeps.
    pub fn line(&self) -> &str {
        match self {
            Answer::Delivered(l) | Answer::Failed(l) | Answer::Deferred(l) => l,
        }
    }

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

    /// A recipient already has an answer from this attempt.
    fn answered(&self, address: &str) -> bool {
        self.answers.iter().any(|(a, _)| a == address)
    }

    /// Some recipient was delivered.
    fn delivered(&self) -> bool {
        self.answers
            .iter()
            .any(|(_, a)| matches!(a, Answer::Delivered(_)))
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
/// `data`: on `session` when the client's RCPTs left one, else through a new route;
/// in transactions of at most the path's `max_recipients_per_batch`, one after the
/// other on the same session.
pub async fn run(
    ctx: &Context,
    env: &Envelope,
    domain: &str,
    data: &Path,
    session: Option<OpenSession>,
) -> Outcome {
    let Some(queue) = env.domains.iter().find(|d| d.domain == domain) else {
        return Outcome::default();
    };
    let mut log = TxLog::new(FROM_SPOOL, &env.sender, ctx.report.clone());
    log.id = format!("{}/{domain}#{}", env.id, queue.attempts + 1);
    log.tenant = env.tenant.clone();
    if let Some(sink) = ctx.records.as_ref().filter(|r| r.enabled()) {
        let head = match sink.wants_head() {
            true => read_head(data).await,
            false => None,
        };
        let message = egress_record::Message {
            head,
            meta: std::sync::Arc::new(env.meta.clone()),
        };
        log.recording = Some(Box::new(Recording::new(sink.clone(), None, message)));
    }
    if let Some(rec) = log.recording.as_mut() {
        rec.created = std::time::UNIX_EPOCH + Duration::from_secs(env.created);
        log.size = tokio::fs::metadata(data)
            .await
            .map(|m| m.len())
            .unwrap_or(0);
    }
    let pending: Vec<String> = queue.pending().map(|r| r.address.clone()).collect();
    let (outcome, what) = attempt(ctx, env, domain, data, session, &pending, &mut log).await;
    if let Some(rec) = &log.recording {
        let attempts = u16::try_from(queue.attempts + 1).unwrap_or(u16::MAX);
        let answers = outcome
            .answers
            .iter()
            .map(|(a, answer)| (a.as_str(), answer.line()));
        records::attempt(&log.facts(), rec, env, attempts, answers);
    }
    log.emit(what);
    outcome
}

/// [`run`]'s attempt: the outcome, and what the log line says of it.
async fn attempt(
    ctx: &Context,
    env: &Envelope,
    domain: &str,
    data: &Path,
    session: Option<OpenSession>,
    pending: &[String],
    log: &mut TxLog,
) -> (Outcome, &'static str) {
    let mut outcome = Outcome::default();
    let (mut out, mut confirmed) = match session {
        Some(s) => {
            s.outbound.describe(log);
            let confirmed: Vec<String> = s
                .confirmed
                .into_iter()
                .filter(|r| pending.contains(r))
                .collect();
            (s.outbound, confirmed)
        }
        None => match open(ctx, env, domain, pending, log, &mut outcome).await {
            Some(opened) => opened,
            None => return (outcome, "not delivered"),
        },
    };
    // What neither the session's RCPTs nor the first batch answered.
    let mut rest: Vec<String> = pending
        .iter()
        .filter(|r| !confirmed.contains(r) && !outcome.answered(r))
        .cloned()
        .collect();
    loop {
        if !confirmed.is_empty() && !deliver(&mut out, data, &confirmed, log, &mut outcome).await {
            let left = "451 4.4.2 left for the next attempt: the destination session ended";
            outcome.all(&rest, &Answer::Deferred(left.into()));
            tokio::spawn(out.quit());
            return (outcome, "not delivered");
        }
        if rest.is_empty() {
            break;
        }
        let batch: Vec<String> = rest.drain(..rest.len().min(out.max_batch())).collect();
        confirmed = match again(&mut out, env, &batch, log, &mut outcome).await {
            Some(accepted) => accepted,
            None => {
                let left = "451 4.4.2 left for the next attempt: the destination session ended";
                outcome.all(&rest, &Answer::Deferred(left.into()));
                tokio::spawn(out.quit());
                return (outcome, "not delivered");
            }
        };
    }
    ctx.idle.release(out).await;
    let what = if outcome.delivered() {
        "delivered from the spool"
    } else {
        "no recipient accepted"
    };
    (outcome, what)
}

/// The header section of a spooled message (its first 64 KiB at most), for
/// loggers that copy headers.
async fn read_head(data: &Path) -> Option<std::sync::Arc<[u8]>> {
    let mut file = tokio::fs::File::open(data).await.ok()?;
    let mut buf = vec![0; 64 * 1024];
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => filled += n,
        }
        if memchr::memmem::find(&buf[..filled], b"\r\n\r\n").is_some() {
            break;
        }
    }
    buf.truncate(filled);
    let end = memchr::memmem::find(&buf, b"\r\n\r\n")
        .map(|e| e + 2)
        .unwrap_or(filled);
    buf.truncate(end);
    Some(std::sync::Arc::from(buf))
}

/// Sends the message to the `confirmed` recipients of the open transaction and
/// records the replies (LMTP: each recipient's own). False when the session
/// cannot carry another transaction (DATA refused, or the session lost).
async fn deliver(
    out: &mut Outbound,
    data: &Path,
    confirmed: &[String],
    log: &mut TxLog,
    outcome: &mut Outcome,
) -> bool {
    match send_body(out, data).await {
        Ok(replies) => {
            for (i, r) in confirmed.iter().enumerate() {
                // LMTP answers each recipient; SMTP once for all of them.
                let reply = replies.get(i).or(replies.last());
                let reply = reply
                    .cloned()
                    .unwrap_or_else(|| Reply::new(451, [4, 4, 2], "no reply for this recipient"));
                log.decided = Some((reply.code, Origin::Destination));
                log.recipient(r, &reply, Origin::Destination);
                log.outcome = Some(reply.to_string());
                outcome.answers.push((r.clone(), Answer::of(&reply)));
            }
            true
        }
        Err(Sent::Refused(reply)) => {
            log.decided = Some((reply.code, Origin::Destination));
            outcome.all(confirmed, &Answer::of(&reply));
            log.note(&format!("DATA refused: {reply}"));
            false
        }
        Err(Sent::Lost(e)) => {
            let text = format!("lost the destination session: {e}");
            log.note(&text);
            log.decided = Some((451, Origin::Local));
            outcome.all(confirmed, &Answer::Deferred(format!("451 4.4.2 {text}")));
            false
        }
    }
}

/// The next batch on the same session: MAIL FROM again and its RCPTs. The
/// recipients accepted; None when the session is gone (the batch is deferred).
async fn again(
    out: &mut Outbound,
    env: &Envelope,
    batch: &[String],
    log: &mut TxLog,
    outcome: &mut Outcome,
) -> Option<Vec<String>> {
    let lost = |e: std::io::Error, outcome: &mut Outcome, log: &mut TxLog| {
        let text = format!("451 4.4.2 lost the destination session: {e}");
        log.note(&text);
        outcome.all(batch, &Answer::Deferred(text));
    };
    match out.again(&env.sender, env.body_8bit, &batch[0]).await {
        Ok(mail) if mail.is_positive() => {}
        Ok(mail) => {
            outcome.all(batch, &Answer::of(&mail));
            return Some(Vec::new());
        }
        Err(e) => {
            lost(e, outcome, log);
            return None;
        }
    }
    forward(out, batch, log, outcome)
        .await
        .map_err(|e| lost(e, outcome, log))
        .ok()
}

/// RCPT for each of `batch` on the open transaction; those accepted (the others'
/// answers go into `outcome`).
async fn forward(
    out: &mut Outbound,
    batch: &[String],
    log: &mut TxLog,
    outcome: &mut Outcome,
) -> std::io::Result<Vec<String>> {
    let mut confirmed = Vec::new();
    for r in batch {
        let reply = out.rcpt(r).await?;
        log.recipient(r, &reply, Origin::Destination);
        if reply.is_positive() {
            confirmed.push(r.clone());
        } else {
            outcome.answers.push((r.clone(), Answer::of(&reply)));
        }
    }
    Ok(confirmed)
}

/// Opens the domain's route and forwards the first batch of pending recipients;
/// `None` when no recipient can go now (the outcome holds why).
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
    let first: Vec<&str> = pending.first().map(String::as_str).into_iter().collect();
    let mut out = match Outbound::open(ctx, domain, &env.sender, env.body_8bit, &first, log).await {
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
    let batch = &pending[..pending.len().min(out.max_batch())];
    match forward(&mut out, batch, log, outcome).await {
        Ok(confirmed) => Some((out, confirmed)),
        Err(e) => {
            let text = format!("451 4.4.2 lost the destination session: {e}");
            log.note(&text);
            outcome.all(pending, &Answer::Deferred(text));
            tokio::spawn(out.quit());
            None
        }
    }
}

enum Sent {
    /// The destination refused DATA.
    Refused(Reply),
    /// The session or the spool file failed.
    Lost(String),
}

/// DATA, the spooled wire form, and the replies to its end (LMTP: one per
/// accepted recipient).
async fn send_body(out: &mut Outbound, data: &Path) -> Result<Vec<Reply>, Sent> {
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
    out.final_replies()
        .await
        .map_err(|e| Sent::Lost(e.to_string()))
}
