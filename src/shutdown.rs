//! The node's lifecycle: its observable phase and the named stages of a drain.
//!
//! Signal meaning (handled by `wsgw serve`): the first SIGTERM or SIGINT starts a graceful drain,
//! a second one exits at once. An operator can ask for the same drain through the admin API.
//!
//! Owns: one [`Lifecycle`] per node, holding the phase (read by `/ready`, the admin API and
//! tests) and one cancellation token per [`Stage`]. Tasks select on the token of the stage that
//! ends them; `Node::run` enters the stages in order. Must never decide *when* a stage starts:
//! that is the node's story to tell.

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

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

/// The stages of a drain, in the order the node enters them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// The listener stops accepting sockets.
    StopAccepting,
    /// Every connection says goodbye (REDIRECT in a cluster, then 1001) and ends.
    TellClients,
    /// The drain deadline passed: every connection ends at once.
    DropClients,
    /// Background services stop: retransmission, batchers, the directory writer, Kafka, etcd.
    StopBackground,
    /// Routing stops: node-to-node delivery and the hand-off of directory events (after the
    /// background services, which may still route pushes while they stop).
    StopRouting,
    /// The gRPC API and the governor stop.
    StopServers,
}

const STAGES: usize = 6;

impl Stage {
    fn index(self) -> usize {
        self as usize
    }
}

/// The phase and the drain stages of one node.
#[derive(Debug)]
pub struct Lifecycle {
    phase: watch::Sender<Phase>,
    drain_requested: CancellationToken,
    stages: [CancellationToken; STAGES],
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self {
            phase: watch::Sender::new(Phase::Starting),
            drain_requested: CancellationToken::new(),
            stages: Default::default(),
        }
    }
}

impl Lifecycle {
    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    pub fn set_phase(&self, phase: Phase) {
        self.phase.send_replace(phase);
    }

    /// Asks the node to drain (the admin API's `Drain`).
    pub fn request_drain(&self) {
        self.drain_requested.cancel();
    }

    /// Completes when an operator asked the node to drain.
    pub async fn drain_requested(&self) {
        self.drain_requested.cancelled().await
    }

    /// The token a task selects on to end at `stage`.
    pub fn token(&self, stage: Stage) -> CancellationToken {
        self.stages[stage.index()].clone()
    }

    /// Enters `stage`: every task selecting on its token is told.
    pub fn enter(&self, stage: Stage) {
        self.stages[stage.index()].cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_are_independent_and_observable() {
        let life = Lifecycle::default();
        let (accept, tell) = (life.token(Stage::StopAccepting), life.token(Stage::TellClients));
        assert!(!accept.is_cancelled());
        life.enter(Stage::StopAccepting);
        assert!(accept.is_cancelled() && life.token(Stage::StopAccepting).is_cancelled());
        assert!(!tell.is_cancelled(), "entering one stage enters no other");
        assert_eq!(life.phase(), Phase::Starting);
        life.set_phase(Phase::Draining);
        assert_eq!(life.phase(), Phase::Draining);
    }
}
