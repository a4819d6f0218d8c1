//! Graceful shutdown: stop accepting, let open transactions finish, then 421 the rest.

use tokio::sync::watch;

/// Where the server is in shutting down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Serving.
    Running,
    /// Not accepting; sessions end at their next transaction boundary with 421.
    Draining,
    /// The drain deadline passed: every session ends with 421 at its next read.
    Force,
}

/// A session's view of the shutdown state.
#[derive(Clone)]
pub struct Shutdown {
    rx: watch::Receiver<State>,
}

impl Shutdown {
    /// The current state.
    pub fn state(&self) -> State {
        *self.rx.borrow()
    }

    /// Resolves when the state changes (never, once the trigger is gone).
    pub async fn changed(&mut self) {
        if self.rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The server's side: moves the state forward.
pub struct Trigger {
    tx: watch::Sender<State>,
}

impl Trigger {
    /// Moves to `state`.
    pub fn set(&self, state: State) {
        let _ = self.tx.send(state);
    }
}

/// A linked trigger and view, starting at [`State::Running`].
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(State::Running);
    (Trigger { tx }, Shutdown { rx })
}
