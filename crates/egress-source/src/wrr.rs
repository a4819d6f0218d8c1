//! Weighted round-robin selection: the interleaved algorithm of Linux Virtual Server.
//!
//! Over each cycle of `sum(weights) / gcd(weights)` picks, entry `i` is chosen exactly
//! `weight[i] / gcd` times, spread out rather than in runs (5,2,3 gives
//! `A A B A C A B C A C`-like interleaving, never `AAAAABBCCC`).
//!
//! The sequence is deterministic, so for ordinary weights we compute one cycle up
//! front and picking is a single atomic increment: no lock, no contention beyond a
//! cache line. Only pathological weights (a cycle longer than [`MAX_SCHEDULE`]) fall
//! back to stepping the algorithm under a short mutex.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Longest cycle kept as a precomputed schedule (4 bytes per step).
pub const MAX_SCHEDULE: u64 = 1 << 16;

/// A pool has no entry with a weight above 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoEligibleEntry {
    /// The pool, when known.
    pub pool: String,
}

impl fmt::Display for NoEligibleEntry {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "egress pool '{}' has no entry with a weight above 0; add an entry such as {{ name = 'ip-1', weight = 1 }}",
            self.pool
        )
    }
}

impl std::error::Error for NoEligibleEntry {}

/// Picks items in weighted round-robin order. `Send + Sync`; `pick` takes `&self`.
///
/// ```
/// use egress_source::WeightedRoundRobin;
/// let wrr = WeightedRoundRobin::new("pool", [("a", 5), ("b", 2), ("c", 3)]).unwrap();
/// let mut counts = std::collections::HashMap::new();
/// for _ in 0..100 {
///     *counts.entry(*wrr.pick()).or_insert(0) += 1;
/// }
/// assert_eq!((counts["a"], counts["b"], counts["c"]), (50, 20, 30));
/// ```
pub struct WeightedRoundRobin<T> {
    items: Vec<T>,
    picker: Picker,
}

enum Picker {
    Schedule {
        order: Box<[u32]>,
        next: AtomicUsize,
    },
    Stepping {
        weights: Vec<u32>,
        state: Mutex<LvsState>,
    },
}

impl<T: fmt::Debug> fmt::Debug for WeightedRoundRobin<T> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.debug_struct("WeightedRoundRobin")
            .field("items", &self.items)
            .finish_non_exhaustive()
    }
}

/// The LVS interleaved WRR state: current index and current weight.
#[derive(Debug, Clone)]
struct LvsState {
    index: usize,
    current: u32,
    gcd: u32,
    max: u32,
}

impl LvsState {
    fn new(weights: &[u32]) -> Option<Self> {
        let max = weights.iter().copied().max().filter(|m| *m > 0)?;
        let gcd = weights.iter().copied().filter(|w| *w > 0).fold(0, gcd);
        Some(LvsState {
            index: weights.len() - 1,
            current: 0,
            gcd,
            max,
        })
    }

    fn step(&mut self, weights: &[u32]) -> usize {
        // Terminates: the largest weight is always >= `current` (which is in 1..=max).
        loop {
            self.index = (self.index + 1) % weights.len();
            if self.index == 0 {
                self.current = self.current.saturating_sub(self.gcd);
                if self.current == 0 {
                    self.current = self.max;
                }
            }
            if weights[self.index] >= self.current {
                return self.index;
            }
        }
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl<T> WeightedRoundRobin<T> {
    /// Builds a selector over `(item, weight)` pairs; weight 0 is never picked.
    ///
    /// `pool` names the pool in the error when no weight is above 0.
    pub fn new(
        pool: &str,
        entries: impl IntoIterator<Item = (T, u32)>,
    ) -> Result<Self, NoEligibleEntry> {
        let (items, weights): (Vec<T>, Vec<u32>) = entries.into_iter().unzip();
        let mut state = LvsState::new(&weights).ok_or_else(|| NoEligibleEntry {
            pool: pool.to_owned(),
        })?;
        let cycle: u64 = weights.iter().map(|w| u64::from(*w / state.gcd)).sum();
        let picker = if cycle <= MAX_SCHEDULE {
            let order = (0..cycle).map(|_| state.step(&weights) as u32).collect();
            Picker::Schedule {
                order,
                next: AtomicUsize::new(0),
            }
        } else {
            Picker::Stepping {
                weights,
                state: Mutex::new(state),
            }
        };
        Ok(WeightedRoundRobin { items, picker })
    }

    /// The next item in weighted round-robin order.
    pub fn pick(&self) -> &T {
        let index = match &self.picker {
            Picker::Schedule { order, next } => {
                order[next.fetch_add(1, Ordering::Relaxed) % order.len()] as usize
            }
            Picker::Stepping { weights, state } => {
                // A poisoned lock only means another picker panicked mid-step; the
                // state is two integers and always consistent, so keep going.
                let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
                state.step(weights)
            }
        };
        &self.items[index]
    }

    /// All items, in the order given (including weight 0 ones).
    pub fn items(&self) -> &[T] {
        &self.items
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleaves_rather_than_runs() {
        let wrr = WeightedRoundRobin::new("p", [('a', 5), ('b', 2), ('c', 3)]).unwrap();
        let first: String = (0..10).map(|_| *wrr.pick()).collect();
        // The LVS sequence for 5,2,3, worked by hand from the algorithm.
        assert_eq!(first, "aaacabcabc");
    }

    #[test]
    fn all_zero_is_an_error_naming_the_pool() {
        let err = WeightedRoundRobin::new("bulk", [("a", 0), ("b", 0)]).unwrap_err();
        assert!(err.to_string().contains("'bulk'"));
        assert!(WeightedRoundRobin::<&str>::new("empty", []).is_err());
    }

    #[test]
    fn long_cycles_step_under_a_lock_with_the_same_proportions() {
        let w = MAX_SCHEDULE as u32 + 7;
        let wrr = WeightedRoundRobin::new("p", [("a", w), ("b", 1), ("z", 0)]).unwrap();
        assert!(matches!(wrr.picker, Picker::Stepping { .. }));
        let mut b = 0;
        for _ in 0..2 * (u64::from(w) + 1) {
            match *wrr.pick() {
                "b" => b += 1,
                "z" => panic!("weight 0 picked"),
                _ => {}
            }
        }
        assert_eq!(b, 2);
    }
}
