//! Rate specifications as KumoMTA writes them: `"10/s"`, `"50/min"`, `"1,000/hr"`,
//! `"1_000/h"`, `"10_000/d"`, `"100/day,max_burst=1"`.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// At most `limit` events per `period`, with bursts of up to `max_burst` (default:
/// `limit`, i.e. the whole period's allowance at once).
///
/// ```
/// use egress_source::ThrottleSpec;
/// let spec: ThrottleSpec = "1,000/hr".parse().unwrap();
/// assert_eq!((spec.limit, spec.period.as_secs()), (1000, 3600));
/// assert_eq!(spec.to_string(), "1000/h");
/// let bursty: ThrottleSpec = "100/day,max_burst=1".parse().unwrap();
/// assert_eq!(bursty.burst(), 1);
/// assert!("ten/s".parse::<ThrottleSpec>().unwrap_err().contains("\"ten/s\""));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ThrottleSpec {
    /// Events allowed per period.
    pub limit: u64,
    /// The period.
    pub period: Duration,
    /// Largest burst, when smaller than `limit`.
    pub max_burst: Option<u64>,
}

impl ThrottleSpec {
    /// Events that may happen at once.
    pub fn burst(&self) -> u64 {
        self.max_burst.unwrap_or(self.limit).max(1)
    }

    /// Time between events at the sustained rate.
    pub fn interval(&self) -> Duration {
        self.period / (self.limit.max(1).min(u64::from(u32::MAX)) as u32)
    }
}

const EXAMPLE: &str =
    "a rate such as \"10/s\", \"1,000/hr\", \"50/min\" or \"100/day,max_burst=1\"";

impl FromStr for ThrottleSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("{text:?} is not a rate ({why}); expected {EXAMPLE}");
        // Commas before the '/' are thousands separators; after it they start options.
        let (count, rest) = text
            .split_once('/')
            .ok_or_else(|| bad("no '/' between count and period"))?;
        let (unit, options) = match rest.split_once(',') {
            Some((unit, options)) => (unit, Some(options)),
            None => (rest, None),
        };
        let digits: String = count
            .trim()
            .chars()
            .filter(|c| *c != ',' && *c != '_')
            .collect();
        let limit: u64 = digits
            .parse()
            .map_err(|_| bad("the count must be a whole number"))?;
        if limit == 0 {
            return Err(bad("the count must be above 0"));
        }
        let period = match unit.trim().to_ascii_lowercase().as_str() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hr" | "hour" => Duration::from_secs(3600),
            "d" | "day" => Duration::from_secs(86400),
            // A period with a count, as suspension thresholds write it: "2/1m".
            other => match crate::fields::parse_duration(other) {
                Ok(d) if !d.is_zero() => d,
                _ => {
                    return Err(bad(
                        "the period must be s, min, h, day or a duration such as 5m",
                    ))
                }
            },
        };
        let mut max_burst = None;
        if let Some(options) = options {
            for option in options.split(',') {
                match option.trim().split_once('=') {
                    Some(("max_burst", n)) => {
                        let n: u64 = n
                            .trim()
                            .replace(['_', ','], "")
                            .parse()
                            .map_err(|_| bad("max_burst must be a whole number"))?;
                        max_burst = Some(n.max(1));
                    }
                    _ => return Err(bad(&format!("unknown option {:?}", option.trim()))),
                }
            }
        }
        Ok(ThrottleSpec {
            limit,
            period,
            max_burst,
        })
    }
}

impl fmt::Display for ThrottleSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.period.as_secs() {
            1 if self.period.subsec_nanos() == 0 => write!(f, "{}/s", self.limit)?,
            60 => write!(f, "{}/min", self.limit)?,
            3600 => write!(f, "{}/h", self.limit)?,
            86400 => write!(f, "{}/day", self.limit)?,
            _ => write!(
                f,
                "{}/{}",
                self.limit,
                humantime::format_duration(self.period)
            )?,
        }
        if let Some(b) = self.max_burst {
            write!(f, ",max_burst={b}")?;
        }
        Ok(())
    }
}

impl Serialize for ThrottleSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ThrottleSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// `connection_limit` as KumoMTA writes it: `10`, `'1,000'`, `'1_000'`, and
/// `'local:20'` for "this node only, even when Redis is configured".
///
/// ```
/// use egress_source::ConnectionLimit;
/// let l: ConnectionLimit = "local:1_000".parse().unwrap();
/// assert_eq!((l.limit, l.local), (1000, true));
/// assert!("lots".parse::<ConnectionLimit>().unwrap_err().contains("\"lots\""));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnectionLimit {
    /// Connections at once.
    pub limit: u64,
    /// Counted on this node only.
    pub local: bool,
}

impl FromStr for ConnectionLimit {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let (local, count) = match text.trim().strip_prefix("local:") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let digits: String = count
            .trim()
            .chars()
            .filter(|c| *c != ',' && *c != '_')
            .collect();
        match digits.parse::<u64>() {
            Ok(limit) if limit > 0 => Ok(ConnectionLimit { limit, local }),
            _ => Err(format!(
                "{text:?} is not a connection limit; expected a whole number above 0 such as 10, \"1,000\" or \"local:20\""
            )),
        }
    }
}

impl fmt::Display for ConnectionLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.local {
            write!(f, "local:{}", self.limit)
        } else {
            write!(f, "{}", self.limit)
        }
    }
}

impl Serialize for ConnectionLimit {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.local {
            s.collect_str(self)
        } else {
            s.serialize_u64(self.limit)
        }
    }
}

impl<'de> Deserialize<'de> for ConnectionLimit {
    /// A number, or a string as [`FromStr`] reads it.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match crate::fields::Scalar::deserialize(d)? {
            crate::fields::Scalar::Int(n) if n > 0 && n <= i128::from(u64::MAX) => {
                Ok(ConnectionLimit {
                    limit: n as u64,
                    local: false,
                })
            }
            crate::fields::Scalar::Str(s) => s.parse().map_err(D::Error::custom),
            other => Err(other.expected("a connection limit: a whole number above 0, or a string such as \"1,000\" or \"local:20\"")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kumomta_forms() {
        for (text, limit, secs, burst) in [
            ("10/s", 10, 1, None),
            ("50/min", 50, 60, None),
            ("1,000/hr", 1000, 3600, None),
            ("1_000/h", 1000, 3600, None),
            ("10_000/d", 10_000, 86400, None),
            ("100/day,max_burst=1", 100, 86400, Some(1)),
            ("1,000/hr,max_burst=5", 1000, 3600, Some(5)),
        ] {
            let spec: ThrottleSpec = text.parse().unwrap();
            assert_eq!(
                (spec.limit, spec.period.as_secs(), spec.max_burst),
                (limit, secs, burst),
                "{text}"
            );
            assert_eq!(spec.to_string().parse::<ThrottleSpec>().unwrap(), spec);
        }
        for (text, limit, local) in [
            ("10", 10, false),
            ("1,000", 1000, false),
            ("local:20", 20, true),
        ] {
            let l: ConnectionLimit = text.parse().unwrap();
            assert_eq!((l.limit, l.local), (limit, local));
        }
        let t: ThrottleSpec = "2/1m".parse().unwrap();
        assert_eq!((t.limit, t.period.as_secs()), (2, 60));
        let odd: ThrottleSpec = "3/90s".parse().unwrap();
        assert_eq!(odd.to_string().parse::<ThrottleSpec>().unwrap(), odd);
        for bad in ["", "10", "0/s", "10/fortnight", "x/s", "10/s,burst=2"] {
            let e = bad.parse::<ThrottleSpec>().unwrap_err();
            assert!(e.contains(&format!("{bad:?}")) && e.contains("10/s"), "{e}");
        }
    }
}
