//! What a policy says of a domain at the inbound side (`kumo.make_listener_domain`,
//! returned by the `get_listener_domain` event): whether anyone may relay to it,
//! or relay from certain networks when it is the sender's domain.

use crate::keys::strict_table;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// KumoMTA's listener-domain object, with its field names and defaults (every
/// option off).
///
/// ```
/// use egress_source::ListenerDomain;
/// let d: ListenerDomain = serde_json::from_str(
///     r#"{ "relay_from": ["10.0.0.0/24"] }"#).unwrap();
/// assert!(!d.relay_to);
/// assert!(d.relays_from("10.0.0.7".parse().unwrap()));
/// assert!(!d.relays_from("10.0.1.7".parse().unwrap()));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct ListenerDomain {
    /// Anyone may relay mail addressed to this domain (an MX backup, an inbound
    /// relay), whatever the listener's `relay_hosts` say.
    #[serde(default)]
    pub relay_to: bool,
    /// Clients in these networks may relay anywhere when this is the sender's
    /// domain.
    #[serde(default, with = "crate::fields::networks")]
    pub relay_from: Vec<IpNet>,
    /// KumoMTA: accept and log out-of-band bounce reports sent to this domain.
    /// egressd keeps no such log yet, so it has no effect here (said once).
    #[serde(default)]
    pub log_oob: bool,
    /// KumoMTA: accept and log ARF feedback reports sent to this domain; no
    /// effect here (said once), as `log_oob`.
    #[serde(default)]
    pub log_arf: bool,
}

strict_table!(
    ListenerDomain,
    "listener domain",
    ["relay_to", "relay_from", "log_oob", "log_arf"]
);

impl ListenerDomain {
    /// Whether a client at `ip` may relay with this as the sender's domain.
    pub fn relays_from(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.relay_from.iter().any(|net| net.contains(&ip))
    }
}
