//! Traffic-shaping automation rules, as KumoMTA's shaping.toml writes them
//! (`[[DOMAIN.automation]]`, `[[provider."NAME".automation]]`): when a destination's
//! reply matches, act on the source that got it — suspend it at that site, and the
//! rest. Plain data; the relay matches replies and acts.
//!
//! ```
//! use egress_source::{AutomationAction, AutomationRule, AutomationTrigger};
//! let rule: AutomationRule = serde_json::from_str(r#"{
//!     "regex": "\\[TSS04\\]",
//!     "action": "Suspend",
//!     "duration": "2 hours"
//! }"#).unwrap();
//! assert_eq!(rule.action, [AutomationAction::Suspend]);
//! assert_eq!(rule.trigger, AutomationTrigger::Immediate);
//! assert!(rule.matches("421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred"));
//! ```

use crate::fields::duration;
use crate::keys::strict_table;
use crate::throttle::ThrottleSpec;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::time::Duration;

/// One rule: reply patterns, what to do, when, and for how long.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct AutomationRule {
    /// Patterns (KumoMTA's dialect, look-around included) tried against the reply
    /// as one line, `CODE ENHANCED text`; any one matching is a match.
    #[serde(with = "patterns")]
    pub regex: Vec<Pattern>,
    /// What to do (one action or a list).
    #[serde(with = "one_or_many")]
    pub action: Vec<AutomationAction>,
    /// When to act: at once (the default), or on the Nth match within a period.
    #[serde(default)]
    pub trigger: AutomationTrigger,
    /// How long what is done lasts.
    #[serde(with = "duration")]
    pub duration: Duration,
    /// Whether replies egressd made itself (no eligible source, a policy error)
    /// may match; default false, so a suspension cannot feed itself.
    #[serde(default)]
    pub match_internal: bool,
    /// Where the rule was written (`FILE: [provider."yahoo"].automation[1]`), for
    /// log lines and suspension reasons; filled in by policy-extras.shaping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// The provider block the rule belongs to: its `Suspend` covers all of the
    /// provider's sites. Filled in by policy-extras.shaping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
}

strict_table!(
    AutomationRule,
    "automation rule",
    [
        "regex",
        "action",
        "trigger",
        "duration",
        "match_internal",
        "origin",
        "provider"
    ]
);

/// A compiled reply pattern (it compares and prints as its source text).
#[derive(Debug, Clone)]
pub struct Pattern {
    source: String,
    compiled: fancy_regex::Regex,
}

impl Pattern {
    /// Compiles `source`, or says what is wrong with it.
    pub fn new(source: &str) -> Result<Pattern, String> {
        fancy_regex::Regex::new(source)
            .map(|compiled| Pattern {
                source: source.to_owned(),
                compiled,
            })
            .map_err(|e| format!("not a valid regex {source:?}: {e}"))
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether it matches `line` (a pattern too costly to finish matching counts
    /// as no match).
    pub fn is_match(&self, line: &str) -> bool {
        self.compiled.is_match(line).unwrap_or(false)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Pattern) -> bool {
        self.source == other.source
    }
}

impl Eq for Pattern {}

/// What a rule does when it fires (KumoMTA's names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AutomationAction {
    /// The source is not chosen at that site for the duration.
    Suspend,
    /// A path key is overridden for (source, site) for the duration.
    SetConfig(ConfigOverride),
    /// A path key is overridden for (source, domain) for the duration.
    SetDomainConfig(ConfigOverride),
    /// Mail of that tenant to that domain is deferred at RCPT.
    SuspendTenant,
    /// Mail of that campaign to that domain is deferred at RCPT.
    SuspendCampaign,
    /// Mail to that domain is refused at RCPT.
    Bounce,
    /// Mail of that tenant to that domain is refused at RCPT.
    BounceTenant,
    /// Mail of that campaign to that domain is refused at RCPT.
    BounceCampaign,
}

impl AutomationAction {
    /// KumoMTA's name for it.
    pub fn name(&self) -> &'static str {
        match self {
            AutomationAction::Suspend => "Suspend",
            AutomationAction::SetConfig(_) => "SetConfig",
            AutomationAction::SetDomainConfig(_) => "SetDomainConfig",
            AutomationAction::SuspendTenant => "SuspendTenant",
            AutomationAction::SuspendCampaign => "SuspendCampaign",
            AutomationAction::Bounce => "Bounce",
            AutomationAction::BounceTenant => "BounceTenant",
            AutomationAction::BounceCampaign => "BounceCampaign",
        }
    }
}

/// `{ name = "max_message_rate", value = "10/minute" }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigOverride {
    /// The path key.
    pub name: String,
    /// Its value while the override lasts (any form the key takes).
    pub value: ConfigValue,
}

/// A path key's value as written: a string, a number or a boolean.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ConfigValue {
    /// `true` / `false`.
    Bool(bool),
    /// A whole number.
    Integer(i64),
    /// Anything written as a string (`"10/minute"`, `"5 mins"`).
    Text(String),
}

/// When a rule acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum AutomationTrigger {
    /// On every match.
    #[default]
    Immediate,
    /// On the Nth match within the period (`{ Threshold = "3/hr" }`).
    Threshold(ThrottleSpec),
}

impl AutomationRule {
    /// Whether any of the rule's patterns matches `reply` (one line).
    pub fn matches(&self, reply: &str) -> bool {
        self.regex.iter().any(|p| p.is_match(reply))
    }

    /// Where the rule was written, or its first pattern.
    pub fn label(&self) -> String {
        match &self.origin {
            Some(origin) => origin.clone(),
            None => format!(
                "automation rule /{}/",
                self.regex.first().map(Pattern::as_str).unwrap_or_default()
            ),
        }
    }
}

/// A string or a list of strings, each compiled.
mod patterns {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Pattern>, D::Error> {
        let texts: Vec<String> = super::one_or_many::deserialize(d)?;
        if texts.is_empty() {
            return Err(D::Error::custom(
                "regex: expected a pattern or a list of patterns, got an empty list",
            ));
        }
        texts
            .iter()
            .map(|t| Pattern::new(t).map_err(|e| D::Error::custom(format!("regex: {e}"))))
            .collect()
    }

    pub fn serialize<S: Serializer>(value: &[Pattern], s: S) -> Result<S::Ok, S::Error> {
        let texts: Vec<&str> = value.iter().map(Pattern::as_str).collect();
        texts.serialize(s)
    }
}

/// One value or a list of them (KumoMTA accepts both for `regex` and `action`).
/// A visitor rather than an untagged enum, so the inner error (an unknown action,
/// say) reaches the user instead of "did not match any variant".
mod one_or_many {
    use super::*;
    use serde::de::value::{MapAccessDeserializer, StrDeserializer};
    use serde::de::{MapAccess, SeqAccess, Visitor};
    use std::marker::PhantomData;

    struct OneOrMany<T>(PhantomData<T>);

    impl<'de, T: Deserialize<'de>> Visitor<'de> for OneOrMany<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("one value or a list of them")
        }

        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Vec<T>, E> {
            T::deserialize(StrDeserializer::new(v)).map(|t| vec![t])
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::new();
            while let Some(item) = seq.next_element()? {
                out.push(item);
            }
            Ok(out)
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Vec<T>, A::Error> {
            T::deserialize(MapAccessDeserializer::new(map)).map(|t| vec![t])
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> Result<Vec<T>, D::Error> {
        d.deserialize_any(OneOrMany(PhantomData))
    }

    pub fn serialize<S: Serializer, T: Serialize>(value: &[T], s: S) -> Result<S::Ok, S::Error> {
        value.serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(json: &str) -> Result<AutomationRule, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn kumomta_forms_parse_lists_look_around_and_thresholds() {
        let r = rule(
            r#"{ "regex": ["^(?!.*KumoMTA internal).*RL000010", "TSS04"],
                 "action": ["Suspend", {"SetConfig": {"name": "max_message_rate", "value": "10/minute"}}],
                 "trigger": {"Threshold": "3/hr"}, "duration": "90 mins" }"#,
        )
        .unwrap();
        assert_eq!(r.action.len(), 2);
        assert_eq!(r.action[1].name(), "SetConfig");
        assert!(matches!(r.trigger, AutomationTrigger::Threshold(t) if t.limit == 3));
        assert_eq!(r.duration, Duration::from_secs(5400));
        assert!(r.matches("451 4.7.1 RL000010 slow down"));
        assert!(
            !r.matches("451 4.7.1 KumoMTA internal: RL000010"),
            "look-ahead"
        );
        assert!(r.matches("421 4.7.0 [TSS04] deferred"));
        assert!(!r.match_internal);
        // Round trip (check and resolve print rules as they were written).
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(rule(&json).unwrap(), r);
    }

    #[test]
    fn mistakes_are_named() {
        let bad_regex = rule(r#"{ "regex": "(unclosed", "action": "Suspend", "duration": "1h" }"#);
        assert!(bad_regex.unwrap_err().contains("regex: not a valid regex"));
        let no_duration = rule(r#"{ "regex": "x", "action": "Suspend" }"#);
        assert!(no_duration.unwrap_err().contains("duration"));
        let typo = rule(r#"{ "regex": "x", "action": "Suspend", "duraton": "1h" }"#);
        assert!(typo.unwrap_err().contains("duration"), "nearest key");
        let action = rule(r#"{ "regex": "x", "action": "Suspnd", "duration": "1h" }"#);
        assert!(action.unwrap_err().contains("Suspend"), "variants listed");
    }
}
