//! The HTTP listener (`proxy.start_http_listener`): `/metrics` (Prometheus or
//! OpenMetrics text, as the scraper asks), `/api/check-liveness/v1` and
//! KumoProxy's `/proxy/status`. It is egress-http's listener, as egressd's is;
//! clients outside `trusted_hosts` get 403 — the proxy has nothing to
//! authenticate them with.

use crate::metrics::Registry;
use egress_http::{text, Boxed, Client, Handler, HttpListener, Response};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use std::sync::Arc;

const PLAIN: &str = "text/plain; charset=utf-8";

/// Serves on `listener` until the process ends.
pub async fn serve(listener: HttpListener) {
    listener.serve(Arc::new(Status)).await
}

struct Status;

impl Handler for Status {
    fn handle(&self, req: Request<Incoming>, client: Client) -> Boxed<'_, Response> {
        Box::pin(async move { answer(&req, client) })
    }
}

fn answer(req: &Request<Incoming>, client: Client) -> Response {
    if !client.trusted {
        let ip = client.addr.ip().to_canonical();
        return text(
            StatusCode::FORBIDDEN,
            PLAIN,
            format!("{ip} is not in this listener's trusted_hosts\n"),
        );
    }
    match (req.method().as_str(), req.uri().path()) {
        ("GET", "/metrics") => {
            let accept = req
                .headers()
                .get(hyper::header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let (kind, body) = Registry::global().exposition(accept);
            text(StatusCode::OK, kind, body)
        }
        ("GET", "/api/check-liveness/v1") => text(StatusCode::OK, PLAIN, "OK\n".into()),
        ("GET", "/proxy/status") => text(StatusCode::OK, PLAIN, "egress-proxy OK\n".into()),
        (_, path) => text(
            StatusCode::NOT_FOUND,
            PLAIN,
            format!("{path}: not here; try /metrics, /api/check-liveness/v1 or /proxy/status\n"),
        ),
    }
}
