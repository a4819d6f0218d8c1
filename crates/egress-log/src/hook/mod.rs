//! A log hook delivered to a JSON webhook: a thread takes records (filter,
//! headers and meta, text) and appends them to the durable backlog; a task on
//! the runtime POSTs from the backlog and advances its cursor only when the
//! endpoint answered 2xx, backing off (doubling from `retry_interval` to
//! `max_retry_interval`) while it fails. Memory stays bounded whatever the
//! endpoint does: the queue before the thread holds `back_pressure` records and
//! the rest wait on disk.

mod backlog;
mod post;

use crate::prepare::{Filter, Preparer};
use crate::worker::{Command, Queue, Worker, TICK};
use crate::{Event, LogError, LoggerStats};
use egress_record::{LogHookParams, Webhook};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How long a batch short of `batch_size` waits for more when the hook sets no
/// `max_batch_latency`.
const BATCH_LATENCY: Duration = Duration::from_millis(100);

/// Most records appended in one write.
const INTAKE_BATCH: usize = 1024;

/// A running hook.
pub(crate) struct LogHook {
    pub params: LogHookParams,
    pub stats: Arc<LoggerStats>,
    worker: Worker,
    stop: Arc<Stop>,
    sender_done: Option<std::sync::Mutex<std::sync::mpsc::Receiver<()>>>,
    post_timeout: Duration,
}

#[derive(Default)]
struct Stop {
    now: AtomicBool,
    wake: Notify,
}

impl LogHook {
    pub fn start(
        params: LogHookParams,
        state_dir: &Path,
        filter: Filter,
        runtime: &tokio::runtime::Handle,
    ) -> Result<LogHook, LogError> {
        let fail = |problem: String| LogError::Hook {
            name: params.name.clone(),
            problem,
        };
        let webhook = params.webhook.clone().ok_or_else(|| {
            fail(
                "has no webhook: egressd delivers a log hook's records to the url given to \
                  policy-extras.log_hooks:new_json { name, url, … }; a custom_lua constructor \
                  (log_hooks:new) is not supported"
                    .into(),
            )
        })?;
        if params.name.is_empty()
            || !params
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(fail(
                "name: expected letters, digits, '-', '_' or '.' (it names a directory)".into(),
            ));
        }
        if webhook.batch_size == 0 {
            return Err(fail("batch_size: expected 1 or more".into()));
        }
        let endpoint = post::Endpoint::new(&webhook.url, webhook.timeout).map_err(fail)?;
        let dir = state_dir.join("log-hooks").join(&params.name);
        let (writer, reader, pending) = backlog::open(&dir).map_err(|e| LogError::Directory {
            logger: format!("log hook {:?}", params.name),
            path: dir.clone(),
            problem: format!("{e} (the backlog lives under the state directory)"),
        })?;
        let what = format!("log hook {:?}", params.name);
        let preparer = Preparer::new(
            &what,
            filter,
            Some((
                "should_enqueue_log_record".into(),
                Some(params.name.clone()),
            )),
            &params.headers,
            &params.meta,
            &params.per_record,
        )?;
        let stats = Arc::new(LoggerStats::default());
        LoggerStats::add(&stats.pending, pending);
        let stop = Arc::new(Stop::default());
        let mut intake = Intake {
            preparer,
            writer,
            stats: stats.clone(),
            stop: stop.clone(),
            name: params.name.clone(),
        };
        let worker = Worker::spawn("log-hook", params.back_pressure, move |queue| {
            intake.run(queue)
        })
        .map_err(|e| fail(format!("cannot start its thread: {e}")))?;
        let (done_tx, done_rx) = sync_channel(1);
        let sender = Sender {
            reader: Arc::new(Mutex::new(reader)),
            endpoint,
            webhook: webhook.clone(),
            stats: stats.clone(),
            stop: stop.clone(),
            name: params.name.clone(),
        };
        runtime.spawn(async move {
            sender.run().await;
            let _ = done_tx.send(());
        });
        Ok(LogHook {
            params,
            stats,
            worker,
            stop,
            sender_done: Some(std::sync::Mutex::new(done_rx)),
            post_timeout: webhook.timeout,
        })
    }

    /// Queues a record; waits while the queue is full (back-pressure).
    pub fn take(&self, event: Arc<Event>) {
        self.worker.take(event);
    }

    /// Every queued record is in the backlog, synced.
    pub fn flush(&self) {
        self.worker.flush();
    }

    /// Backlogs what is queued, lets a POST in flight end, and stops.
    pub fn finish(mut self) {
        self.stop_all();
    }

    fn stop_all(&mut self) {
        self.worker.stop();
        self.stop.now.store(true, Ordering::SeqCst);
        self.stop.wake.notify_waiters();
        self.stop.wake.notify_one();
        if let Some(done) = self.sender_done.take() {
            let done = done.into_inner().unwrap_or_else(|e| e.into_inner());
            let _ = done.recv_timeout(self.post_timeout + Duration::from_secs(1));
        }
    }
}

impl Drop for LogHook {
    fn drop(&mut self) {
        self.stop_all();
    }
}

struct Intake {
    preparer: Preparer,
    writer: backlog::Writer,
    stats: Arc<LoggerStats>,
    stop: Arc<Stop>,
    name: String,
}

impl Intake {
    fn run(&mut self, queue: Arc<Queue>) {
        let mut batch: Vec<Vec<u8>> = Vec::new();
        // Appended records are synced within SYNC_EVERY (and at a flush).
        while let Some(commands) = queue.take_all(backlog::SYNC_EVERY.min(TICK)) {
            let mut flushes = Vec::new();
            for command in commands {
                match command {
                    Command::Record(event) => match self.preparer.prepare(&event) {
                        None => LoggerStats::add(&self.stats.skipped, 1),
                        Some(Ok(text)) => batch.push(text),
                        Some(Err(e)) => {
                            LoggerStats::add(&self.stats.failures, 1);
                            tracing::error!(hook = %self.name, "record not queued: {e}");
                        }
                    },
                    Command::Flush(done) => flushes.push(done),
                }
                if batch.len() >= INTAKE_BATCH {
                    self.append(&mut batch);
                }
            }
            self.append(&mut batch);
            if self.writer.sync_due() || !flushes.is_empty() {
                self.sync();
            }
            for done in flushes {
                let _ = done.send(());
            }
        }
        self.sync();
    }

    fn append(&mut self, batch: &mut Vec<Vec<u8>>) {
        if batch.is_empty() {
            return;
        }
        // A backlog that cannot be written keeps the records in hand and tries
        // again: the queue before this thread fills, and the relay waits.
        loop {
            match self.writer.append(batch) {
                Ok(()) => break,
                Err(e) => {
                    LoggerStats::add(&self.stats.failures, 1);
                    tracing::error!(hook = %self.name, "cannot write the backlog: {e}; retrying in 1 s");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
        LoggerStats::add(&self.stats.pending, batch.len() as u64);
        batch.clear();
        self.stop.wake.notify_one();
    }

    fn sync(&mut self) {
        if let Err(e) = self.writer.sync() {
            tracing::error!(hook = %self.name, "cannot sync the backlog: {e}");
        }
    }
}

struct Sender {
    reader: Arc<Mutex<backlog::Reader>>,
    endpoint: post::Endpoint,
    webhook: Webhook,
    stats: Arc<LoggerStats>,
    stop: Arc<Stop>,
    name: String,
}

impl Sender {
    async fn run(mut self) {
        let mut delay = self.webhook.retry_interval;
        let mut waiting_since: Option<Instant> = None;
        // Records read and not yet taken by the endpoint, and where reading goes on.
        let mut held: Vec<Vec<u8>> = Vec::new();
        let mut next = None;
        // A batch short of batch_size (or of min_batch_size, when given) waits up
        // to max_batch_latency — by default BATCH_LATENCY — for more: under load
        // every POST then carries a full batch instead of the few records that
        // came in during the last one.
        let latency = self
            .webhook
            .max_batch_latency
            .unwrap_or(match self.webhook.min_batch_size {
                Some(_) => Duration::from_secs(1),
                None => BATCH_LATENCY,
            });
        let wanted = self
            .webhook
            .min_batch_size
            .unwrap_or(self.webhook.batch_size)
            .min(self.webhook.batch_size);
        while !self.stop.now.load(Ordering::SeqCst) {
            let room = self.webhook.batch_size - held.len();
            if room > 0 {
                match self.peek(next, room).await {
                    Ok((more, after)) => {
                        held.extend(more);
                        next = Some(after);
                    }
                    Err(e) => {
                        tracing::error!(hook = %self.name, "cannot read the backlog: {e}");
                        self.pause(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            if held.is_empty() {
                self.stop.wake.notified().await;
                continue;
            }
            let since = *waiting_since.get_or_insert_with(Instant::now);
            if held.len() < wanted && since.elapsed() < latency {
                let _ = tokio::time::timeout(latency - since.elapsed(), self.stop.wake.notified())
                    .await;
                continue;
            }
            let n = held.len() as u64;
            let body = self.body(&held);
            match self.endpoint.post(body).await {
                Ok(status) if (200..300).contains(&status) => {
                    if let Some(after) = next {
                        if let Err(e) = self.ack(after).await {
                            tracing::error!(hook = %self.name, "cannot record what the endpoint took: {e}");
                        }
                    }
                    held.clear();
                    waiting_since = None;
                    LoggerStats::add(&self.stats.done, n);
                    LoggerStats::sub(&self.stats.pending, n);
                    delay = self.webhook.retry_interval;
                }
                answer => {
                    LoggerStats::add(&self.stats.failures, 1);
                    let why = match answer {
                        Ok(status) => format!("HTTP {status}"),
                        Err(e) => e,
                    };
                    tracing::warn!(hook = %self.name, url = %self.webhook.url, "webhook POST failed: {why}; {n} record(s) kept, next try in {delay:?}");
                    self.pause(delay).await;
                    delay = (delay * 2).min(self.webhook.max_retry_interval);
                }
            }
        }
    }

    fn body(&self, batch: &[Vec<u8>]) -> Vec<u8> {
        let trim =
            |r: &[u8]| -> usize { r.len() - r.iter().rev().take_while(|b| **b == b'\n').count() };
        if self.webhook.batch_size == 1 {
            return batch
                .first()
                .map(|r| r[..trim(r)].to_vec())
                .unwrap_or_default();
        }
        let mut body = Vec::with_capacity(batch.iter().map(Vec::len).sum::<usize>() + 2);
        body.push(b'[');
        for (i, r) in batch.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(&r[..trim(r)]);
        }
        body.push(b']');
        body
    }

    async fn pause(&self, delay: Duration) {
        let stop = &self.stop;
        let _ = tokio::time::timeout(delay, async {
            while !stop.now.load(Ordering::SeqCst) {
                stop.wake.notified().await;
            }
        })
        .await;
    }

    /// Up to `max` records from `from` (none: the acknowledged cursor).
    async fn peek(
        &self,
        from: Option<backlog::Cursor>,
        max: usize,
    ) -> std::io::Result<(Vec<Vec<u8>>, backlog::Cursor)> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let mut reader = reader.lock().unwrap_or_else(|e| e.into_inner());
            match from {
                Some(from) => reader.peek_from(from, max),
                None => reader.peek(max),
            }
        })
        .await
        .map_err(std::io::Error::other)?
    }

    async fn ack(&self, next: backlog::Cursor) -> std::io::Result<()> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            reader.lock().unwrap_or_else(|e| e.into_inner()).ack(next)
        })
        .await
        .map_err(std::io::Error::other)?
    }
}
