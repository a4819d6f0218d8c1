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
use egress_relay::SuspensionKey;
use hyper::StatusCode;
use serde_json::{json, Value};
use std::time::{Duration, SystemTime};

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

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

/// Every suspension in force, as the list endpoint shows them.
pub(crate) async fn entries(admin: &Admin) -> Vec<Value> {
    let now = SystemTime::now();
    admin
        .relay
        .admin()
        .suspensions()
        .await
        .into_iter()
        .map(|s| {
            let left = s.until.duration_since(now).unwrap_or_default();
            json!({
                "id": s.key.id(),
                "name": s.key.to_string(),
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
    let key: SuspensionKey = match request.name.parse() {
        Ok(key) => key,
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
    let source = key.source();
    if let Err(e) = admin.policy.egress_source(source).await {
        return Answer::bad("name", format!("no egress source {source:?}: {e}"));
    }
    admin
        .relay
        .admin()
        .suspend(&key, request.reason.trim(), duration)
        .await;
    Answer::ok(json!({ "id": key.id() }))
}

pub(crate) async fn cancel(admin: &Admin, body: &[u8]) -> Answer {
    let request: CancelRequest = match parse_body(body, r#"{"id": "..."}"#) {
        Ok(r) => r,
        Err(answer) => return answer,
    };
    if !admin.relay.admin().resume(&request.id).await {
        return Answer::error(
            StatusCode::NOT_FOUND,
            Some("id"),
            format!(
                "no suspension with id {:?} is in force; GET /api/admin/suspend-ready-q/v1 lists them",
                request.id
            ),
        );
    }
    Answer::ok(json!({ "id": request.id, "cancelled": true }))
}
