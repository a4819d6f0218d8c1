//! Where a relay hands its records: a [`RecordSink`] the embedder supplies
//! (egress-log's loggers, or anything that takes records).

use crate::LogRecord;
use serde_json::{Map, Value};
use std::sync::Arc;

/// What a logger may copy from the message a record is about.
#[derive(Debug, Clone, Default)]
pub struct Message {
    /// The header section (up to the blank line), when the message was seen.
    pub head: Option<Arc<[u8]>>,
    /// Meta values (`reception_protocol`, `received_from`, `received_via`,
    /// `hostname`, `ehlo_domain`, `authn_id`).
    pub meta: Arc<Map<String, Value>>,
}

/// Takes the records a relay makes.
pub trait RecordSink: Send + Sync {
    /// Whether records are wanted now (a relay makes none while not). Default: yes.
    fn enabled(&self) -> bool {
        true
    }

    /// One record, about `message`. Called on the relay's own tasks: it must not
    /// wait long (a bounded queue that is full may make it wait: back-pressure).
    fn record(&self, record: LogRecord, message: &Message);

    /// Whether some logger copies headers: only then does the relay keep a
    /// message's header section. Default: no.
    fn wants_head(&self) -> bool {
        false
    }

    /// Why new mail must wait now (a log short of disk space); `None` when all is
    /// well. Default: `None`.
    fn refusal(&self) -> Option<String> {
        None
    }
}
