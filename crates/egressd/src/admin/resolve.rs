//! `GET /api/admin/resolve-egress-path/v1?domain=D[&source=S]`: what the relay
//! would do for a message to `D` (egress-relay's `Relay::resolve`: the same
//! policy calls, DNS, precedence and shaping keys as a transaction, without
//! connecting or counting anything). This module only reads the query.

use super::{Admin, Answer};
use egress_relay::ResolveError;
use hyper::StatusCode;
use std::collections::HashMap;

const KNOWN: &[&str] = &["domain", "source"];

pub(crate) async fn resolve(admin: &Admin, query: &str) -> Answer {
    let params: HashMap<String, String> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    if let Some(unknown) = params.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Answer::bad(
            unknown,
            format!("unknown parameter {unknown:?}; expected domain=DOMAIN and optionally source=SOURCE"),
        );
    }
    let Some(domain) = params.get("domain").filter(|d| !d.trim().is_empty()) else {
        return Answer::bad("domain", "expected domain=DOMAIN, e.g. ?domain=example.com");
    };
    let source = params.get("source").map(String::as_str);
    match admin.relay.resolve(domain, source).await {
        Ok(value) => Answer::ok(value),
        Err(ResolveError::Asked { field, message }) => Answer::bad(field, message),
        Err(ResolveError::Failed(message)) => Answer::error(StatusCode::BAD_GATEWAY, None, message),
    }
}
