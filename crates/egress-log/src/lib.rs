//! Where log records go: KumoMTA's local log segments and JSON webhooks.
//!
//! [`Loggers`] takes each [`LogRecord`] a relay makes, with what the logger may
//! copy from its message ([`Message`]: the header section and the meta values),
//! and hands it to every logger the policy declared:
//!
//! - a **local log** (`kumo.configure_local_logs`) writes zstd segments named and
//!   rolled as KumoMTA's (`max_file_size`, `max_segment_duration`, per record type
//!   `suffix`/`log_dir`/`segment_header`/`template`); a segment is finished —
//!   zstd frame ended, flushed, made read-only — when it rolls, when the loggers
//!   are replaced (a reload) and when they stop;
//! - a **log hook** (`kumo.configure_log_hook`, delivered as
//!   `policy-extras.log_hooks:new_json` says) writes each record to a backlog on
//!   disk as it is taken and POSTs it (alone, or batched as a JSON array) until
//!   the endpoint answers 2xx, backing off while it fails. The backlog survives
//!   restarts and `kill -9`; what the endpoint acknowledged is never sent again.
//!
//! Each logger runs on a thread of its own behind a queue of `back_pressure`
//! records: a relay that outruns its loggers waits rather than growing memory.
//! A [`RecordFilter`] (the policy's `filter_event` and
//! `should_enqueue_log_record`) may drop records per logger.
//!
//! ```no_run
//! use egress_log::{Loggers, Message};
//! use egress_record::{LocalLogParams, LogRecord, RecordType};
//! # fn main() -> Result<(), egress_log::LogError> {
//! let params: LocalLogParams = serde_json::from_str(r#"{ "log_dir": "/var/log/egress" }"#).unwrap();
//! let rt = tokio::runtime::Runtime::new().unwrap();
//! let loggers = Loggers::start(&[params], &[], "/var/lib/egressd".as_ref(), None, rt.handle())?;
//! loggers.record(LogRecord::new(RecordType::Reception, "id1", "a@example.com"), &Message::default());
//! loggers.finish(); // every segment complete
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod capture;
mod hook;
mod local;
mod nodeid;
mod prepare;
mod render;
mod segment;
mod space;
mod worker;

pub use egress_record::{
    LocalLogParams, LogHookParams, LogRecord, Message, RecordSink, RecordType,
};
pub use nodeid::node_id;
pub use segment::segment_name;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Why loggers could not start.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The node id could not be read or kept.
    #[error("node id at {path}: {problem}; set KUMO_NODE_ID to a UUID, or make the file writable")]
    NodeId {
        /// The file (or variable).
        path: PathBuf,
        /// What went wrong.
        problem: String,
    },
    /// A `per_record` template does not parse.
    #[error("{logger}: per_record.{kind}.template: {problem}")]
    Template {
        /// The logger.
        logger: String,
        /// The record type.
        kind: &'static str,
        /// The parser's words.
        problem: String,
    },
    /// A directory could not be made or used.
    #[error("{logger}: {path}: {problem}")]
    Directory {
        /// The logger.
        logger: String,
        /// The directory.
        path: PathBuf,
        /// What went wrong.
        problem: String,
    },
    /// A webhook's settings cannot work.
    #[error("log hook {name:?}: {problem}")]
    Hook {
        /// The hook.
        name: String,
        /// What is wrong and what to do.
        problem: String,
    },
}

/// A boxed future, as every engine crate's async entry points return.
pub type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Decides per logger whether a record is taken: `event` is the local log's
/// `filter_event`, or `should_enqueue_log_record` with the hook's name.
pub trait RecordFilter: Send + Sync {
    /// Whether anything answers `event` (asked once, when a logger starts; a
    /// logger whose event has no answer takes every record without asking).
    fn handles(&self, event: &str) -> bool;

    /// Whether the logger takes `record`, about `message`.
    fn keep<'a>(
        &'a self,
        event: &'a str,
        hook: Option<&'a str>,
        record: &'a LogRecord,
        message: &'a Message,
    ) -> Boxed<'a, bool>;
}

/// One record on its way, shared by every logger.
pub(crate) struct Event {
    pub record: LogRecord,
    pub message: Message,
}

/// Counts per logger, for metrics.
#[derive(Debug, Default)]
pub struct LoggerStats {
    /// Records written (local log) or acknowledged by the endpoint (hook).
    pub done: AtomicU64,
    /// Records a filter, or `enable = false`, left out.
    pub skipped: AtomicU64,
    /// Writes or POSTs that failed.
    pub failures: AtomicU64,
    /// Records taken and not yet done (a hook's: its backlog).
    pub pending: AtomicU64,
}

impl LoggerStats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
    fn sub(counter: &AtomicU64, n: u64) {
        // Never below zero, whatever the order of updates from two threads.
        let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(v.saturating_sub(n))
        });
    }
}

/// A logger as metrics and `egressd check` name it.
pub struct LoggerInfo {
    /// `local` or `hook`.
    pub kind: &'static str,
    /// The log directory, or the hook's name.
    pub name: String,
    /// Its counts.
    pub stats: Arc<LoggerStats>,
}

/// Every logger the policy declared.
pub struct Loggers {
    nodeid: Arc<str>,
    local: Vec<local::LocalLog>,
    hooks: Vec<hook::LogHook>,
    space: space::FreeSpace,
    wants_head: bool,
}

impl Loggers {
    /// Starts the local logs and hooks. `state_dir` holds the node id and each
    /// hook's backlog (`log-hooks/NAME/`); `runtime` runs the webhooks' POSTs and
    /// the filter's calls.
    pub fn start(
        local: &[LocalLogParams],
        hooks: &[LogHookParams],
        state_dir: &Path,
        filter: Option<Arc<dyn RecordFilter>>,
        runtime: &tokio::runtime::Handle,
    ) -> Result<Loggers, LogError> {
        let nodeid: Arc<str> = if local.is_empty() && hooks.is_empty() {
            Arc::from(egress_record::NIL_UUID)
        } else {
            Arc::from(node_id(state_dir)?)
        };
        let filter = filter.map(|f| (f, runtime.clone()));
        let local: Vec<local::LocalLog> = local
            .iter()
            .map(|p| local::LocalLog::start(p.clone(), filter.clone()))
            .collect::<Result<_, _>>()?;
        let hooks: Vec<hook::LogHook> = hooks
            .iter()
            .map(|p| hook::LogHook::start(p.clone(), state_dir, filter.clone(), runtime))
            .collect::<Result<_, _>>()?;
        let wants_head = local.iter().any(|l| !l.params.headers.is_empty())
            || hooks.iter().any(|h| !h.params.headers.is_empty());
        let space = space::FreeSpace::new(local.iter().map(|l| &l.params));
        Ok(Loggers {
            nodeid,
            local,
            hooks,
            space,
            wants_head,
        })
    }

    /// No logger at all: nothing is worth making a record for.
    pub fn is_empty(&self) -> bool {
        self.local.is_empty() && self.hooks.is_empty()
    }

    /// The node id stamped on every record.
    pub fn nodeid(&self) -> &str {
        &self.nodeid
    }

    fn hand_out(&self, mut record: LogRecord, message: &Message) {
        if self.is_empty() {
            return;
        }
        record.nodeid = self.nodeid.clone();
        let event = Arc::new(Event {
            record,
            message: message.clone(),
        });
        for log in &self.local {
            log.take(event.clone());
        }
        for hook in &self.hooks {
            hook.take(event.clone());
        }
    }

    /// Hands `record` to every logger. Waits only when a logger's queue is full.
    pub fn record(&self, record: LogRecord, message: &Message) {
        self.hand_out(record, message)
    }

    /// Every logger and its counts.
    pub fn loggers(&self) -> Vec<LoggerInfo> {
        let local = self.local.iter().map(|l| LoggerInfo {
            kind: "local",
            name: l.params.log_dir.display().to_string(),
            stats: l.stats.clone(),
        });
        let hooks = self.hooks.iter().map(|h| LoggerInfo {
            kind: "hook",
            name: h.params.name.clone(),
            stats: h.stats.clone(),
        });
        local.chain(hooks).collect()
    }

    /// Writes out every queued record and finishes every open segment; a local
    /// log goes on with new segments afterwards.
    pub fn flush(&self) {
        for log in &self.local {
            log.flush();
        }
        for hook in &self.hooks {
            hook.flush();
        }
    }

    /// Stops every logger: queued records written, segments finished, backlogs
    /// synced, each webhook's POST in flight finished (what is left stays in the
    /// backlog for the next start). Blocks until done.
    pub fn finish(self) {
        for log in self.local {
            log.finish();
        }
        for hook in self.hooks {
            hook.finish();
        }
    }
}

impl RecordSink for Loggers {
    fn enabled(&self) -> bool {
        !self.is_empty()
    }

    fn record(&self, record: LogRecord, message: &Message) {
        self.hand_out(record, message)
    }

    fn wants_head(&self) -> bool {
        self.wants_head
    }

    /// A log's file system below `min_free_space` or `min_free_inodes`.
    fn refusal(&self) -> Option<String> {
        self.space.refusal()
    }
}
