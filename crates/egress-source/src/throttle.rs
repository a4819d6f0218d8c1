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
            _ => return Err(bad("the period must be s, min, h or day")),
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
        let unit = match self.period.as_secs() {
            1 => "s",
            60 => "min",
            3600 => "h",
            _ => "day",
        };
        write!(f, "{}/{unit}", self.limit)?;
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
        for bad in ["", "10", "0/s", "10/fortnight", "x/s", "10/s,burst=2"] {
            let e = bad.parse::<ThrottleSpec>().unwrap_err();
            assert!(e.contains(&format!("{bad:?}")) && e.contains("10/s"), "{e}");
        }
    }
}
