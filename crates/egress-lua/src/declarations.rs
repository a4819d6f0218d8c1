//! What a policy's `init` declares for the server to start: listeners and DNS.

use egress_dns::ResolverConfig;
pub use egress_policy::{EsmtpListener, InvalidLineEndings, SpoolDefinition};
use egress_source::{serde_duration, serde_networks, KeySource};
use ipnet::IpNet;
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
    /// `kumo.dkim.set_signing_threads(n)`: recorded (signing runs on the policy's
    /// own threads).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_threads: Option<usize>,
    /// `kumo.configure_local_logs{}` calls, in order.
    pub local_logs: Vec<egress_record::LocalLogParams>,
    /// `kumo.configure_log_hook{}` calls, in order (one per name).
    pub log_hooks: Vec<egress_record::LogHookParams>,
    /// What `policy-extras.listener_domains` loaded, by listener (`"*"`: every
    /// listener) then domain: printed by `egressd check`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listener_domains: Option<serde_json::Value>,
}

/// `kumo.configure_redis_throttles { node = … }`: share throttles, connection
/// limits and suspensions through one Redis or a Redis Cluster, with KumoMTA's
/// `redis.open` parameters (see [`egress_source::RedisParams`]).
pub type RedisThrottles = egress_source::RedisParams;

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
    egress_policy::loopback_networks()
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
    #[serde(default = "egress_policy::loopback_networks", with = "serde_networks")]
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

/// Records what a `kumo.*` call declares in the state's [`InitConfig`].
pub(crate) fn declare(lua: &mlua::Lua, record: impl FnOnce(&mut InitConfig)) -> mlua::Result<()> {
    let mut init = lua
        .app_data_mut::<InitConfig>()
        .ok_or_else(|| mlua::Error::runtime("kumo module is not installed in this state"))?;
    record(&mut init);
    Ok(())
}
