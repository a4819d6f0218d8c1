//! A logger's thread and the bounded queue in front of it — the same for a local
//! log and a hook: records in, a flush that answers when done, stop on close.
//!
//! The queue hands records over in batches: a producer does not wake the thread
//! for each record (a wake-up costs more than writing a record), the thread takes
//! everything queued every [`TICK`], or at once when [`BATCH`] records wait or a
//! flush is asked. A full queue (`back_pressure`) makes producers wait.

use crate::Event;
use std::collections::VecDeque;
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// What a logger's thread is asked.
pub(crate) enum Command {
    Record(Arc<Event>),
    /// Write out what is held, then say so.
    Flush(SyncSender<()>),
}

/// The longest a record waits in the queue.
pub(crate) const TICK: Duration = Duration::from_millis(50);
/// This many waiting records wake the thread at once.
const BATCH: usize = 512;

#[derive(Default)]
struct State {
    items: VecDeque<Command>,
    closed: bool,
}

/// The queue between producers and a logger's thread.
pub(crate) struct Queue {
    state: Mutex<State>,
    /// The thread waits here for work.
    work: Condvar,
    /// Producers wait here for room.
    room: Condvar,
    capacity: usize,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, command: Command, urgent: bool) {
        let mut state = self.lock();
        while state.items.len() >= self.capacity && !state.closed {
            state = self.room.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        if state.closed {
            return;
        }
        state.items.push_back(command);
        if urgent || state.items.len() >= BATCH {
            self.work.notify_one();
        }
    }

    /// Everything queued, waiting up to `wait` for something; `None` once closed
    /// and empty.
    pub fn take_all(&self, wait: Duration) -> Option<Vec<Command>> {
        let mut state = self.lock();
        if state.items.is_empty() && !state.closed {
            state = self
                .work
                .wait_timeout(state, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        if state.items.is_empty() && state.closed {
            return None;
        }
        let all: Vec<Command> = state.items.drain(..).collect();
        self.room.notify_all();
        Some(all)
    }

    fn close(&self) {
        self.lock().closed = true;
        self.work.notify_all();
        self.room.notify_all();
    }
}

/// A running thread and its queue; stopped (queue closed, thread joined) on drop.
pub(crate) struct Worker {
    queue: Arc<Queue>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts `run` on a thread named `name`, behind a queue of `capacity`.
    pub fn spawn(
        name: &str,
        capacity: usize,
        run: impl FnOnce(Arc<Queue>) + Send + 'static,
    ) -> std::io::Result<Worker> {
        let queue = Arc::new(Queue {
            state: Mutex::default(),
            work: Condvar::new(),
            room: Condvar::new(),
            capacity: capacity.max(1),
        });
        let theirs = queue.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || run(theirs))?;
        Ok(Worker {
            queue,
            thread: Some(thread),
        })
    }

    /// Queues a record; waits while the queue is full (back-pressure).
    pub fn take(&self, event: Arc<Event>) {
        self.queue.push(Command::Record(event), false);
    }

    /// Returns once the thread has written out everything queued before.
    pub fn flush(&self) {
        let (done, wait) = std::sync::mpsc::sync_channel(1);
        self.queue.push(Command::Flush(done), true);
        let _ = wait.recv();
    }

    /// Closes the queue and waits for the thread to finish what it holds.
    pub fn stop(&mut self) {
        self.queue.close();
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
