//! The `proxy` module of KumoProxy's policy (`require 'proxy'`), for egress-proxy:
//! `proxy.start_proxy_listener { … }` and `proxy.start_http_listener { … }`,
//! called from `kumo.on('proxy_init', …)`. egressd ignores what it declares.

use crate::declarations::{HttpListener, InitConfig};
use crate::kumo::{declare, from_lua};
use egress_source::{serde_duration, serde_networks, KeySource};
use ipnet::IpNet;
use mlua::{Lua, Table, Value};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Duration;

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
    #[serde(default = "loopback", with = "serde_networks")]
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
fn loopback() -> Vec<IpNet> {
    vec![
        "127.0.0.0/8".parse().expect("a CIDR"),
        "::1/128".parse().expect("a CIDR"),
    ]
}

/// Installs `proxy` as a global and as `require 'proxy'`.
pub(crate) fn install(lua: &Lua, package: &Table) -> mlua::Result<()> {
    let proxy = lua.create_table()?;
    proxy.set(
        "start_proxy_listener",
        lua.create_function(|lua, params: Value| {
            let listener: ProxyListenerParams =
                from_lua(lua, params, "proxy.start_proxy_listener")?;
            declare(lua, |init: &mut InitConfig| {
                init.proxy_listeners.push(listener)
            })
        })?,
    )?;
    proxy.set(
        "start_http_listener",
        lua.create_function(|lua, params: Value| {
            let listener: HttpListener = from_lua(lua, params, "proxy.start_http_listener")?;
            declare(lua, |init: &mut InitConfig| {
                init.http_listeners.push(listener)
            })
        })?,
    )?;
    lua.globals().set("proxy", proxy.clone())?;
    let loaded: Table = package.get("loaded")?;
    loaded.set("proxy", proxy)
}
