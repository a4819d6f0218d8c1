//! The HTTP listener (`proxy.start_http_listener`): `/metrics` (Prometheus
//! text), `/api/check-liveness/v1` and KumoProxy's `/proxy/status`. Clients
//! outside `trusted_hosts` get 403: the proxy has nothing to authenticate them
//! with. hyper serves HTTP/1.1; headers must arrive within ten seconds.

use crate::metrics::Registry;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use ipnet::IpNet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Serves on `socket` until the process ends.
pub async fn serve(socket: TcpListener, trusted: Vec<IpNet>) {
    let trusted = Arc::new(trusted);
    loop {
        let (stream, peer) = match socket.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!("HTTP accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let trusted = trusted.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let trusted = trusted.clone();
                async move { Ok::<_, Infallible>(answer(&req, peer, &trusted)) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10));
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(client = %peer, "HTTP: {e}");
            }
        });
    }
}

fn answer(req: &Request<Incoming>, peer: SocketAddr, trusted: &[IpNet]) -> Response<Full<Bytes>> {
    let ip = peer.ip().to_canonical();
    if !trusted.iter().any(|net| net.contains(&ip)) {
        return text(
            StatusCode::FORBIDDEN,
            format!("{ip} is not in this listener's trusted_hosts\n"),
        );
    }
    match (req.method().as_str(), req.uri().path()) {
        ("GET", "/metrics") => text(StatusCode::OK, Registry::global().render()),
        ("GET", "/api/check-liveness/v1") => text(StatusCode::OK, "OK\n".into()),
        ("GET", "/proxy/status") => text(StatusCode::OK, "egress-proxy OK\n".into()),
        (_, path) => text(
            StatusCode::NOT_FOUND,
            format!("{path}: not here; try /metrics, /api/check-liveness/v1 or /proxy/status\n"),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}
