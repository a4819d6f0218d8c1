//! What the relay tells its embedder about what happened: the observability seam.
//!
//! The relay counts nothing itself and depends on no metrics library. It calls a
//! [`Report`] the embedder supplies (egressd's is its Prometheus registry;
//! [`NoReport`] ignores everything). Every method has a default that does
//! nothing, so an embedder implements only what it counts.
//!
//! The hot path stays cheap: a destination session asks [`Report::path`] once, when
//! it opens, for the handle of its (source, pool, site), and carries that handle
//! ([`PathHandle`]) across the transactions it serves. Per message the relay makes
//! one dynamic call on the handle — no lock, no allocation, no label lookup.

use std::sync::Arc;
use std::time::Duration;

/// Where the reply that decided a transaction came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// The destination said it (relayed as is).
    Destination,
    /// The relay said it (policy, routing, shaping, a lost session).
    Local,
    /// Nothing was answered: the client ended the transaction (RSET, QUIT).
    Client,
}

impl Origin {
    /// A short lowercase name (`destination`, `local`, `client`) for labels.
    pub fn label(self) -> &'static str {
        match self {
            Origin::Destination => "destination",
            Origin::Local => "local",
            Origin::Client => "client",
        }
    }
}

/// Why an inbound session, command or message was refused (a fixed set, so it can
/// be a label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections` reached.
    MaxConnections,
    /// `max_connections_per_client` or `max_connection_rate_per_client`.
    PerClientLimit,
    /// RCPT from a client that may not relay.
    RelayDenied,
    /// AUTH with bad credentials.
    AuthFailed,
    /// A message with a bare CR or LF under `invalid_line_endings = "Deny"`.
    InvalidLineEndings,
    /// A message over `max_message_size`.
    MessageTooLarge,
}

impl Refusal {
    /// A short snake_case name for labels.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::PerClientLimit => "per_client_limit",
            Refusal::RelayDenied => "relay_denied",
            Refusal::AuthFailed => "auth_failed",
            Refusal::InvalidLineEndings => "invalid_line_endings",
            Refusal::MessageTooLarge => "message_too_large",
        }
    }
}

/// What one transaction did, when it has no path handle (no source was picked:
/// the policy, routing or shaping failed first).
#[derive(Debug, Clone, Copy)]
pub struct Unrouted<'a> {
    /// The pool the queue config named, when it got that far.
    pub pool: Option<&'a str>,
    /// The destination's site, when known.
    pub site: Option<&'a str>,
    /// The reply that decided it.
    pub code: Option<u16>,
    /// Who gave that reply.
    pub origin: Origin,
    /// From MAIL FROM to the end.
    pub took: Duration,
}

/// Where the relay reports. Implementations must be cheap and must not block:
/// they are called on the relay's tasks. Every method has a default that does
/// nothing, so an embedder implements only what it counts:
///
/// ```
/// use egress_relay::{Origin, PathReport, Report};
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::sync::Arc;
/// use std::time::Duration;
///
/// /// Counts messages the destinations accepted, over every path.
/// #[derive(Default)]
/// struct Delivered(Arc<AtomicU64>);
///
/// struct DeliveredOnPath(Arc<AtomicU64>);
///
/// impl PathReport for DeliveredOnPath {
///     fn transaction(&self, code: Option<u16>, origin: Origin, _size: u64, _took: Duration) {
///         if origin == Origin::Destination && code.is_some_and(|c| c / 100 == 2) {
///             self.0.fetch_add(1, Ordering::Relaxed);
///         }
///     }
/// }
///
/// impl Report for Delivered {
///     fn path(&self, _source: &str, _pool: &str, _site: &str) -> Option<Arc<dyn PathReport>> {
///         Some(Arc::new(DeliveredOnPath(self.0.clone())))
///     }
/// }
/// # let _: Arc<dyn Report> = Arc::new(Delivered::default());
/// ```
pub trait Report: Send + Sync + 'static {
    /// The handle a destination session for `source` in `pool` at `site` records
    /// into; asked once per new session (and again when a kept session serves
    /// another pool). `None`: nothing is recorded for it.
    fn path(&self, source: &str, pool: &str, site: &str) -> Option<Arc<dyn PathReport>> {
        let _ = (source, pool, site);
        None
    }

    /// A transaction ended before a source was picked.
    fn unrouted(&self, transaction: Unrouted<'_>) {
        let _ = transaction;
    }

    /// A connection through `source` failed; `kind` is
    /// [`ConnectError::kind`](egress_connect::ConnectError::kind).
    fn connection_failed(&self, source: &str, kind: &'static str) {
        let _ = (source, kind);
    }

    /// A health rule suspended `source` for `reason`.
    fn health_suspension(&self, source: &str, reason: &str) {
        let _ = (source, reason);
    }

    /// A transaction waited for `limit` of `source` (a rate or a connection limit).
    fn throttle_wait(&self, source: &str, limit: &str) {
        let _ = (source, limit);
    }

    /// `limit` of `source` turned a transaction or the source away.
    fn throttle_refusal(&self, source: &str, limit: &str) {
        let _ = (source, limit);
    }

    /// An automation rule fired and `action` (KumoMTA's name: `Suspend`, …) was
    /// taken.
    fn automation_action(&self, action: &'static str) {
        let _ = action;
    }

    /// Something happened to an MTA-STS policy: `fetched`, `fetch_failed`,
    /// `cache_hit` (a transaction used a cached policy), `refused` (enforce
    /// refused a destination).
    fn mta_sts(&self, event: &'static str) {
        let _ = event;
    }

    /// A DANE decision for a destination host: `verified` (a TLSA record
    /// authenticated the peer), `failed` (none matched its certificate),
    /// `encrypt_only` (records, none usable), `deferred` (TLSA lookup bogus or
    /// failed for a secure chain). KumoMTA counts the same as `dane_result_count`.
    fn dane(&self, result: &'static str) {
        let _ = result;
    }

    /// The handle for an inbound listener named `name` (its address); asked once,
    /// when the listener is made.
    fn listener(&self, name: &str) -> Option<Arc<dyn ListenerReport>> {
        let _ = name;
        None
    }
}

/// What one (source, pool, site) records into.
pub trait PathReport: Send + Sync {
    /// A new connection through the source, and how long it took.
    fn connection_opened(&self, took: Duration) {
        let _ = took;
    }

    /// A transaction on a session kept from an earlier one.
    fn connection_reused(&self) {}

    /// A transaction on this path ended: the reply that decided it (`None`: the
    /// client ended it), who gave it, the message's octets and the time from MAIL
    /// FROM.
    fn transaction(&self, code: Option<u16>, origin: Origin, size: u64, took: Duration) {
        let _ = (code, origin, size, took);
    }
}

/// What one inbound listener records into.
pub trait ListenerReport: Send + Sync {
    /// A session began.
    fn session_opened(&self) {}
    /// A session ended.
    fn session_closed(&self) {}
    /// Something was refused.
    fn refused(&self, why: Refusal) {
        let _ = why;
    }
}

/// Reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoReport;

impl Report for NoReport {}

/// A path's handle with the labels the relay needs back (the pool, to tell
/// whether a kept session serves another one; the site, for the log line).
/// Made once per destination session.
#[derive(Clone)]
pub struct PathHandle {
    /// The pool it was asked for.
    pub pool: String,
    /// The site it was asked for.
    pub site: String,
    /// The embedder's handle.
    pub report: Arc<dyn PathReport>,
}

impl std::fmt::Debug for PathHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PathHandle")
            .field("pool", &self.pool)
            .field("site", &self.site)
            .finish_non_exhaustive()
    }
}

/// Asks `report` for the handle of (source, pool, site).
pub(crate) fn path_handle(
    report: &dyn Report,
    source: &str,
    pool: &str,
    site: &str,
) -> Option<Arc<PathHandle>> {
    report.path(source, pool, site).map(|r| {
        Arc::new(PathHandle {
            pool: pool.to_owned(),
            site: site.to_owned(),
            report: r,
        })
    })
}

/// Counts a session as open while it lives.
pub(crate) struct ActiveSession(Option<Arc<dyn ListenerReport>>);

impl ActiveSession {
    pub(crate) fn new(report: Option<&Arc<dyn ListenerReport>>) -> ActiveSession {
        if let Some(r) = report {
            r.session_opened();
        }
        ActiveSession(report.cloned())
    }
}

impl Drop for ActiveSession {
    fn drop(&mut self) {
        if let Some(r) = &self.0 {
            r.session_closed();
        }
    }
}
