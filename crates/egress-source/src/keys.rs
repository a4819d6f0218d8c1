//! Strict tables: unknown keys are errors that suggest the nearest valid key.
//!
//! serde's `deny_unknown_fields` stops at "unknown field `x`, expected one of …";
//! an operator who typed `sorce_address` deserves "did you mean `source_address`?".
//! We get that for any self-describing format (JSON, Lua tables through mlua) by
//! reading each key ourselves before handing it to the derived field visitor.
//! Value errors are prefixed with the key they belong to, so nested errors read
//! as a path: `entries: weight: expected …`.

use serde::de::value::{MapAccessDeserializer, StrDeserializer};
use serde::de::{DeserializeSeed, Deserializer, Error, IntoDeserializer, MapAccess, Visitor};
use std::fmt;
use std::marker::PhantomData;

/// A type whose table form has a fixed set of keys.
pub(crate) trait StrictTable: Sized {
    /// What the table describes, for messages ("egress source").
    const WHAT: &'static str;
    /// Every key the table accepts.
    const FIELDS: &'static [&'static str];
    /// Keys accepted for compatibility that have no effect, with why; their
    /// values are skipped (the policy layer says so once, see
    /// [`INERT_PATH_KEYS`](crate::INERT_PATH_KEYS)).
    const INERT: &'static [(&'static str, &'static str)] = &[];
    /// The derived (field-by-field) deserializer.
    fn deserialize_fields<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error>;
}

/// Deserialize `T` from a map, rejecting unknown keys with a suggestion.
pub(crate) fn deserialize_strict<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: StrictTable,
{
    d.deserialize_map(StrictVisitor(PhantomData))
}

struct StrictVisitor<T>(PhantomData<T>);

impl<'de, T: StrictTable> Visitor<'de> for StrictVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a table describing {} {}", article(T::WHAT), T::WHAT)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::deserialize_fields(MapAccessDeserializer::new(StrictMap::<A, T> {
            inner: map,
            current: None,
            marker: PhantomData,
        }))
    }
}

struct StrictMap<A, T> {
    inner: A,
    current: Option<String>,
    marker: PhantomData<T>,
}

impl<'de, A: MapAccess<'de>, T: StrictTable> MapAccess<'de> for StrictMap<A, T> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        // A positional value (`{ 'ip-1' }` in Lua) has an integer key: say what shape
        // the table should have rather than "expected a string".
        let key = self.inner.next_key::<String>().map_err(|_| {
            A::Error::custom(format_args!(
                "{} {} is a table of named fields such as {{ {} = ... }}, not a list of values",
                article(T::WHAT),
                T::WHAT,
                T::FIELDS[0]
            ))
        })?;
        let Some(mut key) = key else {
            return Ok(None);
        };
        while T::INERT.iter().any(|(inert, _)| *inert == key) {
            self.inner.next_value::<serde::de::IgnoredAny>()?;
            match self.inner.next_key::<String>()? {
                Some(next) => key = next,
                None => return Ok(None),
            }
        }
        if !T::FIELDS.contains(&key.as_str()) {
            let mut known: Vec<&str> = T::FIELDS.to_vec();
            known.extend(T::INERT.iter().map(|(k, _)| *k));
            return Err(A::Error::custom(unknown_key_message(T::WHAT, &key, &known)));
        }
        let deserializer: StrDeserializer<'_, A::Error> = key.as_str().into_deserializer();
        let value = seed.deserialize(deserializer)?;
        self.current = Some(key);
        Ok(Some(value))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        let key = self.current.take().unwrap_or_default();
        self.inner
            .next_value_seed(seed)
            .map_err(|e| A::Error::custom(format_args!("{key}: {e}")))
    }
}

/// "a" or "an", for messages that name a kind of table.
fn article(what: &str) -> &'static str {
    match what.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => "an",
        _ => "a",
    }
}

/// The message for an unknown key, with the nearest valid key when one is close.
pub(crate) fn unknown_key_message(what: &str, key: &str, fields: &[&str]) -> String {
    match nearest(key, fields) {
        Some(near) => format!("unknown key `{key}` in {what}; did you mean `{near}`?"),
        None => format!(
            "unknown key `{key}` in {what}; valid keys are: {}",
            fields.join(", ")
        ),
    }
}

/// The candidate closest to `key` by edit distance, if it is close enough to be
/// a plausible typo (at most a third of the key's length, and at least 1).
///
/// ```
/// assert_eq!(egress_source::nearest("sorce_address", &["source_address", "ttl"]), Some("source_address"));
/// assert_eq!(egress_source::nearest("colour", &["source_address", "ttl"]), None);
/// ```
pub fn nearest<'a>(key: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let limit = (key.chars().count() / 3).max(1);
    candidates
        .iter()
        .map(|c| (edit_distance(key, c), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance; the inputs are short key names, so the O(n·m) table is fine.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Makes a type a strict table: its derived field-by-field code is generated as
/// inherent functions (`#[serde(remote = "Self")]` on the type), and this wires them
/// to `Serialize`, to [`StrictTable`] with the given name and keys, and to a
/// `Deserialize` that refuses unknown keys with a suggestion.
macro_rules! strict_table {
    ($ty:ty, $what:literal, [$($field:literal),* $(,)?]) => {
        $crate::keys::strict_table!($ty, $what, [$($field),*], inert = &[]);
    };
    ($ty:ty, $what:literal, [$($field:literal),* $(,)?], inert = $inert:expr) => {
        impl $crate::keys::StrictTable for $ty {
            const WHAT: &'static str = $what;
            const FIELDS: &'static [&'static str] = &[$($field),*];
            const INERT: &'static [(&'static str, &'static str)] = $inert;
            fn deserialize_fields<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                Self::deserialize(d)
            }
        }
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                $crate::keys::deserialize_strict(d)
            }
        }
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                Self::serialize(self, s)
            }
        }
    };
}
pub(crate) use strict_table;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_nearest_key() {
        let fields = ["source_address", "ehlo_domain", "name"];
        assert_eq!(nearest("sorce_address", &fields), Some("source_address"));
        assert_eq!(nearest("ehlo_domian", &fields), Some("ehlo_domain"));
        assert_eq!(nearest("completely_else", &fields), None);
    }

    #[test]
    fn distance_is_levenshtein() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }
}
