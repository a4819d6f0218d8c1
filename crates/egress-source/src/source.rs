//! `EgressSource`: one named outbound identity.

use crate::error::{check_ehlo_domain, check_name, ValidationError};
use crate::fields::{duration, opt_ip, opt_port, HostPort};
use crate::keys::strict_table;
use crate::suspend::SuspensionRule;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::time::Duration;

/// How long a definition is cached when it does not say: 60 seconds.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);

pub(crate) fn default_ttl() -> Duration {
    DEFAULT_TTL
}

/// A named outbound identity: where a connection leaves from and what it calls itself.
///
/// The fields and their names are those of KumoMTA's `kumo.make_egress_source`.
/// Build one from a table (JSON, Lua) with serde; unknown keys are refused with a
/// suggestion. Call [`EgressSource::validate`] before use.
///
/// ```
/// use egress_source::{EgressSource, Route};
/// let src: EgressSource = serde_json::from_str(r#"{
///     "name": "ip-1", "source_address": "127.0.0.2",
///     "ehlo_domain": "mta1.example.com", "ttl": "5 mins" }"#).unwrap();
/// src.validate().unwrap();
/// assert_eq!(src.ttl.as_secs(), 300);
/// assert!(matches!(src.route(), Route::Direct));
///
/// let typo = serde_json::from_str::<EgressSource>(r#"{"name": "x", "sorce_address": "10.0.0.1"}"#);
/// assert!(typo.unwrap_err().to_string().contains("did you mean `source_address`?"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct EgressSource {
    /// Required; used in logs and reports.
    pub name: String,
    /// Local IP to bind before connecting; with a proxy, the address used to reach it.
    #[serde(default, with = "opt_ip", skip_serializing_if = "Option::is_none")]
    pub source_address: Option<IpAddr>,
    /// Name sent in EHLO; a path config's `ehlo_domain` wins over it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ehlo_domain: Option<String>,
    /// Replaces the destination port (port-mapped egress).
    #[serde(default, with = "opt_port", skip_serializing_if = "Option::is_none")]
    pub remote_port: Option<u16>,
    /// `host:port` of an HAProxy that accepts PROXY v2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha_proxy_server: Option<HostPort>,
    /// The address HAProxy should send from (carried in the PROXY header).
    #[serde(default, with = "opt_ip", skip_serializing_if = "Option::is_none")]
    pub ha_proxy_source_address: Option<IpAddr>,
    /// `host:port` of a SOCKS5 proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socks5_proxy_server: Option<HostPort>,
    /// The address the SOCKS5 proxy should send from; unset = the proxy chooses.
    #[serde(default, with = "opt_ip", skip_serializing_if = "Option::is_none")]
    pub socks5_proxy_source_address: Option<IpAddr>,
    /// RFC 1929 user name (with `socks5_proxy_password`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socks5_proxy_username: Option<String>,
    /// RFC 1929 password (with `socks5_proxy_username`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socks5_proxy_password: Option<String>,
    /// How long the definition is cached; default 60 s.
    #[serde(default = "default_ttl", with = "duration")]
    pub ttl: Duration,
    /// Take the source out of selection when binding its address fails because the
    /// address is not on this host (KumoMTA's key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend_when_unplumbed: Option<SuspensionRule>,
    /// Take the source out of selection when its proxy is unreachable, refuses, times
    /// out or reports a bind failure (KumoMTA's key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend_when_proxy_unhealthy: Option<SuspensionRule>,
}

strict_table!(
    EgressSource,
    "egress source",
    [
        "name",
        "source_address",
        "ehlo_domain",
        "remote_port",
        "ha_proxy_server",
        "ha_proxy_source_address",
        "socks5_proxy_server",
        "socks5_proxy_source_address",
        "socks5_proxy_username",
        "socks5_proxy_password",
        "ttl",
        "suspend_when_unplumbed",
        "suspend_when_proxy_unhealthy",
    ]
);

/// The way a source's connections leave, borrowed from an [`EgressSource`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// Straight to the destination (from `source_address` when set).
    Direct,
    /// Through an HAProxy, which sends from `source_address`.
    HaProxy {
        /// The proxy.
        server: &'a HostPort,
        /// The address HAProxy sends from.
        source_address: IpAddr,
    },
    /// Through a SOCKS5 proxy.
    Socks5 {
        /// The proxy.
        server: &'a HostPort,
        /// The address the proxy should send from; `None` = the proxy chooses.
        source_address: Option<IpAddr>,
        /// RFC 1929 credentials.
        credentials: Option<(&'a str, &'a str)>,
    },
}

impl EgressSource {
    /// A source with only a name: kernel-chosen address, host name in EHLO.
    pub fn named(name: impl Into<String>) -> Self {
        EgressSource {
            name: name.into(),
            source_address: None,
            ehlo_domain: None,
            remote_port: None,
            ha_proxy_server: None,
            ha_proxy_source_address: None,
            socks5_proxy_server: None,
            socks5_proxy_source_address: None,
            socks5_proxy_username: None,
            socks5_proxy_password: None,
            ttl: DEFAULT_TTL,
            suspend_when_unplumbed: None,
            suspend_when_proxy_unhealthy: None,
        }
    }

    /// The route this source takes. Meaningful after [`validate`](Self::validate);
    /// on an invalid source, HAProxy wins over SOCKS5 and half-set pairs are ignored.
    pub fn route(&self) -> Route<'_> {
        if let (Some(server), Some(source_address)) =
            (&self.ha_proxy_server, self.ha_proxy_source_address)
        {
            return Route::HaProxy {
                server,
                source_address,
            };
        }
        if let Some(server) = &self.socks5_proxy_server {
            let credentials = match (&self.socks5_proxy_username, &self.socks5_proxy_password) {
                (Some(u), Some(p)) => Some((u.as_str(), p.as_str())),
                _ => None,
            };
            return Route::Socks5 {
                server,
                source_address: self.socks5_proxy_source_address,
                credentials,
            };
        }
        Route::Direct
    }

    /// Checks every rule of the model; the error names this source and the field(s).
    ///
    /// Rules: non-empty name; `ha_proxy_server` and `ha_proxy_source_address` together;
    /// `socks5_proxy_source_address` needs `socks5_proxy_server`; not both proxies;
    /// credentials both or neither, only with SOCKS5, each under 256 bytes;
    /// `remote_port` not 0; `ehlo_domain` a host name or address literal;
    /// `source_address` of the same family as a proxy given as an IP literal.
    pub fn validate(&self) -> Result<(), ValidationError> {
        use ValidationError::*;
        check_name("egress source", &self.name)?;
        let source = || self.name.clone();
        self.both_or_neither(
            ("ha_proxy_server", self.ha_proxy_server.is_some()),
            (
                "ha_proxy_source_address",
                self.ha_proxy_source_address.is_some(),
            ),
        )?;
        if self.socks5_proxy_source_address.is_some() && self.socks5_proxy_server.is_none() {
            return Err(Socks5SourceWithoutServer { source: source() });
        }
        if self.ha_proxy_server.is_some() && self.socks5_proxy_server.is_some() {
            return Err(ConflictingProxies { source: source() });
        }
        self.both_or_neither(
            (
                "socks5_proxy_username",
                self.socks5_proxy_username.is_some(),
            ),
            (
                "socks5_proxy_password",
                self.socks5_proxy_password.is_some(),
            ),
        )?;
        if self.socks5_proxy_username.is_some() && self.socks5_proxy_server.is_none() {
            return Err(CredentialsWithoutSocks5 { source: source() });
        }
        for (field, value) in [
            ("socks5_proxy_username", &self.socks5_proxy_username),
            ("socks5_proxy_password", &self.socks5_proxy_password),
        ] {
            if let Some(v) = value {
                if v.len() > 255 {
                    return Err(CredentialTooLong {
                        source: source(),
                        field,
                        len: v.len(),
                    });
                }
            }
        }
        if self.remote_port == Some(0) {
            return Err(ZeroPort {
                owner: format!("egress source '{}'", self.name),
                field: "remote_port",
            });
        }
        if let Some(ehlo) = &self.ehlo_domain {
            check_ehlo_domain(&format!("egress source '{}'", self.name), ehlo)?;
        }
        if let Some(local) = self.source_address {
            for (field, proxy) in [
                ("ha_proxy_server", &self.ha_proxy_server),
                ("socks5_proxy_server", &self.socks5_proxy_server),
            ] {
                if let Some(proxy_ip) = proxy.as_ref().and_then(HostPort::ip) {
                    if proxy_ip.is_ipv4() != local.is_ipv4() {
                        return Err(FamilyMismatch {
                            source: source(),
                            first: ("source_address", local),
                            second: (field, proxy_ip),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Two fields that only make sense together.
    fn both_or_neither(
        &self,
        a: (&'static str, bool),
        b: (&'static str, bool),
    ) -> Result<(), ValidationError> {
        let (present, missing) = match (a.1, b.1) {
            (true, false) => (a.0, b.0),
            (false, true) => (b.0, a.0),
            _ => return Ok(()),
        };
        Err(ValidationError::MissingPartner {
            source: self.name.clone(),
            present,
            missing,
        })
    }
}
