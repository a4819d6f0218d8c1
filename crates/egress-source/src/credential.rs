//! `KeySource`: where a secret comes from, in KumoMTA's forms — a plain string is
//! a file to read it from, `{ key_data = '…' }` is the secret itself.
//!
//! A secret never leaves through `Debug` or `Serialize`: `egressd check` and
//! `egressd resolve` print the file's path or `(redacted)`, never the value.

use serde::de::{Deserializer, Error};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;

use crate::fields::Scalar;

/// A secret's source (KumoMTA's `KeySource`, the forms egressd provides).
///
/// ```
/// use egress_source::KeySource;
/// let inline: KeySource = serde_json::from_str(r#"{ "key_data": "s3cret" }"#).unwrap();
/// assert_eq!(inline.load().unwrap(), "s3cret");
/// assert!(!format!("{inline:?}").contains("s3cret"));
/// let file: KeySource = serde_json::from_str(r#""/etc/egressd/relay.pass""#).unwrap();
/// assert!(file.load().unwrap_err().contains("/etc/egressd/relay.pass"));
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum KeySource {
    /// Read from this file when needed (one trailing line break is not part of it).
    File(String),
    /// The secret itself.
    Data(String),
}

impl KeySource {
    /// The secret: the inline value, or the file's contents without a trailing
    /// line break (`echo secret > file` writes one). The error names the file and
    /// says how to give the value inline.
    pub fn load(&self) -> Result<String, String> {
        match self {
            KeySource::Data(data) => Ok(data.clone()),
            KeySource::File(path) => match std::fs::read_to_string(path) {
                Ok(text) => Ok(text
                    .strip_suffix('\n')
                    .map(|t| t.strip_suffix('\r').unwrap_or(t))
                    .unwrap_or(&text)
                    .to_owned()),
                Err(e) => Err(format!(
                    "reading {path:?}: {e} (a plain string is a file to read the secret from, \
                     as in KumoMTA; to give the secret itself write {{ key_data = '…' }})"
                )),
            },
        }
    }
}

impl KeySource {
    /// The secret as bytes, exactly as stored (a file is read whole: a DER key is
    /// binary). Errors as [`load`](Self::load)'s.
    pub fn load_bytes(&self) -> Result<Vec<u8>, String> {
        match self {
            KeySource::Data(data) => Ok(data.as_bytes().to_vec()),
            KeySource::File(path) => std::fs::read(path).map_err(|e| {
                format!(
                    "reading {path:?}: {e} (a plain string is a file to read the secret from, \
                     as in KumoMTA; to give the secret itself write {{ key_data = '…' }})"
                )
            }),
        }
    }
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::File(path) => f.debug_tuple("File").field(path).finish(),
            KeySource::Data(_) => f.write_str("Data(redacted)"),
        }
    }
}

impl Serialize for KeySource {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            KeySource::File(path) => s.serialize_str(path),
            KeySource::Data(_) => {
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry("key_data", "(redacted)")?;
                map.end()
            }
        }
    }
}

const EXPECTED: &str = "a key source: a file path string, or { key_data = '…' }";

impl<'de> Deserialize<'de> for KeySource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Path(String),
            Table(std::collections::BTreeMap<String, Scalar>),
        }
        let table = match Form::deserialize(d).map_err(|_| D::Error::custom(EXPECTED))? {
            Form::Path(path) if path.is_empty() => {
                return Err(D::Error::custom(format!("expected {EXPECTED}, got \"\"")))
            }
            Form::Path(path) => return Ok(KeySource::File(path)),
            Form::Table(table) => table,
        };
        if let Some(data) = table.get("key_data") {
            return match data {
                Scalar::Str(s) if table.len() == 1 => Ok(KeySource::Data(s.clone())),
                Scalar::Str(_) => Err(D::Error::custom(
                    "a { key_data = … } key source has no other keys",
                )),
                other => Err(other.expected("key_data as a string")),
            };
        }
        // KumoMTA's other forms fetch the secret from elsewhere; a policy can do
        // that itself and pass the value as key_data.
        let unprovided = ["vault_mount", "vault_path", "event_name"];
        if let Some(key) = unprovided.iter().find(|k| table.contains_key(**k)) {
            return Err(D::Error::custom(format!(
                "the key source with `{key}` (HashiCorp Vault or an event) is not provided by \
                 egressd; fetch the secret in the policy and pass {{ key_data = value }}, or \
                 name a file"
            )));
        }
        Err(D::Error::custom(format!("expected {EXPECTED}")))
    }
}
