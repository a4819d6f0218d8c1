//! What the relay remembers about destination sites between transactions:
//! sites whose TLS handshake failed (`remember_broken_tls`) and connection
//! failures in a row (`consecutive_connection_failures_before_delay`).
//!
//! As in KumoMTA, this lives in the memory of one process: not shared with other
//! nodes, forgotten at restart.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a site is delayed once its connection failures in a row pass the
/// path's `consecutive_connection_failures_before_delay`. KumoMTA delays its ready
/// queue by the queue's retry schedule; a relay has no queue, so a fixed minute
/// stands in — clients retry, and the next try after it probes the site again.
pub const FAILURE_DELAY: Duration = Duration::from_secs(60);

/// Sites remembered at most (expired entries go first, then all).
const MAX_SITES: usize = 10_000;

#[derive(Default)]
struct Failures {
    in_a_row: u64,
    delayed_until: Option<Instant>,
}

/// See the module documentation.
#[derive(Default)]
pub struct SiteMemory {
    broken_tls: Mutex<HashMap<String, Instant>>,
    failures: Mutex<HashMap<String, Failures>>,
}

impl SiteMemory {
    /// How much longer `site` is remembered as having broken TLS, if it is.
    pub fn broken_tls(&self, site: &str) -> Option<Duration> {
        let now = Instant::now();
        let map = self.broken_tls.lock().unwrap_or_else(|e| e.into_inner());
        map.get(site)
            .and_then(|until| until.checked_duration_since(now))
    }

    /// Remembers for `how_long` that `site`'s TLS handshake failed.
    pub fn tls_failed(&self, site: &str, how_long: Duration) {
        let now = Instant::now();
        let mut map = self.broken_tls.lock().unwrap_or_else(|e| e.into_inner());
        bound(&mut map, |until| *until > now);
        map.insert(site.to_owned(), now + how_long);
    }

    /// How much longer `site` is delayed after too many connection failures.
    pub fn delayed(&self, site: &str) -> Option<Duration> {
        let now = Instant::now();
        let map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        map.get(site)?.delayed_until?.checked_duration_since(now)
    }

    /// Every host of `site` failed to connect once more; true when that makes more
    /// than `limit` in a row, and the site is delayed from now.
    pub fn connection_failed(&self, site: &str, limit: u64) -> bool {
        let now = Instant::now();
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        bound(&mut map, |f| f.in_a_row > 0);
        let f = map.entry(site.to_owned()).or_default();
        f.in_a_row += 1;
        if f.in_a_row > limit {
            f.in_a_row = 0;
            f.delayed_until = Some(now + FAILURE_DELAY);
            return true;
        }
        false
    }

    /// A connection to `site` succeeded: the count starts over.
    pub fn connected(&self, site: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(site).is_some_and(|f| f.in_a_row > 0) {
            map.remove(site);
        }
    }
}

/// Keeps the map below [`MAX_SITES`]: what `keep` rejects goes first, then all.
fn bound<V>(map: &mut HashMap<String, V>, keep: impl Fn(&V) -> bool) {
    if map.len() >= MAX_SITES {
        map.retain(|_, v| keep(v));
        if map.len() >= MAX_SITES {
            map.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_in_a_row_delay_the_site_and_a_success_starts_over() {
        let m = SiteMemory::default();
        assert!(!m.connection_failed("mx.test", 2));
        assert!(!m.connection_failed("mx.test", 2));
        m.connected("mx.test");
        assert!(!m.connection_failed("mx.test", 2));
        assert!(!m.connection_failed("mx.test", 2));
        assert!(m.delayed("mx.test").is_none());
        assert!(m.connection_failed("mx.test", 2));
        assert!(m.delayed("mx.test").is_some_and(|d| d <= FAILURE_DELAY));
        assert!(m.delayed("other.test").is_none());
    }

    #[test]
    fn broken_tls_is_remembered_for_its_duration() {
        let m = SiteMemory::default();
        assert!(m.broken_tls("mx.test").is_none());
        m.tls_failed("mx.test", Duration::from_secs(3600));
        assert!(m.broken_tls("mx.test").is_some());
        m.tls_failed("gone.test", Duration::ZERO);
        assert!(m.broken_tls("gone.test").is_none());
    }
}
