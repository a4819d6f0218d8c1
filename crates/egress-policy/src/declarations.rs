//! What a server declares for the engine to start with: its ESMTP listeners and
//! its spool — KumoMTA's `kumo.start_esmtp_listener` and `kumo.define_spool`
//! parameters, as plain data (a Lua policy fills them in; so can your own code).

use egress_source::{serde_networks, serde_optional_networks, ThrottleSpec};
use ipnet::IpNet;
use serde::de::{Deserializer, Error};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Duration;

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
    /// Text of the 220 greeting after the host name; default "ESMTP " and the
    /// server's product name ("ESMTP egressd").
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
    loopback_networks()
}

/// Loopback, IPv4 and IPv6: the default for every "who may" list (relaying,
/// the admin API), so nothing is open beyond this host unless asked.
pub fn loopback_networks() -> Vec<IpNet> {
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
