//! One inbound SMTP session: commands parsed by smtp-proto, each transaction
//! relayed through an egress source as it happens. egressd never holds a message:
//! the client's 250 is the destination's 250.
//!
//! `transport` reads and writes against deadlines (and runs STARTTLS); `dispatch`
//! answers commands; `auth` runs AUTH; `transaction` forwards RCPTs and streams DATA.

mod auth;
mod body;
mod dispatch;
pub mod tls;
mod transaction;
mod transport;

use crate::metrics::{ListenerMetrics, Refusal};
use crate::outbound::Context;
use crate::shutdown::Shutdown;
use egress_lua::EsmtpListener;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

/// A listener's settings and what was built from them at start.
pub struct Listener {
    /// What the policy declared.
    pub config: EsmtpListener,
    /// Our name in the banner, EHLO and `Received:`.
    pub hostname: String,
    /// STARTTLS, with the policy's certificate or a self-signed one.
    pub tls: tokio_rustls::TlsAcceptor,
    /// AUTH is offered (over TLS): the policy handles `smtp_server_auth_plain`.
    pub auth: bool,
    /// Sessions and refusals (none when metrics are off).
    pub metrics: Option<ListenerMetrics>,
}

impl Listener {
    /// Builds what `config` needs: its name and its TLS acceptor.
    pub fn new(config: EsmtpListener, ctx: &Context) -> Result<Listener, String> {
        let hostname = config
            .hostname
            .clone()
            .unwrap_or_else(|| ctx.hostname.clone());
        let tls = tls::acceptor(
            config.tls_certificate.as_deref(),
            config.tls_private_key.as_deref(),
            &hostname,
            "kumo.start_esmtp_listener",
        )
        .map_err(|e| format!("listener {}: {e}", config.listen))?;
        let auth = ctx
            .policy
            .has_handler(egress_lua::events::SMTP_SERVER_AUTH_PLAIN);
        let metrics = ctx.metrics.listener(&config.listen.to_string());
        Ok(Listener {
            config,
            hostname,
            tls,
            auth,
            metrics,
        })
    }

    /// Counts a refusal.
    pub fn refused(&self, why: Refusal) {
        if let Some(m) = &self.metrics {
            m.refused(why);
        }
    }
}

/// Serves one client until it quits, goes away, or times out.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: Arc<Context>,
    listener: Arc<Listener>,
    stream: S,
    peer: SocketAddr,
    shutdown: Shutdown,
) {
    let _active = listener.metrics.as_ref().map(ListenerMetrics::session);
    dispatch::Session::new(ctx, listener, stream, peer, shutdown)
        .run()
        .await
}
