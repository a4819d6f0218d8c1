//! The generic cell rate algorithm, as pure arithmetic on microseconds so that the
//! in-process store, the Redis script and the tests share one definition.
//!
//! Each key remembers a theoretical arrival time (TAT). An event at `now` is
//! admitted when `TAT - now` is within the burst tolerance; admitting moves the TAT
//! one emission interval forward. A spec of N per period with a burst of B admits B
//! at once and then one every period/N.

use egress_source::ThrottleSpec;
use std::time::Duration;

/// The numbers GCRA needs for a spec, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cell {
    /// Time between events at the sustained rate.
    pub interval: u64,
    /// How far ahead of now the TAT may run: `interval * (burst - 1)`.
    pub tolerance: u64,
}

impl Cell {
    /// From a spec.
    pub fn of(spec: &ThrottleSpec) -> Cell {
        let interval = (spec.period.as_micros() / u128::from(spec.limit.max(1))).max(1) as u64;
        let tolerance = interval.saturating_mul(spec.burst().saturating_sub(1));
        Cell {
            interval,
            tolerance,
        }
    }
}

/// The answer to "may this happen now?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Admitted (and counted).
    pub allowed: bool,
    /// When refused: how long until it would be admitted.
    pub retry_after: Duration,
}

/// Decides for an event at `now` given the stored TAT; returns the decision and the
/// TAT to store (unchanged when refused).
pub fn decide(cell: Cell, tat: Option<u64>, now: u64) -> (Decision, u64) {
    let tat = tat.unwrap_or(now).max(now);
    if tat - now > cell.tolerance {
        let wait = tat - cell.tolerance - now;
        return (
            Decision {
                allowed: false,
                retry_after: Duration::from_micros(wait),
            },
            tat,
        );
    }
    (
        Decision {
            allowed: true,
            retry_after: Duration::ZERO,
        },
        tat + cell.interval,
    )
}

/// What a limiter would admit now, without counting anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Events that would be admitted at once.
    pub available: u64,
    /// Events admitted at once when the limiter is idle (the burst).
    pub burst: u64,
    /// How long until the next event would be admitted (zero when `available > 0`).
    pub next_in: Duration,
}

/// [`Capacity`] for a stored TAT at `now`.
pub fn capacity(cell: Cell, tat: Option<u64>, now: u64) -> Capacity {
    let burst = cell.tolerance / cell.interval + 1;
    let ahead = tat.unwrap_or(now).max(now) - now;
    if ahead > cell.tolerance {
        return Capacity {
            available: 0,
            burst,
            next_in: Duration::from_micros(ahead - cell.tolerance),
        };
    }
    Capacity {
        available: ((cell.tolerance - ahead) / cell.interval + 1).min(burst),
        burst,
        next_in: Duration::ZERO,
    }
}

/// A limiter's state as one atomic: the TAT, decided on with compare-and-swap so
/// concurrent checks never take a lock.
#[derive(Debug, Default)]
pub struct Limiter {
    tat: std::sync::atomic::AtomicU64,
}

impl Limiter {
    /// [`decide`] against this limiter's TAT, at `now` (microseconds, any epoch as
    /// long as it is the same for every call).
    pub fn check(&self, cell: Cell, now: u64) -> Decision {
        use std::sync::atomic::Ordering;
        let mut seen = self.tat.load(Ordering::Relaxed);
        loop {
            // 0 is "never used": the first event is on schedule.
            let stored = (seen != 0).then_some(seen);
            let (decision, tat) = decide(cell, stored, now);
            if !decision.allowed {
                return decision;
            }
            match self.tat.compare_exchange_weak(
                seen,
                tat.max(1),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return decision,
                Err(actual) => seen = actual,
            }
        }
    }

    /// The stored TAT (0: never used).
    pub fn tat(&self) -> u64 {
        self.tat.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod capacity_tests {
    use super::*;

    #[test]
    fn capacity_counts_down_with_each_admitted_event_and_says_when_the_next_fits() {
        let cell = Cell::of(&"3/min".parse().unwrap());
        let mut tat = None;
        let now = 1_000_000_000;
        for expected in [3, 2, 1] {
            assert_eq!(capacity(cell, tat, now).available, expected);
            tat = Some(decide(cell, tat, now).1);
        }
        let empty = capacity(cell, tat, now);
        assert_eq!((empty.available, empty.burst), (0, 3));
        assert_eq!(empty.next_in, Duration::from_secs(20));
        assert_eq!(capacity(cell, tat, now + 20_000_000).available, 1);
    }
}

/// Microseconds on the monotonic clock, read the cheap way (the kernel's coarse
/// clock, a few milliseconds of resolution — plenty for rates per second and
/// slower, and a fraction of the cost of a precise read).
pub fn now_micros() -> u64 {
    use nix::time::{clock_gettime, ClockId};
    match clock_gettime(ClockId::CLOCK_MONOTONIC_COARSE) {
        Ok(t) => t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000,
        Err(_) => {
            static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
            START
                .get_or_init(std::time::Instant::now)
                .elapsed()
                .as_micros() as u64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spec(text: &str) -> ThrottleSpec {
        text.parse().unwrap()
    }

    #[test]
    fn five_a_minute_admits_five_then_waits_twelve_seconds() {
        let cell = Cell::of(&spec("5/min"));
        let mut tat = None;
        for _ in 0..5 {
            let (d, next) = decide(cell, tat, 0);
            assert!(d.allowed);
            tat = Some(next);
        }
        let (d, _) = decide(cell, tat, 0);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Duration::from_secs(12));
        assert!(decide(cell, tat, 12_000_000).0.allowed);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Under a simulated clock probing every millisecond, k periods admit exactly
        /// the burst at once and then one per interval: N*k + burst - 1.
        #[test]
        fn admits_exactly_n_per_period(
            limit in proptest::sample::select(vec![1u64, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30, 60, 100]),
            burst in 1u64..20,
            periods in 1u64..4,
        ) {
            let spec = ThrottleSpec { limit, period: Duration::from_secs(60), max_burst: Some(burst) };
            let cell = Cell::of(&spec);
            let end = periods * 60_000_000;
            let (mut tat, mut admitted, mut now) = (None, 0u64, 0u64);
            while now < end {
                let (d, next) = decide(cell, tat, now);
                if d.allowed {
                    admitted += 1;
                    tat = Some(next);
                } else {
                    prop_assert!(d.retry_after > Duration::ZERO);
                }
                now += 1000;
            }
            prop_assert_eq!(admitted, limit * periods + burst - 1);
        }

        #[test]
        fn spec_text_round_trips(limit in 1u64..1_000_000, unit in 0usize..4, burst in proptest::option::of(1u64..1000)) {
            let period = [1, 60, 3600, 86400][unit];
            let spec = ThrottleSpec { limit, period: Duration::from_secs(period), max_burst: burst };
            prop_assert_eq!(spec.to_string().parse::<ThrottleSpec>().unwrap(), spec);
        }
    }

    #[test]
    fn the_atomic_limiter_decides_as_the_function_does() {
        let cell = Cell::of(&spec("5/min"));
        let limiter = Limiter::default();
        // Start away from 0, which the limiter reserves for "never used".
        let t0 = 1_000_000;
        for _ in 0..5 {
            assert!(limiter.check(cell, t0).allowed);
        }
        let d = limiter.check(cell, t0);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Duration::from_secs(12));
        assert!(limiter.check(cell, t0 + 12_000_000).allowed);
    }

    #[test]
    fn a_dense_clock_admits_exactly() {
        // 10 per minute, burst 10, probed every millisecond for 3 minutes.
        let cell = Cell::of(&spec("10/min"));
        let (mut tat, mut admitted) = (None, 0);
        for ms in 0..180_000u64 {
            let (d, next) = decide(cell, tat, ms * 1000);
            if d.allowed {
                admitted += 1;
                tat = Some(next);
            }
        }
        assert_eq!(admitted, 10 * 3 + 10 - 1);
    }
}
