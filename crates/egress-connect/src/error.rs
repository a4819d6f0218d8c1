//! Typed connect errors. Each message names the source, the phase and the addresses.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// The step of a connect that failed or ran out of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Looking up a proxy's host name.
    ResolveProxy,
    /// TCP connect to the destination (direct route).
    Connect,
    /// TCP connect to the proxy.
    ConnectProxy,
    /// PROXY header or SOCKS5 exchange with the proxy.
    ProxyHandshake,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            Phase::ResolveProxy => "resolving the proxy's name",
            Phase::Connect => "connecting to the destination",
            Phase::ConnectProxy => "connecting to the proxy",
            Phase::ProxyHandshake => "the proxy handshake",
        })
    }
}

/// Why a connection through an egress source could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The local `source_address` could not be bound.
    #[error("egress source '{source_name}': cannot bind local address {address} before connecting to {peer}: {error}{}",
        if error.kind() == io::ErrorKind::AddrNotAvailable { " (the address is not configured on any interface of this host: plumb it, or fix `source_address`)" } else { "" })]
    Bind {
        /// The source.
        source_name: String,
        /// The address it tried to bind.
        address: IpAddr,
        /// The destination or proxy it was about to connect to.
        peer: SocketAddr,
        /// The OS error.
        error: io::Error,
    },
    /// The destination refused or could not be reached (direct route).
    #[error("egress source '{source_name}': connecting to {destination} from {from}: {error}")]
    Connect {
        /// The source.
        source_name: String,
        /// The destination.
        destination: SocketAddr,
        /// The local address, or "kernel-chosen address".
        from: String,
        /// The OS error.
        error: io::Error,
    },
    /// The proxy's name did not resolve.
    #[error("egress source '{source_name}': cannot resolve {kind} proxy '{proxy}': {error}")]
    ResolveProxy {
        /// The source.
        source_name: String,
        /// "HAProxy" or "SOCKS5".
        kind: ProxyKind,
        /// The proxy as configured.
        proxy: String,
        /// The resolver's error.
        error: io::Error,
    },
    /// No address of the proxy accepted a connection.
    #[error("egress source '{source_name}': {kind} proxy '{proxy}' is unreachable: {}", describe_attempts(.attempts))]
    ProxyUnreachable {
        /// The source.
        source_name: String,
        /// "HAProxy" or "SOCKS5".
        kind: ProxyKind,
        /// The proxy as configured.
        proxy: String,
        /// Each address tried and its error.
        attempts: Vec<(SocketAddr, io::Error)>,
    },
    /// The SOCKS5 proxy answered a request with a failure reply.
    #[error("egress source '{source_name}': SOCKS5 proxy {proxy} refused to connect to {destination}: {reply}")]
    ProxyRefused {
        /// The source.
        source_name: String,
        /// The proxy address.
        proxy: SocketAddr,
        /// The destination asked for.
        destination: SocketAddr,
        /// The reply code in words.
        reply: String,
    },
    /// The SOCKS5 proxy rejected our credentials, or wants credentials we do not have.
    #[error(
        "egress source '{source_name}': SOCKS5 proxy {proxy} rejected authentication: {detail}"
    )]
    ProxyAuthFailed {
        /// The source.
        source_name: String,
        /// The proxy address.
        proxy: SocketAddr,
        /// What happened, and what to check.
        detail: String,
    },
    /// The SOCKS5 proxy cannot send from a chosen source address.
    #[error("egress source '{source_name}': SOCKS5 proxy {proxy} does not support choosing a source address ({detail}); it cannot send from {requested}. Use a proxy that implements the KumoProxy source-address convention (BIND to the source, then CONNECT), or remove `socks5_proxy_source_address` to let this proxy pick its own address")]
    SourceBindUnsupported {
        /// The source.
        source_name: String,
        /// The proxy address.
        proxy: SocketAddr,
        /// The source address asked for.
        requested: IpAddr,
        /// What the proxy did instead.
        detail: String,
    },
    /// The SOCKS5 proxy refused to send from the source address (its BIND reply
    /// was "connection not allowed by ruleset"): the address is not plumbed, or
    /// not allowed, on the proxy's host.
    #[error("egress source '{source_name}': SOCKS5 proxy {proxy} refused to send from {requested} ({reply}): the address is not assigned to the proxy's host or not in its allowed sources; plumb it there (or allow it), or change `socks5_proxy_source_address`")]
    SourceRefusedByProxy {
        /// The source.
        source_name: String,
        /// The proxy address.
        proxy: SocketAddr,
        /// The source address asked for.
        requested: IpAddr,
        /// The proxy's reply, in words.
        reply: String,
    },
    /// Two addresses that must share a family do not.
    #[error("egress source '{source_name}': {detail}")]
    FamilyMismatch {
        /// The source.
        source_name: String,
        /// Which addresses, and their values.
        detail: String,
    },
    /// The proxy broke the protocol (a short or malformed reply, a closed connection).
    #[error("egress source '{source_name}': {kind} proxy {proxy} broke off {phase}: {detail}")]
    ProxyProtocol {
        /// The source.
        source_name: String,
        /// "HAProxy" or "SOCKS5".
        kind: ProxyKind,
        /// The proxy address.
        proxy: SocketAddr,
        /// The phase.
        phase: Phase,
        /// What went wrong.
        detail: String,
    },
    /// The deadline passed.
    #[error("egress source '{source_name}': timed out after {after:?} during {phase} ({peer})")]
    Timeout {
        /// The source.
        source_name: String,
        /// The phase that was running.
        phase: Phase,
        /// The peer (destination or proxy) it was talking to.
        peer: String,
        /// The whole connect deadline.
        after: Duration,
    },
}

/// Which kind of proxy a route goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyKind {
    /// HAProxy, PROXY protocol v2.
    HaProxy,
    /// SOCKS5.
    Socks5,
}

impl fmt::Display for ProxyKind {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            ProxyKind::HaProxy => "HAProxy",
            ProxyKind::Socks5 => "SOCKS5",
        })
    }
}

fn describe_attempts(attempts: &[(SocketAddr, io::Error)]) -> String {
    if attempts.is_empty() {
        return "no address to try".into();
    }
    attempts
        .iter()
        .map(|(addr, e)| format!("{addr}: {e}"))
        .collect::<Vec<_>>()
        .join("; ")
}

impl ConnectError {
    /// True when a local address could not be bound because no interface has it
    /// (`EADDRNOTAVAIL`): the source is configured but its IP is not plumbed here —
    /// or, through a SOCKS5 proxy, the proxy refused the address by rule.
    pub fn is_unplumbed(&self) -> bool {
        matches!(self, ConnectError::Bind { error, .. } if error.kind() == io::ErrorKind::AddrNotAvailable)
            || matches!(self, ConnectError::SourceRefusedByProxy { .. })
    }

    /// A short, fixed name for the kind of failure — a metric label
    /// (`egress_source_connection_failures_total{kind}`), never free text.
    ///
    /// ```
    /// # use egress_connect::{ConnectError, Phase};
    /// # use std::time::Duration;
    /// let e = ConnectError::Timeout {
    ///     source_name: "ip-1".into(),
    ///     phase: Phase::Connect,
    ///     peer: "127.0.0.1:25".into(),
    ///     after: Duration::from_secs(1),
    /// };
    /// assert_eq!(e.kind(), "timeout");
    /// ```
    pub fn kind(&self) -> &'static str {
        match self {
            ConnectError::Bind { .. } if self.is_unplumbed() => "unplumbed",
            ConnectError::Bind { .. } => "bind",
            ConnectError::Connect { .. } => "connect",
            ConnectError::ResolveProxy { .. } => "resolve_proxy",
            ConnectError::ProxyUnreachable { .. } => "proxy_unreachable",
            ConnectError::ProxyRefused { .. } => "proxy_refused",
            ConnectError::ProxyAuthFailed { .. } => "proxy_auth_failed",
            ConnectError::SourceBindUnsupported { .. } => "source_bind_unsupported",
            ConnectError::SourceRefusedByProxy { .. } => "unplumbed_at_proxy",
            ConnectError::FamilyMismatch { .. } => "family_mismatch",
            ConnectError::ProxyProtocol { .. } => "proxy_protocol",
            ConnectError::Timeout { .. } => "timeout",
        }
    }

    /// True when the deadline passed.
    pub fn is_timeout(&self) -> bool {
        matches!(self, ConnectError::Timeout { .. })
    }

    /// The phase the error happened in.
    pub fn phase(&self) -> Phase {
        match self {
            ConnectError::Bind { .. } | ConnectError::Connect { .. } => Phase::Connect,
            ConnectError::ResolveProxy { .. } => Phase::ResolveProxy,
            ConnectError::ProxyUnreachable { .. } => Phase::ConnectProxy,
            ConnectError::FamilyMismatch { .. } => Phase::Connect,
            ConnectError::ProxyRefused { .. }
            | ConnectError::ProxyAuthFailed { .. }
            | ConnectError::SourceBindUnsupported { .. }
            | ConnectError::SourceRefusedByProxy { .. } => Phase::ProxyHandshake,
            ConnectError::ProxyProtocol { phase, .. } | ConnectError::Timeout { phase, .. } => {
                *phase
            }
        }
    }
}
