//! MTA-STS (RFC 8461): a destination domain's demand that mail reach it only
//! over TLS, to its listed MX hosts (`enable_mta_sts`, default true as in
//! KumoMTA). `parse.rs` reads the texts, `fetch.rs` gets the policy over HTTPS,
//! and this module keeps policies per domain: for `max_age`, refetched when the
//! TXT record's id changes (asked again when its DNS TTL runs out, at most once
//! a second), and kept when a refetch fails (§5.1).
//!
//! It applies to routes by MX only: an `mx_list` (a smarthost) is not the
//! domain's MX, so its policy says nothing about it.

pub mod fetch;
pub mod parse;

use crate::dns::Dns;
use crate::report::Report;
use parse::{Mode, Policy};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long "no policy" (no TXT record) is remembered.
const NO_POLICY_FOR: Duration = Duration::from_secs(300);
/// The least time a cached policy is used before the TXT record is asked again
/// whether its id changed. Otherwise the record's TTL decides (as a resolver's
/// cache would); many are served with a TTL of zero, and a DNS round trip per
/// transaction would cost more than the rest of the routing.
const RECHECK_AT_LEAST_AFTER: Duration = Duration::from_secs(1);
/// Domains remembered at most (expired entries go first, then all).
const MAX_DOMAINS: usize = 10_000;

/// A policy in force for a domain, with its id.
#[derive(Debug, Clone)]
pub struct InForce {
    /// The TXT record's id of the policy fetched.
    pub id: String,
    /// The policy.
    pub policy: Arc<Policy>,
    /// Until when it may be used.
    pub until: Instant,
    /// When the TXT record is to be asked again whether the id changed.
    recheck_at: Instant,
}

#[derive(Clone)]
enum Known {
    Policy(InForce),
    Nothing { until: Instant },
}

/// A policy that asks something of the sender: `mode: none` asks nothing.
fn in_force(policy: Option<InForce>) -> Option<InForce> {
    policy.filter(|p| p.policy.mode != Mode::None)
}

/// Policies by domain.
pub struct MtaSts {
    known: Mutex<HashMap<String, Known>>,
    /// The `User-Agent` of policy fetches: the server's product name.
    user_agent: String,
    /// Policies fetched (for tests and counts).
    pub fetches: std::sync::atomic::AtomicU64,
}

impl MtaSts {
    /// Nothing known yet; fetches say `user_agent`.
    pub fn new(user_agent: &str) -> MtaSts {
        MtaSts {
            known: Mutex::default(),
            user_agent: user_agent.to_owned(),
            fetches: Default::default(),
        }
    }

    /// The policy in force for `domain` (None: no policy, or mode none), looking
    /// it up within `budget` when what is known is stale.
    pub async fn policy(
        &self,
        dns: &Dns,
        report: &dyn Report,
        domain: &str,
        budget: Duration,
    ) -> Option<InForce> {
        let now = Instant::now();
        let known = self.lock().get(domain).cloned();
        if let Some(Known::Nothing { until }) = &known {
            if now < *until {
                return None;
            }
        }
        let cached = match known {
            Some(Known::Policy(p)) if now < p.until => Some(p),
            _ => None,
        };
        if let Some(p) = &cached {
            if now < p.recheck_at {
                report.mta_sts("cache_hit");
                return in_force(Some(p.clone()));
            }
        }
        // The TXT record says whether the policy changed.
        let (id, recheck_at) = match dns.txt(&format!("_mta-sts.{domain}")).await {
            Ok((records, until)) => (
                records.iter().find_map(|t| parse::txt_id(t)),
                until.unwrap_or(now).max(now + RECHECK_AT_LEAST_AFTER),
            ),
            Err(e) => {
                tracing::debug!(domain, "MTA-STS TXT lookup: {e}");
                return in_force(cached);
            }
        };
        let Some(id) = id else {
            // No record: a cached unexpired policy still holds (RFC 8461 §5.1).
            if cached.is_none() {
                self.remember(
                    domain,
                    Known::Nothing {
                        until: now + NO_POLICY_FOR,
                    },
                );
            }
            return in_force(cached);
        };
        if let Some(mut p) = cached.clone() {
            if p.id == id {
                report.mta_sts("cache_hit");
                p.recheck_at = recheck_at;
                self.remember(domain, Known::Policy(p.clone()));
                return in_force(Some(p));
            }
        }
        self.fetches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let fetched = fetch::policy_text(dns, domain, &self.user_agent, budget)
            .await
            .and_then(|text| parse::parse_policy(&text));
        match fetched {
            Ok(policy) => {
                report.mta_sts("fetched");
                let policy_now = InForce {
                    id,
                    recheck_at,
                    until: now + policy.max_age,
                    policy: Arc::new(policy),
                };
                self.remember(domain, Known::Policy(policy_now.clone()));
                in_force(Some(policy_now))
            }
            Err(e) => {
                report.mta_sts("fetch_failed");
                tracing::warn!(
                    domain,
                    "MTA-STS policy (id {id}): {e}; {}",
                    match &cached {
                        Some(p) => format!("keeping the cached policy (id {})", p.id),
                        None => "no policy applies".into(),
                    }
                );
                in_force(cached)
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Known>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn remember(&self, domain: &str, known: Known) {
        let now = Instant::now();
        let mut map = self.lock();
        if map.len() >= MAX_DOMAINS {
            map.retain(|_, k| match k {
                Known::Policy(p) => p.until > now,
                Known::Nothing { until } => *until > now,
            });
            if map.len() >= MAX_DOMAINS {
                map.clear();
            }
        }
        map.insert(domain.to_owned(), known);
    }
}
