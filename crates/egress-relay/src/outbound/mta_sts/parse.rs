//! MTA-STS's two texts (RFC 8461): the `_mta-sts` TXT record and the policy
//! file, and the MX pattern match. Pure; no I/O.

use std::time::Duration;

/// A policy's mode (RFC 8461 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Deliver only to matching MX hosts, over TLS with a valid certificate.
    Enforce,
    /// Deliver as usual; report what enforce would have refused.
    Testing,
    /// No policy.
    None,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        })
    }
}

/// A parsed policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Its mode.
    pub mode: Mode,
    /// MX patterns (`mx.example.com`, `*.example.net`).
    pub mx: Vec<String>,
    /// How long it may be cached.
    pub max_age: Duration,
}

/// The longest `max_age` the RFC allows (a year).
const MAX_AGE_LIMIT: u64 = 31_557_600;

/// The policy file (`key: value` lines, CRLF or LF).
pub fn parse_policy(text: &str) -> Result<Policy, String> {
    let (mut version, mut mode, mut max_age) = (None, None, None);
    let mut mx = Vec::new();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            return Err(format!("policy line {line:?} is not `key: value`"));
        };
        let value = value.trim();
        match key.trim() {
            "version" => version = Some(value.to_owned()),
            "mode" => {
                mode = Some(match value {
                    "enforce" => Mode::Enforce,
                    "testing" => Mode::Testing,
                    "none" => Mode::None,
                    other => {
                        return Err(format!("mode {other:?}: expected enforce, testing or none"))
                    }
                })
            }
            "max_age" => {
                let secs: u64 = value
                    .parse()
                    .map_err(|_| format!("max_age {value:?}: expected a number of seconds"))?;
                max_age = Some(Duration::from_secs(secs.min(MAX_AGE_LIMIT)));
            }
            "mx" => mx.push(value.trim_end_matches('.').to_ascii_lowercase()),
            // RFC 8461 §3.2: unknown fields are ignored.
            _ => {}
        }
    }
    if version.as_deref() != Some("STSv1") {
        return Err(format!(
            "version {:?}: expected STSv1",
            version.unwrap_or_default()
        ));
    }
    let mode = mode.ok_or("no mode")?;
    let max_age = max_age.ok_or("no max_age")?;
    if mx.is_empty() && mode != Mode::None {
        return Err(format!("mode {mode} with no mx"));
    }
    Ok(Policy { mode, mx, max_age })
}

/// The policy id from a `_mta-sts` TXT record (`v=STSv1; id=20240101T0000;`), or
/// None when it is not an STSv1 record.
pub fn txt_id(txt: &str) -> Option<String> {
    let mut fields = txt.split(';').map(str::trim).filter(|f| !f.is_empty());
    if fields.next()? != "v=STSv1" {
        return None;
    }
    fields
        .find_map(|f| f.strip_prefix("id="))
        .filter(|id| {
            !id.is_empty() && id.len() <= 32 && id.chars().all(|c| c.is_ascii_alphanumeric())
        })
        .map(str::to_owned)
}

/// Whether MX host `host` matches `pattern` (RFC 8461 §4.1: a leading `*.`
/// matches exactly one label).
pub fn mx_matches(pattern: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => host == pattern,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_policy_parsing() {
        let p = parse_policy("version: STSv1\r\nmode: enforce\r\nmx: mx1.example.com\r\nmx: *.example.net\r\nmax_age: 86400\r\n").unwrap();
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.mx.len(), 2);
        assert!(parse_policy("version: STSv1\nmode: enforce\nmax_age: 60\n")
            .unwrap_err()
            .contains("mx"));
    }

    #[test]
    fn documented_txt_ids() {
        assert_eq!(txt_id("v=STSv1; id=20240101;").as_deref(), Some("20240101"));
        assert_eq!(txt_id("v=spf1 -all"), None);
    }

    #[test]
    fn documented_mx_patterns() {
        assert!(mx_matches("*.example.net", "mx1.example.net"));
        assert!(!mx_matches("*.example.net", "a.b.example.net"));
        assert!(!mx_matches("*.example.net", "example.net"));
        assert!(mx_matches("MX.example.com", "mx.example.com."));
    }

    #[test]
    fn policies_that_are_not_stsv1_or_miss_a_field_are_refused() {
        assert!(parse_policy("version: STSv2\nmode: none\nmax_age: 1\n").is_err());
        assert!(parse_policy("version: STSv1\nmx: a\nmax_age: 1\n")
            .unwrap_err()
            .contains("mode"));
        assert!(parse_policy("version: STSv1\nmode: enforce\nmx: a\n")
            .unwrap_err()
            .contains("max_age"));
        assert!(parse_policy("version: STSv1\nmode: sometimes\nmx: a\nmax_age: 1\n").is_err());
        let none = parse_policy("version: STSv1\nmode: none\nmax_age: 99999999999\n").unwrap();
        assert_eq!(none.max_age, Duration::from_secs(MAX_AGE_LIMIT));
        let extra =
            parse_policy("version: STSv1\nmode: testing\nmx: a\nmax_age: 5\nfuture: x\n").unwrap();
        assert_eq!(extra.mode, Mode::Testing);
    }

    #[test]
    fn txt_ids_are_alphanumeric() {
        assert_eq!(txt_id("v=STSv1;id=abc123").as_deref(), Some("abc123"));
        assert_eq!(txt_id("v=STSv1; id=a-b"), None);
        assert_eq!(txt_id("id=1; v=STSv1"), None);
    }
}
