//! One inbound SMTP session: commands parsed by smtp-proto, each transaction
//! relayed through an egress source as it happens. A single-domain message is
//! never held: the client's 250 is the destination's 250 (several domains go
//! through the spool, made durable before the 250).
//!
//! `transport` reads and writes against deadlines (and runs STARTTLS); `dispatch`
//! answers commands; `auth` runs AUTH; `transaction` forwards RCPTs and streams DATA.

mod auth;
mod body;
mod dispatch;
mod listener_domains;
mod transaction;
mod transport;
mod whole;

use crate::client_limits::{ClientLimits, ClientSlot};
use crate::delivery::Delivery;
use crate::outbound::Context;
use crate::report::{ActiveSession, ListenerReport, Refusal};
use crate::shutdown::Shutdown;
use egress_policy::EsmtpListener;
use egress_smtp::Reply;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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
    /// The policy handles `get_listener_domain`: clients outside `relay_hosts`
    /// may relay to (or from) the domains it names.
    pub listener_domains: bool,
    /// Where transactions for several domains go (none: one domain each).
    pub spool: Option<Arc<Delivery>>,
    /// Sessions and refusals (none when the embedder records nothing).
    pub report: Option<Arc<dyn ListenerReport>>,
    /// `max_connections`: one permit per session.
    sessions: Arc<Semaphore>,
    /// `max_connections_per_client`, `max_connection_rate_per_client`.
    per_client: Arc<ClientLimits>,
}

/// A session the listener's limits admitted; dropping it frees its places.
pub struct Admission {
    _permit: OwnedSemaphorePermit,
    _slot: ClientSlot,
}

impl Listener {
    /// Builds what `config` needs: its name, its TLS acceptor, its limits.
    pub fn new(
        config: EsmtpListener,
        ctx: &Context,
        spool: Option<Arc<Delivery>>,
    ) -> Result<Listener, String> {
        let hostname = config
            .hostname
            .clone()
            .unwrap_or_else(|| ctx.hostname.clone());
        let file = |path: &Option<String>| path.clone().map(egress_source::KeySource::File);
        let tls = egress_tls::acceptor(
            file(&config.tls_certificate).as_ref(),
            file(&config.tls_private_key).as_ref(),
            &hostname,
            "kumo.start_esmtp_listener",
        )
        .map_err(|e| format!("listener {}: {e}", config.listen))?;
        let auth = ctx.policy.authenticates();
        let listener_domains = ctx.policy.names_listener_domains();
        let report = ctx.report.listener(&config.listen.to_string());
        let per_client = ClientLimits::new(
            config.max_connections_per_client,
            config.max_connection_rate_per_client,
            config.client_limit_exceptions(),
        );
        Ok(Listener {
            sessions: Arc::new(Semaphore::new(config.max_connections)),
            per_client,
            config,
            hostname,
            tls,
            auth,
            listener_domains,
            spool,
            report,
        })
    }

    /// Counts a refusal.
    pub fn refused(&self, why: Refusal) {
        if let Some(r) = &self.report {
            r.refused(why);
        }
    }

    /// Admits a new session from `client` within `max_connections` and the
    /// client's own limits, or says why not (a `421 4.7.0` naming the setting).
    pub fn admit(&self, client: IpAddr) -> Result<Admission, Reply> {
        let slot = self.per_client.admit(client).map_err(|refused| {
            self.refused(Refusal::PerClientLimit);
            Reply::new(421, [4, 7, 0], refused.explain(client.to_canonical()))
        })?;
        let permit = self.sessions.clone().try_acquire_owned().map_err(|_| {
            self.refused(Refusal::MaxConnections);
            Reply::new(
                421,
                [4, 7, 0],
                format!(
                    "too many connections (max_connections = {}); please try again later",
                    self.config.max_connections
                ),
            )
        })?;
        Ok(Admission {
            _permit: permit,
            _slot: slot,
        })
    }

    /// Waits until every session of this listener has ended.
    pub async fn drained(&self) {
        let _ = self
            .sessions
            .acquire_many(self.config.max_connections as u32)
            .await;
    }
}

/// Serves one client until it quits, goes away, or times out; a client over the
/// listener's limits gets their `421` and is closed.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: Arc<Context>,
    listener: Arc<Listener>,
    mut stream: S,
    peer: SocketAddr,
    shutdown: Shutdown,
) {
    let admission = match listener.admit(peer.ip()) {
        Ok(admission) => admission,
        Err(reply) => {
            tracing::debug!(client = %peer, "refused: {reply}");
            if let Some(sink) = ctx.records.as_ref().filter(|r| r.enabled()) {
                let inbound = crate::records::Inbound {
                    session_id: crate::records::session_id(),
                    ehlo: String::new(),
                    client: peer,
                };
                let id = crate::txlog::transaction_id();
                let message = egress_record::Message::default();
                crate::records::rejection(
                    &**sink,
                    &message,
                    &inbound,
                    &id,
                    "",
                    Vec::new(),
                    &reply,
                    None,
                );
            }
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                stream.write_all(reply.to_wire().as_bytes()),
            )
            .await;
            return;
        }
    };
    let _active = ActiveSession::new(listener.report.as_ref());
    dispatch::Session::new(ctx, listener, stream, peer, shutdown)
        .run()
        .await;
    drop(admission);
}
