//! KumoMTA's log record as plain data, and the parameters that say where records go.
//!
//! A relay makes a [`LogRecord`] for each thing it decides (a message received,
//! a recipient delivered, deferred or bounced, a command refused) with
//! KumoMTA's field names and value shapes, so what reads KumoMTA's logs reads
//! ours. [`LocalLogParams`] and [`LogHookParams`] are what
//! `kumo.configure_local_logs` and `kumo.configure_log_hook` declare. The files
//! and webhooks themselves are egress-log's; nothing here does I/O.
//!
//! ```
//! use egress_record::{LogRecord, RecordType, Response};
//! let mut record = LogRecord::new(RecordType::Bounce, "4f1c", "sender@example.com");
//! record.recipient = vec!["user@example.net".into()];
//! record.response = Response::new(550, Some([5, 1, 1]), "no such user", Some("RCPT TO"));
//! let json: serde_json::Value = serde_json::from_str(&record.to_json()).unwrap();
//! assert_eq!(json["response"]["enhanced_code"]["detail"], 1);
//! assert_eq!(json["bounce_classification"], "Uncategorized");
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod params;
mod record;
mod shape;
mod sink;

pub use params::{selected, LocalLogParams, LogHookParams, MinFree, PerRecord, Webhook};
pub use record::{
    EnhancedCode, LogRecord, PeerAddress, RecordType, Response, SourceAddress, NIL_UUID,
    UNCATEGORIZED,
};
pub use shape::{conforms, REFERENCE};
pub use sink::{Message, RecordSink};
