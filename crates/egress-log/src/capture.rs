//! What a logger copies from the message into a record: the headers and meta
//! values it names (KumoMTA's rules: a trailing `*` matches a prefix; header
//! names without case, keyed as the message spells them, a repeated header as
//! an array; meta names with case, null values left out).

use egress_record::selected;
use serde_json::{Map, Value};

/// The headers of `head` (the message's header section) that `patterns` select.
pub fn headers(head: &[u8], patterns: &[String]) -> Map<String, Value> {
    let mut out: Map<String, Value> = Map::new();
    if patterns.is_empty() {
        return out;
    }
    for (name, value) in fields(head) {
        if !selected(patterns, &name, false) {
            continue;
        }
        // Keyed by the first spelling seen, as KumoMTA does.
        let key = out
            .keys()
            .find(|k| k.eq_ignore_ascii_case(&name))
            .cloned()
            .unwrap_or(name);
        match out.get_mut(&key) {
            None => {
                out.insert(key, Value::String(value));
            }
            Some(Value::Array(values)) => values.push(Value::String(value)),
            Some(first) => {
                let first = first.take();
                out.insert(key, Value::Array(vec![first, Value::String(value)]));
            }
        }
    }
    out
}

/// The meta values `patterns` select.
pub fn meta(all: &Map<String, Value>, patterns: &[String]) -> Map<String, Value> {
    all.iter()
        .filter(|(k, v)| !v.is_null() && selected(patterns, k, true))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Each header field as (name, unfolded value), up to the blank line.
fn fields(head: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(head);
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.split("\r\n").flat_map(|l| l.split('\n')) {
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            // A continuation line: folded whitespace becomes one space.
            if let Some((_, value)) = out.last_mut() {
                value.push(' ');
                value.push_str(line.trim_start());
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            out.push((name.trim_end().to_owned(), value.trim_start().to_owned()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &[u8] = b"Received: from x\r\nSubject: Hello\r\n  folded\r\nX-Campaign: c1\r\nx-tag: a\r\nX-Tag: b\r\nFrom: a@b\r\n\r\nX-Body: no\r\n";

    #[test]
    fn selected_headers_unfolded_repeats_as_arrays() {
        let pats = vec!["Subject".to_string(), "X-*".to_string()];
        let h = headers(HEAD, &pats);
        assert_eq!(h["Subject"], "Hello folded");
        assert_eq!(h["X-Campaign"], "c1");
        assert_eq!(h["x-tag"], serde_json::json!(["a", "b"]));
        assert!(h.get("From").is_none() && h.get("X-Body").is_none());
    }

    #[test]
    fn meta_by_name_and_prefix() {
        let all: Map<String, Value> =
            serde_json::from_str(r#"{"received_from":"127.0.0.1:5","x_a":1,"x_b":null,"X_c":2}"#)
                .unwrap();
        let m = meta(&all, &["received_from".into(), "x_*".into()]);
        assert_eq!(m.len(), 2);
        assert_eq!(m["x_a"], 1);
    }
}
