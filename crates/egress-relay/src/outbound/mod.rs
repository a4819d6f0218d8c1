//! The outbound half of a transaction: pick a source, find the destination, connect
//! through the source, and open an SMTP session (egress-smtp's `ClientSession`)
//! to the destination on the client's behalf.

mod any_certificate;
mod auth;
pub mod automation;
pub mod dane;
pub mod destinations;
pub mod hosts;
mod idle;
pub mod in_force;
pub mod memory;
pub mod mta_sts;
pub mod plan;
pub(crate) mod route;
pub mod shaping;
pub mod tls;
pub mod tls_report;

use crate::dns::Dns;
use crate::report::{NoReport, PathHandle, Report};
use crate::txlog::TxLog;
use egress_connect::{Connector, EgressAddress};
use egress_policy::Policy;
use egress_smtp::{smtp_path, ClientSession, Reply, Timeouts};
use egress_source::{EgressPathConfig, EgressPool, WeightedRoundRobin};
use egress_throttle::{Lease, Throttles};
use idle::{IdleSessions, SessionKey};
use shaping::Shaper;
use std::collections::HashMap;
use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex};
use tokio::net::TcpStream;

/// What every session shares.
pub struct Context {
    /// The policy.
    pub policy: Arc<dyn Policy>,
    /// DNS for routing and proxy names.
    pub dns: Dns,
    /// Connects through sources, resolving proxy names with `dns`.
    pub connector: Connector,
    /// Our name: banner, `Received:`, EHLO when nothing else says.
    pub hostname: String,
    /// The server's name in what the relay writes (the banner, `Received:`, DSNs,
    /// the MTA-STS `User-Agent`, TLS reports).
    pub product: String,
    /// One selector per pool, so the weighted rotation continues across
    /// transactions; rebuilt when the pool's entries change.
    selectors: Mutex<HashMap<String, PoolSelector>>,
    /// Destination sessions left open after a transaction.
    pub idle: IdleSessions,
    /// Each domain's hosts and site, between transactions.
    pub routing: destinations::RoutingCache,
    /// Rates, connection limits, suspensions.
    pub shaper: Arc<Shaper>,
    /// TLS client configurations, by mode and client certificate.
    pub tls: tls::TlsClients,
    /// Where what happens is reported.
    pub report: Arc<dyn Report>,
    /// Our listeners' addresses (the loop `prohibited_hosts` guards against by
    /// default).
    pub own_addresses: hosts::OwnAddresses,
    /// Broken TLS and connection failures, by site.
    pub sites: memory::SiteMemory,
    /// MTA-STS policies, by domain.
    pub mta_sts: mta_sts::MtaSts,
    /// What TLS reporting (RFC 8460) would say of the sessions made.
    pub tls_reports: tls_report::TlsReports,
    /// Where log records go (none: the relay makes none).
    pub records: Option<Arc<dyn egress_record::RecordSink>>,
}

/// The product name when the server gives none.
pub const PRODUCT: &str = "egress-relay";

/// A pool definition and the rotation built from its entries.
type PoolSelector = (Arc<EgressPool>, Arc<WeightedRoundRobin<String>>);

impl Context {
    /// A context over a loaded policy, shaping on this node only, reporting nothing.
    pub fn new(policy: Arc<dyn Policy>, dns: Dns, hostname: String) -> Context {
        Self::with_throttles(
            policy,
            dns,
            hostname,
            PRODUCT,
            Arc::new(Throttles::local()),
            Arc::new(NoReport),
        )
    }

    /// A context whose shaping uses `throttles` (shared through Redis or not) and
    /// that reports to `report`.
    pub fn with_throttles(
        policy: Arc<dyn Policy>,
        dns: Dns,
        hostname: String,
        product: &str,
        throttles: Arc<Throttles>,
        report: Arc<dyn Report>,
    ) -> Context {
        let connector = Connector::new(Arc::new(dns.clone()));
        Context {
            policy,
            dns,
            connector,
            hostname,
            product: product.to_owned(),
            selectors: Mutex::default(),
            idle: IdleSessions::default(),
            routing: destinations::RoutingCache::default(),
            tls: tls::TlsClients::default(),
            shaper: Arc::new(Shaper::new(throttles, report.clone())),
            report,
            own_addresses: hosts::OwnAddresses::default(),
            sites: memory::SiteMemory::default(),
            mta_sts: mta_sts::MtaSts::new(product),
            tls_reports: tls_report::TlsReports::default(),
            records: None,
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

/// An address as MAIL FROM and RCPT TO write it.
fn bracketed(address: &str) -> String {
    format!("<{}>", smtp_path(address))
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
    /// Connection-limit slots this connection holds (given back when it closes).
    leases: Vec<Lease>,
    shaper: Arc<Shaper>,
    /// Transactions this connection has carried.
    deliveries: u64,
    /// It speaks LMTP.
    lmtp: bool,
    /// `max_deliveries_per_connection` of the path that opened it.
    max_deliveries: Option<u64>,
    /// Its report handle (none when the embedder records nothing for it).
    report: Option<Arc<PathHandle>>,
    /// Replies to RCPTs sent ahead of their turn — with MAIL FROM, or those a
    /// pipelining client had already sent — each with its (bracketed) address, in
    /// order: [`rcpt`](Self::rcpt) tells them.
    told: VecDeque<(String, Reply)>,
    /// The transaction's automation rules (none when its path has none).
    watch: Option<Arc<automation::Watch>>,
    /// How long it may wait idle for the next transaction (its path's
    /// `idle_timeout`).
    idle_timeout: std::time::Duration,
    /// RCPTs one transaction carries (`max_recipients_per_batch`).
    max_batch: usize,
    /// RCPTs sent in the open transaction.
    rcpts: usize,
    /// RSET before the next transaction, with this wait (`enable_rset`,
    /// `rset_timeout`).
    rset: Option<std::time::Duration>,
    /// BDAT may carry a relayed message (`enable_chunking`).
    chunking: bool,
    /// The destination host's name (the MX name), for log records.
    host: Arc<str>,
    /// Our end of a direct connection.
    local: Option<std::net::SocketAddr>,
    /// The session's UUID in log records.
    session_id: Arc<str>,
}

impl Outbound {
    /// Opens a transaction for `domain` (the steps are in `outbound/route/`).
    /// `first_rcpts`, when given, go with MAIL FROM (in one write where PIPELINING
    /// is offered; an LMTP store or the path's batch size may take fewer); their
    /// replies are [`rcpt`](Self::rcpt)'s answers for them. Fills `log`.
    pub async fn open(
        ctx: &Context,
        domain: &str,
        from: &str,
        body_8bit: bool,
        first_rcpts: &[&str],
        log: &mut TxLog,
    ) -> Result<Outbound, OpenError> {
        route::open(ctx, domain, from, body_8bit, first_rcpts, log).await
    }

    /// Forwards one recipient; the destination's reply (for a recipient sent
    /// ahead, the reply it already got). A recipient other than the next one sent
    /// ahead is an error: the dialogue is out of step and the session must go.
    pub async fn rcpt(&mut self, address: &str) -> io::Result<Reply> {
        let reply = match self.told.pop_front() {
            Some((ahead, reply)) if ahead == bracketed(address) => reply,
            Some((ahead, _)) => {
                return Err(io::Error::other(format!(
                    "recipient <{address}> came where {ahead}, sent ahead, was expected"
                )))
            }
            None => {
                self.rcpts += 1;
                Reply::relayed(&self.smtp.rcpt(&bracketed(address)).await?)
            }
        };
        if !reply.is_positive() {
            self.observe(&reply).await;
        }
        Ok(reply)
    }

    /// Whether `address` is the next recipient sent ahead.
    pub fn has_told(&self, address: &str) -> bool {
        self.told
            .front()
            .is_some_and(|(ahead, _)| *ahead == bracketed(address))
    }

    /// Sends `addresses` — recipients a pipelining client has already sent, to
    /// be told in turn by [`rcpt`](Self::rcpt) — in one write, and reads their
    /// replies. At most as many as the transaction still takes
    /// ([`room`](Self::room)).
    pub async fn send_ahead(&mut self, addresses: &[&str]) -> io::Result<()> {
        let paths: Vec<String> = addresses.iter().map(|a| bracketed(a)).collect();
        let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
        let replies = self.smtp.rcpts(&refs).await?;
        self.rcpts += paths.len();
        for (path, reply) in paths.into_iter().zip(replies) {
            self.told.push_back((path, Reply::relayed(&reply)));
        }
        Ok(())
    }

    /// How many more recipients the open transaction takes
    /// (`max_recipients_per_batch`).
    pub fn room(&self) -> usize {
        self.max_batch.saturating_sub(self.rcpts)
    }

    /// Matches a destination reply that ends an attempt against the path's rules.
    async fn observe(&self, reply: &Reply) {
        if let Some(watch) = &self.watch {
            watch.observe(&self.shaper, reply, false).await;
        }
    }

    /// Sends DATA; `Ok(None)` when the destination is ready (354), else its reply.
    pub async fn data(&mut self) -> io::Result<Option<Reply>> {
        self.send_data().await?;
        self.data_reply().await
    }

    /// Writes DATA without reading the reply (see `ClientSession::send_data`).
    pub async fn send_data(&mut self) -> io::Result<()> {
        self.smtp.send_data().await
    }

    /// The reply to [`send_data`](Self::send_data): `Ok(None)` when the destination
    /// is ready (354), else its reply.
    pub async fn data_reply(&mut self) -> io::Result<Option<Reply>> {
        let reply = self.smtp.data_reply().await?;
        if reply.code == 354 {
            return Ok(None);
        }
        let reply = Reply::relayed(&reply);
        self.observe(&reply).await;
        Ok(Some(reply))
    }

    /// Passes framed body octets on.
    pub async fn write_body(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.smtp.write_body(bytes).await
    }

    /// The message can go with BDAT: the path allows it (`enable_chunking`), the
    /// destination offers CHUNKING, and it is not an LMTP store.
    pub fn takes_bdat(&self) -> bool {
        self.chunking && self.smtp.extensions().chunking && !self.lmtp
    }

    /// Begins a BDAT transfer (see [`takes_bdat`](Self::takes_bdat)); nothing is
    /// written until the first chunk.
    pub fn start_bdat(&mut self) -> io::Result<()> {
        self.smtp.start_bdat()
    }

    /// Passes message text (not dot-stuffed) on as a BDAT chunk, `last` for the
    /// final one; the outcome is [`final_reply`](Self::final_reply)'s.
    pub async fn bdat(&mut self, text: &[u8], last: bool) -> io::Result<()> {
        self.smtp.bdat(text, last).await
    }

    /// Reads the reply to the end of the message (which the caller has written).
    pub async fn final_reply(&mut self) -> io::Result<Reply> {
        let reply = Reply::relayed(&self.smtp.end_of_data_reply().await?);
        self.observe(&reply).await;
        Ok(reply)
    }

    /// The replies to the end of the message: one, or for LMTP one per recipient
    /// the destination accepted, in RCPT order.
    pub async fn final_replies(&mut self) -> io::Result<Vec<Reply>> {
        let mut replies = Vec::new();
        for reply in self.smtp.end_of_data_replies().await? {
            let reply = Reply::relayed(&reply);
            self.observe(&reply).await;
            replies.push(reply);
        }
        Ok(replies)
    }

    /// The destination is an LMTP store (`use_lmtp`).
    pub fn is_lmtp(&self) -> bool {
        self.lmtp
    }

    /// The open transaction may carry another RCPT within
    /// `max_recipients_per_batch` (and, when each recipient needs its own reply
    /// told to a client, within one).
    pub fn takes_another_recipient(&self, one_per_transaction: bool) -> bool {
        let max = if one_per_transaction {
            1
        } else {
            self.max_batch
        };
        // Recipients sent ahead have replies still to be told.
        !self.told.is_empty() || self.rcpts < max
    }

    /// The most RCPTs one transaction carries on this session.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Opens another transaction on this session after the last one ended (the
    /// spool's next batch of recipients): RSET when the path wants it, MAIL FROM
    /// with the first RCPT. MAIL's reply; the RCPT's is [`rcpt`](Self::rcpt)'s.
    pub async fn again(&mut self, from: &str, body_8bit: bool, first: &str) -> io::Result<Reply> {
        if let Some(timeout) = self.rset {
            self.smtp.rset_before_next_mail(timeout);
        }
        let mail_from = bracketed(from);
        let (mail, rcpt) = self
            .smtp
            .mail_rcpt(&mail_from, body_8bit, &bracketed(first))
            .await?;
        self.deliveries += 1;
        self.rcpts = 1;
        self.told.clear();
        if let Some(r) = rcpt {
            self.told.push_back((bracketed(first), Reply::relayed(&r)));
        }
        Ok(Reply::relayed(&mail))
    }

    /// Ends the session: QUIT where that is a command, else just closing; its
    /// connection slots are given back.
    pub async fn quit(self) {
        let (shaper, leases) = (self.shaper.clone(), self.leases.clone());
        self.smtp.quit().await;
        shaper.release(&leases).await;
    }

    /// Fills what a transaction log says about the route from this session (for a
    /// session opened by another transaction's log).
    pub fn describe(&self, log: &mut TxLog) {
        log.source = Some(self.key.source.name.clone());
        log.egress = Some(self.egress);
        log.tls = self.smtp.tls().cloned();
        self.stamp(log);
        log.path = self.report.clone();
        if let Some(path) = &self.report {
            log.pool = Some(path.pool.clone());
            log.site = Some(path.site.clone());
        }
    }

    /// Puts the session's own facts into `log` (its host and address; for log
    /// records its id, our address and protocol).
    pub fn stamp(&self, log: &mut TxLog) {
        log.peer(&self.host, self.key.addr);
        if let Some(rec) = log.recording.as_mut() {
            rec.out_session = Some(self.session_id.clone());
            rec.local = self.local;
            rec.lmtp = self.lmtp;
        }
    }

    /// It has carried as many transactions as its path allows.
    fn retired(&self) -> bool {
        self.max_deliveries
            .is_some_and(|max| self.deliveries >= max)
    }
}
