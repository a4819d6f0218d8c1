//! AUTH PLAIN (RFC 4954 with RFC 4616's mechanism) towards a destination that
//! wants a password: a smarthost, a provider's submission port.

use super::{is_positive, ClientSession, Phase};
use base64::Engine;
use smtp_proto::Response;
use std::io;
use tokio::io::{AsyncRead, AsyncWrite};

impl<S: AsyncRead + AsyncWrite + Unpin> ClientSession<S> {
    /// `AUTH PLAIN` with the credential as the initial response (one round trip).
    /// The destination's reply: 235 when it accepted, anything else is its refusal
    /// (535 for a wrong password), after which the session stays greeted.
    ///
    /// Whether the session is fit to carry a credential (TLS, a verified
    /// certificate) is the caller's decision; this only refuses when the
    /// destination did not offer PLAIN, so nothing is sent that it did not ask for.
    pub async fn auth_plain(
        &mut self,
        username: &str,
        password: &str,
    ) -> io::Result<Response<String>> {
        self.expect(Phase::Ready, "AUTH")?;
        if !self.extensions.auth_plain {
            return Err(io::Error::other(
                "the destination does not offer AUTH PLAIN in its EHLO reply",
            ));
        }
        // RFC 4616: authorization identity (empty: the same), NUL, user, NUL, password.
        let mut message = Vec::with_capacity(username.len() + password.len() + 2);
        message.push(0);
        message.extend_from_slice(username.as_bytes());
        message.push(0);
        message.extend_from_slice(password.as_bytes());
        let encoded = base64::engine::general_purpose::STANDARD.encode(&message);
        let reply = self
            .command(&format!("AUTH PLAIN {encoded}"), self.timeouts.ehlo, "AUTH")
            .await?;
        if reply.code == 334 {
            // A server that ignores the initial response asks for it again; cancel
            // rather than guess (RFC 4954 §4: `*` aborts the exchange).
            let cancelled = self.command("*", self.timeouts.ehlo, "AUTH").await?;
            self.phase = Phase::Ready;
            return Ok(Response {
                code: 535,
                esc: cancelled.esc,
                message: format!(
                    "the destination asked again for the PLAIN response it was given ({})",
                    super::one_line(&cancelled.message)
                ),
            });
        }
        if is_positive(&reply) {
            self.authenticated = true;
        }
        Ok(reply)
    }

    /// The destination accepted this session's AUTH.
    pub fn is_authenticated(&self) -> bool {
        self.authenticated
    }
}
