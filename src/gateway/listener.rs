//! The accept loop: one task per accepted socket, spawned on the node's task tracker.

use std::{sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::warn;

use super::{Gateway, connection};

/// Pause after a failed accept (for example out of file descriptors) so the loop cannot spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Accepts connections until `stop` is cancelled; the listener is closed on return.
pub async fn run(
    listener: TcpListener,
    gw: Arc<Gateway>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, remote)) => {
                tracker.spawn(connection::serve(stream, remote, gw.clone()));
            }
            Err(e) => {
                warn!(error = %e, "accept failed; backing off");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                }
            }
        }
    }
}
