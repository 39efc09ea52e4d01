//! The node's lifecycle phase, observable by the governor (`/ready`) and by tests.
//!
//! Signal meaning (handled by `wsgw serve`): the first SIGTERM or SIGINT starts a graceful drain,
//! a second one exits at once.

use tokio::sync::watch;

/// Where a node is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Binding and wiring; not ready for clients.
    Starting,
    /// Accepting and serving clients.
    Running,
    /// Not accepting; telling clients to go and waiting for them to leave.
    Draining,
    /// Every task has ended.
    Stopped,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Draining => "draining",
            Self::Stopped => "stopped",
        }
    }
}

/// The writable side of a node's phase; readers subscribe.
#[derive(Debug)]
pub struct PhaseCell(watch::Sender<Phase>);

impl Default for PhaseCell {
    fn default() -> Self {
        Self(watch::Sender::new(Phase::Starting))
    }
}

impl PhaseCell {
    pub fn set(&self, phase: Phase) {
        self.0.send_replace(phase);
    }

    pub fn get(&self) -> Phase {
        *self.0.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<Phase> {
        self.0.subscribe()
    }
}
