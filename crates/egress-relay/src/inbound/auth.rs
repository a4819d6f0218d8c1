//! AUTH PLAIN and AUTH LOGIN (RFC 4954, RFC 4616), offered only over TLS and only
//! when the policy handles `smtp_server_auth_plain` (KumoMTA's event; LOGIN calls it
//! with authz = authc). Credentials are never logged.

use super::transport::{Conn, Ended};
use base64::Engine;
use egress_policy::Policy;
use egress_smtp::Reply;
use tokio::io::{AsyncRead, AsyncWrite};

/// Failed attempts allowed in one session before `421` and close.
pub const MAX_FAILURES: u32 = 3;

/// How an AUTH exchange ended.
pub enum Authenticated {
    /// Accepted, as this identity (authc).
    Yes(String),
    /// Not accepted; the reply says why. `failed` counts toward [`MAX_FAILURES`]
    /// (a cancelled or malformed exchange does not).
    No { reply: Reply, failed: bool },
}

/// Runs one AUTH exchange. `mechanism` is smtp-proto's flag; `initial` the initial
/// response (possibly empty, `=` for an empty one).
pub async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    policy: &dyn Policy,
    mechanism: u64,
    initial: &str,
    conn_meta: &[(&str, String)],
) -> Result<Authenticated, Ended> {
    let (authz, authc, password) = if mechanism == smtp_proto::AUTH_PLAIN {
        let response = match first_response(conn, initial, "").await? {
            Ok(r) => r,
            Err(no) => return Ok(no),
        };
        let mut parts = response.split(|b| *b == 0);
        let (Some(authz), Some(authc), Some(password), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Ok(malformed(
                "AUTH PLAIN wants authzid NUL authcid NUL password",
            ));
        };
        (text(authz), text(authc), text(password))
    } else if mechanism == smtp_proto::AUTH_LOGIN {
        // "Username:" and "Password:", in base64 as LOGIN has them.
        let user = match first_response(conn, initial, "VXNlcm5hbWU6").await? {
            Ok(r) => r,
            Err(no) => return Ok(no),
        };
        let password = match prompt(conn, "UGFzc3dvcmQ6").await? {
            Ok(r) => r,
            Err(no) => return Ok(no),
        };
        let user = text(&user);
        (user.clone(), user, text(&password))
    } else {
        return Ok(Authenticated::No {
            reply: Reply::new(
                504,
                [5, 5, 4],
                "unrecognized authentication mechanism; PLAIN and LOGIN are offered",
            ),
            failed: false,
        });
    };
    let identity = if authz.is_empty() {
        authc.clone()
    } else {
        authz.clone()
    };
    match policy
        .auth_plain(&authz, &authc, &password, conn_meta)
        .await
    {
        Ok(Some(true)) => Ok(Authenticated::Yes(identity)),
        Ok(Some(false)) | Ok(None) => Ok(Authenticated::No {
            reply: Reply::new(535, [5, 7, 8], "authentication credentials invalid"),
            failed: true,
        }),
        Err(e) => {
            tracing::warn!("smtp_server_auth_plain failed: {e}");
            Ok(Authenticated::No {
                reply: Reply::new(
                    454,
                    [4, 7, 0],
                    "temporary authentication failure; try again later",
                ),
                failed: false,
            })
        }
    }
}

/// The client's first response: the initial response on the AUTH line when it gave
/// one, else its answer to `334 {challenge}`.
async fn first_response<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    initial: &str,
    challenge: &str,
) -> Result<Result<Vec<u8>, Authenticated>, Ended> {
    match initial {
        "" => prompt(conn, challenge).await,
        given => Ok(decode(given)),
    }
}

/// Sends `334 {challenge}` and reads the client's base64 answer (`*` cancels).
async fn prompt<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    challenge: &str,
) -> Result<Result<Vec<u8>, Authenticated>, Ended> {
    conn.reply(&Reply {
        code: 334,
        esc: None,
        lines: vec![challenge.to_owned()],
    });
    let mut line = Vec::new();
    conn.next_line(&mut line, false).await?;
    let answer = String::from_utf8_lossy(&line).trim().to_owned();
    if answer == "*" {
        return Ok(Err(Authenticated::No {
            reply: Reply::new(501, [5, 0, 0], "authentication cancelled"),
            failed: false,
        }));
    }
    Ok(decode(&answer))
}

fn decode(b64: &str) -> Result<Vec<u8>, Authenticated> {
    if b64 == "=" {
        return Ok(Vec::new());
    }
    base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|_| malformed("the response is not valid base64"))
}

fn malformed(why: &str) -> Authenticated {
    Authenticated::No {
        reply: Reply::new(501, [5, 5, 2], why),
        failed: false,
    }
}

/// Credentials as text; invalid UTF-8 becomes U+FFFD and so fails the check, never
/// an error that could echo the credentials.
fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
