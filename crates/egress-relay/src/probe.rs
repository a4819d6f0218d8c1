//! One connection through a source, to see what a destination sees — along the
//! route a transaction would follow (the same plan: site, path config with
//! automation's overrides, `skip_hosts`/`prohibited_hosts`, every address in
//! order), greeting with the EHLO name a transaction would give, then QUIT.

use crate::outbound::plan::{self, NoRoute};
use crate::outbound::tls::{server_name, Check};
use crate::outbound::{timeouts, Context};
use egress_smtp::{ClientSession, Reply, StartTlsError, TlsInfo};
use egress_source::{EgressPathConfig, MxListEntry};
use std::net::SocketAddr;
use std::sync::Arc;

/// What a probe found (see [`Relay::probe`](crate::Relay::probe)).
///
/// ```no_run
/// # async fn run(relay: std::sync::Arc<egress_relay::Relay>) -> Result<(), String> {
/// let report = relay.probe("ip-2", "example.com", false).await?;
/// println!("{} greeted {} at {} from {}", report.ehlo, report.host, report.destination, report.egress);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ProbeReport {
    /// The source probed.
    pub source: String,
    /// The domain the path config was asked for (the target, or its host name).
    pub domain: String,
    /// The destination's site.
    pub site: String,
    /// The path config in force: the policy's, with automation's overrides.
    pub path_config: Arc<EgressPathConfig>,
    /// The name given in EHLO.
    pub ehlo: String,
    /// Hosts tried before one answered, with why each failed.
    pub failed: Vec<(SocketAddr, String)>,
    /// The host that answered: its name and where it was reached.
    pub host: String,
    /// The address and port connected to.
    pub destination: SocketAddr,
    /// How the connection left, and the address the destination saw.
    pub egress: String,
    /// The destination's banner, as it sent it.
    pub banner: Option<String>,
    /// Its reply to EHLO, as it sent it.
    pub ehlo_reply: String,
    /// STARTTLS, when asked for.
    pub tls: Option<ProbeTls>,
}

/// What STARTTLS showed.
#[derive(Debug, Clone)]
pub struct ProbeTls {
    /// Protocol version.
    pub version: String,
    /// Cipher suite.
    pub cipher: String,
    /// The certificate's subject, when one was presented.
    pub certificate: Option<String>,
    /// Whether it verified against the system trust store, and if not, why.
    pub verified: Result<(), String>,
}

/// See [`Relay::probe`](crate::Relay::probe).
pub async fn probe(
    ctx: &Context,
    source_name: &str,
    target: &str,
    tls: bool,
) -> Result<ProbeReport, String> {
    let target = target.trim().trim_end_matches('.');
    let entry: MxListEntry = target.parse().map_err(|e| format!("target: {e}"))?;
    // A bare name is a domain, routed as a transaction routes it; with a port
    // or brackets it is one host.
    let explicit = entry.port().is_some() || target.starts_with('[');
    let domain = entry.name().to_ascii_lowercase();
    let routing = match explicit {
        true => plan::route_to_host(ctx, entry).await,
        false => plan::route(ctx, &domain, None).await.map(|r| r.routing),
    }
    .map_err(|NoRoute { text, .. }| text)?;
    let plan = plan::for_source(ctx, &routing, &domain, source_name)
        .await
        .map_err(|e| e.into_text())?;
    let hosts = plan.hosts.clone().map_err(|refused| refused.to_string())?;
    let mut failed = Vec::new();
    for (dest, addr) in hosts {
        let (smtp, egress, greeted) = match greet(ctx, &plan, addr).await {
            Ok(session) => session,
            Err(e) => {
                failed.push((addr, e));
                continue;
            }
        };
        let banner = smtp.banner().map(|b| Reply::relayed(b).to_wire());
        let reply = match greeted {
            Ok(reply) => Reply::relayed(&reply).to_wire(),
            Err(e) => {
                failed.push((addr, format!("{e}{}", egress.silence_hint())));
                continue;
            }
        };
        let shown_tls = match tls {
            false => {
                smtp.quit().await;
                None
            }
            true => Some(starttls(ctx, &plan, smtp, &dest.host, addr).await?),
        };
        return Ok(ProbeReport {
            source: source_name.to_owned(),
            domain,
            site: routing.site.clone(),
            path_config: plan.path.clone(),
            ehlo: plan.ehlo.clone(),
            failed,
            host: dest.host,
            destination: addr,
            egress: egress.to_string(),
            banner,
            ehlo_reply: reply,
            tls: shown_tls,
        });
    }
    let tried: Vec<String> = failed.iter().map(|(a, e)| format!("{a}: {e}")).collect();
    Err(format!(
        "egress source '{source_name}': no host of {domain} answered: {}",
        tried.join("; ")
    ))
}

/// A connection through the plan's source to `addr`, and the destination's
/// answer to EHLO (kept apart: a refused greeting is still a session to show).
async fn greet(
    ctx: &Context,
    plan: &plan::SourcePlan,
    addr: SocketAddr,
) -> Result<
    (
        ClientSession<tokio::net::TcpStream>,
        egress_connect::EgressAddress,
        std::io::Result<egress_smtp::Response<String>>,
    ),
    String,
> {
    let conn = ctx
        .connector
        .connect(&plan.source, addr, plan.path.connect_timeout)
        .await
        .map_err(|e| e.to_string())?;
    let mut smtp = ClientSession::new(conn.stream, timeouts(&plan.path));
    let greeted = smtp.greet(&plan.ehlo).await;
    Ok((smtp, conn.egress, greeted))
}

/// STARTTLS verified against the trust store; when that fails, once more on a
/// new connection without verification, to show what the destination presents.
async fn starttls(
    ctx: &Context,
    plan: &plan::SourcePlan,
    mut smtp: ClientSession<tokio::net::TcpStream>,
    host: &str,
    addr: SocketAddr,
) -> Result<ProbeTls, String> {
    let path = &plan.path;
    let name = server_name(host, addr.ip());
    let verified = ctx.tls.connector(path, &Check::TrustStore)?;
    let failure = match smtp
        .starttls(
            &verified,
            name.clone(),
            true,
            &plan.ehlo,
            path.starttls_timeout,
        )
        .await
    {
        Ok(info) => {
            let shown = shown(info, Ok(()));
            smtp.quit().await;
            return Ok(shown);
        }
        Err(StartTlsError::Handshake(why) | StartTlsError::Certificate { text: why, .. }) => why,
        Err(e) => return Err(format!("{addr}: {e}")),
    };
    let (mut smtp, _, greeted) = greet(ctx, plan, addr).await?;
    greeted.map_err(|e| format!("{addr}: {e}"))?;
    let insecure = ctx.tls.connector(path, &Check::Nothing)?;
    let info = smtp
        .starttls(&insecure, name, false, &plan.ehlo, path.starttls_timeout)
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    let shown = shown(info, Err(failure));
    smtp.quit().await;
    Ok(shown)
}

fn shown(info: &TlsInfo, verified: Result<(), String>) -> ProbeTls {
    ProbeTls {
        version: info.version.clone(),
        cipher: info.cipher.clone(),
        certificate: info.peer_subject.clone(),
        verified,
    }
}
