//! `EgressPathConfig`: how to talk to a destination site (subset of `kumo.make_egress_path`).

use crate::automation::AutomationRule;
use crate::credential::KeySource;
use crate::error::{check_ehlo_domain, ValidationError};
use crate::fields::{duration, networks, optional_duration, optional_networks, port};
use crate::keys::strict_table;
use crate::throttle::{ConnectionLimit, ThrottleSpec};
use ipnet::IpNet;
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

/// How a destination host's name becomes addresses (KumoMTA's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum IpLookupStrategy {
    /// A and AAAA, both used (IPv4 addresses first).
    #[default]
    Ipv4AndIpv6,
    /// A only.
    Ipv4Only,
    /// AAAA only.
    Ipv6Only,
    /// A; AAAA only when there is no A.
    Ipv4ThenIpv6,
    /// AAAA; A only when there is no AAAA.
    Ipv6ThenIpv4,
}

/// The rustls cipher suite names `rustls_cipher_suites` accepts (KumoMTA's list;
/// `tls-probe list-rustls-cipher-suites` there prints the same).
pub const RUSTLS_CIPHER_SUITES: &[&str] = &[
    "TLS13_AES_256_GCM_SHA384",
    "TLS13_AES_128_GCM_SHA256",
    "TLS13_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
];

/// `make_egress_path` keys KumoMTA documents that mean nothing in egressd, with
/// why: accepted (so KumoMTA policies load unchanged) and skipped. egress-lua
/// says so once per key when a policy sets one.
pub const INERT_PATH_KEYS: &[(&str, &str)] = &[
    ("max_ready", NO_READY_QUEUE),
    ("dispatcher_progress_watchdog_timeout", NO_READY_QUEUE),
    ("dispatcher_wakeup_strategy", NO_READY_QUEUE),
    ("maintainer_wakeup_strategy", NO_READY_QUEUE),
    ("low_memory_reduction_policy", NO_READY_QUEUE),
    ("no_memory_reduction_policy", NO_READY_QUEUE),
    ("aggressive_connection_opening", NO_READY_QUEUE),
    (
        "refresh_interval",
        "egressd asks the policy for the path config for each transaction (the \
         policy's own caching applies), not on a timer",
    ),
    (
        "refresh_strategy",
        "egressd asks the policy for the path config for each transaction, not on a timer",
    ),
    (
        "reconnect_strategy",
        "a destination session lost mid-transaction is not reopened: the client (or the \
         spool's next attempt) sends the transaction again",
    ),
    (
        "system_shutdown_timeout",
        "egressd's drain on SIGTERM has its own deadline (egressd --help)",
    ),
    ("tls_prefer_openssl", RUSTLS_ONLY),
    ("openssl_cipher_list", RUSTLS_ONLY),
    ("openssl_cipher_suites", RUSTLS_ONLY),
    ("openssl_options", RUSTLS_ONLY),
];

const NO_READY_QUEUE: &str = "egressd has no scheduled or ready queue: a message goes to its \
     destination while the client waits, or from the spool one attempt at a time";
const RUSTLS_ONLY: &str = "egressd's TLS is rustls only; rustls_cipher_suites sets its suites";

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
    /// Username for AUTH PLAIN to the destination (a smarthost that wants a
    /// password). Alone, AUTH PLAIN is sent with an empty password, as KumoMTA does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp_auth_plain_username: Option<String>,
    /// The password: a file path, or `{ key_data = '…' }` ([`KeySource`]); never
    /// printed. Without a username it is accepted and unused, as in KumoMTA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp_auth_plain_password: Option<KeySource>,
    /// Send the credential over a session without TLS; default false (refused
    /// with a 4xx before anything is sent).
    #[serde(default)]
    pub allow_smtp_auth_plain_without_tls: bool,
    /// Send the credential over TLS whose certificate was not verified (the
    /// `*Insecure` modes); default false.
    #[serde(default)]
    pub allow_smtp_auth_plain_without_valid_certificate: bool,
    /// Speak LMTP (RFC 2033: LHLO, one reply per recipient after the dot);
    /// default false.
    #[serde(default)]
    pub use_lmtp: bool,
    /// Use PIPELINING when the destination offers it; default true.
    #[serde(default = "yes")]
    pub enable_pipelining: bool,
    /// RSET before each transaction on a reused session; default true.
    #[serde(default = "yes")]
    pub enable_rset: bool,
    /// Wait for the reply to RSET; default 5 s.
    #[serde(default = "secs::<5>", with = "duration")]
    pub rset_timeout: Duration,
    /// RCPTs in one destination transaction; default 100.
    #[serde(default = "default_batch")]
    pub max_recipients_per_batch: usize,
    /// Destination addresses never connected to (`550 5.4.4`). Unset: egressd
    /// refuses only its own listening addresses (see the README for why this
    /// differs from KumoMTA's loopback default).
    #[serde(
        default,
        with = "optional_networks",
        skip_serializing_if = "Option::is_none"
    )]
    pub prohibited_hosts: Option<Vec<IpNet>>,
    /// Destination addresses removed from the host list.
    #[serde(default, with = "networks", skip_serializing_if = "Vec::is_empty")]
    pub skip_hosts: Vec<IpNet>,
    /// Which address records a host name's addresses come from.
    #[serde(default)]
    pub ip_lookup_strategy: IpLookupStrategy,
    /// After a timeout, a connection or protocol failure before MAIL FROM, go on
    /// to the next host (and source) within the same attempt; default false.
    #[serde(default)]
    pub try_next_host_on_transport_error: bool,
    /// Hosts that may fail to connect in a row before the site is delayed;
    /// default 100.
    #[serde(default = "default_failures")]
    pub consecutive_connection_failures_before_delay: u64,
    /// Remember, for this long, a destination whose TLS handshake failed.
    #[serde(
        default,
        with = "optional_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub remember_broken_tls: Option<Duration>,
    /// The rustls cipher suites offered (names from [`RUSTLS_CIPHER_SUITES`]);
    /// empty: rustls's defaults.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rustls_cipher_suites: Vec<String>,
    /// Honour the destination domain's MTA-STS policy (RFC 8461) on routes by
    /// MX; default true (KumoMTA's).
    #[serde(default = "yes")]
    pub enable_mta_sts: bool,
    /// Honour the destination host's DNSSEC-signed TLSA records (DANE, RFC 7672);
    /// default false (KumoMTA's). Needs a validating resolver
    /// (`kumo.dns.configure_resolver { …, options = { validate = true } }`).
    #[serde(default)]
    pub enable_dane: bool,
    /// Send a relayed message with BDAT (RFC 3030) to a destination that offers
    /// CHUNKING — one write for a small message, no 354 round trip — rather than
    /// DATA; default true. egressd's own key (KumoMTA always uses DATA).
    #[serde(default = "yes")]
    pub enable_chunking: bool,
    /// Send an 8-bit message to a destination that does not offer 8BITMIME;
    /// default false (refused before the text is sent).
    #[serde(default)]
    pub ignore_8bit_checks: bool,
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

fn yes() -> bool {
    true
}

fn default_batch() -> usize {
    100
}

fn default_failures() -> u64 {
    100
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
            smtp_auth_plain_username: None,
            smtp_auth_plain_password: None,
            allow_smtp_auth_plain_without_tls: false,
            allow_smtp_auth_plain_without_valid_certificate: false,
            use_lmtp: false,
            enable_pipelining: true,
            enable_rset: true,
            rset_timeout: secs::<5>(),
            max_recipients_per_batch: default_batch(),
            prohibited_hosts: None,
            skip_hosts: Vec::new(),
            ip_lookup_strategy: IpLookupStrategy::default(),
            try_next_host_on_transport_error: false,
            consecutive_connection_failures_before_delay: default_failures(),
            remember_broken_tls: None,
            rustls_cipher_suites: Vec::new(),
            ignore_8bit_checks: false,
            enable_mta_sts: true,
            enable_dane: false,
            enable_chunking: true,
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
        "smtp_auth_plain_username",
        "smtp_auth_plain_password",
        "allow_smtp_auth_plain_without_tls",
        "allow_smtp_auth_plain_without_valid_certificate",
        "use_lmtp",
        "enable_pipelining",
        "enable_rset",
        "rset_timeout",
        "max_recipients_per_batch",
        "prohibited_hosts",
        "skip_hosts",
        "ip_lookup_strategy",
        "try_next_host_on_transport_error",
        "consecutive_connection_failures_before_delay",
        "remember_broken_tls",
        "rustls_cipher_suites",
        "ignore_8bit_checks",
        "enable_mta_sts",
        "enable_dane",
        "enable_chunking",
        "automation",
        "providers",
        "provenance",
    ],
    inert = INERT_PATH_KEYS
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
        if self.max_recipients_per_batch == 0 {
            return Err(ValidationError::Invalid {
                owner: "egress path config".into(),
                field: "max_recipients_per_batch",
                problem: "must be at least 1".into(),
            });
        }
        for suite in &self.rustls_cipher_suites {
            if !RUSTLS_CIPHER_SUITES.contains(&suite.as_str()) {
                return Err(ValidationError::Invalid {
                    owner: "egress path config".into(),
                    field: "rustls_cipher_suites",
                    problem: crate::keys::unknown_key_message(
                        "the rustls cipher suites",
                        suite,
                        RUSTLS_CIPHER_SUITES,
                    )
                    .replace("unknown key", "unknown suite"),
                });
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn path(json: &str) -> Result<EgressPathConfig, String> {
        let path: EgressPathConfig = serde_json::from_str(json).map_err(|e| e.to_string())?;
        path.validate().map_err(|e| e.to_string())?;
        Ok(path)
    }

    #[test]
    fn every_kumomta_key_without_an_effect_is_accepted_and_skipped() {
        for (key, reason) in INERT_PATH_KEYS {
            let p = path(&format!(r#"{{ "{key}": 5, "smtp_port": 2525 }}"#)).unwrap();
            assert_eq!(p.smtp_port, 2525, "{key}");
            assert!(!reason.is_empty());
        }
        assert!(path(r#"{ "max_redy": 5 }"#)
            .unwrap_err()
            .contains("did you mean `max_ready`?"));
    }

    #[test]
    fn defaults_are_kumomtas() {
        let p = EgressPathConfig::default();
        assert!(p.enable_pipelining && p.enable_rset && !p.use_lmtp);
        assert_eq!(p.rset_timeout, Duration::from_secs(5));
        assert_eq!(p.max_recipients_per_batch, 100);
        assert_eq!(p.consecutive_connection_failures_before_delay, 100);
        assert_eq!(p.ip_lookup_strategy, IpLookupStrategy::Ipv4AndIpv6);
        assert_eq!(path("{}").unwrap(), p);
    }

    #[test]
    fn credentials_load_as_kumomta_takes_them_and_are_never_shown() {
        // A username alone (empty password) and a password alone (unused) load.
        assert!(path(r#"{ "smtp_auth_plain_username": "relay" }"#).is_ok());
        assert!(path(r#"{ "smtp_auth_plain_password": { "key_data": "pw" } }"#).is_ok());
        let p = path(
            r#"{ "smtp_auth_plain_username": "relay", "smtp_auth_plain_password": { "key_data": "pw-9f2" } }"#,
        )
        .unwrap();
        let shown = serde_json::to_string(&p).unwrap();
        assert!(
            !shown.contains("pw-9f2") && shown.contains("(redacted)"),
            "{shown}"
        );
        assert!(!format!("{p:?}").contains("pw-9f2"));
        let vault = path(
            r#"{ "smtp_auth_plain_username": "u", "smtp_auth_plain_password": { "vault_mount": "secret", "vault_path": "x" } }"#,
        )
        .unwrap_err();
        assert!(
            vault.contains("vault_mount") && vault.contains("key_data"),
            "{vault}"
        );
    }

    #[test]
    fn host_lists_strategies_and_suites_are_checked() {
        let p = path(
            r#"{ "prohibited_hosts": ["10.0.0.0/8", "::1"], "skip_hosts": ["192.0.2.1"], "ip_lookup_strategy": "Ipv6ThenIpv4" }"#,
        )
        .unwrap();
        assert_eq!(p.prohibited_hosts.as_ref().map(Vec::len), Some(2));
        assert_eq!(p.skip_hosts[0].to_string(), "192.0.2.1/32");
        assert_eq!(p.ip_lookup_strategy, IpLookupStrategy::Ipv6ThenIpv4);
        let bad = path(r#"{ "skip_hosts": ["mx.example.com"] }"#).unwrap_err();
        assert!(bad.contains("skip_hosts") && bad.contains("CIDR"), "{bad}");
        let typo = path(r#"{ "rustls_cipher_suites": ["TLS13_AES_256_GCM_SHA348"] }"#).unwrap_err();
        assert!(
            typo.contains("did you mean `TLS13_AES_256_GCM_SHA384`?"),
            "{typo}"
        );
        let zero = path(r#"{ "max_recipients_per_batch": 0 }"#).unwrap_err();
        assert!(zero.contains("at least 1"), "{zero}");
    }
}
