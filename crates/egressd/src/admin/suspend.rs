//! `/api/admin/suspend-ready-q/v1`: operator suspensions, in KumoMTA's shapes.
//!
//! A name is KumoMTA's ready-queue form, `SOURCE->SITE@smtp_client` (one source at
//! one site), or just `SOURCE` (the source everywhere). A suspension lives in the
//! same store as health suspensions (egress-throttle; Redis when configured, so
//! every node honours it), and selection skips it exactly the same way.
//!
//! Decided: a suspension's id is its key (`SOURCE` or `SOURCE->SITE`), not a random
//! UUID. Ids stay opaque to scripts that round-trip them, an operator can type one
//! (`egressd resume ip-2`), and every node agrees on it without storing more.
//! Suspending the same name again replaces the earlier suspension.

use super::{parse_body, Admin, Answer};
use egress_relay::outbound::shaping::ready_queue;
use hyper::StatusCode;
use serde_json::{json, Value};
use std::time::{Duration, SystemTime};

/// The protocol suffix of KumoMTA's ready-queue names.
const SMTP_CLIENT: &str = "@smtp_client";

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SuspendRequest {
    name: String,
    reason: String,
    #[serde(default)]
    duration: Option<String>,
    #[serde(default)]
    expires: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelRequest {
    id: String,
}

/// `SOURCE->SITE@smtp_client` or `SOURCE` → (source, site).
fn parse_name(name: &str) -> Result<(String, Option<String>), String> {
    let name = name.trim();
    let (queue, protocol) = match name.rsplit_once('@') {
        // Site names never contain '@'; anything after it is a protocol.
        Some((queue, protocol)) if !protocol.contains("->") => (queue, Some(protocol)),
        _ => (name, None),
    };
    if let Some(protocol) = protocol {
        if format!("@{protocol}") != SMTP_CLIENT {
            return Err(format!(
                "{name:?}: egressd has only the smtp_client protocol; expected SOURCE->SITE@smtp_client or SOURCE"
            ));
        }
    }
    match queue.split_once("->") {
        Some((source, site)) if !source.is_empty() && !site.is_empty() => {
            Ok((source.to_owned(), Some(site.to_owned())))
        }
        Some(_) => Err(format!(
            "{name:?}: expected SOURCE->SITE@smtp_client (both parts non-empty) or SOURCE"
        )),
        None if !queue.is_empty() && !queue.contains(char::is_whitespace) => {
            Ok((queue.to_owned(), None))
        }
        None => Err(format!(
            "{name:?}: expected SOURCE->SITE@smtp_client or SOURCE"
        )),
    }
}

/// The KumoMTA name for a stored key.
fn display_name(key: &str) -> String {
    match key.contains("->") {
        true => format!("{key}{SMTP_CLIENT}"),
        false => key.to_owned(),
    }
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

/// Every suspension in force, as the list endpoint shows them.
pub(crate) async fn entries(admin: &Admin) -> Vec<Value> {
    let mut list = admin.relay.context().shaper.throttles.suspensions().await;
    list.sort_by(|a, b| a.key.cmp(&b.key));
    let now = SystemTime::now();
    list.into_iter()
        .map(|s| {
            let left = s.until.duration_since(now).unwrap_or_default();
            json!({
                "id": s.key,
                "name": display_name(&s.key),
                "reason": s.reason,
                "duration": humantime::format_duration(Duration::from_secs(left.as_secs())).to_string(),
                "expires": rfc3339(s.until),
            })
        })
        .collect()
}

pub(crate) async fn list(admin: &Admin) -> Answer {
    Answer::ok(Value::Array(entries(admin).await))
}

pub(crate) async fn create(admin: &Admin, body: &[u8]) -> Answer {
    let shape = r#"{"name": "SOURCE->SITE@smtp_client" or "SOURCE", "reason": "...", "duration": "1h"} (or "expires": RFC 3339)"#;
    let request: SuspendRequest = match parse_body(body, shape) {
        Ok(r) => r,
        Err(answer) => return answer,
    };
    let (source, site) = match parse_name(&request.name) {
        Ok(parsed) => parsed,
        Err(e) => return Answer::bad("name", e),
    };
    if request.reason.trim().is_empty() {
        return Answer::bad(
            "reason",
            "expected a reason, e.g. \"blocked at example.net, ticket 123\"",
        );
    }
    let duration = match (&request.duration, &request.expires) {
        (Some(text), None) => match egress_source::parse_duration(text) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => return Answer::bad("duration", "expected a duration above zero, e.g. \"1h\""),
            Err(e) => {
                return Answer::bad(
                    "duration",
                    format!("{e}; expected e.g. \"30m\", \"1h\", \"2 days\""),
                )
            }
        },
        (None, Some(text)) => match humantime::parse_rfc3339_weak(text) {
            Ok(at) => match at.duration_since(SystemTime::now()) {
                Ok(d) if !d.is_zero() => d,
                _ => {
                    return Answer::bad(
                        "expires",
                        format!("{text:?} has passed; expected a time in the future"),
                    )
                }
            },
            Err(e) => {
                return Answer::bad(
                    "expires",
                    format!("{text:?}: {e}; expected RFC 3339, e.g. \"2026-12-01T12:00:00Z\""),
                )
            }
        },
        (Some(_), Some(_)) => {
            return Answer::bad("duration", "give `duration` or `expires`, not both")
        }
        (None, None) => {
            return Answer::bad(
                "duration",
                "expected `duration` (e.g. \"1h\") or `expires` (RFC 3339)",
            )
        }
    };
    // A typo must not look like a suspension that worked.
    if let Err(e) = admin.relay.context().policy.egress_source(&source).await {
        return Answer::bad("name", format!("no egress source {source:?}: {e}"));
    }
    let key = match &site {
        Some(site) => ready_queue(&source, site),
        None => source.clone(),
    };
    let throttles = &admin.relay.context().shaper.throttles;
    throttles
        .suspend(&key, request.reason.trim(), duration)
        .await;
    tracing::warn!(
        source = %source,
        site = site.as_deref().unwrap_or("all"),
        duration = %humantime::format_duration(duration),
        reason = %request.reason,
        "egress source suspended by an operator"
    );
    Answer::ok(json!({ "id": key }))
}

pub(crate) async fn cancel(admin: &Admin, body: &[u8]) -> Answer {
    let request: CancelRequest = match parse_body(body, r#"{"id": "..."}"#) {
        Ok(r) => r,
        Err(answer) => return answer,
    };
    let throttles = &admin.relay.context().shaper.throttles;
    let known = throttles
        .suspensions()
        .await
        .into_iter()
        .any(|s| s.key == request.id);
    if !known {
        return Answer::error(
            StatusCode::NOT_FOUND,
            Some("id"),
            format!(
                "no suspension with id {:?} is in force; GET /api/admin/suspend-ready-q/v1 lists them",
                request.id
            ),
        );
    }
    throttles.resume(&request.id).await;
    tracing::warn!(id = %request.id, "suspension cancelled by an operator");
    Answer::ok(json!({ "id": request.id, "cancelled": true }))
}

#[cfg(test)]
mod tests {
    use super::parse_name;

    #[test]
    fn names_take_kumomtas_ready_queue_form_or_a_bare_source() {
        assert_eq!(
            parse_name("ip-1->(alt1|alt2)?.gmail-smtp-in.l.google.com@smtp_client").unwrap(),
            (
                "ip-1".into(),
                Some("(alt1|alt2)?.gmail-smtp-in.l.google.com".into())
            )
        );
        assert_eq!(
            parse_name("ip-1->mx.example.com").unwrap(),
            ("ip-1".into(), Some("mx.example.com".into()))
        );
        assert_eq!(parse_name("ip-2").unwrap(), ("ip-2".into(), None));
        assert!(parse_name("ip-1->mx@lmtp")
            .unwrap_err()
            .contains("smtp_client"));
        assert!(parse_name("->mx").is_err());
        assert!(parse_name("").is_err());
    }
}
