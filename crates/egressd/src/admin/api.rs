//! The routes: `/metrics`, `/metrics.json`, liveness, status, and the admin
//! endpoints.

use super::{bounce, parse_body, resolve, suspend, Admin, Answer};
use crate::metrics::Snapshot;
use egress_relay::State;
use hyper::{Method, StatusCode};
use serde_json::{json, Value};

/// One request, as the routes see it.
pub(crate) struct Call<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub query: &'a str,
    pub accept: &'a str,
    pub body: &'a [u8],
}

use egress_http::{classic_text, OPENMETRICS, PROMETHEUS_TEXT};

pub(crate) async fn route(admin: &Admin, call: Call<'_>) -> Answer {
    let m = call.method;
    match call.path {
        "/metrics" if m == Method::GET => metrics(admin, call.accept).await,
        "/metrics.json" if m == Method::GET => metrics_json(admin).await,
        "/api/check-liveness/v1" if m == Method::GET => liveness(admin),
        "/api/admin/status/v1" if m == Method::GET => status(admin).await,
        "/api/admin/resolve-egress-path/v1" if m == Method::GET => {
            resolve::resolve(admin, call.query).await
        }
        "/api/admin/suspend-ready-q/v1" if m == Method::GET => suspend::list(admin).await,
        "/api/admin/spool/v1" if m == Method::GET => spool(admin),
        "/api/admin/tls-report/v1" if m == Method::GET => tls_report(admin),
        "/api/admin/suspend-ready-q/v1" if m == Method::POST => {
            suspend::create(admin, call.body).await
        }
        "/api/admin/suspend-ready-q/v1" if m == Method::DELETE => {
            suspend::cancel(admin, call.body).await
        }
        "/api/admin/set-diagnostic-log-filter/v1" if m == Method::POST => {
            log_filter(admin, call.body)
        }
        "/api/admin/bounce/v1" if m == Method::POST => bounce::bounce(admin, call.body).await,
        "/metrics"
        | "/metrics.json"
        | "/api/check-liveness/v1"
        | "/api/admin/status/v1"
        | "/api/admin/resolve-egress-path/v1"
        | "/api/admin/suspend-ready-q/v1"
        | "/api/admin/spool/v1"
        | "/api/admin/tls-report/v1"
        | "/api/admin/set-diagnostic-log-filter/v1"
        | "/api/admin/bounce/v1" => Answer::error(
            StatusCode::METHOD_NOT_ALLOWED,
            None,
            format!("{} does not take {m}", call.path),
        ),
        other => Answer::error(
            StatusCode::NOT_FOUND,
            None,
            format!("no endpoint {other}; see the README's operations section for the list"),
        ),
    }
}

async fn snapshot(admin: &Admin) -> Snapshot {
    let relay = admin.relay.admin();
    let suspended = relay
        .suspensions()
        .await
        .into_iter()
        .map(|s| (s.key.source().to_owned(), s.key.scope()))
        .collect();
    Snapshot {
        idle_sessions: relay.idle_destination_sessions(),
        cache: admin.policy.cache_stats(),
        throttle_fallbacks: relay.throttle_fallbacks(),
        suspended,
        health_suspended: relay.health_suspended(),
        spool: admin
            .relay
            .delivery()
            .map(|d| (d.len(), d.spool().used(), d.spool().fsyncs())),
        automation_in_force: {
            let found = relay.automation_in_force().await;
            (found.overrides.len(), found.blocks.len())
        },
        loggers: admin
            .records
            .as_ref()
            .map(|r| r.loggers())
            .unwrap_or_default(),
    }
}

async fn metrics(admin: &Admin, accept: &str) -> Answer {
    let text = admin.metrics.encode(snapshot(admin).await);
    // Prometheus asks for OpenMetrics; promtool, curl and older scrapers get the
    // classic text format.
    if accept.contains("application/openmetrics-text") {
        Answer::text(StatusCode::OK, OPENMETRICS, text)
    } else {
        Answer::text(StatusCode::OK, PROMETHEUS_TEXT, classic_text(&text))
    }
}

/// The same samples as JSON: `{name: {type, help, samples: [{labels, value}]}}`.
async fn metrics_json(admin: &Admin) -> Answer {
    let text = classic_text(&admin.metrics.encode(snapshot(admin).await));
    let mut families = serde_json::Map::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            families.insert(name.to_owned(), json!({ "help": help, "samples": [] }));
            current = Some(name.to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            if let Some(family) = families.get_mut(name) {
                family["type"] = kind.into();
            }
        } else if let (Some((name, labels, value)), Some(family)) = (
            parse_sample(line),
            current.as_ref().and_then(|c| families.get_mut(c)),
        ) {
            if let Some(samples) = family["samples"].as_array_mut() {
                samples.push(json!({ "name": name, "labels": labels, "value": value }));
            }
        }
    }
    Answer::ok(Value::Object(families))
}

/// `name{a="x",b="y"} 1.5` → (name, labels, value).
fn parse_sample(line: &str) -> Option<(String, serde_json::Map<String, Value>, f64)> {
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        v => v.parse().ok()?,
    };
    let mut labels = serde_json::Map::new();
    let name = match series.split_once('{') {
        None => series,
        Some((name, rest)) => {
            let mut rest = rest.strip_suffix('}')?;
            while !rest.is_empty() {
                let (key, after) = rest.split_once("=\"")?;
                // A value ends at the first quote not escaped by a backslash.
                let mut end = None;
                let mut escaped = false;
                for (i, c) in after.char_indices() {
                    match c {
                        '\\' if !escaped => escaped = true,
                        '"' if !escaped => {
                            end = Some(i);
                            break;
                        }
                        _ => escaped = false,
                    }
                }
                let end = end?;
                let raw = &after[..end];
                let value = raw
                    .replace("\\\"", "\"")
                    .replace("\\n", "\n")
                    .replace("\\\\", "\\");
                labels.insert(key.trim_start_matches(',').to_owned(), value.into());
                rest = after[end + 1..].trim_start_matches(',');
            }
            name
        }
    };
    Some((name.to_owned(), labels, value))
}

fn liveness(admin: &Admin) -> Answer {
    match admin.relay.state() {
        State::Running => Answer::text(StatusCode::OK, "text/plain; charset=utf-8", "OK\n".into()),
        _ => Answer::text(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain; charset=utf-8",
            "draining: no new SMTP sessions are accepted\n".into(),
        ),
    }
}

async fn status(admin: &Admin) -> Answer {
    let listeners: Vec<Value> = admin
        .relay
        .listeners()
        .iter()
        .map(|l| {
            let (active, accepted) = admin
                .metrics
                .listener_sessions(&l.config.listen.to_string());
            json!({
                "listen": l.config.listen.to_string(),
                "hostname": l.hostname,
                "sessions_active": active,
                "sessions_accepted": accepted,
                "max_connections": l.config.max_connections,
            })
        })
        .collect();
    let suspensions = suspend::entries(admin).await;
    let uptime = admin
        .started
        .elapsed()
        .map(|d| d.as_secs())
        .unwrap_or_default();
    Answer::ok(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "state": match admin.relay.state() {
            State::Running => "serving",
            State::Draining => "draining",
            State::Force => "closing",
        },
        "uptime_seconds": uptime,
        "listeners": listeners,
        "idle_destination_sessions": admin.relay.admin().idle_destination_sessions(),
        "sources": admin.metrics.source_counts(),
        "suspensions": suspensions,
        "throttle_store_fallbacks": admin.relay.admin().throttle_fallbacks(),
    }))
}

/// The spooled messages, oldest first, with each domain's next attempt.
/// What RFC 8460 reports would say of this relay's TLS sessions since it started,
/// in their JSON shape, from our own host name.
fn tls_report(admin: &Admin) -> Answer {
    Answer::ok(admin.relay.admin().tls_report(std::time::SystemTime::now()))
}

fn spool(admin: &Admin) -> Answer {
    let Some(delivery) = admin.relay.delivery() else {
        return Answer::ok(json!({ "defined": false, "messages": [] }));
    };
    let at = |secs: u64| {
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs),
        )
        .to_string()
    };
    let messages: Vec<Value> = delivery
        .list()
        .into_iter()
        .map(|env| {
            let domains: Vec<Value> = env
                .domains
                .iter()
                .map(|d| {
                    json!({
                        "domain": d.domain,
                        "recipients": d.recipients,
                        "attempts": d.attempts,
                        "next_attempt": (!d.is_done()).then(|| at(d.next_attempt)),
                        "last_error": d.last_error,
                    })
                })
                .collect();
            json!({
                "id": env.id,
                "sender": env.sender,
                "created": at(env.created),
                "domains": domains,
            })
        })
        .collect();
    let spool = delivery.spool();
    Answer::ok(json!({
        "defined": true,
        "path": spool.dir().display().to_string(),
        "used_bytes": spool.used(),
        "max_spool_bytes": spool.max_bytes(),
        "messages": messages,
    }))
}

fn log_filter(admin: &Admin, body: &[u8]) -> Answer {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Request {
        filter: String,
    }
    let request: Request = match parse_body(body, "{\"filter\": \"info,egress_relay=debug\"}") {
        Ok(r) => r,
        Err(answer) => return answer,
    };
    let Some(change) = &admin.log_filter else {
        return Answer::error(
            StatusCode::NOT_IMPLEMENTED,
            None,
            "this process's logging cannot be changed at run time",
        );
    };
    match change(&request.filter) {
        Ok(now) => {
            tracing::info!(filter = %now, "log filter changed");
            Answer::ok(json!({ "filter": now }))
        }
        Err(e) => Answer::bad(
            "filter",
            format!(
                "not a tracing filter ({e}); expected e.g. \"info\" or \"info,transaction=off,egress_relay=debug\""
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_sample;

    #[test]
    fn samples_parse_with_quoted_and_escaped_label_values() {
        let (name, labels, value) =
            parse_sample(r#"x_total{site="(a|b)?.mx.test",note="say \"hi\", ok"} 3"#).unwrap();
        assert_eq!(name, "x_total");
        assert_eq!(labels["site"], "(a|b)?.mx.test");
        assert_eq!(labels["note"], "say \"hi\", ok");
        assert_eq!(value, 3.0);
        let (_, labels, value) = parse_sample("up 1").unwrap();
        assert!(labels.is_empty());
        assert_eq!(value, 1.0);
        assert_eq!(
            parse_sample(r#"h_bucket{le="+Inf"} +Inf"#).unwrap().2,
            f64::INFINITY
        );
    }
}
