//! Delivery from the spool: messages for several domains, once egressd has said
//! `250` for them (egress-spool holds them durably before that).
//!
//! Each destination domain of a message is delivered on its own, through that
//! domain's pool and source exactly as a relayed transaction is routed
//! (`Outbound::open`), and retried with the queue config's backoff
//! (`retry_interval`, doubling, at most `max_retry_interval`) until `max_age`.
//! A recipient the destination refuses for good (5xx), or one still pending at
//! `max_age`, gets a delivery status notification to the sender (`dsn.rs`); never
//! for the null sender.
//!
//! The first attempt uses the sessions the client's RCPTs opened (they are past
//! RCPT already); later attempts open their own. Every attempt is one transaction
//! log line (`id` = `SPOOLID/DOMAIN#ATTEMPT`) and is reported (`Report`).
//!
//! Invariants: a message's envelope is rewritten (durably) after every attempt
//! before the next is scheduled, so a recipient recorded delivered is never sent
//! again; a message leaves the spool only when every recipient is delivered or
//! failed (and its DSN, when one is due, is itself spooled first).

mod attempt;
mod dsn;

use crate::outbound::{Context, Outbound};
use crate::records;
use crate::shutdown::{Shutdown, State};
use egress_record::RecordType;
use egress_spool::{now_secs, Envelope, Spool, SpoolError};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};

/// Attempts running at once.
const MAX_ATTEMPTS_AT_ONCE: usize = 32;
/// How long SIGTERM waits for attempts in flight.
pub const DRAIN: Duration = Duration::from_secs(10);

/// A session the client's RCPTs opened, with the recipients the destination
/// accepted on it.
pub struct OpenSession {
    /// The destination domain.
    pub domain: String,
    /// The session, past RCPT.
    pub outbound: Outbound,
    /// Recipients it accepted.
    pub confirmed: Vec<String>,
}

/// The spool and what is due from it.
pub struct Delivery {
    spool: Arc<Spool>,
    messages: Mutex<HashMap<String, Envelope>>,
    /// (id, domain) attempts running now.
    running: Mutex<HashSet<(String, String)>>,
    wake: Notify,
    slots: Arc<Semaphore>,
    /// One lock per message around its envelope's writes, so two domains finishing
    /// at once cannot write an envelope after the other removed the message.
    writes: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

use crate::lock;

impl Delivery {
    /// Delivery over an opened spool and the messages found in it.
    pub fn new(spool: Spool, found: Vec<Envelope>) -> Delivery {
        Delivery {
            spool: Arc::new(spool),
            messages: Mutex::new(found.into_iter().map(|e| (e.id.clone(), e)).collect()),
            running: Mutex::default(),
            wake: Notify::new(),
            slots: Arc::new(Semaphore::new(MAX_ATTEMPTS_AT_ONCE)),
            writes: Mutex::default(),
        }
    }

    /// The spool.
    pub fn spool(&self) -> &Spool {
        &self.spool
    }

    /// Messages held now.
    pub fn len(&self) -> usize {
        lock(&self.messages).len()
    }

    /// No message is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every message held, oldest first.
    pub fn list(&self) -> Vec<Envelope> {
        let mut list: Vec<Envelope> = lock(&self.messages).values().cloned().collect();
        list.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        list
    }

    /// Fails every pending recipient for `domain` (every domain when `None`) of
    /// messages from `tenant` (any when `None`), as KumoMTA's admin bounce does:
    /// an `AdminBounce` record each, a DSN to the sender, the message gone when
    /// nothing is left. The recipients bounced, by domain.
    pub(crate) async fn bounce(
        &self,
        ctx: &Context,
        domain: Option<&str>,
        tenant: Option<&str>,
        reason: &str,
    ) -> std::collections::BTreeMap<String, usize> {
        let line = format!("551 5.7.1 Administrator bounced with reason: {reason}");
        let mut bounced = std::collections::BTreeMap::new();
        let mut touched = Vec::new();
        {
            let mut messages = lock(&self.messages);
            for env in messages.values_mut() {
                if tenant.is_some_and(|t| env.tenant.as_deref() != Some(t)) {
                    continue;
                }
                let mut failed = Vec::new();
                for d in env.domains.iter_mut() {
                    if domain.is_some_and(|want| !d.domain.eq_ignore_ascii_case(want)) {
                        continue;
                    }
                    for r in d.recipients.iter_mut() {
                        if r.state == egress_spool::RecipientState::Pending {
                            r.state = egress_spool::RecipientState::Failed {
                                reply: line.clone(),
                            };
                            failed.push((r.address.clone(), line.clone(), d.attempts));
                            *bounced.entry(d.domain.clone()).or_insert(0) += 1;
                        }
                    }
                }
                if !failed.is_empty() {
                    touched.push((env.clone(), failed));
                }
            }
        }
        for (env, failed) in touched {
            if let Some(sink) = &ctx.records {
                let message = egress_record::Message {
                    head: None,
                    meta: Arc::new(env.meta.clone()),
                };
                for (address, line, attempts) in failed {
                    let attempts = u16::try_from(attempts).unwrap_or(u16::MAX);
                    records::given_up(
                        &**sink,
                        &message,
                        &env,
                        RecordType::AdminBounce,
                        &[(address, line)],
                        attempts,
                    );
                }
            }
            let write = lock(&self.writes)
                .entry(env.id.clone())
                .or_default()
                .clone();
            let _writing = write.lock().await;
            let Some(current) = lock(&self.messages).get(&env.id).cloned() else {
                continue;
            };
            if current.is_done() {
                self.finish(ctx, current).await;
                lock(&self.writes).remove(&env.id);
            } else if let Err(e) = self.persist(&current).await {
                tracing::error!(id = %env.id, "spool: cannot record the bounce: {e}");
            }
        }
        bounced
    }

    /// Runs the schedule until SIGTERM, then waits up to [`DRAIN`] for attempts in
    /// flight (the rest stay in the spool for the next start).
    pub fn spawn(
        self: &Arc<Self>,
        ctx: Arc<Context>,
        mut shutdown: Shutdown,
    ) -> tokio::task::JoinHandle<()> {
        let delivery = self.clone();
        tokio::spawn(async move {
            loop {
                if shutdown.state() != State::Running {
                    break;
                }
                for (id, domain) in delivery.due() {
                    let Ok(slot) = delivery.slots.clone().acquire_owned().await else {
                        return;
                    };
                    let (ctx, delivery) = (ctx.clone(), delivery.clone());
                    tokio::spawn(async move {
                        delivery.attempt(&ctx, &id, &domain, None).await;
                        drop(slot);
                    });
                }
                tokio::select! {
                    _ = delivery.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.changed() => {}
                }
            }
            let all = MAX_ATTEMPTS_AT_ONCE as u32;
            if tokio::time::timeout(DRAIN, delivery.slots.acquire_many(all))
                .await
                .is_err()
            {
                tracing::warn!("spool: attempts still running after {DRAIN:?}; they are retried at the next start");
            }
        })
    }

    /// (id, domain) pairs due now and not running.
    fn due(&self) -> Vec<(String, String)> {
        let now = now_secs();
        let running = lock(&self.running);
        let messages = lock(&self.messages);
        let mut due = Vec::new();
        for env in messages.values() {
            for d in &env.domains {
                let key = (env.id.clone(), d.domain.clone());
                if !d.is_done() && d.next_attempt <= now && !running.contains(&key) {
                    due.push(key);
                }
            }
        }
        drop((messages, running));
        due
    }

    /// Takes a message just committed: its sessions from the client's RCPTs
    /// deliver at once; every other domain is due now.
    pub fn accept(
        self: &Arc<Self>,
        ctx: Arc<Context>,
        envelope: Envelope,
        sessions: Vec<OpenSession>,
    ) {
        let id = envelope.id.clone();
        // Domains with a session are marked running before the schedule can see them.
        {
            let mut running = lock(&self.running);
            for s in &sessions {
                running.insert((id.clone(), s.domain.clone()));
            }
        }
        lock(&self.messages).insert(id.clone(), envelope);
        for session in sessions {
            let (ctx, delivery, id) = (ctx.clone(), self.clone(), id.clone());
            tokio::spawn(async move {
                let domain = session.domain.clone();
                delivery
                    .attempt_marked(&ctx, &id, &domain, Some(session))
                    .await;
            });
        }
        self.wake.notify_one();
    }

    /// One attempt for one domain of one message (unless one is running).
    async fn attempt(&self, ctx: &Context, id: &str, domain: &str, session: Option<OpenSession>) {
        let key = (id.to_owned(), domain.to_owned());
        if !lock(&self.running).insert(key) {
            return;
        }
        self.attempt_marked(ctx, id, domain, session).await;
    }

    /// [`attempt`](Self::attempt) once marked running.
    async fn attempt_marked(
        &self,
        ctx: &Context,
        id: &str,
        domain: &str,
        session: Option<OpenSession>,
    ) {
        let envelope = lock(&self.messages).get(id).cloned();
        if let Some(envelope) = envelope {
            let data = self.spool.data_path(id);
            let outcome = attempt::run(ctx, &envelope, domain, &data, session).await;
            self.record(ctx, id, domain, outcome).await;
        }
        lock(&self.running).remove(&(id.to_owned(), domain.to_owned()));
        self.wake.notify_one();
    }

    /// Applies an attempt's outcome, persists the envelope, and finishes the
    /// message when nothing is pending.
    async fn record(&self, ctx: &Context, id: &str, domain: &str, outcome: attempt::Outcome) {
        let tenant = lock(&self.messages).get(id).and_then(|e| e.tenant.clone());
        let queue = ctx
            .policy
            .queue_config(domain, tenant.as_deref(), None, None)
            .await
            .ok();
        let mut expired = None;
        {
            let mut messages = lock(&self.messages);
            let Some(env) = messages.get_mut(id) else {
                return;
            };
            let created = env.created;
            if let Some(d) = env.domains.iter_mut().find(|d| d.domain == domain) {
                outcome.apply(d);
                if !d.is_done() {
                    d.attempts += 1;
                    let (delay, max_age) = match &queue {
                        Some(q) => (q.retry_delay(d.attempts), q.max_age),
                        None => (
                            Duration::from_secs(20 * 60),
                            Duration::from_secs(7 * 86_400),
                        ),
                    };
                    let now = now_secs();
                    if now >= created + max_age.as_secs() {
                        let pending: Vec<String> = d.pending().map(|r| r.address.clone()).collect();
                        attempt::expire(d, max_age);
                        let given_up = failed_lines(d, &pending);
                        expired = Some((given_up, d.attempts));
                    } else {
                        d.next_attempt = now + delay.as_secs().max(1);
                    }
                }
            }
        }
        let expired_env = expired
            .as_ref()
            .and_then(|_| lock(&self.messages).get(id).cloned());
        if let (Some((recipients, attempts)), Some(env), Some(sink)) =
            (expired, expired_env, &ctx.records)
        {
            let message = egress_record::Message {
                head: None,
                meta: Arc::new(env.meta.clone()),
            };
            let attempts = u16::try_from(attempts).unwrap_or(u16::MAX);
            records::given_up(
                &**sink,
                &message,
                &env,
                RecordType::Expiration,
                &recipients,
                attempts,
            );
        }
        let write = lock(&self.writes).entry(id.to_owned()).or_default().clone();
        let _writing = write.lock().await;
        // The latest state, under the write lock: another domain's record may have
        // moved it on, or finished the message.
        let Some(current) = lock(&self.messages).get(id).cloned() else {
            return;
        };
        if current.is_done() {
            self.finish(ctx, current).await;
            lock(&self.writes).remove(id);
        } else if let Err(e) = self.persist(&current).await {
            tracing::error!(
                id,
                "spool: cannot record the attempt: {e}; it may be repeated after a restart"
            );
        }
    }

    async fn persist(&self, env: &Envelope) -> Result<(), SpoolError> {
        let (env, spool) = (env.clone(), self.spool.clone());
        blocking(move || spool.update(&env)).await
    }

    /// Every recipient has an answer: bounce what failed, then let the message go.
    async fn finish(&self, ctx: &Context, env: Envelope) {
        if let Some(bounce) = dsn::for_failures(
            &env,
            &ctx.hostname,
            &ctx.product,
            &self.spool.data_path(&env.id),
        ) {
            match self.spool_message(bounce).await {
                Ok(id) => {
                    tracing::info!(id = %env.id, dsn = %id, "spool: delivery status notification spooled for the sender")
                }
                Err(e) => {
                    // Keep the message (and retry the notice at the next start) rather
                    // than lose the only record of the failure.
                    tracing::error!(id = %env.id, "spool: cannot spool the delivery status notification: {e}");
                    let _ = self.persist(&env).await;
                    return;
                }
            }
        }
        lock(&self.messages).remove(&env.id);
        let (spool, id) = (self.spool.clone(), env.id.clone());
        match blocking(move || spool.remove(&id)).await {
            Ok(()) => tracing::info!(id = %env.id, "spool: done"),
            Err(e) => tracing::error!(id = %env.id, "spool: cannot remove: {e}"),
        }
    }

    /// Spools a message egressd writes itself (a DSN): wire-form body, envelope.
    async fn spool_message(&self, message: dsn::Message) -> Result<String, SpoolError> {
        let spool = self.spool.clone();
        let env = blocking(move || {
            let mut writer = spool.writer()?;
            writer.write(&message.wire)?;
            let env = Envelope::new(
                writer.id(),
                "",
                false,
                [(message.domain, [message.recipient])],
            );
            writer.commit(&env)?;
            Ok(env)
        })
        .await?;
        let id = env.id.clone();
        lock(&self.messages).insert(id.clone(), env);
        self.wake.notify_one();
        Ok(id)
    }
}

/// The failure line of each of `recipients` in `d`.
fn failed_lines(d: &egress_spool::DomainQueue, recipients: &[String]) -> Vec<(String, String)> {
    d.recipients
        .iter()
        .filter(|r| recipients.contains(&r.address))
        .filter_map(|r| match &r.state {
            egress_spool::RecipientState::Failed { reply } => {
                Some((r.address.clone(), reply.clone()))
            }
            _ => None,
        })
        .collect()
}

/// Runs a spool operation (file writes and fsyncs) on a blocking thread, so it
/// never stalls the runtime; a thread that died is an I/O error like any other.
pub async fn blocking<T: Send + 'static>(
    op: impl FnOnce() -> Result<T, SpoolError> + Send + 'static,
) -> Result<T, SpoolError> {
    tokio::task::spawn_blocking(op).await.unwrap_or_else(|e| {
        Err(SpoolError::Io {
            path: "spool".into(),
            error: std::io::Error::other(e),
        })
    })
}
