//! What the egress relay engine asks of a policy, and nothing more: the
//! [`Policy`] trait — the queue config for a destination, a pool, a source, the
//! path config for a source at a site, and optionally AUTH and listener domains —
//! and what a server declares at start ([`Declarations`]: ESMTP listeners, the
//! resolver, shared limits, the spool).
//!
//! egress-lua implements it for KumoMTA-style Lua policies; an MTA with its own
//! configuration implements it in Rust and embeds egress-relay without Lua. Every
//! call returns a boxed future ([`Boxed`]): an engine calls them through
//! `dyn Policy`, and a boxed future is compiled once, in the crate that makes it.
//!
//! ```
//! use egress_policy::{Boxed, Declarations, Policy, PolicyError};
//! use egress_source::{EgressPathConfig, EgressPool, EgressSource, QueueConfig};
//! use std::sync::Arc;
//!
//! /// Every domain through pool "main" = one source binding 127.0.0.2.
//! struct OneSource;
//!
//! fn ready<'a, T: Send + 'a>(v: T) -> Boxed<'a, Result<T, PolicyError>> {
//!     Box::pin(async move { Ok(v) })
//! }
//!
//! impl Policy for OneSource {
//!     fn declarations(&self) -> Declarations {
//!         Declarations::default()
//!     }
//!     fn queue_config<'a>(&'a self, _domain: &'a str, _tenant: Option<&'a str>,
//!         _campaign: Option<&'a str>, _routing_domain: Option<&'a str>,
//!     ) -> Boxed<'a, Result<Arc<QueueConfig>, PolicyError>> {
//!         let queue: QueueConfig = serde_json::from_str(r#"{"egress_pool": "main"}"#).unwrap();
//!         ready(Arc::new(queue))
//!     }
//!     fn egress_pool<'a>(&'a self, name: &'a str) -> Boxed<'a, Result<Arc<EgressPool>, PolicyError>> {
//!         let pool: Result<EgressPool, _> = serde_json::from_value(serde_json::json!(
//!             { "name": name, "entries": [{ "name": "ip-2" }] }));
//!         Box::pin(async move { pool.map(Arc::new).map_err(PolicyError::new) })
//!     }
//!     fn egress_source<'a>(&'a self, name: &'a str) -> Boxed<'a, Result<Arc<EgressSource>, PolicyError>> {
//!         let mut source = EgressSource::named(name);
//!         source.source_address = Some("127.0.0.2".parse().unwrap());
//!         ready(Arc::new(source))
//!     }
//!     fn egress_path_config<'a>(&'a self, _domain: &'a str, _source: &'a str,
//!         _site: Option<&'a str>,
//!     ) -> Boxed<'a, Result<Arc<EgressPathConfig>, PolicyError>> {
//!         ready(Arc::new(EgressPathConfig::default()))
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let policy: Arc<dyn Policy> = Arc::new(OneSource);
//! let queue = policy.queue_config("example.net", None, None, None).await.unwrap();
//! assert_eq!(queue.egress_pool, "main");
//! assert!(!policy.authenticates());
//! # });
//! ```
//!
//! Invariants: no I/O and no runtime here — only the shape of the questions.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod declarations;
mod message;

pub use declarations::{loopback_networks, EsmtpListener, InvalidLineEndings, SpoolDefinition};
pub use message::{MessageInFlight, Rejection};

use egress_dns::ResolverConfig;
use egress_source::{
    EgressPathConfig, EgressPool, EgressSource, ListenerDomain, QueueConfig, RedisParams,
};
use std::fmt;
use std::sync::Arc;

/// A boxed future, as every policy call returns. Release builds share no generic
/// code between crates and a future's `poll` is generic: boxing at the boundary
/// keeps the engine's code from being compiled again in every crate that awaits
/// it.
pub type Boxed<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Why a policy could not answer: its own error, whose text the engine puts in
/// the `4xx` a client gets and in the log.
#[derive(Clone)]
pub struct PolicyError(Arc<dyn std::error::Error + Send + Sync>);

impl PolicyError {
    /// An error from anything that is one, or from a message.
    ///
    /// ```
    /// let e = egress_policy::PolicyError::new("the database is down");
    /// assert_eq!(e.to_string(), "the database is down");
    /// ```
    pub fn new(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> PolicyError {
        PolicyError(Arc::from(error.into()))
    }

    /// The policy's refusal of a message, when that is what this error is (or
    /// what caused it).
    pub fn rejection(&self) -> Option<&Rejection> {
        let mut at: Option<&(dyn std::error::Error + 'static)> = Some(self.inner());
        while let Some(e) = at {
            if let Some(r) = e.downcast_ref::<Rejection>() {
                return Some(r);
            }
            at = e.source();
        }
        None
    }

    /// The error the policy gave, to downcast to its own type.
    pub fn inner(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.0
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl std::error::Error for PolicyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// What a server declares for the engine at start (a Lua policy's `init`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Declarations {
    /// ESMTP listeners, in order (`kumo.start_esmtp_listener`).
    pub esmtp_listeners: Vec<EsmtpListener>,
    /// How names are resolved (`kumo.dns.configure_resolver`); the system's when
    /// none.
    pub resolver: Option<ResolverConfig>,
    /// Where limits are shared (`kumo.configure_redis_throttles`); this process
    /// only when none.
    pub redis_throttles: Option<RedisParams>,
    /// Where mail for several domains is held (`kumo.define_spool`); without
    /// one, a transaction takes one domain.
    pub spool: Option<SpoolDefinition>,
}

/// What the engine asks of a policy. Each answer may be cached by the
/// implementation for as long as the answer's own `ttl` says; the engine asks
/// again for every transaction.
pub trait Policy: Send + Sync {
    /// What the server declared at start.
    fn declarations(&self) -> Declarations;

    /// KumoMTA's `get_queue_config(domain, tenant, campaign, routing_domain)`:
    /// the pool and routing for a destination domain.
    fn queue_config<'a>(
        &'a self,
        domain: &'a str,
        tenant: Option<&'a str>,
        campaign: Option<&'a str>,
        routing_domain: Option<&'a str>,
    ) -> Boxed<'a, Result<Arc<QueueConfig>, PolicyError>>;

    /// `get_egress_pool(name)`.
    fn egress_pool<'a>(&'a self, name: &'a str) -> Boxed<'a, Result<Arc<EgressPool>, PolicyError>>;

    /// `get_egress_source(name)`.
    fn egress_source<'a>(
        &'a self,
        name: &'a str,
    ) -> Boxed<'a, Result<Arc<EgressSource>, PolicyError>>;

    /// `get_egress_path_config(domain, source, site)`: how `source` sends to
    /// `domain` at `site` (the site is unknown to a caller without DNS: `None`).
    fn egress_path_config<'a>(
        &'a self,
        domain: &'a str,
        source: &'a str,
        site: Option<&'a str>,
    ) -> Boxed<'a, Result<Arc<EgressPathConfig>, PolicyError>>;

    /// Whether the policy checks SMTP AUTH credentials ([`auth_plain`](Self::auth_plain)):
    /// only then does a listener offer AUTH. Default: no.
    fn authenticates(&self) -> bool {
        false
    }

    /// `smtp_server_auth_plain(authz, authc, password, conn_meta)`: whether the
    /// credentials are good; `None` when the policy does not say. Default: `None`.
    fn auth_plain<'a>(
        &'a self,
        _authz: &'a str,
        _authc: &'a str,
        _password: &'a str,
        _conn_meta: &'a [(&'a str, String)],
    ) -> Boxed<'a, Result<Option<bool>, PolicyError>> {
        Box::pin(async { Ok(None) })
    }

    /// Whether the policy names listener domains
    /// ([`listener_domain`](Self::listener_domain)): only then are clients
    /// outside `relay_hosts` asked about. Default: no.
    fn names_listener_domains(&self) -> bool {
        false
    }

    /// Whether the policy acts on each message once it is whole
    /// ([`message_received`](Self::message_received)): only then does the relay
    /// hold a message whole before it leaves. Default: no.
    fn handles_message_received(&self) -> bool {
        false
    }

    /// `smtp_server_message_received(msg, conn_meta)`: the message as the policy
    /// leaves it (headers added or removed, DKIM-signed, meta set). A
    /// [`Rejection`] inside the error is the client's reply. Default: unchanged.
    fn message_received<'a>(
        &'a self,
        message: MessageInFlight,
        _conn_meta: &'a [(&'a str, String)],
    ) -> Boxed<'a, Result<MessageInFlight, PolicyError>> {
        Box::pin(async move { Ok(message) })
    }

    /// `get_listener_domain(domain, listener, conn_meta)`: what the policy says
    /// of `domain` on the listener at `listener` (`ip:port`); `None` when it
    /// says nothing. Default: `None`.
    fn listener_domain<'a>(
        &'a self,
        _domain: &'a str,
        _listener: &'a str,
        _conn_meta: &'a [(&'a str, String)],
    ) -> Boxed<'a, Result<Option<ListenerDomain>, PolicyError>> {
        Box::pin(async { Ok(None) })
    }
}
