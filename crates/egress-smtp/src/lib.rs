//! The SMTP wire for egress: what is exact on both sides of a relay.
//!
//! - [`BodyReader`]: DATA framing that only ends at CR LF `.` CR LF, reports bare
//!   line endings, and writes a CR LF-only, dot-stuffed stream for the next hop — so a
//!   message cannot smuggle a second one past us or past the destination.
//! - [`ClientSession`]: an SMTP client over any stream (a direct TCP connection, a
//!   proxied one, TLS), keeping track of the dialogue so a session is reused only in
//!   a known-clean state.
//! - [`Reply`] and [`ReplyBuffer`]: replies we make and replies we read.
//! - [`smtp_path`]: a mailbox as it goes back on the wire, quoted where needed.
//! - [`MaybeTls`] and [`TlsInfo`]: STARTTLS in place, on either side, and what the
//!   handshake negotiated ([`ClientSession::starttls`] is the client's).
//!
//! No policy, no routing, no listener: those are egressd's. Everything here works
//! on byte streams the caller supplies, so it is tested over in-memory pipes.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod address;
mod body;
mod client;
mod reply;
mod tls;
pub mod words;

pub use address::smtp_path;
pub use body::{stuff, BodyReader, InvalidEnding, LineEndings};
pub use client::{ClientSession, Extensions, Phase, RefusedGreeting, StartTlsError, Timeouts};
pub use reply::{parse_one, Reply, ReplyBuffer};
pub use smtp_proto::response::parser::ResponseReceiver;
pub use smtp_proto::Response;
pub use tls::{
    certificate_fault, describe_tls_error, subject, CertificateFault, MaybeTls, TlsInfo,
};
