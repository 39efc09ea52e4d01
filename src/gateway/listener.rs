//! The accept loop: one task per accepted socket, spawned on the node's task tracker.

use std::{sync::Arc, time::Duration};

use tokio::{
    net::TcpListener,
    sync::Semaphore,
    time::{Instant, sleep_until},
};
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
    let ws = &gw.config.server.websocket;
    let handshakes = Arc::new(Semaphore::new(ws.max_handshakes));
    let pace = (ws.accept_rate > 0.0).then(|| Duration::from_secs_f32(1.0 / ws.accept_rate));
    let mut next_accept = Instant::now();
    loop {
        if let Some(pace) = pace {
            // The ramp-up limiter: beyond the rate, connections wait in the accept queue.
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = sleep_until(next_accept) => {}
            }
            next_accept = next_accept.max(Instant::now() - pace) + pace;
        }
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, remote)) => {
                let Ok(handshake) = handshakes.clone().try_acquire_owned() else {
                    gw.metrics.handshake("busy");
                    continue; // closed at once: too many handshakes in progress
                };
                tracker.spawn(connection::serve(stream, remote, gw.clone(), handshake));
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
