//! A message in flight, as a policy sees it between the end of DATA and its
//! departure (KumoMTA's `smtp_server_message_received`), and how a policy refuses
//! one.

use std::fmt;

/// The message a client sent, whole: what the policy may read and change before
/// egress sends it on (cut-through) or spools it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MessageInFlight {
    /// The transaction id (cut-through) or spool id.
    pub id: String,
    /// MAIL FROM.
    pub sender: String,
    /// The recipients the destinations accepted.
    pub recipients: Vec<String>,
    /// Meta values (`received_from`, …; the policy may add its own).
    pub meta: serde_json::Map<String, serde_json::Value>,
    /// The message: header section, blank line, body; CR LF line ends, not
    /// dot-stuffed.
    pub data: Vec<u8>,
}

/// A policy's refusal of a message (KumoMTA's `kumo.reject(code, text)`): the
/// client hears exactly this reply. Returned inside a [`PolicyError`](crate::PolicyError);
/// find it with [`PolicyError::rejection`](crate::PolicyError::rejection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// 4xx or 5xx.
    pub code: u16,
    /// The text after the code (an enhanced status code first, when given).
    pub text: String,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.text)
    }
}

impl std::error::Error for Rejection {}
