//! A logger's thread and the bounded queue in front of it — the same for a local
//! log and a hook: records in, a flush that answers when done, stop on close.

use crate::Event;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

/// What a logger's thread is asked.
pub(crate) enum Command {
    Record(Arc<Event>),
    /// Write out what is held, then say so.
    Flush(SyncSender<()>),
}

/// A running thread and its queue; stopped (queue closed, thread joined) on drop.
pub(crate) struct Worker {
    queue: Option<SyncSender<Command>>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts `run` on a thread named `name`, behind a queue of `capacity`.
    pub fn spawn(
        name: &str,
        capacity: usize,
        run: impl FnOnce(Receiver<Command>) + Send + 'static,
    ) -> std::io::Result<Worker> {
        let (queue, rx) = sync_channel(capacity.max(1));
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || run(rx))?;
        Ok(Worker {
            queue: Some(queue),
            thread: Some(thread),
        })
    }

    /// Queues a record; waits while the queue is full (back-pressure).
    pub fn take(&self, event: Arc<Event>) {
        if let Some(queue) = &self.queue {
            let _ = queue.send(Command::Record(event));
        }
    }

    /// Returns once the thread has written out everything queued before.
    pub fn flush(&self) {
        if let Some(queue) = &self.queue {
            let (done, wait) = sync_channel(1);
            if queue.send(Command::Flush(done)).is_ok() {
                let _ = wait.recv();
            }
        }
    }

    /// Closes the queue and waits for the thread to finish what it holds.
    pub fn stop(&mut self) {
        drop(self.queue.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}
