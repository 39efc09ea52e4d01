//! TLS for client connections (`wss://`, rustls): the certificate chain and private key from
//! PEM files (`server.websocket.tls`), reloaded when either file changes (checked every
//! `reload_check`) or on SIGHUP. A reload only changes what new connections are offered;
//! established connections keep their session. A reload that fails keeps the certificate in
//! use (logged; `websocket_gateway_tls_reloads_total{outcome}`), so a half-written file never
//! takes the listener down.
//!
//! Owns the acceptor and its reload task; never reads or writes application data.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self, ServerConfig,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    },
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{config::TlsConfig, telemetry::Metrics};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("server.websocket.tls.cert: cannot read certificates from {path}: {reason}")]
    Cert { path: PathBuf, reason: String },
    #[error("server.websocket.tls.key: cannot read a private key from {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("server.websocket.tls: {0}")]
    Config(#[from] rustls::Error),
}

/// The acceptor new connections use, and what it was loaded from.
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Loaded>,
}

struct Loaded {
    acceptor: TlsAcceptor,
    /// Modification times of (cert, key) when loaded.
    stamp: (Option<SystemTime>, Option<SystemTime>),
}

impl Tls {
    /// Loads the certificate chain and key named by `config`.
    pub fn load(config: &TlsConfig) -> Result<Self, TlsError> {
        let (cert, key) = (PathBuf::from(&config.cert), PathBuf::from(&config.key));
        let loaded = load(&cert, &key)?;
        Ok(Self { cert, key, current: RwLock::new(loaded) })
    }

    /// The acceptor for a new connection.
    pub fn acceptor(&self) -> TlsAcceptor {
        match self.current.read() {
            Ok(l) => l.acceptor.clone(),
            Err(poisoned) => poisoned.into_inner().acceptor.clone(),
        }
    }

    /// Reloads when `forced` or when either file changed since the last load: Ok(true) when a
    /// new certificate is now offered. On error the current one stays.
    pub fn reload(&self, forced: bool) -> Result<bool, TlsError> {
        let stamp = (modified(&self.cert), modified(&self.key));
        let unchanged = self.current.read().map(|l| l.stamp == stamp).unwrap_or(false);
        if unchanged && !forced {
            return Ok(false);
        }
        let loaded = load(&self.cert, &self.key)?;
        match self.current.write() {
            Ok(mut l) => *l = loaded,
            Err(poisoned) => *poisoned.into_inner() = loaded,
        }
        Ok(true)
    }

    /// Reloads on file changes (every `every`) and on SIGHUP until `stop`.
    pub async fn watch(
        self: Arc<Self>,
        every: Duration,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGHUP; TLS files are still checked for changes");
                None
            }
        };
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let forced = tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => false,
                Some(()) = async { hangup.as_mut()?.recv().await } => true,
            };
            match self.reload(forced) {
                Ok(false) => {}
                Ok(true) => {
                    metrics.tls_reload(true);
                    info!(cert = %self.cert.display(), "TLS certificate reloaded");
                }
                Err(e) => {
                    metrics.tls_reload(false);
                    warn!(error = %e, "TLS certificate not reloaded; the previous one stays in use");
                }
            }
        }
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn load(cert: &Path, key: &Path) -> Result<Loaded, TlsError> {
    let stamp = (modified(cert), modified(key));
    let cert_error = |reason: String| TlsError::Cert { path: cert.to_owned(), reason };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_error(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_error(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_error("no CERTIFICATE block".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError::Key { path: key.to_owned(), reason: e.to_string() })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Loaded { acceptor: TlsAcceptor::from(Arc::new(config)), stamp })
}
