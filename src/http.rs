//! Serving the node's small HTTP surfaces (the governor: health, readiness, metrics; the
//! alert webhook) so that no client can hold them: at most `max_connections` connections at
//! once (further ones are closed at accept), request headers within `header_timeout`, one
//! request per connection (no keep-alive, so an idle client holds nothing), and the whole
//! exchange within `request_timeout`. A slowloris gets its connection closed instead of a file
//! descriptor forever.
//!
//! Over TLS ([`serve_tls`]) the TLS handshake must also finish within `header_timeout`.
//!
//! Owns: the accept loop and the connection tasks, all awaited on stop. Never routes or
//! answers anything itself.

use std::{sync::Arc, time::Duration};

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    sync::Semaphore,
};
use tokio_rustls::TlsAcceptor;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, warn};

/// The bounds of one HTTP server.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub request_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_connections: 256,
            header_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// Pause after a failed accept (for example out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How long open requests may finish after `stop`.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Serves `router` on `listener` within `limits` until `stop`; then lets open requests finish
/// (briefly).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    stop: CancellationToken,
) -> std::io::Result<()> {
    serve_with(listener, router, limits, None, stop).await
}

/// [`serve`] over TLS: HTTPS only.
pub async fn serve_tls(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    acceptor: TlsAcceptor,
    stop: CancellationToken,
) -> std::io::Result<()> {
    serve_with(listener, router, limits, Some(acceptor), stop).await
}

async fn serve_with(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    tls: Option<TlsAcceptor>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let tasks = TaskTracker::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).keep_alive(false);
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, remote) = match accepted {
            Ok(ok) => ok,
            Err(e) => {
                warn!(error = %e, "HTTP accept failed; backing off");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            debug!(%remote, "HTTP connection refused: at max_connections");
            continue; // dropped: closed at once
        };
        let (http, router, tls, stop) = (http.clone(), router.clone(), tls.clone(), stop.clone());
        tasks.spawn(async move {
            match tls {
                None => exchange(&http, stream, router, limits, &stop).await,
                Some(acceptor) => {
                    let shake =
                        tokio::time::timeout(limits.header_timeout, acceptor.accept(stream));
                    match shake.await {
                        Ok(Ok(tls)) => exchange(&http, tls, router, limits, &stop).await,
                        _ => debug!(%remote, "HTTPS handshake failed or timed out"),
                    }
                }
            }
            drop(permit);
        });
    }
    tasks.close();
    tasks.wait().await;
    Ok(())
}

/// One request on `io`, within `request_timeout`; on `stop`, a short grace.
async fn exchange<IO>(
    http: &http1::Builder,
    io: IO,
    router: Router,
    limits: HttpLimits,
    stop: &CancellationToken,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = http.serve_connection(TokioIo::new(io), TowerToHyperService::new(router));
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        done = tokio::time::timeout(limits.request_timeout, conn.as_mut()) => {
            if let Ok(Err(e)) = done {
                debug!(error = %e, "HTTP connection ended");
            }
        }
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(STOP_GRACE, conn).await;
        }
    }
}
