//! `EgressPathConfig`: how to talk to a destination site (subset of `kumo.make_egress_path`).

use crate::automation::AutomationRule;
use crate::error::{check_ehlo_domain, ValidationError};
use crate::fields::{duration, port};
use crate::keys::strict_table;
use crate::throttle::{ConnectionLimit, ThrottleSpec};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// TLS policy for the outbound session, with KumoMTA's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Tls {
    /// Never STARTTLS.
    Disabled,
    /// STARTTLS when offered, certificate verified.
    #[default]
    Opportunistic,
    /// STARTTLS when offered, certificate not verified.
    OpportunisticInsecure,
    /// STARTTLS required, certificate verified.
    Required,
    /// STARTTLS required, certificate not verified.
    RequiredInsecure,
}

/// Per-site settings for the outbound SMTP session.
///
/// Defaults follow KumoMTA: port 25, 60 s to connect and for the banner,
/// 300 s for each later reply, opportunistic TLS.
///
/// ```
/// use egress_source::EgressPathConfig;
/// let path: EgressPathConfig =
///     serde_json::from_str(r#"{ "ehlo_domain": "mta.example.com", "connect_timeout": "10s" }"#).unwrap();
/// assert_eq!(path.smtp_port, 25);
/// assert_eq!(path.connect_timeout.as_secs(), 10);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct EgressPathConfig {
    /// EHLO name for this path; wins over the source's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ehlo_domain: Option<String>,
    /// Destination port when neither the source nor the MX entry sets one.
    #[serde(default = "default_smtp_port", with = "port")]
    pub smtp_port: u16,
    /// TCP connect (and proxy handshake) deadline.
    #[serde(default = "secs::<60>", with = "duration")]
    pub connect_timeout: Duration,
    /// Wait for the 220 banner.
    #[serde(default = "secs::<60>", with = "duration")]
    pub banner_timeout: Duration,
    /// Wait for the EHLO reply.
    #[serde(default = "secs::<300>", with = "duration")]
    pub ehlo_timeout: Duration,
    /// Wait for the MAIL FROM reply.
    #[serde(default = "secs::<300>", with = "duration")]
    pub mail_from_timeout: Duration,
    /// Wait for each RCPT TO reply.
    #[serde(default = "secs::<300>", with = "duration")]
    pub rcpt_to_timeout: Duration,
    /// Wait for the DATA (354) reply.
    #[serde(default = "secs::<300>", with = "duration")]
    pub data_timeout: Duration,
    /// Wait for the reply to the final dot.
    #[serde(default = "secs::<300>", with = "duration")]
    pub data_dot_timeout: Duration,
    /// STARTTLS policy.
    #[serde(default)]
    pub enable_tls: Tls,
    /// Deadline for the STARTTLS command and the TLS handshake; default 5 s.
    #[serde(default = "secs::<5>", with = "duration")]
    pub starttls_timeout: Duration,
    /// How long a destination session waits, idle, for the next transaction
    /// through the same source to the same host; default 60 s (KumoMTA's).
    #[serde(default = "secs::<60>", with = "duration")]
    pub idle_timeout: Duration,
    /// With an `Opportunistic*` mode, a failed handshake reconnects once through
    /// the same source and sends in clear instead of failing; default false.
    #[serde(default)]
    pub opportunistic_tls_reconnect_on_failed_handshake: bool,
    /// Client certificate for STARTTLS (PEM file path), with `tls_private_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_certificate: Option<String>,
    /// The client certificate's private key (PEM file path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_private_key: Option<String>,
    /// Connections open at once through this source to this site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_limit: Option<ConnectionLimit>,
    /// New connections through this source to this site per period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connection_rate: Option<ThrottleSpec>,
    /// Messages through this source to this site per period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_message_rate: Option<ThrottleSpec>,
    /// Messages one connection carries before it is closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_deliveries_per_connection: Option<u64>,
    /// How often selection may pick this source for this site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_selection_rate: Option<ThrottleSpec>,
    /// More connection limits, by shared name (several paths naming the same key
    /// share one limit).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub additional_connection_limits: BTreeMap<String, ConnectionLimit>,
    /// More message rates, by shared name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub additional_message_rate_throttles: BTreeMap<String, ThrottleSpec>,
    /// More selection rates, by shared name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub additional_source_selection_rates: BTreeMap<String, ThrottleSpec>,
    /// Rules acting on this path's replies (an egressd key: policy-extras.shaping
    /// fills it from shaping.toml's `automation` tables).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub automation: Vec<AutomationRule>,
    /// The shaping providers whose blocks apply here (an egressd key, filled in by
    /// policy-extras.shaping; `egressd resolve` shows it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<String>,
    /// Where each key's value came from (`FILE: [BLOCK]`; an egressd key, filled in
    /// by policy-extras.shaping) — "why is this limit 20?".
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub provenance: BTreeMap<String, String>,
}

fn default_smtp_port() -> u16 {
    25
}

fn secs<const N: u64>() -> Duration {
    Duration::from_secs(N)
}

impl Default for EgressPathConfig {
    fn default() -> Self {
        EgressPathConfig {
            ehlo_domain: None,
            smtp_port: default_smtp_port(),
            connect_timeout: secs::<60>(),
            banner_timeout: secs::<60>(),
            ehlo_timeout: secs::<300>(),
            mail_from_timeout: secs::<300>(),
            rcpt_to_timeout: secs::<300>(),
            data_timeout: secs::<300>(),
            data_dot_timeout: secs::<300>(),
            enable_tls: Tls::default(),
            starttls_timeout: secs::<5>(),
            idle_timeout: secs::<60>(),
            opportunistic_tls_reconnect_on_failed_handshake: false,
            tls_certificate: None,
            tls_private_key: None,
            connection_limit: None,
            max_connection_rate: None,
            max_message_rate: None,
            max_deliveries_per_connection: None,
            source_selection_rate: None,
            additional_connection_limits: BTreeMap::new(),
            additional_message_rate_throttles: BTreeMap::new(),
            additional_source_selection_rates: BTreeMap::new(),
            automation: Vec::new(),
            providers: Vec::new(),
            provenance: BTreeMap::new(),
        }
    }
}

strict_table!(
    EgressPathConfig,
    "egress path config",
    [
        "ehlo_domain",
        "smtp_port",
        "connect_timeout",
        "banner_timeout",
        "ehlo_timeout",
        "mail_from_timeout",
        "rcpt_to_timeout",
        "data_timeout",
        "data_dot_timeout",
        "enable_tls",
        "starttls_timeout",
        "idle_timeout",
        "opportunistic_tls_reconnect_on_failed_handshake",
        "tls_certificate",
        "tls_private_key",
        "connection_limit",
        "max_connection_rate",
        "max_message_rate",
        "max_deliveries_per_connection",
        "source_selection_rate",
        "additional_connection_limits",
        "additional_message_rate_throttles",
        "additional_source_selection_rates",
        "automation",
        "providers",
        "provenance",
    ]
);

impl Tls {
    /// STARTTLS must succeed (`Required`, `RequiredInsecure`).
    pub fn is_required(self) -> bool {
        matches!(self, Tls::Required | Tls::RequiredInsecure)
    }

    /// Certificates are checked against the trust store.
    pub fn verifies(self) -> bool {
        matches!(self, Tls::Opportunistic | Tls::Required)
    }
}

impl EgressPathConfig {
    /// Checks `ehlo_domain`, `smtp_port`, and that a client certificate comes with
    /// its key.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if let Some(ehlo) = &self.ehlo_domain {
            check_ehlo_domain("egress path config", ehlo)?;
        }
        if self.tls_certificate.is_some() != self.tls_private_key.is_some() {
            let (given, missing) = if self.tls_certificate.is_some() {
                ("tls_certificate", "tls_private_key")
            } else {
                ("tls_private_key", "tls_certificate")
            };
            return Err(ValidationError::MissingPair {
                owner: "egress path config".into(),
                present: given,
                missing,
            });
        }
        if self.smtp_port == 0 {
            return Err(ValidationError::ZeroPort {
                owner: "egress path config".into(),
                field: "smtp_port",
            });
        }
        Ok(())
    }
}
