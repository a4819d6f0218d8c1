//! What `kumo.configure_local_logs` and `kumo.configure_log_hook` declare, with
//! KumoMTA's keys and defaults (unknown keys are refused, naming the nearest).

use crate::RecordType;
use egress_source::serde_optional_duration;
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// `kumo.configure_local_logs { … }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalLogParams {
    /// Where segments are written (required).
    pub log_dir: PathBuf,
    /// Uncompressed octets per segment before it is finished; default ~1 GB.
    #[serde(default = "default_max_file_size")]
    pub max_file_size: u64,
    /// Records waiting to be written before a submitter waits; default 128,000.
    #[serde(default = "default_back_pressure")]
    pub back_pressure: usize,
    /// zstd level, 1–21; 0 is zstd's default (3).
    #[serde(default)]
    pub compression_level: i32,
    /// A segment is finished after this long; default unlimited.
    #[serde(default, with = "serde_optional_duration")]
    pub max_segment_duration: Option<Duration>,
    /// Meta names to log (a trailing `*` matches a prefix; case matters).
    #[serde(default)]
    pub meta: Vec<String>,
    /// Header names to log (a trailing `*` matches a prefix; case does not matter).
    #[serde(default)]
    pub headers: Vec<String>,
    /// Per record type (`Any`: every type not named).
    #[serde(default, deserialize_with = "per_record")]
    pub per_record: BTreeMap<RecordType, PerRecord>,
    /// An event that decides, per message, whether this log takes its records.
    #[serde(default)]
    pub filter_event: Option<String>,
    /// Mail is refused while the log's file system has less free space.
    #[serde(default = "ten_percent")]
    pub min_free_space: MinFree,
    /// Mail is refused while the log's file system has fewer free inodes.
    #[serde(default = "ten_percent")]
    pub min_free_inodes: MinFree,
}

impl LocalLogParams {
    /// The settings for records of `kind`: its own, else `Any`'s.
    pub fn per_record(&self, kind: RecordType) -> Option<&PerRecord> {
        per_record_of(&self.per_record, kind)
    }
}

fn per_record_of(table: &BTreeMap<RecordType, PerRecord>, kind: RecordType) -> Option<&PerRecord> {
    table.get(&kind).or_else(|| table.get(&RecordType::Any))
}

/// `per_record = { Delivery = { … } }`: KumoMTA's `LogRecordParams`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerRecord {
    /// Appended to the segment's name (`20230306-022811_recv`).
    #[serde(default)]
    pub suffix: Option<String>,
    /// Another directory for this type.
    #[serde(default)]
    pub log_dir: Option<PathBuf>,
    /// Default true; false drops records of this type.
    #[serde(default = "yes")]
    pub enable: bool,
    /// A MiniJinja template written instead of the JSON (the record's fields and
    /// `log_record` in scope).
    #[serde(default)]
    pub template: Option<String>,
    /// Written at the start of each new segment (a CSV header line).
    #[serde(default)]
    pub segment_header: String,
}

/// `kumo.configure_log_hook { … }`, and how egressd delivers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogHookParams {
    /// The hook's name (required): `should_enqueue_log_record`'s `hook_name`.
    pub name: String,
    /// Records waiting to be backlogged before a submitter waits; default 128,000.
    #[serde(default = "default_back_pressure")]
    pub back_pressure: usize,
    /// Meta names to include, as for local logs.
    #[serde(default)]
    pub meta: Vec<String>,
    /// Header names to include, as for local logs.
    #[serde(default)]
    pub headers: Vec<String>,
    /// Per record type: `enable` and `template` apply (no files).
    #[serde(default, deserialize_with = "per_record")]
    pub per_record: BTreeMap<RecordType, PerRecord>,
    /// KumoMTA: do not spool the record's message at once. Accepted; egressd's
    /// backlog is always written as the record is taken.
    #[serde(default)]
    pub deferred_spool: bool,
    /// Where the records go: set by `policy-extras.log_hooks:new_json`.
    #[serde(default)]
    pub webhook: Option<Webhook>,
}

impl LogHookParams {
    /// The settings for records of `kind`: its own, else `Any`'s.
    pub fn per_record(&self, kind: RecordType) -> Option<&PerRecord> {
        per_record_of(&self.per_record, kind)
    }
}

/// A JSON webhook (`log_hooks:new_json`): records POSTed as one JSON object, or
/// an array when batched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// `http://host:port/path`.
    pub url: String,
    /// Records per POST at most; default 1 (one object, not an array).
    #[serde(default = "one")]
    pub batch_size: usize,
    /// Wait for this many records before a POST (up to `max_batch_latency`).
    #[serde(default)]
    pub min_batch_size: Option<usize>,
    /// The longest a record waits for a batch to fill; default 1 s.
    #[serde(default, with = "serde_optional_duration")]
    pub max_batch_latency: Option<Duration>,
    /// First wait after a failed POST (doubling); default 1 m.
    #[serde(default = "one_minute", with = "egress_source::serde_duration")]
    pub retry_interval: Duration,
    /// The longest wait between attempts; default 20 m.
    #[serde(default = "twenty_minutes", with = "egress_source::serde_duration")]
    pub max_retry_interval: Duration,
    /// Each POST's deadline; default 30 s.
    #[serde(default = "thirty_seconds", with = "egress_source::serde_duration")]
    pub timeout: Duration,
}

/// `min_free_space` / `min_free_inodes`: `"10%"` or an absolute number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MinFree {
    /// Percent of the file system.
    Percent(u8),
    /// Bytes or inodes.
    Absolute(u64),
}

impl MinFree {
    /// Whether `available` of `total` is enough.
    pub fn satisfied(self, available: u64, total: u64) -> bool {
        match self {
            MinFree::Percent(p) => {
                total == 0 || (available as u128) * 100 >= (total as u128) * u128::from(p)
            }
            MinFree::Absolute(n) => available >= n,
        }
    }
}

impl std::fmt::Display for MinFree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MinFree::Percent(p) => write!(f, "{p}%"),
            MinFree::Absolute(n) => write!(f, "{n}"),
        }
    }
}

impl Serialize for MinFree {
    /// As written in a policy: `"10%"`, or the number.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            MinFree::Percent(_) => s.serialize_str(&self.to_string()),
            MinFree::Absolute(n) => s.serialize_u64(*n),
        }
    }
}

impl<'de> Deserialize<'de> for MinFree {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<MinFree, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(MinFree::Absolute(n)),
            Raw::Text(t) => {
                let pct = t
                    .trim()
                    .strip_suffix('%')
                    .and_then(|p| p.trim().parse::<u8>().ok());
                match pct {
                    Some(p) if p <= 100 => Ok(MinFree::Percent(p)),
                    _ => t.trim().parse().map(MinFree::Absolute).map_err(|_| {
                        de::Error::custom(format!(
                            "expected a percentage like \"10%\" or a number, got {t:?}"
                        ))
                    }),
                }
            }
        }
    }
}

fn per_record<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<RecordType, PerRecord>, D::Error> {
    let raw = BTreeMap::<String, PerRecord>::deserialize(d)?;
    raw.into_iter()
        .map(|(name, params)| match RecordType::from_name(&name) {
            Some(kind) => Ok((kind, params)),
            None => {
                let names: Vec<&str> = RecordType::ALL.iter().map(|t| t.name()).collect();
                let hint = egress_source::nearest(&name, &names)
                    .map(|n| format!(" (did you mean {n:?}?)"))
                    .unwrap_or_default();
                Err(de::Error::custom(format!(
                    "per_record: unknown record type {name:?}{hint}; expected one of {}",
                    names.join(", ")
                )))
            }
        })
        .collect()
}

fn default_max_file_size() -> u64 {
    1_000_000_000
}
fn default_back_pressure() -> usize {
    128_000
}
fn ten_percent() -> MinFree {
    MinFree::Percent(10)
}
fn yes() -> bool {
    true
}
fn one() -> usize {
    1
}
fn one_minute() -> Duration {
    Duration::from_secs(60)
}
fn twenty_minutes() -> Duration {
    Duration::from_secs(1200)
}
fn thirty_seconds() -> Duration {
    Duration::from_secs(30)
}

/// Whether `name` is selected by `patterns` (a trailing `*` matches a prefix).
/// Header names compare without case (`case_sensitive` false), meta names with.
pub fn selected(patterns: &[String], name: &str, case_sensitive: bool) -> bool {
    patterns.iter().any(|p| {
        let (stem, prefix) = match p.strip_suffix('*') {
            Some(stem) => (stem, true),
            None => (p.as_str(), false),
        };
        let head = if prefix {
            name.get(..stem.len())
        } else {
            Some(name)
        };
        match head {
            Some(head) if prefix || head.len() == stem.len() => {
                if case_sensitive {
                    head == stem
                } else {
                    head.eq_ignore_ascii_case(stem)
                }
            }
            _ => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kumomta_defaults_and_names() {
        let p: LocalLogParams = serde_json::from_value(serde_json::json!({
            "log_dir": "/var/log/kumo-logs",
            "max_segment_duration": "5 minutes",
            "headers": ["Subject", "X-*"],
            "per_record": {
                "Reception": { "suffix": "_recv" },
                "TransientFailure": { "enable": false },
                "Any": { "enable": false }
            }
        }))
        .unwrap();
        assert_eq!(p.max_file_size, 1_000_000_000);
        assert_eq!(p.back_pressure, 128_000);
        assert_eq!(p.max_segment_duration, Some(Duration::from_secs(300)));
        assert_eq!(p.min_free_space, MinFree::Percent(10));
        assert_eq!(
            p.per_record(RecordType::Reception)
                .unwrap()
                .suffix
                .as_deref(),
            Some("_recv")
        );
        assert!(
            !p.per_record(RecordType::Bounce).unwrap().enable,
            "Any applies"
        );
    }

    #[test]
    fn an_unknown_record_type_is_named_with_the_nearest() {
        let err = serde_json::from_value::<LocalLogParams>(serde_json::json!({
            "log_dir": "/x", "per_record": { "Delivered": {} }
        }))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("\"Delivered\"") && err.contains("Delivery"),
            "{err}"
        );
    }

    #[test]
    fn wildcards_match_prefixes_headers_without_case() {
        let pats = vec!["Subject".to_string(), "X-*".to_string()];
        assert!(selected(&pats, "subject", false));
        assert!(selected(&pats, "x-campaign", false));
        assert!(!selected(&pats, "Subjects", false));
        assert!(!selected(&pats, "x-campaign", true));
        assert!(!selected(&pats, "From", false));
    }

    #[test]
    fn min_free_reads_percent_or_number() {
        let v: MinFree = serde_json::from_value(serde_json::json!("5%")).unwrap();
        assert_eq!(v, MinFree::Percent(5));
        assert!(v.satisfied(6, 100) && !v.satisfied(4, 100));
        let n: MinFree = serde_json::from_value(serde_json::json!(1000)).unwrap();
        assert!(n.satisfied(1000, 5000) && !n.satisfied(999, 5000));
        assert!(serde_json::from_value::<MinFree>(serde_json::json!("lots")).is_err());
    }
}
