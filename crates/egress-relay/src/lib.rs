//! The relay engine: an ESMTP session that relays each transaction through an
//! egress source picked from a weighted pool — with the routing, destination
//! sessions, shaping, DNS, limits per client, spooled delivery (for
//! several-domain mail) and the transaction log that takes. egressd is a thin
//! server over it; any Rust MTA can embed it.
//!
//! [`Relay`] is the face: built from a [`Policy`] — the trait the engine asks
//! (egress-lua implements it for KumoMTA-style Lua policies; your MTA can in
//! plain Rust, see `examples/embed.rs`) — it reads what the policy declares
//! (resolver, Redis throttles, spool), and serves inbound connections on
//! [`Listener`]s. [`Relay::resolve`] and [`Relay::probe`] follow the same route
//! decision a transaction does; [`Relay::admin`] lists, raises and ends
//! suspensions and overrides. What happens is reported through [`Report`]; the
//! relay itself has no HTTP, no metrics library, no CLI and no Lua. Everything
//! public is re-exported here; the modules are private.
//!
//! With a Lua policy (egress-lua):
//!
//! ```no_run
//! use egress_lua::{EsmtpListener, Policy, PolicyOptions};
//! use egress_relay::Relay;
//! use std::sync::Arc;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let policy = Policy::from_source("policy.lua", r#"
//!     kumo.on('get_queue_config', function(domain)
//!       return kumo.make_queue_config { egress_pool = 'main' }
//!     end)
//!     kumo.on('get_egress_pool', function(name)
//!       return kumo.make_egress_pool { name = name, entries = { { name = 'ip-2' } } }
//!     end)
//!     kumo.on('get_egress_source', function(name)
//!       return kumo.make_egress_source { name = name, source_address = '127.0.0.2' }
//!     end)"#, PolicyOptions::default())?;
//! let relay = Relay::builder(Arc::new(policy)).build()?;
//! let listener = relay.listener(EsmtpListener::default())?;
//! let socket = tokio::net::TcpListener::bind(listener.config.listen).await?;
//! relay.accept(socket, listener).await; // until relay.shutdown(…) begins
//! # Ok(())
//! # }
//! ```
//!
//! Invariants: nothing is acknowledged before it is relayed (one domain: the
//! client's `250` is the destination's) or durable (several domains: spooled and
//! fsynced first); every local failure is a `4xx` naming pool and source; a `5xx`
//! is only ever the destination's own (or, for spooled mail, a DSN).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod admin;
mod client_limits;
mod delivery;
mod dns;
mod inbound;
mod outbound;
mod probe;
mod records;
mod report;
mod resolve;
mod shutdown;
mod suspension;
mod txlog;

// The face: everything an embedder uses, and nothing else (modules are private).
pub use admin::{Admin, OverrideScope};
pub use delivery::{Delivery, DRAIN};
pub use egress_policy::{
    Boxed, Declarations, EsmtpListener, InvalidLineEndings, Policy, PolicyError,
};
pub use egress_record::{LogRecord, Message as RecordMessage, RecordSink, RecordType};
pub use egress_throttle::{Block, BlockKind, InForce, Override};
pub use inbound::Listener;
pub use probe::{ProbeReport, ProbeTls};
pub use report::{ListenerReport, NoReport, Origin, PathReport, Refusal, Report, Unrouted};
pub use resolve::ResolveError;
pub use shutdown::State;
pub use suspension::{Suspension, SuspensionKey};

use dns::Dns;
use outbound::Context;

use egress_throttle::Throttles;
use shutdown::{Shutdown, Trigger};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

/// A running relay: the shared state every session uses, the spool's delivery
/// when the policy defines one, and the listeners made from it.
pub struct Relay {
    ctx: Arc<Context>,
    delivery: Option<Arc<Delivery>>,
    deliveries: Mutex<Option<tokio::task::JoinHandle<()>>>,
    listeners: Mutex<Vec<Arc<Listener>>>,
    trigger: Trigger,
    shutdown: Shutdown,
}

/// Builds a [`Relay`]; see [`Relay::builder`].
pub struct RelayBuilder {
    policy: Arc<dyn Policy>,
    hostname: Option<String>,
    product: Option<String>,
    report: Arc<dyn Report>,
    throttles: Option<Arc<Throttles>>,
    records: Option<Arc<dyn RecordSink>>,
}

impl RelayBuilder {
    /// Our name in banners, `Received:` and EHLO when nothing else says; default
    /// the host's name.
    pub fn hostname(mut self, name: impl Into<String>) -> Self {
        self.hostname = Some(name.into());
        self
    }

    /// The server's name in what the relay writes — the banner (`ESMTP NAME`),
    /// `Received: … (NAME)`, DSNs, the MTA-STS `User-Agent`, the TLS report's own
    /// field; default `egress-relay`.
    pub fn product(mut self, name: impl Into<String>) -> Self {
        self.product = Some(name.into());
        self
    }

    /// Where the relay reports what happens; default [`NoReport`].
    pub fn report(mut self, report: Arc<dyn Report>) -> Self {
        self.report = report;
        self
    }

    /// Where the relay hands its log records (KumoMTA's: `Reception`,
    /// `Delivery`, `TransientFailure`, `Bounce`, `Rejection`, `Expiration`,
    /// `AdminBounce`); default none, and then none are made. egress-log's
    /// `Loggers` is one.
    pub fn records(mut self, sink: Arc<dyn RecordSink>) -> Self {
        self.records = Some(sink);
        self
    }

    /// The throttle store; default: Redis when the policy calls
    /// `kumo.configure_redis_throttles`, else this process only.
    pub fn throttles(mut self, throttles: Arc<Throttles>) -> Self {
        self.throttles = Some(throttles);
        self
    }

    /// Builds the relay from what the policy's `init` declares (resolver, Redis
    /// throttles, spool) and starts its background work: suspension renewal, the
    /// spool's schedule, and closing idle destination sessions. Call it within a
    /// Tokio runtime. Errors name the declaration at fault.
    pub fn build(self) -> Result<Arc<Relay>, String> {
        let init = self.policy.declarations();
        let delivery = match &init.spool {
            Some(def) => {
                let (spool, found) =
                    egress_spool::Spool::open(std::path::Path::new(&def.path), def.max_spool_bytes)
                        .map_err(|e| format!("kumo.define_spool: {e}"))?;
                tracing::info!(
                    path = %def.path,
                    max_spool_bytes = def.max_spool_bytes,
                    messages = found.len(),
                    "spool ready: transactions for several domains are accepted and delivered from it"
                );
                Some(Arc::new(Delivery::new(spool, found)))
            }
            None => None,
        };
        let ctx = self.into_context(&init)?;
        ctx.shaper.spawn_renewal();
        let (trigger, shutdown) = shutdown::channel();
        let deliveries = delivery
            .as_ref()
            .map(|d| d.spawn(ctx.clone(), shutdown.clone()));
        let reaper = Arc::downgrade(&ctx);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                match reaper.upgrade() {
                    Some(ctx) => ctx.idle.reap(),
                    None => return,
                }
            }
        });
        Ok(Arc::new(Relay {
            ctx,
            delivery,
            deliveries: Mutex::new(deliveries),
            listeners: Mutex::default(),
            trigger,
            shutdown,
        }))
    }
}

impl RelayBuilder {
    /// The shared state every session uses: DNS and the throttle store as the
    /// policy declares them, our names, the report.
    fn into_context(self, init: &Declarations) -> Result<Arc<Context>, String> {
        let dns = Dns::new(init.resolver.as_ref()).map_err(|e| format!("DNS: {e}"))?;
        let throttles = match (self.throttles, &init.redis_throttles) {
            (Some(t), _) => t,
            (None, Some(redis)) => {
                let t = Throttles::with_redis_params(redis)
                    .map_err(|e| format!("kumo.configure_redis_throttles: {e}"))?;
                tracing::info!(
                    node = %redis.describe(),
                    cluster = redis.is_cluster(),
                    "throttles, connection limits and suspensions are shared through Redis"
                );
                Arc::new(t)
            }
            (None, None) => Arc::new(Throttles::local()),
        };
        let hostname = self.hostname.unwrap_or_else(host_name);
        let product = self.product.as_deref().unwrap_or(outbound::PRODUCT);
        let mut ctx =
            Context::with_throttles(self.policy, dns, hostname, product, throttles, self.report);
        ctx.records = self.records;
        Ok(Arc::new(ctx))
    }

    /// [`Relay::probe`] without a running relay (no spool opened, no background
    /// work): what a command-line probe wants. The resolver and throttle store
    /// are the policy's, so automation's overrides shared through Redis apply.
    pub fn probe(
        self,
        source: &str,
        target: &str,
        tls: bool,
    ) -> Boxed<'static, Result<ProbeReport, String>> {
        let (source, target) = (source.to_owned(), target.to_owned());
        let init = self.policy.declarations();
        let ctx = self.into_context(&init);
        Box::pin(async move { probe::probe(&*ctx?, &source, &target, tls).await })
    }
}

impl Relay {
    /// A builder over a loaded policy.
    pub fn builder(policy: Arc<dyn Policy>) -> RelayBuilder {
        RelayBuilder {
            policy,
            hostname: None,
            product: None,
            report: Arc::new(NoReport),
            throttles: None,
            records: None,
        }
    }

    /// Makes a listener from `config` (its TLS certificate, its limits); the relay
    /// keeps it for [`listeners`](Self::listeners) and [`shutdown`](Self::shutdown).
    /// Binding its socket is the caller's.
    pub fn listener(&self, config: EsmtpListener) -> Result<Arc<Listener>, String> {
        let listener = Arc::new(Listener::new(config, &self.ctx, self.delivery.clone())?);
        lock(&self.listeners).push(listener.clone());
        Ok(listener)
    }

    /// The listeners made so far.
    pub fn listeners(&self) -> Vec<Arc<Listener>> {
        lock(&self.listeners).clone()
    }

    /// Accepts connections on `socket` and serves each on `listener` (a task per
    /// connection, as [`serve`](Self::serve)) until [`shutdown`](Self::shutdown)
    /// begins; then the socket is closed. An accept error (out of descriptors, say)
    /// is logged and retried after 100 ms rather than spun on.
    ///
    /// The TCP case lives here, not only in the embedder, and the future is
    /// [`Boxed`], so the whole session is compiled and optimised within this crate
    /// once (as an `async fn`, every crate that awaited it compiled it again).
    pub fn accept(
        self: Arc<Self>,
        socket: TcpListener,
        listener: Arc<Listener>,
    ) -> Boxed<'static, ()> {
        Box::pin(self.accept_until_shutdown(socket, listener))
    }

    async fn accept_until_shutdown(self: Arc<Self>, socket: TcpListener, listener: Arc<Listener>) {
        if let Ok(addr) = socket.local_addr() {
            self.ctx.own_addresses.add(addr);
        }
        let mut shutdown = self.shutdown.clone();
        loop {
            if shutdown.state() != State::Running {
                return;
            }
            let accepted = tokio::select! {
                accepted = socket.accept() => accepted,
                _ = shutdown.changed() => continue,
            };
            let (stream, peer) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!("accept on {}: {e}", listener.config.listen);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let (relay, listener) = (self.clone(), listener.clone());
            tokio::spawn(async move { relay.serve(stream, peer, &listener).await });
        }
    }

    /// Serves one inbound connection on `listener` until the client quits, goes
    /// away or times out. A client over the listener's limits gets a `421` and is
    /// closed. Any stream will do (a TCP connection, an in-memory pipe).
    pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: S,
        peer: SocketAddr,
        listener: &Arc<Listener>,
    ) {
        inbound::serve(
            self.ctx.clone(),
            listener.clone(),
            stream,
            peer,
            self.shutdown.clone(),
        )
        .await
    }

    /// What routing would do for a message to `domain` (for `source`, or every
    /// source its pool can pick), as JSON; nothing is connected or counted. (Boxed
    /// for the reason [`accept`](Self::accept) is.)
    pub fn resolve<'a>(
        &'a self,
        domain: &'a str,
        source: Option<&'a str>,
    ) -> Boxed<'a, Result<serde_json::Value, ResolveError>> {
        Box::pin(async move {
            let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
            if domain.is_empty() {
                return Err(ResolveError::Asked {
                    field: "domain",
                    message: "expected a domain, e.g. example.com".into(),
                });
            }
            resolve::resolve(&self.ctx, &domain, source.map(str::trim)).await
        })
    }

    /// One connection through `source` to `target`, along the route a
    /// transaction would follow: a bare name is a domain (its queue config,
    /// `mx_list` or MX hosts), `HOST:PORT` or `[IP]` one host; the path config
    /// with automation's overrides, `skip_hosts`/`prohibited_hosts`, every
    /// address in order until one answers; the banner and EHLO reply, then QUIT.
    /// With `tls`, STARTTLS too (verified against the system trust store; when
    /// that fails, repeated without verification to show what is presented).
    /// Nothing is counted against a limit.
    pub fn probe<'a>(
        &'a self,
        source: &'a str,
        target: &'a str,
        tls: bool,
    ) -> Boxed<'a, Result<ProbeReport, String>> {
        Box::pin(probe::probe(&self.ctx, source, target, tls))
    }

    /// The operator's handle: suspensions, automation in force, idle sessions,
    /// the throttle store's health, the TLS report.
    pub fn admin(&self) -> Admin<'_> {
        Admin { ctx: &self.ctx }
    }

    /// KumoMTA's admin bounce: fails every spooled recipient for `domain` (all
    /// when `None`) of `tenant`'s messages (anyone's when `None`) with `reason` —
    /// an `AdminBounce` record each and a DSN to the sender. What was bounced,
    /// by domain (empty without a spool).
    pub fn bounce<'a>(
        &'a self,
        domain: Option<&'a str>,
        tenant: Option<&'a str>,
        reason: &'a str,
    ) -> Boxed<'a, std::collections::BTreeMap<String, usize>> {
        Box::pin(async move {
            match &self.delivery {
                Some(d) => d.bounce(&self.ctx, domain, tenant, reason).await,
                None => Default::default(),
            }
        })
    }

    /// The spool's delivery, when the policy defines a spool.
    pub fn delivery(&self) -> Option<&Arc<Delivery>> {
        self.delivery.as_ref()
    }

    /// Where shutdown stands.
    pub fn state(&self) -> State {
        self.shutdown.state()
    }

    /// Stops gracefully: sessions end at their next transaction boundary with
    /// `421`; after `deadline`, at their next read. Then the spool's attempts in
    /// flight get [`DRAIN`] to finish, and idle destination sessions
    /// are closed. Stop accepting connections before calling it.
    pub async fn shutdown(&self, deadline: Duration) {
        self.trigger.set(State::Draining);
        let listeners = self.listeners();
        let drained = tokio::time::timeout(deadline, async {
            for listener in &listeners {
                listener.drained().await;
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!("drain deadline passed; ending the remaining sessions with 421");
            self.trigger.set(State::Force);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let deliveries = lock(&self.deliveries).take();
        if let Some(deliveries) = deliveries {
            let _ =
                tokio::time::timeout(delivery::DRAIN + Duration::from_secs(1), deliveries).await;
        }
        self.ctx.idle.close_all().await;
    }
}

/// A mutex's guard, poisoned or not: every lock here guards plain data that a
/// panicking holder cannot leave half-changed in a way that matters more than
/// stopping the relay would.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The host's name, for banners and EHLO when nothing else says.
pub fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
