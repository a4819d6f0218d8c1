//! A transaction from MAIL FROM to DATA: each RCPT forwarded to its domain's
//! destination. The body is `body.rs`'s.
//!
//! One destination domain: cut-through — the client's RCPT replies and the reply
//! to its message are the destination's (the 354 is ours: see `body.rs`). Several
//! domains (only with a spool, `kumo.define_spool`): each domain gets its own
//! destination session and RCPTs are still checked there, so a 5xx reaches the
//! client at once; but a recipient the destination (or our route)
//! defers is accepted, because the message will be spooled and retried — a client
//! library told 4xx for one recipient of several usually drops it.

use crate::outbound::{Context, OpenError, Outbound};
use crate::report::{Origin, Report};
use crate::txlog::TxLog;
use egress_smtp::Reply;
use std::net::SocketAddr;
use std::sync::Arc;

/// One destination domain of a transaction.
pub struct Leg {
    /// The domain.
    pub domain: String,
    /// Its destination session (none: it could not be opened, or was lost).
    pub outbound: Option<Outbound>,
    /// Recipients the destination accepted on `outbound`.
    pub confirmed: Vec<String>,
    /// Recipients accepted for spooled delivery only (deferred, or no session).
    pub deferred: Vec<String>,
}

/// A transaction from MAIL FROM to the end of DATA (or RSET).
pub struct Transaction {
    pub from: String,
    pub body_8bit: bool,
    /// Destination domains in the order of their first RCPT.
    pub legs: Vec<Leg>,
    pub accepted: usize,
    pub log: TxLog,
    /// Several domains may be taken (the listener has a spool).
    pub spooling: bool,
}

impl Transaction {
    /// A transaction that MAIL FROM opened.
    pub fn new(
        peer: SocketAddr,
        from: String,
        body_8bit: bool,
        report: Arc<dyn Report>,
        spooling: bool,
    ) -> Transaction {
        Transaction {
            log: TxLog::new(peer, &from, report),
            spooling,
            from,
            body_8bit,
            legs: Vec::new(),
            accepted: 0,
        }
    }

    /// More than one destination domain: the message goes through the spool.
    pub fn is_spooled(&self) -> bool {
        self.legs.len() > 1
    }

    /// Ends it: the log line is written and the destination sessions closed in the
    /// background, so the client's reply never waits for a destination's 221.
    pub fn end(mut self, outcome: &str) {
        for leg in &mut self.legs {
            if let Some(out) = leg.outbound.take() {
                tokio::spawn(out.quit());
            }
        }
        self.log.emit(outcome);
    }

    /// RCPT: a local refusal (relay permission, recipient limit) or the
    /// destination's answer; either way it goes into the log. `ahead`: the
    /// recipients of the RCPTs a pipelining client sent after this one (see
    /// [`Outbound::send_ahead`]); `room`: how many more this transaction
    /// may accept.
    pub async fn rcpt(
        &mut self,
        ctx: &Context,
        address: &str,
        refusal: Option<Reply>,
        ahead: &[String],
        room: usize,
    ) -> Reply {
        let (reply, origin) = match refusal {
            Some(refusal) => (refusal, Origin::Local),
            None => self.forward_rcpt(ctx, address, ahead, room).await,
        };
        self.log.recipient(address, &reply, origin);
        if reply.is_positive() {
            self.accepted += 1;
        }
        reply
    }

    async fn forward_rcpt(
        &mut self,
        ctx: &Context,
        address: &str,
        ahead: &[String],
        room: usize,
    ) -> (Reply, Origin) {
        let local = |reply: Reply| (reply, Origin::Local);
        let Some(domain) = domain_of(address) else {
            return local(Reply::new(
                550,
                [5, 1, 3],
                "recipient must be of the form user@domain",
            ));
        };
        let position = self.legs.iter().position(|l| l.domain == domain);
        // A recipient sent ahead has its answer already: the destination has it,
        // whatever has changed since. Any other first hears an automation rule's
        // block on this domain (for this tenant).
        let told = position.is_some_and(|i| {
            self.legs[i]
                .outbound
                .as_ref()
                .is_some_and(|o| o.has_told(address))
        });
        if !told {
            let shaper = &ctx.shaper;
            let tenant = self.log.tenant.as_deref();
            if let Some(reply) = shaper
                .automated
                .blocked(&shaper.throttles, &domain, tenant)
                .await
            {
                return local(reply);
            }
        }
        // What a pipelining client sent after this RCPT for the same domain goes
        // in the same write (RFC 2920): one round trip for all of them.
        let along: Vec<&str> = ahead
            .iter()
            .take_while(|a| domain_of(a).as_deref() == Some(domain.as_str()))
            .take(room)
            .map(String::as_str)
            .collect();
        let index = match position {
            Some(i) => i,
            None => match self.open_leg(ctx, domain.clone(), address, &along).await {
                Ok(i) => i,
                Err(answer) => return answer,
            },
        };
        let spooled = self.is_spooled();
        let leg = &mut self.legs[index];
        let Some(out) = leg.outbound.as_mut() else {
            if spooled {
                leg.deferred.push(address.to_owned());
                return local(spool_reply());
            }
            return local(Reply::new(
                451,
                [4, 4, 2],
                format!("the session to {domain} was lost earlier in this transaction; send this recipient in another"),
            ));
        };
        // One recipient per transaction to an LMTP store while the client waits:
        // each recipient then hears the store's own reply to the message.
        let one_per_transaction = out.is_lmtp() && !spooled;
        if !out.takes_another_recipient(one_per_transaction) {
            if spooled {
                leg.deferred.push(address.to_owned());
                return local(spool_reply());
            }
            let why = if one_per_transaction {
                format!("{domain} is an LMTP store (use_lmtp): one recipient per transaction, so each hears the store's own reply")
            } else {
                format!(
                    "at most {} recipients per transaction to {domain} (max_recipients_per_batch)",
                    out.max_batch()
                )
            };
            return local(Reply::new(
                452,
                [4, 5, 3],
                format!("{why}; send the rest in another transaction"),
            ));
        }
        let forwarded = async {
            if !out.has_told(address) && !one_per_transaction && !along.is_empty() {
                let batch: Vec<&str> = std::iter::once(address)
                    .chain(along.iter().copied())
                    .take(out.room())
                    .collect();
                if batch.len() > 1 {
                    out.send_ahead(&batch).await?;
                }
            }
            out.rcpt(address).await
        };
        match forwarded.await {
            Ok(reply) if reply.is_positive() => {
                leg.confirmed.push(address.to_owned());
                (reply, Origin::Destination)
            }
            Ok(reply) if spooled && reply.code / 100 == 4 => {
                self.log
                    .note(&format!("<{address}>: {reply}; accepted for the spool"));
                leg.deferred.push(address.to_owned());
                local(spool_reply())
            }
            Ok(reply) => (reply, Origin::Destination),
            Err(e) => {
                self.log.note(&e.to_string());
                if let Some(out) = leg.outbound.take() {
                    tokio::spawn(out.quit());
                }
                if spooled {
                    leg.deferred.push(address.to_owned());
                    return local(spool_reply());
                }
                if leg.confirmed.is_empty() {
                    // Nothing rides on it: the next RCPT opens a new one.
                    self.legs.remove(index);
                }
                local(Reply::new(
                    451,
                    [4, 4, 2],
                    format!("lost the destination session: {e}"),
                ))
            }
        }
    }

    /// The first RCPT for `domain`: opens its destination session. `Ok(index)` of
    /// the new leg, or the reply when the recipient is not accepted.
    async fn open_leg(
        &mut self,
        ctx: &Context,
        domain: String,
        address: &str,
        along: &[&str],
    ) -> Result<usize, (Reply, Origin)> {
        let first = self.legs.is_empty();
        if !first && !self.spooling {
            let fixed = &self.legs[0].domain;
            return Err((
                Reply::new(
                    452,
                    [4, 5, 3],
                    format!("this transaction is for {fixed}; send {domain} in another"),
                ),
                Origin::Local,
            ));
        }
        let rcpts: Vec<&str> = std::iter::once(address)
            .chain(along.iter().copied())
            .collect();
        let opened = Outbound::open(
            ctx,
            &domain,
            &self.from,
            self.body_8bit,
            &rcpts,
            &mut self.log,
        )
        .await;
        let outbound = match opened {
            Ok(out) => Some(out),
            // A second domain is spooled: what cannot go now is retried.
            Err(OpenError::Local(reply)) | Err(OpenError::Destination(reply))
                if !first && reply.code / 100 == 4 =>
            {
                self.log
                    .note(&format!("<{address}>: {reply}; accepted for the spool"));
                None
            }
            Err(OpenError::Local(reply)) => return Err((reply, Origin::Local)),
            Err(OpenError::Destination(reply)) => return Err((reply, Origin::Destination)),
        };
        self.legs.push(Leg {
            domain,
            outbound,
            confirmed: Vec::new(),
            deferred: Vec::new(),
        });
        Ok(self.legs.len() - 1)
    }
}

/// The domain of a recipient, lower case, without a final dot.
fn domain_of(address: &str) -> Option<String> {
    address
        .rsplit_once('@')
        .map(|(_, d)| d.trim_end_matches('.').to_ascii_lowercase())
        .filter(|d| !d.is_empty())
}

/// What a recipient accepted for spooled delivery hears.
fn spool_reply() -> Reply {
    Reply::new(
        250,
        [2, 1, 5],
        "recipient accepted; this message will be delivered from the spool",
    )
}
