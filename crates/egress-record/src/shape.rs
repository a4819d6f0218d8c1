//! The shape of KumoMTA's log record, to check a record against: a record
//! written here from KumoMTA's reference (`docs/reference/log_record.md`), every
//! field with a value of its kind. egress's own tests check every record egressd
//! writes with [`conforms`]; a consumer's tests can do the same.

use serde_json::Value;

/// KumoMTA's log record, as its reference page shows one (values are ours).
pub const REFERENCE: &str = include_str!("kumomta_reference.json");

/// Fields KumoMTA writes as null when they do not apply.
const NULLABLE: &[&str] = &[
    "peer_address",
    "egress_pool",
    "egress_source",
    "source_address",
    "feedback_report",
    "delivery_protocol",
    "reception_protocol",
    "response.enhanced_code",
    "response.command",
];

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn at(path: &str, ours: &Value, reference: &Value) -> Result<(), String> {
    match (ours, reference) {
        (Value::Null, _) if NULLABLE.contains(&path) => Ok(()),
        // `recipient` is one string, or an array of them for several.
        (Value::Array(items), Value::String(_)) if path == "recipient" => items
            .iter()
            .all(Value::is_string)
            .then_some(())
            .ok_or(format!("{path}: {ours}")),
        (Value::Object(o), Value::Object(r)) if path != "meta" && path != "headers" => {
            for (k, v) in o {
                let at = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                let Some(want) = r.get(k) else {
                    return Err(format!("{at}: not a field of KumoMTA's log record"));
                };
                self::at(&at, v, want)?;
            }
            Ok(())
        }
        _ if kind(ours) == kind(reference) => Ok(()),
        _ => Err(format!(
            "{path}: KumoMTA writes {}, we wrote {} ({ours})",
            kind(reference),
            kind(ours)
        )),
    }
}

/// Whether `record` (a record as JSON) has only KumoMTA's fields, each with
/// KumoMTA's shape (`meta` and `headers` are free maps; fields KumoMTA writes
/// as null may be null); the first difference otherwise.
pub fn conforms(record: &Value) -> Result<(), String> {
    let reference: Value = serde_json::from_str(REFERENCE).map_err(|e| e.to_string())?;
    at("", record, &reference)
}
