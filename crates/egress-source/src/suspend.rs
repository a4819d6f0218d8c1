//! Health rules: when failures take a source out of selection, and for how long
//! (KumoMTA's `suspend_when_unplumbed` / `suspend_when_proxy_unhealthy`).

use crate::fields::duration;
use crate::keys::strict_table;
use crate::throttle::ThrottleSpec;
use serde::de::Error;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::time::Duration;

/// `{ trigger = 'Immediate' | { Threshold = "N/period" }, duration = '5m' }`.
///
/// ```
/// use egress_source::{SuspensionRule, Trigger};
/// let rule: SuspensionRule = serde_json::from_str(
///     r#"{ "trigger": { "Threshold": "2/1m" }, "duration": "5m" }"#).unwrap();
/// assert!(matches!(rule.trigger, Trigger::Threshold(t) if t.limit == 2 && t.period.as_secs() == 60));
/// assert_eq!(rule.duration.as_secs(), 300);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct SuspensionRule {
    /// When a failure suspends the source.
    pub trigger: Trigger,
    /// How long the suspension lasts (required).
    #[serde(with = "duration")]
    pub duration: Duration,
}

strict_table!(SuspensionRule, "suspension rule", ["trigger", "duration"]);

/// What fires a [`SuspensionRule`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Trigger {
    /// The first failure.
    Immediate,
    /// N failures within the period (`"2/1m"`, `"5/hr"`).
    Threshold(ThrottleSpec),
}

impl Serialize for Trigger {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            Trigger::Immediate => s.serialize_str("Immediate"),
            Trigger::Threshold(spec) => {
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry("Threshold", spec)?;
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Trigger {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Word(String),
            Table(std::collections::BTreeMap<String, String>),
        }
        const EXPECTED: &str =
            "trigger: expected 'Immediate' or { Threshold = \"N/period\" } such as { Threshold = \"2/1m\" }";
        match Form::deserialize(d).map_err(|_| D::Error::custom(EXPECTED))? {
            Form::Word(w) if w == "Immediate" => Ok(Trigger::Immediate),
            Form::Table(t) if t.len() == 1 && t.contains_key("Threshold") => t["Threshold"]
                .parse()
                .map(Trigger::Threshold)
                .map_err(|e: String| D::Error::custom(format!("trigger: Threshold: {e}"))),
            _ => Err(D::Error::custom(EXPECTED)),
        }
    }
}
