//! egress-proxy: a SOCKS5 proxy for the host that owns an egress source's IP
//! addresses, a drop-in for KumoProxy.
//!
//! A client — egressd, KumoMTA, any SOCKS5 client — connects, optionally
//! authenticates (RFC 1929), optionally sends a BIND naming the source address the
//! connection must leave from (KumoProxy's convention; the reply carries the
//! address really bound), then CONNECT; bytes then flow both ways.
//!
//! Beyond KumoProxy, which leaves it to firewalls, the proxy refuses by rule
//! ([`Rules`]): clients outside the allowed networks (default: loopback only —
//! never an open proxy), source addresses not assigned to this host (or outside an
//! allowed list), destination ports outside an allowed list — each with SOCKS5's
//! "connection not allowed by ruleset" and a log line.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use egress_proxy::{ProxyListener, Rules};
//! let listener = ProxyListener::bind("127.0.0.1:5000".parse().unwrap(), Rules::default()).await?;
//! let (_stop, stopped) = tokio::sync::watch::channel(false);
//! listener.run(stopped).await;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod config;
pub mod http;
mod idle;
pub mod metrics;
mod pump;
pub mod rules;
mod session;
pub mod socks5;
#[cfg(target_os = "linux")]
mod splice;

pub use rules::Rules;
pub use session::Summary;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// A listening socket and how it serves.
pub struct ProxyListener {
    socket: TcpListener,
    rules: Arc<Rules>,
    /// Every phase's deadline, and how long a relayed session may sit idle;
    /// default 60 s (KumoProxy's `--timeout-seconds`).
    pub timeout: Duration,
    /// KumoProxy's `use_splice` (see `pump.rs`).
    pub use_splice: bool,
    /// TCP keepalive on accepted connections (KumoProxy's `tcp_keepalive`).
    pub keepalive: Option<socket2::TcpKeepalive>,
    /// Clients speak SOCKS5 inside TLS (KumoProxy's `use_tls`).
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    metrics: Arc<metrics::ListenerMetrics>,
}

impl ProxyListener {
    /// Binds `addr`.
    pub async fn bind(addr: SocketAddr, rules: Rules) -> std::io::Result<ProxyListener> {
        let socket = TcpListener::bind(addr).await?;
        let listen = socket.local_addr()?.to_string();
        Ok(ProxyListener {
            socket,
            rules: Arc::new(rules),
            timeout: Duration::from_secs(60),
            use_splice: true,
            keepalive: None,
            tls: None,
            metrics: metrics::Registry::global().listener(&listen),
        })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Accepts and serves until `stop` turns true, then waits for the sessions in
    /// progress to end (each is bounded by the timeout when idle).
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut sessions = tokio::task::JoinSet::new();
        loop {
            let accepted = tokio::select! {
                accepted = self.socket.accept() => accepted,
                _ = stop.changed() => break,
            };
            match accepted {
                Ok((client, peer)) => {
                    let _ = client.set_nodelay(true);
                    let (rules, timeout, splice) =
                        (self.rules.clone(), self.timeout, self.use_splice);
                    let metrics = self.metrics.clone();
                    metrics.accepted();
                    if let Some(keepalive) = &self.keepalive {
                        let _ = socket2::SockRef::from(&client).set_tcp_keepalive(keepalive);
                    }
                    let local = client.local_addr().unwrap_or(peer);
                    let tls = self.tls.clone();
                    sessions.spawn(async move {
                        let metrics = Some(&*metrics);
                        let Some(tls) = tls else {
                            session::serve(client, peer, local, &rules, timeout, splice, metrics)
                                .await;
                            return;
                        };
                        match tokio::time::timeout(timeout, tls.accept(client)).await {
                            Ok(Ok(client)) => {
                                session::serve(
                                    client, peer, local, &rules, timeout, splice, metrics,
                                )
                                .await;
                            }
                            failed => {
                                let why = match failed {
                                    Ok(Err(e)) => e.to_string(),
                                    _ => "no handshake within the timeout".into(),
                                };
                                if let Some(m) = metrics {
                                    m.tls_failed();
                                }
                                tracing::info!(client = %peer, "TLS handshake failed: {why}");
                            }
                        }
                    });
                }
                Err(e) => {
                    // Out of descriptors, say: wait rather than spin.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            // Reap finished sessions so the set does not grow.
            while sessions.try_join_next().is_some() {}
        }
        drop(self.socket);
        let left = sessions.len();
        if left > 0 {
            tracing::info!(
                sessions = left,
                "draining: waiting for sessions in progress"
            );
        }
        while sessions.join_next().await.is_some() {}
    }
}
