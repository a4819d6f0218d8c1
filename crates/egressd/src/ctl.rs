//! The client side of the admin API: `egressd status`, `suspend`, `resume`,
//! `suspensions`, `resolve` talk to a running egressd over HTTP (hyper's client,
//! HTTP/1.1, plain `http://` endpoints).

use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::time::Duration;
use tokio::net::TcpStream;

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an answer may take (resolve does DNS and policy calls).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// Where a running egressd's HTTP listener is, and how to authenticate.
pub struct Api {
    authority: String,
    credentials: Option<String>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the credentials.
        f.debug_struct("Api")
            .field("authority", &self.authority)
            .field("credentials", &self.credentials.as_ref().map(|_| "(set)"))
            .finish()
    }
}

impl Api {
    /// `endpoint` is `http://HOST:PORT` (a trailing `/` is fine); `credentials` is
    /// `USER:PASSWORD` for HTTP Basic (needed outside `trusted_hosts`).
    pub fn new(endpoint: &str, credentials: Option<&str>) -> Result<Api, String> {
        let rest = endpoint.strip_prefix("http://").ok_or_else(|| {
            format!("--endpoint {endpoint:?}: expected http://HOST:PORT, e.g. http://127.0.0.1:8000 (https is not supported by the CLI; reach a TLS listener through a local trusted one)")
        })?;
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            return Err(format!(
                "--endpoint {endpoint:?}: expected http://HOST:PORT with no path"
            ));
        }
        let authority = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        Ok(Api {
            authority,
            credentials: credentials.map(|c| base64::engine::general_purpose::STANDARD.encode(c)),
        })
    }

    /// One request; the status and the body (JSON when it parses, else text).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), String> {
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.authority)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Err(format!(
                    "cannot reach egressd at http://{}: {e} (is it running, and does its policy call kumo.start_http_listener?)",
                    self.authority
                ))
            }
            Err(_) => return Err(format!("no connection to http://{} within {CONNECT_TIMEOUT:?}", self.authority)),
        };
        let exchange = async {
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| e.to_string())?;
            tokio::spawn(connection);
            let mut request = Request::builder()
                .method(method)
                .uri(path)
                .header(hyper::header::HOST, &self.authority)
                .header(hyper::header::ACCEPT, "application/json");
            if let Some(credentials) = &self.credentials {
                request =
                    request.header(hyper::header::AUTHORIZATION, format!("Basic {credentials}"));
            }
            let payload = match body {
                Some(value) => {
                    request = request.header(hyper::header::CONTENT_TYPE, "application/json");
                    Bytes::from(value.to_string())
                }
                None => Bytes::new(),
            };
            let request = request
                .body(Full::new(payload))
                .map_err(|e| e.to_string())?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            let value = serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
            Ok::<_, String>((status, value))
        };
        match tokio::time::timeout(ANSWER_TIMEOUT, exchange).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(format!("http://{}{path}: {e}", self.authority)),
            Err(_) => Err(format!(
                "http://{}{path}: no answer within {ANSWER_TIMEOUT:?}",
                self.authority
            )),
        }
    }

    /// A call that must succeed: non-2xx statuses become the error, with the
    /// server's message.
    pub async fn expect(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, String> {
        let (status, value) = self.call(method, path, body).await?;
        if status.is_success() {
            return Ok(value);
        }
        let message = value
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| value.to_string());
        Err(format!("{status}: {message}"))
    }
}

/// `egressd status` for people.
pub fn show_status(v: &Value) -> String {
    let mut out = format!(
        "egressd {} {} (up {})\n",
        v["version"].as_str().unwrap_or("?"),
        v["state"].as_str().unwrap_or("?"),
        humantime::format_duration(Duration::from_secs(
            v["uptime_seconds"].as_u64().unwrap_or(0)
        ))
    );
    for l in v["listeners"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "listener {}: {} sessions open (max {}), {} accepted\n",
            l["listen"].as_str().unwrap_or("?"),
            l["sessions_active"],
            l["max_connections"],
            l["sessions_accepted"]
        ));
    }
    out.push_str(&format!(
        "idle destination sessions: {}\n",
        v["idle_destination_sessions"]
    ));
    let sources = v["sources"].as_object();
    if sources.is_some_and(|s| !s.is_empty()) {
        out.push_str(&format!(
            "{:<20} {:>10} {:>14} {:>12} {:>10} {:>8}\n",
            "SOURCE", "MESSAGES", "BYTES", "TRANSACTIONS", "OPENED", "REUSED"
        ));
        for (name, c) in sources.into_iter().flatten() {
            out.push_str(&format!(
                "{:<20} {:>10} {:>14} {:>12} {:>10} {:>8}\n",
                name,
                c["messages"],
                c["bytes"],
                c["transactions"],
                c["connections_opened"],
                c["connections_reused"]
            ));
        }
    } else {
        out.push_str("no source has carried a transaction yet\n");
    }
    out.push_str(&show_suspensions(&v["suspensions"]));
    out
}

/// The suspension list for people.
pub fn show_suspensions(v: &Value) -> String {
    let list = v.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        return "no suspensions in force\n".into();
    }
    let mut out = format!("{:<40} {:<22} {:<12} REASON\n", "ID", "EXPIRES", "LEFT");
    for s in list {
        out.push_str(&format!(
            "{:<40} {:<22} {:<12} {}\n",
            s["id"].as_str().unwrap_or("?"),
            s["expires"].as_str().unwrap_or("?"),
            s["duration"].as_str().unwrap_or("?"),
            s["reason"].as_str().unwrap_or("")
        ));
    }
    out
}

/// `egressd spool` for people.
pub fn show_spool(v: &Value) -> String {
    if v["defined"] == Value::Bool(false) {
        return "no spool is defined (kumo.define_spool): transactions take one domain each\n"
            .into();
    }
    let messages = v["messages"].as_array().cloned().unwrap_or_default();
    let mut out = format!(
        "spool {}: {} messages, {} of {} bytes\n",
        v["path"].as_str().unwrap_or("?"),
        messages.len(),
        v["used_bytes"],
        v["max_spool_bytes"]
    );
    for m in messages {
        out.push_str(&format!(
            "{} from <{}> since {}\n",
            m["id"].as_str().unwrap_or("?"),
            m["sender"].as_str().unwrap_or(""),
            m["created"].as_str().unwrap_or("?")
        ));
        for d in m["domains"].as_array().into_iter().flatten() {
            let pending = d["recipients"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|r| r["state"] == "pending")
                .count();
            out.push_str(&format!(
                "  {}: {} pending, {} attempts, next {}{}\n",
                d["domain"].as_str().unwrap_or("?"),
                pending,
                d["attempts"],
                d["next_attempt"].as_str().unwrap_or("-"),
                d["last_error"]
                    .as_str()
                    .map(|e| format!(" (last: {e})"))
                    .unwrap_or_default()
            ));
        }
    }
    out
}

/// `egressd resolve` for people.
pub fn show_resolution(v: &Value) -> String {
    let mut out = format!(
        "{} → pool '{}', site {}\n",
        v["domain"].as_str().unwrap_or("?"),
        v["pool"]["name"].as_str().unwrap_or("?"),
        v["site_name"].as_str().unwrap_or("?")
    );
    for s in v["sources"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "source {} (weight {}): EHLO {}\n",
            s["name"].as_str().unwrap_or("?"),
            s["weight"],
            s["ehlo_domain"].as_str().unwrap_or("?")
        ));
        for d in s["destinations"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "  → {} [{}]:{}\n",
                d["host"].as_str().unwrap_or("?"),
                d["address"].as_str().unwrap_or("?"),
                d["port"]
            ));
        }
        for t in s["throttles"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "  {} {}: {} available\n",
                t["setting"].as_str().unwrap_or("?"),
                t["spec"].as_str().unwrap_or("?"),
                t["available"]
            ));
        }
        for x in s["suspensions"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "  SUSPENDED ({}) until {}: {}\n",
                x["id"].as_str().unwrap_or("?"),
                x["expires"].as_str().unwrap_or("?"),
                x["reason"].as_str().unwrap_or("")
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::Api;

    #[test]
    fn endpoints_must_be_plain_http_with_a_host() {
        assert_eq!(
            Api::new("http://127.0.0.1:8000/", None).unwrap().authority,
            "127.0.0.1:8000"
        );
        assert_eq!(
            Api::new("http://localhost", None).unwrap().authority,
            "localhost:80"
        );
        assert!(Api::new("https://127.0.0.1:8000", None)
            .unwrap_err()
            .contains("https"));
        assert!(Api::new("127.0.0.1:8000", None).is_err());
        assert!(Api::new("http://127.0.0.1:8000/api", None).is_err());
    }
}
