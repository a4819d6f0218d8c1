//! Path keys overridden for a while by automation (`SetConfig` for a source at a
//! site, `SetDomainConfig` for a source and a domain), applied over what
//! `get_egress_path_config` returns — so `max_message_rate = "10/minute"` or
//! `connection_limit = 1` holds from the next transaction on.
//!
//! The overrides live in egress-throttle's store (shared by Redis when configured).
//! Reading them for every transaction would be a Redis round trip each, so each
//! node keeps a snapshot at most [`FRESH`] old: an override raised elsewhere is in
//! force here within a second; one raised here, at once (the snapshot is dropped).

use egress_source::EgressPathConfig;
use egress_throttle::{Override, Throttles};
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

/// This node's view of the overrides in force.
#[derive(Default)]
pub struct Overrides {
    snapshot: Mutex<Option<(Instant, Arc<Vec<Override>>)>>,
}

impl Overrides {
    /// Drops the snapshot (this node just raised an override).
    pub fn invalidate(&self) {
        *self.snapshot.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The overrides in force, from a snapshot at most [`FRESH`] old.
    pub async fn current(&self, throttles: &Throttles) -> Arc<Vec<Override>> {
        if let Some((taken, list)) = &*self.snapshot.lock().unwrap_or_else(|e| e.into_inner()) {
            if taken.elapsed() < FRESH {
                return list.clone();
            }
        }
        let list = Arc::new(throttles.overrides().await);
        *self.snapshot.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now(), list.clone()));
        list
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
        let list = self.current(throttles).await;
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
        let overrides = Overrides::default();
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
