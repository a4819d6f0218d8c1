//! What automation put in force for a while, applied where the relay decides:
//! path keys overridden (`SetConfig` for a source at a site, `SetDomainConfig` for
//! a source and a domain) over what `get_egress_path_config` returns — so
//! `max_message_rate = "10/minute"` holds from the next transaction on — and
//! domains (for a tenant, or everyone) deferred or refused at RCPT
//! (`SuspendTenant`, `Bounce`, `BounceTenant`).
//!
//! Both live in egress-throttle's store (shared by Redis when configured). Reading
//! them for every transaction would be a Redis round trip each, so each node keeps
//! a snapshot at most [`FRESH`] old: what was raised elsewhere is in force here
//! within a second; what was raised here, at once (the snapshot is dropped).

use egress_smtp::Reply;
use egress_source::EgressPathConfig;
use egress_throttle::{BlockKind, InForce, Override, Throttles};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

/// How old the snapshot of overrides may be.
pub const FRESH: std::time::Duration = std::time::Duration::from_secs(1);

/// The scope of an override for `source` at `site`.
pub fn site_scope(source: &str, site: &str) -> String {
    format!("{source}->{site}")
}

/// The scope of an override for `source` and `domain`.
pub fn domain_scope(source: &str, domain: &str) -> String {
    format!("{source}->domain:{domain}")
}

/// This node's view of what automation put in force.
#[derive(Default)]
pub struct Automated {
    snapshot: Mutex<Option<(Instant, Arc<InForce>)>>,
    /// What this node's rules raised, until when: said at INFO when it ends.
    raised: Mutex<Vec<(String, SystemTime)>>,
}

impl Automated {
    /// Notes that a rule of this node put `what` in force until `until`.
    pub fn raised(&self, what: String, until: SystemTime) {
        self.raised
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((what, until));
    }

    /// Says at INFO what this node's rules raised and has now ended (called every
    /// few seconds by the shaper's background task).
    pub fn log_ended(&self) {
        let now = SystemTime::now();
        let mut raised = self.raised.lock().unwrap_or_else(|e| e.into_inner());
        raised.retain(|(what, until)| {
            let ended = *until <= now;
            if ended {
                tracing::info!("automation: {what} has ended");
            }
            !ended
        });
    }

    /// Drops the snapshot (this node just raised something).
    pub fn invalidate(&self) {
        *self.snapshot.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// What is in force, from a snapshot at most [`FRESH`] old.
    pub async fn current(&self, throttles: &Throttles) -> Arc<InForce> {
        if let Some((taken, found)) = &*self.snapshot.lock().unwrap_or_else(|e| e.into_inner()) {
            if taken.elapsed() < FRESH {
                return found.clone();
            }
        }
        let found = Arc::new(throttles.in_force().await);
        *self.snapshot.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now(), found.clone()));
        found
    }

    /// The reply for a RCPT to `domain` from `tenant` while a block is in force for
    /// it (the domain for everyone, or for that tenant): `451 4.7.1` when deferred,
    /// `550 5.7.1` when refused, naming the rule and when it ends.
    pub async fn blocked(
        &self,
        throttles: &Throttles,
        domain: &str,
        tenant: Option<&str>,
    ) -> Option<Reply> {
        if !throttles.may_have_suspensions() {
            return None;
        }
        let found = self.current(throttles).await;
        let now = SystemTime::now();
        let block = found.blocks.iter().find(|b| {
            b.until > now
                && b.domain.eq_ignore_ascii_case(domain)
                && (b.tenant.is_none() || b.tenant.as_deref() == tenant)
        })?;
        let whom = match &block.tenant {
            Some(t) => format!("mail for {domain} from tenant '{t}'"),
            None => format!("mail for {domain}"),
        };
        let until = humantime::format_rfc3339_seconds(block.until);
        Some(match block.kind {
            BlockKind::Defer => Reply::new(
                451,
                [4, 7, 1],
                format!("{whom} is suspended until {until} ({})", block.reason),
            ),
            BlockKind::Refuse => Reply::new(
                550,
                [5, 7, 1],
                format!("{whom} is refused until {until} ({})", block.reason),
            ),
        })
    }

    /// `path` with the overrides in force for (source, site) and (source, domain)
    /// applied (domain ones last: they are the narrower). Costs nothing when no
    /// override can be in force.
    pub async fn apply(
        &self,
        throttles: &Throttles,
        path: Arc<EgressPathConfig>,
        source: &str,
        site: &str,
        domain: &str,
    ) -> Arc<EgressPathConfig> {
        if !throttles.may_have_suspensions() {
            return path;
        }
        let found = self.current(throttles).await;
        let list = &found.overrides;
        if list.is_empty() {
            return path;
        }
        let now = SystemTime::now();
        let (site, domain) = (site_scope(source, site), domain_scope(source, domain));
        let mine: Vec<&Override> = [&site, &domain]
            .into_iter()
            .flat_map(|scope| {
                list.iter()
                    .filter(move |o| &o.scope == scope && o.until > now)
            })
            .collect();
        if mine.is_empty() {
            return path;
        }
        match overridden(&path, &mine) {
            Ok(changed) => Arc::new(changed),
            Err(e) => {
                tracing::warn!(
                    source,
                    scope = %site,
                    "automation: an override does not fit the path config and is not applied: {e}"
                );
                path
            }
        }
    }
}

/// `path` with each override's key set to its value, checked as any path config is.
/// Whether path key `name` takes `value` (JSON text) — what applying it as an
/// override would find, asked before it is stored (`Admin::set_override`).
pub fn fits(name: &str, value: &str) -> Result<(), String> {
    let probe = Override {
        scope: String::new(),
        name: name.to_owned(),
        value: value.to_owned(),
        until: SystemTime::now(),
    };
    overridden(&EgressPathConfig::default(), &[&probe]).map(|_| ())
}

fn overridden(
    path: &EgressPathConfig,
    overrides: &[&Override],
) -> Result<EgressPathConfig, String> {
    let mut value = serde_json::to_value(path).map_err(|e| e.to_string())?;
    let map = value.as_object_mut().ok_or("a path config is a table")?;
    for o in overrides {
        let v: serde_json::Value =
            serde_json::from_str(&o.value).map_err(|e| format!("{}: not a value ({e})", o.name))?;
        map.insert(o.name.clone(), v);
    }
    let changed: EgressPathConfig = serde_json::from_value(value).map_err(|e| e.to_string())?;
    changed.validate().map_err(|e| e.to_string())?;
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn overrides_apply_to_their_scope_only_and_bad_ones_change_nothing() {
        let throttles = Throttles::local();
        let overrides = Automated::default();
        let path = Arc::new(EgressPathConfig::default());
        let hour = std::time::Duration::from_secs(3600);
        throttles
            .set_override(
                &site_scope("ip-2", "mx.a"),
                "max_message_rate",
                "\"10/minute\"",
                hour,
            )
            .await;
        throttles
            .set_override(
                &domain_scope("ip-2", "b.test"),
                "connection_limit",
                "1",
                hour,
            )
            .await;
        let a = overrides
            .apply(&throttles, path.clone(), "ip-2", "mx.a", "a.test")
            .await;
        assert_eq!(a.max_message_rate.unwrap().to_string(), "10/min");
        assert!(a.connection_limit.is_none());
        let b = overrides
            .apply(&throttles, path.clone(), "ip-2", "mx.b", "b.test")
            .await;
        assert_eq!(b.connection_limit.unwrap().limit, 1);
        assert!(b.max_message_rate.is_none());
        let other = overrides
            .apply(&throttles, path.clone(), "ip-3", "mx.a", "a.test")
            .await;
        assert!(Arc::ptr_eq(&other, &path), "another source is untouched");
        throttles
            .set_override(&site_scope("ip-9", "mx.a"), "conection_limit", "1", hour)
            .await;
        overrides.invalidate();
        let typo = overrides
            .apply(&throttles, path.clone(), "ip-9", "mx.a", "a.test")
            .await;
        assert!(Arc::ptr_eq(&typo, &path), "an unknown key changes nothing");
    }
}
