//! `EgressPool`: a weighted set of sources.

use crate::error::{check_name, ValidationError};
use crate::fields::{duration, Scalar};
use crate::keys::strict_table;
use crate::source::default_ttl;
use crate::wrr::{NoEligibleEntry, WeightedRoundRobin};
use serde::de::Deserializer;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::time::Duration;

/// A weighted set of egress sources, as `kumo.make_egress_pool` builds it.
///
/// ```
/// use egress_source::EgressPool;
/// let pool: EgressPool = serde_json::from_str(r#"{ "name": "bulk",
///     "entries": [ { "name": "ip-1", "weight": 2 }, { "name": "ip-2" } ] }"#).unwrap();
/// pool.validate().unwrap();
/// assert_eq!(pool.entries[1].weight, 1);
/// let pick = pool.selector().unwrap();
/// let picks: Vec<&str> = (0..3).map(|_| pick.pick().as_str()).collect();
/// assert_eq!(picks.iter().filter(|n| **n == "ip-1").count(), 2);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct EgressPool {
    /// The pool's name.
    pub name: String,
    /// The sources and their weights.
    #[serde(default)]
    pub entries: Vec<EgressPoolEntry>,
    /// How long the definition is cached; default 60 s.
    #[serde(default = "default_ttl", with = "duration")]
    pub ttl: Duration,
}

strict_table!(EgressPool, "egress pool", ["name", "entries", "ttl"]);

/// One source in a pool. Weight 0 keeps the entry listed but never picks it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct EgressPoolEntry {
    /// The source's name, resolved through `get_egress_source`.
    pub name: String,
    /// Relative share of picks; default 1.
    #[serde(default = "default_weight", deserialize_with = "weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

fn weight<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    match Scalar::deserialize(d)? {
        Scalar::Int(n) if (0..=i128::from(u32::MAX)).contains(&n) => Ok(n as u32),
        other => {
            Err(other.expected("a whole number 0 or more (0 takes the entry out of rotation)"))
        }
    }
}

strict_table!(EgressPoolEntry, "egress pool entry", ["name", "weight"]);

impl EgressPool {
    /// A pool of `entries` (source name, weight), validated — for a policy
    /// written in Rust.
    ///
    /// ```
    /// let pool = egress_source::EgressPool::of("main", [("ip-1", 3), ("ip-2", 1)]).unwrap();
    /// assert_eq!(pool.entries[0].weight, 3);
    /// assert!(egress_source::EgressPool::of("main", [("ip-1", 1), ("ip-1", 2)]).is_err());
    /// ```
    pub fn of<N: Into<String>>(
        name: impl Into<String>,
        entries: impl IntoIterator<Item = (N, u32)>,
    ) -> Result<EgressPool, ValidationError> {
        let pool = EgressPool {
            name: name.into(),
            entries: entries
                .into_iter()
                .map(|(name, weight)| EgressPoolEntry {
                    name: name.into(),
                    weight,
                })
                .collect(),
            ttl: default_ttl(),
        };
        pool.validate()?;
        Ok(pool)
    }

    /// The built-in pool `unspecified`: one source `unspecified` (kernel-chosen address).
    pub fn unspecified() -> Self {
        EgressPool {
            name: "unspecified".into(),
            entries: vec![EgressPoolEntry {
                name: "unspecified".into(),
                weight: 1,
            }],
            ttl: default_ttl(),
        }
    }

    /// Checks the pool: a name, and entries with distinct non-empty names.
    /// A pool whose weights are all 0 is valid (drained); [`selector`](Self::selector) says so.
    pub fn validate(&self) -> Result<(), ValidationError> {
        check_name("egress pool", &self.name)?;
        let mut seen = HashSet::new();
        for entry in &self.entries {
            if entry.name.is_empty() {
                return Err(ValidationError::EmptyPoolEntry {
                    pool: self.name.clone(),
                });
            }
            if !seen.insert(entry.name.as_str()) {
                return Err(ValidationError::DuplicatePoolEntry {
                    pool: self.name.clone(),
                    entry: entry.name.clone(),
                });
            }
        }
        Ok(())
    }

    /// A weighted round-robin selector over the entries' source names.
    pub fn selector(&self) -> Result<WeightedRoundRobin<String>, NoEligibleEntry> {
        WeightedRoundRobin::new(
            &self.name,
            self.entries.iter().map(|e| (e.name.clone(), e.weight)),
        )
    }
}
