//! What a policy's `init` declares for the server to start: listeners and DNS.

use egress_dns::ResolverConfig;
use egress_source::{
    serde_duration, serde_networks, serde_optional_networks, KeySource, ThrottleSpec,
};
use ipnet::IpNet;
use serde::de::{Deserializer, Error};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Duration;

/// Everything `init` (or the policy's top level) declared.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct InitConfig {
    /// `kumo.start_esmtp_listener{}` calls, in order.
    pub esmtp_listeners: Vec<EsmtpListener>,
    /// `kumo.start_http_listener{}` calls, in order.
    pub http_listeners: Vec<HttpListener>,
    /// `kumo.dns.configure_resolver{}`, the last call wins.
    pub resolver: Option<ResolverConfig>,
    /// `kumo.configure_redis_throttles{}`, the last call wins.
    pub redis_throttles: Option<RedisThrottles>,
    /// `kumo.define_spool { name = 'data', ... }`, the last call wins: where
    /// messages for several domains are held.
    pub spool: Option<SpoolDefinition>,
    /// `kumo.set_config_monitor_globs { ... }`: files whose change reloads the
    /// policy (as SIGHUP does); the last call wins.
    pub config_monitor_globs: Vec<String>,
    /// `proxy.start_proxy_listener{}` calls in `proxy_init` (egress-proxy's).
    pub proxy_listeners: Vec<ProxyListenerParams>,
    /// What `policy-extras.listener_domains` loaded, by listener (`"*"`: every
    /// listener) then domain: printed by `egressd check`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listener_domains: Option<serde_json::Value>,
}

/// `kumo.define_spool { name, path, kind, max_spool_bytes }` (KumoMTA's function;
/// egressd keeps envelopes beside the data, so only the `data` spool is used and a
/// `meta` definition is accepted and ignored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolDefinition {
    /// `data` (used) or `meta` (ignored).
    pub name: String,
    /// The directory; created at start.
    pub path: String,
    /// KumoMTA's storage kind; egressd has `LocalDisk` only (the default).
    #[serde(default = "default_spool_kind")]
    pub kind: String,
    /// The most message data held before new multi-domain messages get
    /// `452 4.3.1`; default 1 GiB.
    #[serde(default = "default_max_spool_bytes")]
    pub max_spool_bytes: u64,
}

fn default_spool_kind() -> String {
    "LocalDisk".into()
}

fn default_max_spool_bytes() -> u64 {
    1 << 30
}

/// `kumo.configure_redis_throttles { node = … }`: share throttles, connection
/// limits and suspensions through one Redis or a Redis Cluster, with KumoMTA's
/// `redis.open` parameters (see [`egress_source::RedisParams`]).
pub type RedisThrottles = egress_source::RedisParams;

/// `kumo.start_esmtp_listener { listen, relay_hosts, hostname, banner, max_message_size,
/// max_recipients_per_message, max_connections, client_timeout, invalid_line_endings,
/// tls_certificate, tls_private_key }`
/// (KumoMTA's names for the subset egressd implements), and egressd's own limits:
/// `data_timeout`, `max_session_duration`, `max_connections_per_client`,
/// `max_connection_rate_per_client`, `client_limit_exceptions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EsmtpListener {
    /// Address to listen on; default `127.0.0.1:2525` (never beyond loopback unless asked).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Clients allowed to relay (CIDRs or addresses); default loopback only.
    #[serde(
        default = "default_relay_hosts",
        deserialize_with = "serde_networks::deserialize"
    )]
    pub relay_hosts: Vec<IpNet>,
    /// Name in the banner and `Received:`; default the host's name.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Text of the 220 greeting after the host name; default "ESMTP egressd".
    #[serde(default)]
    pub banner: Option<String>,
    /// How long a client has to send a whole command line (not: between two octets)
    /// before `421 4.4.2`; default 5 minutes.
    #[serde(
        default = "default_client_timeout",
        with = "egress_source::serde_duration"
    )]
    pub client_timeout: Duration,
    /// How long a client has to send a whole message after `354`; default 10 minutes.
    #[serde(
        default = "default_data_timeout",
        with = "egress_source::serde_duration"
    )]
    pub data_timeout: Duration,
    /// Longest a session may last, however busy; default 1 hour. A client past it
    /// gets `421 4.4.2` at its next command (or mid-message: it keeps the message).
    #[serde(
        default = "default_max_session_duration",
        with = "egress_source::serde_duration"
    )]
    pub max_session_duration: Duration,
    /// What to do with a bare CR or LF in a message; default `"Deny"`.
    #[serde(default)]
    pub invalid_line_endings: InvalidLineEndings,
    /// Certificate chain for STARTTLS (PEM file path). Without it (and
    /// `tls_private_key`), egressd makes a self-signed certificate for its host name
    /// at start, so STARTTLS is always offered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_certificate: Option<String>,
    /// The certificate's private key (PEM file path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_private_key: Option<String>,
    /// Largest message accepted, in bytes; default 20 MiB.
    #[serde(default = "default_max_message_size")]
    pub max_message_size: u64,
    /// Recipients accepted per transaction before `452 4.5.3`; default 1024.
    #[serde(default = "default_max_recipients")]
    pub max_recipients_per_message: usize,
    /// Concurrent sessions beyond which new ones get `421 4.7.0`; default 1000.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Concurrent sessions from one client (an IPv4 address, or an IPv6 /64) beyond
    /// which new ones get `421 4.7.0`; default 50 (Postfix's
    /// `smtpd_client_connection_count_limit`). 0 turns the limit off.
    #[serde(default = "default_max_connections_per_client")]
    pub max_connections_per_client: usize,
    /// New sessions per client (as above) per period, e.g. `"100/s"` (the default)
    /// or `"600/min"`; `"unlimited"` turns the limit off.
    #[serde(
        default = "default_max_connection_rate_per_client",
        deserialize_with = "optional_rate"
    )]
    pub max_connection_rate_per_client: Option<ThrottleSpec>,
    /// Clients (CIDRs or addresses) exempt from `max_connections_per_client` and
    /// `max_connection_rate_per_client` — the senders the relay is for, as Postfix's
    /// `smtpd_client_event_limit_exceptions` (default `$mynetworks`). Default: the
    /// listener's `relay_hosts`; `{}` limits every client. `max_connections` holds
    /// for everyone. Filled in when the listener is declared, so `egressd check`
    /// prints the list in force; read it through
    /// [`client_limit_exceptions`](Self::client_limit_exceptions).
    #[serde(default, deserialize_with = "serde_optional_networks::deserialize")]
    pub client_limit_exceptions: Option<Vec<IpNet>>,
}

impl EsmtpListener {
    /// The clients exempt from the per-client limits: `client_limit_exceptions`
    /// as set, else `relay_hosts`.
    pub fn client_limit_exceptions(&self) -> &[IpNet] {
        self.client_limit_exceptions
            .as_deref()
            .unwrap_or(&self.relay_hosts)
    }

    /// Makes defaults that follow other fields explicit (what `check` prints).
    pub fn settle_defaults(&mut self) {
        if self.client_limit_exceptions.is_none() {
            self.client_limit_exceptions = Some(self.relay_hosts.clone());
        }
    }
}

/// KumoMTA's `invalid_line_endings`: what a bare CR or LF in a message means.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum InvalidLineEndings {
    /// Refuse the message (5xx naming the bare CR or LF).
    #[default]
    Deny,
    /// Accept it, with each bare CR or LF made CR LF.
    Fix,
    /// Accept it. egressd still sends CR LF line endings only: a bare line ending on
    /// the wire is what SMTP smuggling exploits, so it never forwards one.
    Allow,
}

impl Default for EsmtpListener {
    fn default() -> Self {
        EsmtpListener {
            listen: default_listen(),
            relay_hosts: default_relay_hosts(),
            hostname: None,
            banner: None,
            client_timeout: default_client_timeout(),
            max_message_size: default_max_message_size(),
            max_connections: default_max_connections(),
            max_recipients_per_message: default_max_recipients(),
            data_timeout: default_data_timeout(),
            max_session_duration: default_max_session_duration(),
            invalid_line_endings: InvalidLineEndings::default(),
            tls_certificate: None,
            tls_private_key: None,
            max_connections_per_client: default_max_connections_per_client(),
            max_connection_rate_per_client: default_max_connection_rate_per_client(),
            client_limit_exceptions: Some(default_relay_hosts()),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 2525))
}

fn default_relay_hosts() -> Vec<IpNet> {
    // Constants, checked by the unit test below.
    ["127.0.0.0/8", "::1/128"]
        .iter()
        .filter_map(|n| n.parse().ok())
        .collect()
}

fn default_client_timeout() -> Duration {
    Duration::from_secs(300)
}

fn default_data_timeout() -> Duration {
    Duration::from_secs(600)
}

fn default_max_session_duration() -> Duration {
    Duration::from_secs(3600)
}

fn default_max_connections_per_client() -> usize {
    50
}

fn default_max_connection_rate_per_client() -> Option<ThrottleSpec> {
    Some(ThrottleSpec {
        limit: 100,
        period: Duration::from_secs(1),
        max_burst: None,
    })
}

/// A rate spec, or `"unlimited"` for none.
fn optional_rate<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ThrottleSpec>, D::Error> {
    let text = String::deserialize(d)?;
    if text.eq_ignore_ascii_case("unlimited") {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|e: String| D::Error::custom(format!("{e}, or \"unlimited\"")))
}

fn default_max_message_size() -> u64 {
    20 * 1024 * 1024
}

fn default_max_recipients() -> usize {
    1024
}

fn default_max_connections() -> usize {
    1000
}

/// `kumo.start_http_listener { listen, hostname, trusted_hosts, use_tls,
/// tls_certificate, tls_private_key }` (KumoMTA's names): egressd's admin API and
/// metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpListener {
    /// Address to listen on; default `127.0.0.1:8000`.
    #[serde(default = "default_http_listen")]
    pub listen: SocketAddr,
    /// Name for the self-signed certificate when `use_tls` has no certificate of
    /// its own; default the host's name.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Clients that need no credentials (CIDRs or addresses); default loopback.
    /// Any other client must authenticate with HTTP Basic, checked by the
    /// `http_server_validate_auth_basic` event, or gets 401.
    #[serde(
        default = "default_trusted_hosts",
        deserialize_with = "serde_networks::deserialize"
    )]
    pub trusted_hosts: Vec<IpNet>,
    /// Serve HTTPS; default false.
    #[serde(default)]
    pub use_tls: bool,
    /// Certificate chain for HTTPS (PEM file path); without it (and
    /// `tls_private_key`) a self-signed certificate is made at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_certificate: Option<String>,
    /// The certificate's private key (PEM file path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_private_key: Option<String>,
}

impl Default for HttpListener {
    fn default() -> Self {
        HttpListener {
            listen: default_http_listen(),
            hostname: None,
            trusted_hosts: default_trusted_hosts(),
            use_tls: false,
            tls_certificate: None,
            tls_private_key: None,
        }
    }
}

fn default_trusted_hosts() -> Vec<IpNet> {
    default_relay_hosts()
}

fn default_http_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8000))
}

/// `proxy.start_proxy_listener { listen, hostname, timeout, use_splice, use_tls,
/// tls_certificate, tls_private_key, require_auth, tcp_keepalive }` (KumoProxy's
/// names and defaults), and egress-proxy's rules: `allow_clients`,
/// `allow_sources`, `allow_ports`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyListenerParams {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Name for the self-signed certificate when `use_tls` has none of its own.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Every phase's deadline, and the idle limit of a relayed session; default 60 s.
    #[serde(default = "sixty_seconds", with = "serde_duration")]
    pub timeout: Duration,
    /// splice(2) on Linux for plain TCP; default true.
    #[serde(default = "yes")]
    pub use_splice: bool,
    /// Clients speak SOCKS5 inside TLS; default false.
    #[serde(default)]
    pub use_tls: bool,
    /// The certificate chain (PEM): a file path or `{ key_data = … }`.
    #[serde(default)]
    pub tls_certificate: Option<KeySource>,
    /// Its private key (PEM): a file path or `{ key_data = … }`.
    #[serde(default)]
    pub tls_private_key: Option<KeySource>,
    /// Clients must authenticate (RFC 1929), checked by the
    /// `proxy_server_auth_rfc1929` event; default false.
    #[serde(default)]
    pub require_auth: bool,
    /// TCP keepalive on both sockets of a session.
    #[serde(default)]
    pub tcp_keepalive: TcpKeepalive,
    /// Clients that may use the listener (CIDRs or addresses); default loopback
    /// only (an egress-proxy key: never an open proxy).
    #[serde(default = "default_relay_hosts", with = "serde_networks")]
    pub allow_clients: Vec<IpNet>,
    /// Source addresses clients may BIND; default any assigned to the host.
    #[serde(default, with = "serde_networks")]
    pub allow_sources: Vec<IpNet>,
    /// Destination ports that may be reached; default any.
    #[serde(default)]
    pub allow_ports: Vec<u16>,
}

/// KumoProxy's `tcp_keepalive { enabled, time, interval, retries }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpKeepalive {
    /// Default true.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Idle time before the first probe; default 300 s.
    #[serde(default = "five_minutes", with = "serde_duration")]
    pub time: Duration,
    /// Between probes; default 30 s.
    #[serde(default = "thirty_seconds", with = "serde_duration")]
    pub interval: Duration,
    /// Unanswered probes before the connection is dead; default 3.
    #[serde(default = "three")]
    pub retries: u32,
}

impl Default for TcpKeepalive {
    fn default() -> Self {
        TcpKeepalive {
            enabled: true,
            time: five_minutes(),
            interval: thirty_seconds(),
            retries: three(),
        }
    }
}

fn yes() -> bool {
    true
}
fn three() -> u32 {
    3
}
fn sixty_seconds() -> Duration {
    Duration::from_secs(60)
}
fn five_minutes() -> Duration {
    Duration::from_secs(300)
}
fn thirty_seconds() -> Duration {
    Duration::from_secs(30)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    #[test]
    fn default_relay_hosts_are_loopback_only() {
        let hosts = default_relay_hosts();
        assert!(hosts
            .iter()
            .any(|n| n.contains(&"127.0.0.1".parse::<IpAddr>().unwrap())));
        assert!(hosts
            .iter()
            .any(|n| n.contains(&"127.255.0.9".parse::<IpAddr>().unwrap())));
        assert!(hosts
            .iter()
            .any(|n| n.contains(&"::1".parse::<IpAddr>().unwrap())));
        assert!(!hosts
            .iter()
            .any(|n| n.contains(&"10.0.0.1".parse::<IpAddr>().unwrap())));
    }
}
