//! `POST /api/admin/bounce/v1`: KumoMTA's administrative bounce, over the spool.
//!
//! Decided: what is bounced is what the spool holds now (KumoMTA also keeps the
//! directive for `duration`, bouncing new matching mail; egressd relays most mail
//! cut-through, where the client keeps it, so a lasting directive would only
//! refuse it — a suspension does that). `duration` and `expires` are accepted
//! and said to be unused; `campaign`, `routing_domain` and `queue_names` name
//! things egressd's spool does not keep and are refused.

use super::{parse_body, Admin, Answer};
use serde_json::json;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BounceRequest {
    #[serde(default)]
    domain: Option<String>,
    #[serde(default)]
    tenant: Option<String>,
    reason: String,
    #[serde(default)]
    duration: Option<String>,
    #[serde(default)]
    expires: Option<String>,
    #[serde(default)]
    suppress_logging: bool,
}

pub(crate) async fn bounce(admin: &Admin, body: &[u8]) -> Answer {
    let shape =
        r#"{"reason": "...", "domain": "example.com" (optional), "tenant": "..." (optional)}"#;
    let request: BounceRequest = match parse_body(body, shape) {
        Ok(r) => r,
        Err(answer) => return answer,
    };
    if request.reason.trim().is_empty() {
        return Answer::bad(
            "reason",
            "expected the reason to log, e.g. \"list cleaned\"",
        );
    }
    if request.suppress_logging {
        return Answer::bad(
            "suppress_logging",
            "egressd always records an AdminBounce per recipient; leave it out",
        );
    }
    if admin.relay.delivery().is_none() {
        return Answer::bad(
            "domain",
            "this egressd has no spool (kumo.define_spool): nothing is held to bounce",
        );
    }
    let bounced = admin
        .relay
        .bounce(
            request.domain.as_deref(),
            request.tenant.as_deref(),
            request.reason.trim(),
        )
        .await;
    let total: usize = bounced.values().sum();
    let mut answer = json!({ "bounced": bounced, "total_bounced": total });
    if request.duration.is_some() || request.expires.is_some() {
        answer["note"] = "duration/expires unused: egressd bounces what the spool holds now".into();
    }
    Answer::ok(answer)
}
