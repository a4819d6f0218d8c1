//! AUTH PLAIN to a destination that wants a password (a smarthost, a provider's
//! submission port), with KumoMTA's guards: the credential is not sent in clear
//! (`allow_smtp_auth_plain_without_tls`) nor over TLS whose certificate was not
//! verified (`allow_smtp_auth_plain_without_valid_certificate`) unless the path
//! says so.

use egress_smtp::{ClientSession, Reply};
use egress_source::{EgressPathConfig, KeySource};
use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncWrite};

/// The credential a path authenticates with: sessions are shared only between
/// transactions with the same one.
pub type Credential = (String, Option<KeySource>);

/// The path's credential, if it has one: a username, with or without a password
/// (KumoMTA sends AUTH PLAIN with an empty password when only the username is
/// set; a password without a username is accepted and unused, as there).
pub fn credential(path: &EgressPathConfig) -> Option<Credential> {
    let username = path.smtp_auth_plain_username.clone()?;
    Some((username, path.smtp_auth_plain_password.clone()))
}

/// Why AUTH did not happen or did not succeed.
pub enum AuthFailure {
    /// Our guard or our side (no TLS, an unverified certificate, an unreadable
    /// password file): the client gets this 4xx, and no other host is tried.
    Refused(Reply),
    /// The destination refused the credential (535): its reply, for the client.
    Destination(Reply),
    /// This host cannot take it (no AUTH PLAIN offered, the session failed): the
    /// next host may.
    Unavailable(String),
}

/// Authenticates `smtp` as `path` says, when it names a credential; after
/// STARTTLS (whose outcome `smtp.tls()` tells) and before MAIL FROM.
pub async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    smtp: &mut ClientSession<S>,
    path: &EgressPathConfig,
    addr: SocketAddr,
) -> Result<(), AuthFailure> {
    let Some((username, password)) = credential(path) else {
        return Ok(());
    };
    let refused = |text: String| AuthFailure::Refused(Reply::new(451, [4, 7, 0], text));
    match smtp.tls() {
        None if !path.allow_smtp_auth_plain_without_tls => {
            return Err(refused(format!(
                "{addr}: the session has no TLS, so the smtp_auth_plain credential was not sent \
                 (allow_smtp_auth_plain_without_tls = false); give the path enable_tls = \
                 'Required', or allow it on a network you trust"
            )))
        }
        Some(tls) if !tls.verified && !path.allow_smtp_auth_plain_without_valid_certificate => {
            return Err(refused(format!(
                "{addr}: the destination's certificate was not verified (enable_tls = '{:?}'), so \
                 the smtp_auth_plain credential was not sent \
                 (allow_smtp_auth_plain_without_valid_certificate = false)",
                path.enable_tls
            )))
        }
        _ => {}
    }
    if !smtp.extensions().auth_plain {
        return Err(AuthFailure::Unavailable(format!(
            "{addr}: the path sets smtp_auth_plain_username but the destination does not offer \
             AUTH PLAIN"
        )));
    }
    let password = match password {
        Some(password) => password
            .load()
            .map_err(|e| refused(format!("smtp_auth_plain_password: {e}")))?,
        None => String::new(),
    };
    match smtp.auth_plain(&username, &password).await {
        Ok(reply) if (200..300).contains(&reply.code) => Ok(()),
        Ok(reply) => Err(AuthFailure::Destination(Reply::relayed(&reply))),
        Err(e) => Err(AuthFailure::Unavailable(format!("{addr}: AUTH: {e}"))),
    }
}
