//! The HTTP listener egress's servers answer operators on — egressd's admin API
//! and metrics, egress-proxy's status and metrics — made one way: HTTP/1.1 on
//! hyper, optionally inside TLS (an acceptor from egress-tls), at most
//! [`MAX_CONNECTIONS`] clients at once, headers (and a TLS handshake) within
//! [`HEADER_TIMEOUT`]; each client is sorted by the listener's `trusted_hosts`
//! before the [`Handler`] sees the request, which decides what an untrusted
//! client may do (egressd asks for HTTP Basic, egress-proxy refuses). And
//! [`exposition`]: a prometheus-client registry's text in the format the scraper
//! asks for (OpenMetrics, or the classic Prometheus text promtool and curl get).
//!
//! ```no_run
//! use egress_http::{Boxed, Client, Handler, HttpListener, Response, text};
//! use std::sync::Arc;
//!
//! struct Status;
//! impl Handler for Status {
//!     fn handle(&self, _req: hyper::Request<hyper::body::Incoming>, client: Client) -> Boxed<'_, Response> {
//!         Box::pin(async move {
//!             match client.trusted {
//!                 true => text(hyper::StatusCode::OK, "text/plain", "OK\n".into()),
//!                 false => text(hyper::StatusCode::FORBIDDEN, "text/plain", "not trusted\n".into()),
//!             }
//!         })
//!     }
//! }
//! # async fn run() -> Result<(), String> {
//! let trusted = vec!["127.0.0.0/8".parse().unwrap()];
//! let listener = HttpListener::bind("127.0.0.1:8000".parse().unwrap(), None, trusted, "status").await?;
//! listener.serve(Arc::new(Status)).await;
//! # Ok(()) }
//! ```
//!
//! Invariants: nothing listens where the caller did not ask; every read is
//! bounded in time, every client in number.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use ipnet::IpNet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

/// How long a client has to finish its TLS handshake and send its headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Clients served at once; more are closed at accept.
pub const MAX_CONNECTIONS: usize = 64;
/// OpenMetrics, as Prometheus asks for it.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The classic Prometheus text format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A boxed future (see egress-policy's `Boxed` for why entry points box).
pub type Boxed<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// A response with its whole body.
pub type Response = hyper::Response<Full<Bytes>>;

/// Who sent a request.
#[derive(Debug, Clone, Copy)]
pub struct Client {
    /// Its address.
    pub addr: SocketAddr,
    /// It is in the listener's `trusted_hosts`.
    pub trusted: bool,
}

/// What answers a listener's requests.
pub trait Handler: Send + Sync + 'static {
    /// The response to `req` from `client`.
    fn handle(&self, req: hyper::Request<Incoming>, client: Client) -> Boxed<'_, Response>;
}

/// A bound HTTP listener, ready to serve.
pub struct HttpListener {
    socket: TcpListener,
    tls: Option<TlsAcceptor>,
    trusted: Arc<[IpNet]>,
}

impl HttpListener {
    /// Binds `listen` (`declared_by` names the listener in the error).
    pub async fn bind(
        listen: SocketAddr,
        tls: Option<TlsAcceptor>,
        trusted_hosts: Vec<IpNet>,
        declared_by: &str,
    ) -> Result<HttpListener, String> {
        let socket = TcpListener::bind(listen)
            .await
            .map_err(|e| format!("{declared_by}: cannot listen on {listen}: {e}"))?;
        Ok(HttpListener {
            socket,
            tls,
            trusted: trusted_hosts.into(),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.socket.local_addr().ok()
    }

    /// Serves until the process ends.
    pub fn serve(self, handler: Arc<dyn Handler>) -> Boxed<'static, ()> {
        Box::pin(self.accept_loop(handler))
    }

    async fn accept_loop(self, handler: Arc<dyn Handler>) {
        let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let (stream, peer) = match self.socket.accept().await {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!("HTTP accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                tracing::debug!(client = %peer, "HTTP: too many clients; closing");
                continue;
            };
            let ip = peer.ip().to_canonical();
            let client = Client {
                addr: peer,
                trusted: self.trusted.iter().any(|net| net.contains(&ip)),
            };
            let (handler, tls) = (handler.clone(), self.tls.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler.handle(req, client).await) }
                });
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT);
                let served = match tls {
                    Some(tls) => {
                        match tokio::time::timeout(HEADER_TIMEOUT, tls.accept(stream)).await {
                            Ok(Ok(stream)) => {
                                builder
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await
                            }
                            _ => {
                                tracing::debug!(client = %peer, "HTTP: TLS handshake failed or timed out");
                                return;
                            }
                        }
                    }
                    None => {
                        builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await
                    }
                };
                if let Err(e) = served {
                    tracing::debug!(client = %peer, "HTTP: {e}");
                }
                drop(permit);
            });
        }
    }
}

/// A response of `status` with `body` as `content_type`.
pub fn text(status: hyper::StatusCode, content_type: &'static str, body: String) -> Response {
    let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

/// `registry`'s samples in the format `accept` asks for: OpenMetrics for a
/// scraper that asks for it (Prometheus does), else the classic text format
/// (promtool, curl, older scrapers) — as (content type, body).
///
/// ```
/// use prometheus_client::metrics::counter::Counter;
/// let mut registry = prometheus_client::registry::Registry::default();
/// let sent = Counter::<u64>::default();
/// registry.register("messages_sent", "Messages sent.", sent.clone());
/// sent.inc();
/// let (kind, body) = egress_http::exposition(&registry, "text/plain");
/// assert_eq!(kind, egress_http::PROMETHEUS_TEXT);
/// assert!(body.contains("# TYPE messages_sent_total counter\nmessages_sent_total 1"), "{body}");
/// ```
pub fn exposition(
    registry: &prometheus_client::registry::Registry,
    accept: &str,
) -> (&'static str, String) {
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, registry);
    match accept.contains("application/openmetrics-text") {
        true => (OPENMETRICS, text),
        false => (PROMETHEUS_TEXT, classic_text(&text)),
    }
}

/// OpenMetrics text as the classic Prometheus format: no `# EOF` or `# UNIT`,
/// and a counter's `# TYPE`/`# HELP` name carrying its samples' `_total` suffix
/// (Debian's promtool refuses the exposition otherwise).
pub fn classic_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<&str> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let name = match kind {
                "counter" => format!("{name}_total"),
                _ => name.to_owned(),
            };
            if let Some(text) = help.take().and_then(|h| h.split_once(' ').map(|(_, t)| t)) {
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}
