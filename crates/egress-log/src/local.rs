//! A local log: one thread that renders records and writes them into zstd
//! segments, one open segment per (directory, suffix), rolled by size and age.

use crate::prepare::{Filter, Preparer};
use crate::segment::{self, Segment};
use crate::worker::{Command, Queue, Worker, TICK};
use crate::{Event, LogError, LoggerStats};
use egress_record::LocalLogParams;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// A running local log.
pub(crate) struct LocalLog {
    pub params: LocalLogParams,
    pub stats: Arc<LoggerStats>,
    worker: Worker,
}

impl LocalLog {
    pub fn start(params: LocalLogParams, filter: Filter) -> Result<LocalLog, LogError> {
        let what = format!("local log {}", params.log_dir.display());
        let event = params.filter_event.clone().map(|e| (e, None));
        let preparer = Preparer::new(
            &what,
            filter,
            event,
            &params.headers,
            &params.meta,
            &params.per_record,
        )?;
        let mut dirs = vec![params.log_dir.clone()];
        dirs.extend(params.per_record.values().filter_map(|p| p.log_dir.clone()));
        for dir in &dirs {
            std::fs::create_dir_all(dir).map_err(|e| LogError::Directory {
                logger: what.clone(),
                path: dir.clone(),
                problem: e.to_string(),
            })?;
            segment::mark_existing_done(dir);
        }
        let stats = Arc::new(LoggerStats::default());
        let mut writer = Writer {
            text: Vec::with_capacity(2048),
            params: params.clone(),
            preparer,
            open: HashMap::new(),
            stats: stats.clone(),
        };
        let worker = Worker::spawn("local-log", params.back_pressure, move |queue| {
            writer.run(queue)
        })
        .map_err(|e| LogError::Directory {
            logger: what,
            path: params.log_dir.clone(),
            problem: format!("cannot start its thread: {e}"),
        })?;
        Ok(LocalLog {
            params,
            stats,
            worker,
        })
    }

    /// Queues a record; waits while the queue is full (back-pressure).
    pub fn take(&self, event: Arc<Event>) {
        LoggerStats::add(&self.stats.pending, 1);
        self.worker.take(event);
    }

    /// Every queued record written and every open segment finished.
    pub fn flush(&self) {
        self.worker.flush();
    }

    /// Writes what is queued, finishes the segments, stops.
    pub fn finish(mut self) {
        self.worker.stop();
    }
}

struct Writer {
    /// The text of the record being written (reused).
    text: Vec<u8>,
    params: LocalLogParams,
    preparer: Preparer,
    open: HashMap<(PathBuf, Option<String>), Segment>,
    stats: Arc<LoggerStats>,
}

impl Writer {
    fn run(&mut self, queue: Arc<Queue>) {
        loop {
            let next = self.open.values().filter_map(|s| s.expires).min();
            let wait = match next {
                Some(at) => at.saturating_duration_since(Instant::now()).min(TICK),
                None => TICK,
            };
            let Some(commands) = queue.take_all(wait) else {
                break;
            };
            for command in commands {
                match command {
                    Command::Record(event) => {
                        LoggerStats::sub(&self.stats.pending, 1);
                        self.write(&event);
                    }
                    Command::Flush(done) => {
                        self.finish_where(|_| true);
                        let _ = done.send(());
                    }
                }
            }
            let now = Instant::now();
            self.finish_where(|s| s.expires.is_some_and(|e| e <= now));
        }
        self.finish_where(|_| true);
    }

    fn finish_where(&mut self, done: impl Fn(&Segment) -> bool) {
        let keys: Vec<_> = self
            .open
            .iter()
            .filter(|(_, s)| done(s))
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            self.close(&key);
        }
    }

    fn write(&mut self, event: &Event) {
        let mut text = std::mem::take(&mut self.text);
        text.clear();
        let prepared = self.preparer.prepare_into(event, &mut text);
        self.write_text(event, &text, prepared);
        self.text = text;
    }

    fn write_text(&mut self, event: &Event, text: &[u8], prepared: Option<Result<(), String>>) {
        match prepared {
            None => return LoggerStats::add(&self.stats.skipped, 1),
            Some(Ok(())) => {}
            Some(Err(e)) => {
                LoggerStats::add(&self.stats.failures, 1);
                return tracing::error!(log_dir = %self.params.log_dir.display(), "record not logged: {e}");
            }
        };
        let per = self.preparer.per_record(event.record.kind);
        let dir = per
            .and_then(|p| p.log_dir.clone())
            .unwrap_or_else(|| self.params.log_dir.clone());
        let suffix = per.and_then(|p| p.suffix.clone());
        let header = per.map(|p| p.segment_header.as_str()).unwrap_or("");
        let key = (dir, suffix);
        if !self.open.contains_key(&key) {
            let expires = self.params.max_segment_duration.map(|d| Instant::now() + d);
            match Segment::open(
                &key.0,
                key.1.as_deref(),
                self.params.compression_level,
                expires,
                header,
            ) {
                Ok(segment) => {
                    self.open.insert(key.clone(), segment);
                }
                Err(e) => {
                    LoggerStats::add(&self.stats.failures, 1);
                    return tracing::error!(log_dir = %key.0.display(), "cannot open a log segment: {e}");
                }
            }
        }
        let Some(segment) = self.open.get_mut(&key) else {
            return;
        };
        match segment.write(text) {
            Ok(()) => LoggerStats::add(&self.stats.done, 1),
            Err(e) => {
                LoggerStats::add(&self.stats.failures, 1);
                tracing::error!(segment = %segment.path.display(), "record not logged: {e}");
            }
        }
        if segment.written >= self.params.max_file_size {
            self.close(&key);
        }
    }

    fn close(&mut self, key: &(PathBuf, Option<String>)) {
        if let Some(segment) = self.open.remove(key) {
            let path = segment.path.clone();
            if let Err(e) = segment.finish() {
                LoggerStats::add(&self.stats.failures, 1);
                tracing::error!(segment = %path.display(), "could not finish log segment: {e}");
            }
        }
    }
}
