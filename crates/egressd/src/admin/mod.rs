//! The HTTP listener `kumo.start_http_listener` declares: metrics and the admin
//! API, under KumoMTA's paths where KumoMTA has the endpoint.
//!
//! The listener is egress-http's (HTTP/1.1 on hyper, TLS from egress-tls,
//! headers within ten seconds, a bounded number of clients; egress-proxy serves
//! on the same one). Every client outside `trusted_hosts` authenticates with HTTP
//! Basic, checked by the policy's `http_server_validate_auth_basic` event;
//! anything else gets 401. A body must arrive within [`BODY_TIMEOUT`] and
//! [`MAX_BODY`] octets.
//!
//! - `api.rs`: the routes and their JSON.
//! - `resolve.rs`: `resolve-egress-path`, what the relay would do for a domain
//!   (egress-relay's `Relay::resolve`, behind query parsing).
//! - `suspend.rs`: `suspend-ready-q`, operator suspensions.

mod api;
mod bounce;
mod resolve;
mod suspend;

use crate::metrics::Metrics;
use base64::Engine;
use egress_http::{Client, Handler};
use egress_lua::HttpListener;
use egress_relay::Relay;
use egress_source::KeySource;
use http_body_util::{BodyExt, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, StatusCode};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Longest a client may take to send a request's body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// Changes the tracing filter; returns the filter now in force.
pub type LogFilter = Arc<dyn Fn(&str) -> Result<String, String> + Send + Sync>;

/// What the API reads and acts on.
pub struct Admin {
    /// The relay: its shared state, listeners, spool and shutdown state.
    pub relay: Arc<Relay>,
    /// The Lua policy the relay asks (its caches, the HTTP Basic handler).
    pub policy: Arc<egress_lua::Policy>,
    /// What the relay reported.
    pub metrics: Arc<Metrics>,
    /// Live log filter changes (none when logging was set up elsewhere).
    pub log_filter: Option<LogFilter>,
    /// When this process started serving.
    pub started: SystemTime,
    /// The delivery-record loggers (none when the policy declares none).
    pub records: Option<Arc<crate::records::Records>>,
}

/// One HTTP listener, bound and ready to serve.
pub struct HttpServer {
    listener: egress_http::HttpListener,
}

impl HttpServer {
    /// Binds `config.listen` and prepares TLS when `use_tls`.
    pub async fn bind(config: HttpListener, hostname: &str) -> Result<HttpServer, String> {
        let tls = match config.use_tls {
            true => Some(egress_tls::acceptor(
                config.tls_certificate.clone().map(KeySource::File).as_ref(),
                config.tls_private_key.clone().map(KeySource::File).as_ref(),
                config.hostname.as_deref().unwrap_or(hostname),
                "kumo.start_http_listener",
            )?),
            false => None,
        };
        let listener = egress_http::HttpListener::bind(
            config.listen,
            tls,
            config.trusted_hosts.clone(),
            "kumo.start_http_listener",
        )
        .await?;
        Ok(HttpServer { listener })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until the process ends (liveness says 503 while draining, so the
    /// API stays up for the drain).
    pub async fn serve(self, admin: Arc<Admin>) {
        self.listener.serve(Arc::new(AdminApi { admin })).await
    }
}

/// The admin API as egress-http's handler.
struct AdminApi {
    admin: Arc<Admin>,
}

impl Handler for AdminApi {
    fn handle(
        &self,
        req: Request<Incoming>,
        client: Client,
    ) -> egress_http::Boxed<'_, egress_http::Response> {
        Box::pin(handle(&self.admin, req, client))
    }
}

/// Parses a JSON body into `T`, or a 400 naming what is wrong.
pub(crate) fn parse_body<T: serde::de::DeserializeOwned>(
    body: &[u8],
    shape: &str,
) -> Result<T, Answer> {
    serde_json::from_slice(body).map_err(|e| {
        let field = e
            .to_string()
            .split('`')
            .nth(1)
            .map(str::to_owned)
            .unwrap_or_else(|| "body".into());
        Answer::bad(&field, format!("expected a JSON object {shape}: {e}"))
    })
}

/// A response: status, content type, body.
pub(crate) struct Answer {
    status: StatusCode,
    content_type: &'static str,
    body: String,
}

impl Answer {
    fn json(status: StatusCode, value: &serde_json::Value) -> Answer {
        Answer {
            status,
            content_type: "application/json",
            body: serde_json::to_string_pretty(value).unwrap_or_default() + "\n",
        }
    }

    /// 200 with a JSON document.
    pub(crate) fn ok(value: serde_json::Value) -> Answer {
        Answer::json(StatusCode::OK, &value)
    }

    /// An error with a JSON body naming the field (when one is at fault) and what
    /// was expected.
    pub(crate) fn error(
        status: StatusCode,
        field: Option<&str>,
        message: impl Into<String>,
    ) -> Answer {
        let mut body = serde_json::json!({ "error": message.into() });
        if let Some(field) = field {
            body["field"] = field.into();
        }
        Answer::json(status, &body)
    }

    /// 400 for a field.
    pub(crate) fn bad(field: &str, message: impl Into<String>) -> Answer {
        Answer::error(StatusCode::BAD_REQUEST, Some(field), message)
    }

    fn text(status: StatusCode, content_type: &'static str, body: String) -> Answer {
        Answer {
            status,
            content_type,
            body,
        }
    }
}

async fn handle(admin: &Admin, req: Request<Incoming>, client: Client) -> egress_http::Response {
    let peer = client.addr;
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let answer = match authorize(admin, &req, client).await {
        Err(answer) => answer,
        Ok(()) => {
            let query = req.uri().query().unwrap_or("").to_owned();
            let accept = req
                .headers()
                .get(hyper::header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            match read_body(req).await {
                Ok(body) => {
                    api::route(
                        admin,
                        api::Call {
                            method: &method,
                            path: &path,
                            query: &query,
                            accept: &accept,
                            body: &body,
                        },
                    )
                    .await
                }
                Err(answer) => answer,
            }
        }
    };
    if answer.status.is_client_error() || answer.status.is_server_error() {
        tracing::info!(client = %peer, %method, path, status = answer.status.as_u16(), "HTTP request refused");
    } else {
        tracing::debug!(client = %peer, %method, path, status = answer.status.as_u16(), "HTTP request");
    }
    let mut response = egress_http::text(answer.status, answer.content_type, answer.body);
    if answer.status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Basic realm=\"egressd\""),
        );
    }
    response
}

/// Trusted by address, else by HTTP Basic through the policy.
async fn authorize(admin: &Admin, req: &Request<Incoming>, client: Client) -> Result<(), Answer> {
    if client.trusted {
        return Ok(());
    }
    let ip = client.addr.ip().to_canonical();
    let unauthorized = |why: &str| {
        Answer::error(
            StatusCode::UNAUTHORIZED,
            None,
            format!("{ip} is not in trusted_hosts: {why}"),
        )
    };
    let Some(header) = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return Err(unauthorized("send HTTP Basic credentials"));
    };
    let Some((user, password)) = basic_credentials(header) else {
        return Err(unauthorized(
            "the Authorization header is not HTTP Basic (base64 of user:password)",
        ));
    };
    match admin.policy.http_auth_basic(&user, &password).await {
        Ok(Some(true)) => Ok(()),
        Ok(Some(false)) => Err(unauthorized("the credentials were refused")),
        Ok(None) => Err(unauthorized(
            "the policy has no http_server_validate_auth_basic handler, so no credentials are accepted",
        )),
        Err(e) => Err(Answer::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            None,
            format!("checking credentials failed: {e}"),
        )),
    }
}

/// `Basic base64(user:password)` → (user, password); the password may be empty.
fn basic_credentials(header: &str) -> Option<(String, String)> {
    let (scheme, encoded) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':').unwrap_or((&text, ""));
    Some((user.to_owned(), password.to_owned()))
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, Answer> {
    let limited = Limited::new(req.into_body(), MAX_BODY);
    match tokio::time::timeout(BODY_TIMEOUT, limited.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) => Err(Answer::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            None,
            format!("cannot read the request body (at most {MAX_BODY} octets): {e}"),
        )),
        Err(_) => Err(Answer::error(
            StatusCode::REQUEST_TIMEOUT,
            None,
            format!("the request body did not arrive within {BODY_TIMEOUT:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::basic_credentials;

    #[test]
    fn basic_credentials_decode_with_and_without_a_password() {
        // "ops:tiger", "ops", "ops:"
        assert_eq!(
            basic_credentials("Basic b3BzOnRpZ2Vy"),
            Some(("ops".into(), "tiger".into()))
        );
        assert_eq!(
            basic_credentials("basic b3Bz"),
            Some(("ops".into(), "".into()))
        );
        assert_eq!(basic_credentials("Bearer abc"), None);
        assert_eq!(basic_credentials("Basic !!!"), None);
    }
}
