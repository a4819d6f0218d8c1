//! Who a suspension keeps out of selection, as one type: the relay stores it
//! under [`SuspensionKey::id`], an operator names it in KumoMTA's ready-queue
//! form (`SOURCE->SITE@smtp_client`, or `SOURCE`), and both read back to the same
//! key — built and parsed here only.

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

/// The protocol suffix of KumoMTA's ready-queue names.
const SMTP_CLIENT: &str = "@smtp_client";
/// The site part of a provider-wide key.
const PROVIDER: &str = "provider:";

/// A source kept out of selection: everywhere, at one site, or at every site of
/// a mailbox provider (what a provider's automation rule suspends).
///
/// ```
/// use egress_relay::SuspensionKey;
/// let key: SuspensionKey = "ip-1->mx.example.com@smtp_client".parse().unwrap();
/// assert_eq!(key, SuspensionKey::Site { source: "ip-1".into(), site: "mx.example.com".into() });
/// assert_eq!(key.id(), "ip-1->mx.example.com");
/// assert_eq!(SuspensionKey::from_id(&key.id()), key);
/// assert_eq!(key.to_string(), "ip-1->mx.example.com@smtp_client");
/// assert_eq!("ip-2".parse::<SuspensionKey>().unwrap(), SuspensionKey::Source("ip-2".into()));
/// assert!("ip-2->@smtp_client".parse::<SuspensionKey>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SuspensionKey {
    /// The source at every site.
    Source(String),
    /// The source at one site.
    Site {
        /// The source's name.
        source: String,
        /// The site name (KumoMTA's, from the MX host names).
        site: String,
    },
    /// The source at every site of a provider (shaping.toml's `[provider."NAME"]`).
    Provider {
        /// The source's name.
        source: String,
        /// The provider's name.
        provider: String,
    },
}

impl SuspensionKey {
    /// The key as stored and as an id: `SOURCE`, `SOURCE->SITE` or
    /// `SOURCE->provider:NAME`.
    pub fn id(&self) -> String {
        match self {
            SuspensionKey::Source(source) => source.clone(),
            SuspensionKey::Site { source, site } => format!("{source}->{site}"),
            SuspensionKey::Provider { source, provider } => {
                format!("{source}->{PROVIDER}{provider}")
            }
        }
    }

    /// The key an [`id`](Self::id) names (any text is some key).
    pub fn from_id(id: &str) -> SuspensionKey {
        match id.split_once("->") {
            Some((source, rest)) => match rest.strip_prefix(PROVIDER) {
                Some(provider) => SuspensionKey::Provider {
                    source: source.to_owned(),
                    provider: provider.to_owned(),
                },
                None => SuspensionKey::Site {
                    source: source.to_owned(),
                    site: rest.to_owned(),
                },
            },
            None => SuspensionKey::Source(id.to_owned()),
        }
    }

    /// The source suspended.
    pub fn source(&self) -> &str {
        match self {
            SuspensionKey::Source(source)
            | SuspensionKey::Site { source, .. }
            | SuspensionKey::Provider { source, .. } => source,
        }
    }

    /// Where: `all`, the site, or `provider:NAME` (a metrics label).
    pub fn scope(&self) -> String {
        match self {
            SuspensionKey::Source(_) => "all".into(),
            SuspensionKey::Site { site, .. } => site.clone(),
            SuspensionKey::Provider { provider, .. } => format!("{PROVIDER}{provider}"),
        }
    }
}

/// KumoMTA's ready-queue name: `SOURCE->SITE@smtp_client` (a provider's:
/// `SOURCE->provider:NAME@smtp_client`), or `SOURCE` for every site.
impl fmt::Display for SuspensionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SuspensionKey::Source(source) => f.write_str(source),
            other => write!(f, "{}{SMTP_CLIENT}", other.id()),
        }
    }
}

/// Reads KumoMTA's ready-queue name (`SOURCE->SITE@smtp_client`, the protocol
/// optional) or a bare `SOURCE`, as an operator types them.
impl FromStr for SuspensionKey {
    type Err = String;

    fn from_str(name: &str) -> Result<SuspensionKey, String> {
        let name = name.trim();
        let (queue, protocol) = match name.rsplit_once('@') {
            // Site names never contain '@'; anything after it is a protocol.
            Some((queue, protocol)) if !protocol.contains("->") => (queue, Some(protocol)),
            _ => (name, None),
        };
        if let Some(protocol) = protocol {
            if format!("@{protocol}") != SMTP_CLIENT {
                return Err(format!(
                    "{name:?}: this relay has only the smtp_client protocol; expected \
                     SOURCE->SITE@smtp_client or SOURCE"
                ));
            }
        }
        match queue.split_once("->") {
            Some((source, site)) if !source.is_empty() && !site.is_empty() => {
                Ok(SuspensionKey::from_id(queue))
            }
            Some(_) => Err(format!(
                "{name:?}: expected SOURCE->SITE@smtp_client (both parts non-empty) or SOURCE"
            )),
            None if !queue.is_empty() && !queue.contains(char::is_whitespace) => {
                Ok(SuspensionKey::Source(queue.to_owned()))
            }
            None => Err(format!(
                "{name:?}: expected SOURCE->SITE@smtp_client or SOURCE"
            )),
        }
    }
}

/// A suspension in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suspension {
    /// Who is suspended.
    pub key: SuspensionKey,
    /// Why (an operator's words, a health rule, an automation rule and the reply).
    pub reason: String,
    /// Until when.
    pub until: SystemTime,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_take_kumomtas_ready_queue_form_or_a_bare_source() {
        let key: SuspensionKey = "ip-1->(alt1|alt2)?.gmail-smtp-in.l.google.com@smtp_client"
            .parse()
            .unwrap();
        assert_eq!(
            key,
            SuspensionKey::Site {
                source: "ip-1".into(),
                site: "(alt1|alt2)?.gmail-smtp-in.l.google.com".into()
            }
        );
        assert_eq!(
            "ip-1->mx.example.com"
                .parse::<SuspensionKey>()
                .unwrap()
                .id(),
            "ip-1->mx.example.com"
        );
        assert!("ip-1->mx@lmtp"
            .parse::<SuspensionKey>()
            .unwrap_err()
            .contains("smtp_client"));
        assert!("two words".parse::<SuspensionKey>().is_err());
        assert!("".parse::<SuspensionKey>().is_err());
    }

    #[test]
    fn provider_keys_round_trip() {
        let key = SuspensionKey::Provider {
            source: "ip-2".into(),
            provider: "yahoo".into(),
        };
        assert_eq!(key.id(), "ip-2->provider:yahoo");
        assert_eq!(SuspensionKey::from_id("ip-2->provider:yahoo"), key);
        assert_eq!(key.scope(), "provider:yahoo");
        assert_eq!(key.to_string().parse::<SuspensionKey>().unwrap(), key);
    }
}
