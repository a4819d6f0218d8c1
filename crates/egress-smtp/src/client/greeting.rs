//! What the greeting tells: the extensions a destination offers, and its refusal.

use super::one_line;
use smtp_proto::Response;
use std::io;

/// What the destination offered in its EHLO reply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Extensions {
    /// 8BITMIME (RFC 6152).
    pub eight_bit_mime: bool,
    /// PIPELINING (RFC 2920).
    pub pipelining: bool,
    /// STARTTLS (RFC 3207).
    pub starttls: bool,
    /// AUTH with the PLAIN mechanism (RFC 4954, RFC 4616).
    pub auth_plain: bool,
    /// SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
    /// CHUNKING: BDAT instead of DATA (RFC 3030).
    pub chunking: bool,
}

/// The destination refused the greeting (a banner other than 220, or EHLO and
/// HELO both refused): its reply, inside the `io::Error` that
/// [`ClientSession::greet`](super::ClientSession::greet) returns, for a caller that acts on replies.
#[derive(Debug)]
pub struct RefusedGreeting {
    /// `banner` or `EHLO and HELO refused`.
    pub step: &'static str,
    /// The destination's reply.
    pub reply: Response<String>,
}

impl RefusedGreeting {
    /// The refusal inside an error from [`ClientSession::greet`](super::ClientSession::greet), if that is what
    /// it was.
    pub fn of(e: &io::Error) -> Option<&RefusedGreeting> {
        e.get_ref()?.downcast_ref::<RefusedGreeting>()
    }
}

impl std::fmt::Display for RefusedGreeting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} {}",
            self.step,
            self.reply.code,
            one_line(&self.reply.message)
        )
    }
}

impl std::error::Error for RefusedGreeting {}

/// The keywords of an EHLO reply (the first line is the server's name).
pub(super) fn parse_extensions(message: &str) -> Extensions {
    let mut ext = Extensions::default();
    for line in message.split('\n').skip(1) {
        let keyword = line.split_whitespace().next().unwrap_or("");
        match keyword.to_ascii_uppercase().as_str() {
            "8BITMIME" => ext.eight_bit_mime = true,
            "PIPELINING" => ext.pipelining = true,
            "STARTTLS" => ext.starttls = true,
            "SMTPUTF8" => ext.smtputf8 = true,
            "CHUNKING" => ext.chunking = true,
            // `AUTH PLAIN LOGIN`; old servers also say `AUTH=PLAIN LOGIN`.
            k if k == "AUTH" || k.starts_with("AUTH=") => {
                let rest = line.split_once(['=', ' ']).map_or("", |(_, r)| r);
                ext.auth_plain |= rest
                    .split_whitespace()
                    .any(|m| m.eq_ignore_ascii_case("PLAIN"));
            }
            _ => {}
        }
    }
    ext
}
