//! Delivery records: the policy's `kumo.configure_local_logs` and
//! `kumo.configure_log_hook` declarations made into egress-log's loggers, handed
//! to the relay as its record sink, and kept in step with reloads.
//!
//! A reload (SIGHUP, a monitored file) whose logging declarations are unchanged
//! finishes every open segment (KumoMTA's tailer sees them complete) and goes on
//! with the same loggers. Changed declarations replace the loggers: records made
//! while the old ones finish (a webhook POST in flight ends first) are held and
//! handed to the new ones, so none is lost.

use egress_log::{LoggerInfo, Loggers, Message, RecordFilter, RecordSink};
use egress_lua::Policy;
use egress_record::{LocalLogParams, LogHookParams, LogRecord};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

/// The default directory for the node id and each log hook's backlog.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/egressd";

type Held = Vec<(LogRecord, Message)>;

enum Current {
    Running(Arc<Loggers>),
    /// Loggers are being replaced: records wait here.
    Switching(Arc<Mutex<Held>>),
}

/// The relay's record sink: the loggers the policy declares now.
pub struct Records {
    current: RwLock<Current>,
    declared: Mutex<(Vec<LocalLogParams>, Vec<LogHookParams>)>,
    policy: Arc<Policy>,
    state_dir: PathBuf,
    runtime: tokio::runtime::Handle,
}

/// A policy's `filter_event` and `should_enqueue_log_record` handlers.
struct PolicyFilter(Arc<Policy>);

impl RecordFilter for PolicyFilter {
    fn handles(&self, event: &str) -> bool {
        self.0.has_handler(event)
    }

    fn keep<'a>(
        &'a self,
        event: &'a str,
        hook: Option<&'a str>,
        record: &'a LogRecord,
        message: &'a Message,
    ) -> egress_log::Boxed<'a, bool> {
        Box::pin(async move {
            match self.0.log_filter(event, hook, record, message).await {
                Ok(answer) => answer.unwrap_or(true),
                Err(e) => {
                    // A failing filter keeps the record: a record too many is
                    // better than one lost.
                    tracing::error!(event, "log record filter failed, record kept: {e}");
                    true
                }
            }
        })
    }
}

impl Records {
    /// Starts the loggers `policy` declares. Call within the runtime.
    pub fn start(policy: Arc<Policy>, state_dir: PathBuf) -> Result<Arc<Records>, String> {
        let init = policy.init();
        let runtime = tokio::runtime::Handle::current();
        let loggers = build(
            &policy,
            &state_dir,
            &runtime,
            &init.local_logs,
            &init.log_hooks,
        )?;
        describe(&loggers, &state_dir);
        Ok(Arc::new(Records {
            current: RwLock::new(Current::Running(Arc::new(loggers))),
            declared: Mutex::new((init.local_logs, init.log_hooks)),
            policy,
            state_dir,
            runtime,
        }))
    }

    /// After the policy was reloaded: segments finished, and the loggers
    /// replaced when their declarations changed. Blocks: run it off the runtime.
    pub fn reload(&self) {
        let init = self.policy.init();
        let declared = (init.local_logs, init.log_hooks);
        let unchanged = *self.declared.lock().unwrap_or_else(|e| e.into_inner()) == declared;
        if unchanged {
            if let Some(loggers) = self.running() {
                loggers.flush();
            }
            return;
        }
        let held = Arc::new(Mutex::new(Held::new()));
        let old = std::mem::replace(
            &mut *self.current.write().unwrap_or_else(|e| e.into_inner()),
            Current::Switching(held.clone()),
        );
        if let Current::Running(old) = old {
            finish(old);
        }
        let fresh = build(
            &self.policy,
            &self.state_dir,
            &self.runtime,
            &declared.0,
            &declared.1,
        );
        let loggers = match fresh {
            Ok(l) => {
                describe(&l, &self.state_dir);
                *self.declared.lock().unwrap_or_else(|e| e.into_inner()) = declared;
                l
            }
            Err(e) => {
                tracing::error!("the reloaded policy's logging cannot start ({e}); the previous logging goes on");
                let (local, hooks) = self
                    .declared
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                match build(&self.policy, &self.state_dir, &self.runtime, &local, &hooks) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!("logging cannot restart either ({e}); records are not kept until the next reload");
                        Loggers::start(&[], &[], &self.state_dir, None, &self.runtime)
                            .expect("no loggers cannot fail")
                    }
                }
            }
        };
        let loggers = Arc::new(loggers);
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        for (record, message) in held.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            loggers.record(record, &message);
        }
        *current = Current::Running(loggers);
    }

    /// At shutdown: every record written, every segment finished, backlogs synced.
    /// Blocks: run it off the runtime.
    pub fn finish(&self) {
        let empty = Arc::new(Mutex::new(Held::new()));
        let old = std::mem::replace(
            &mut *self.current.write().unwrap_or_else(|e| e.into_inner()),
            Current::Switching(empty),
        );
        if let Current::Running(old) = old {
            finish(old);
        }
    }

    /// The loggers and their counts (for metrics).
    pub fn loggers(&self) -> Vec<LoggerInfo> {
        self.running().map(|l| l.loggers()).unwrap_or_default()
    }

    fn running(&self) -> Option<Arc<Loggers>> {
        match &*self.current.read().unwrap_or_else(|e| e.into_inner()) {
            Current::Running(l) => Some(l.clone()),
            Current::Switching(_) => None,
        }
    }
}

fn build(
    policy: &Arc<Policy>,
    state_dir: &std::path::Path,
    runtime: &tokio::runtime::Handle,
    local: &[LocalLogParams],
    hooks: &[LogHookParams],
) -> Result<Loggers, String> {
    let filter: Arc<dyn RecordFilter> = Arc::new(PolicyFilter(policy.clone()));
    Loggers::start(local, hooks, state_dir, Some(filter), runtime).map_err(|e| e.to_string())
}

fn finish(mut loggers: Arc<Loggers>) {
    // A relay task may hold a clone for a moment (a record in hand).
    for _ in 0..200 {
        match Arc::try_unwrap(loggers) {
            Ok(only) => return only.finish(),
            Err(shared) => loggers = shared,
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // Still shared: finished when the last holder drops it.
    loggers.flush();
}

fn describe(loggers: &Loggers, state_dir: &std::path::Path) {
    for l in loggers.loggers() {
        tracing::info!(kind = l.kind, name = %l.name, nodeid = loggers.nodeid(), state_dir = %state_dir.display(), "delivery records: logging");
    }
}

impl RecordSink for Records {
    fn enabled(&self) -> bool {
        match &*self.current.read().unwrap_or_else(|e| e.into_inner()) {
            Current::Running(l) => l.enabled(),
            Current::Switching(_) => true,
        }
    }

    fn record(&self, record: LogRecord, message: &Message) {
        let loggers = match &*self.current.read().unwrap_or_else(|e| e.into_inner()) {
            Current::Running(l) => l.clone(),
            Current::Switching(held) => {
                held.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((record, message.clone()));
                return;
            }
        };
        loggers.record(record, message);
    }

    fn wants_head(&self) -> bool {
        match &*self.current.read().unwrap_or_else(|e| e.into_inner()) {
            Current::Running(l) => l.wants_head(),
            Current::Switching(_) => true,
        }
    }

    fn refusal(&self) -> Option<String> {
        self.running().and_then(|l| l.refusal())
    }
}
