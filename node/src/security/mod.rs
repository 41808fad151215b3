//! Security: client authentication ([`auth`]), TLS on the client ports and mutual TLS
//! between nodes ([`tls`]), and the rule binding a peer's certificate to the identity
//! it claims ([`cert`]). Files are polled and reloaded when they change ([`files`]).
//!
//! Secrets never leave this module: passwords are kept as digests and no error or log
//! line carries a password or key material.

pub mod auth;
pub mod cert;
pub mod files;
pub mod pki;
pub mod tls;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;

pub use auth::{ClientAuth, Interface, Passwords};
pub use cert::{CertIdentity, IdentityError};
pub use tls::{ClientPortsTls, PeerTls};

/// Why the security settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("--{flag} {}: {message}", path.display())]
    File { flag: &'static str, path: PathBuf, message: String },
    #[error("tls: {0}")]
    Tls(String),
}

/// The security flags, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecurityConfig {
    /// `--auth-file`.
    pub auth_file: Option<PathBuf>,
    /// `--metrics-auth`: `/metrics` needs a password too.
    pub metrics_auth: bool,
    /// `--tls-cert`, `--tls-key`.
    pub client_tls: Option<(PathBuf, PathBuf)>,
    /// `--peer-tls-cert`, `--peer-tls-key`, `--peer-tls-ca`.
    pub peer_tls: Option<PeerTlsFiles>,
}

/// The files of mutual TLS between nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// Counters of refused peers.
#[derive(Debug, Default)]
pub struct SecurityCounters {
    /// Peer links whose TLS handshake failed.
    pub peer_tls_failures: AtomicU64,
    /// Peer links refused because the certificate does not match the claimed identity.
    pub peer_identity_refusals: AtomicU64,
}

/// The security state of a running node.
#[derive(Default)]
pub struct Security {
    pub auth: Option<Arc<ClientAuth>>,
    pub client_tls: Option<Arc<ClientPortsTls>>,
    pub peer_tls: Option<Arc<PeerTls>>,
    pub counters: SecurityCounters,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("auth", &self.auth)
            .field("client_tls", &self.client_tls.is_some())
            .field("peer_tls", &self.peer_tls.is_some())
            .finish()
    }
}

impl Security {
    /// Loads every file the configuration names; any that cannot be used stops the
    /// start with an error naming its flag.
    pub fn load(config: &SecurityConfig, node_id: &str, region: &str) -> Result<Security, SecurityError> {
        let auth = match &config.auth_file {
            Some(path) => Some(Arc::new(ClientAuth::load(path, config.metrics_auth)?)),
            None => None,
        };
        let client_tls = match &config.client_tls {
            Some((cert, key)) => Some(Arc::new(ClientPortsTls::load(cert, key)?)),
            None => None,
        };
        let peer_tls = match &config.peer_tls {
            Some(f) => Some(Arc::new(PeerTls::load(&f.cert, &f.key, &f.ca, node_id, region)?)),
            None => None,
        };
        Ok(Security { auth, client_tls, peer_tls, counters: SecurityCounters::default() })
    }

    /// Whether clients must authenticate.
    pub fn auth_required(&self) -> bool {
        self.auth.is_some()
    }

    /// Whether any file is to be watched for changes.
    pub fn watches_files(&self) -> bool {
        self.auth.is_some() || self.client_tls.is_some() || self.peer_tls.is_some()
    }

    /// Reloads every file that changed.
    pub fn reload_if_changed(&self, node_id: &str, region: &str) {
        if let Some(auth) = &self.auth {
            auth.reload_if_changed();
        }
        if let Some(tls) = &self.client_tls {
            tls.reload_if_changed();
        }
        if let Some(tls) = &self.peer_tls {
            tls.reload_if_changed(node_id, region);
        }
    }

    /// Security metrics in the Prometheus text format (counts only, never secrets).
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in samples {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        if let Some(auth) = &self.auth {
            metric(
                "geocache_auth_failures_total",
                "counter",
                "Client requests refused for a missing or wrong password.",
                &[
                    ("{interface=\"http\"}", load(&auth.failures_http)),
                    ("{interface=\"resp\"}", load(&auth.failures_resp)),
                ],
            );
            metric(
                "geocache_auth_passwords",
                "gauge",
                "Passwords accepted now (--auth-file).",
                &[("", auth.accepted() as u64)],
            );
            metric(
                "geocache_auth_file_reloads_total",
                "counter",
                "Times --auth-file was reloaded after a change.",
                &[("", load(&auth.reloads))],
            );
            metric(
                "geocache_auth_file_errors_total",
                "counter",
                "Times a changed --auth-file could not be used (the previous passwords stay).",
                &[("", load(&auth.reload_errors))],
            );
        }
        let mut reloads: Vec<(&str, u64)> = Vec::new();
        let mut errors: Vec<(&str, u64)> = Vec::new();
        let mut expiry: Vec<(&str, u64)> = Vec::new();
        if let Some(tls) = &self.client_tls {
            reloads.push(("{files=\"client\"}", load(&tls.reloading().reloads)));
            errors.push(("{files=\"client\"}", load(&tls.reloading().reload_errors)));
            if let Some(t) = tls.not_after() {
                expiry.push(("{files=\"client\"}", t.max(0) as u64));
            }
        }
        if let Some(tls) = &self.peer_tls {
            reloads.push(("{files=\"peer\"}", load(&tls.reloading().reloads)));
            errors.push(("{files=\"peer\"}", load(&tls.reloading().reload_errors)));
            if let Some(t) = tls.not_after() {
                expiry.push(("{files=\"peer\"}", t.max(0) as u64));
            }
        }
        if !reloads.is_empty() {
            metric("geocache_tls_reloads_total", "counter", "Times changed TLS files were loaded.", &reloads);
            metric(
                "geocache_tls_reload_errors_total",
                "counter",
                "Times changed TLS files could not be used (the previous ones stay).",
                &errors,
            );
            metric(
                "geocache_tls_certificate_expiry_timestamp_seconds",
                "gauge",
                "When the certificate in use expires (Unix seconds).",
                &expiry,
            );
        }
        if let Some(tls) = &self.client_tls {
            metric(
                "geocache_tls_client_handshake_failures_total",
                "counter",
                "TLS handshakes that failed on the HTTP and Redis ports.",
                &[("", load(&tls.handshake_failures))],
            );
        }
        if self.peer_tls.is_some() {
            metric(
                "geocache_peer_tls_failures_total",
                "counter",
                "Peer links whose TLS handshake failed.",
                &[("", load(&self.counters.peer_tls_failures))],
            );
            metric(
                "geocache_peer_identity_refusals_total",
                "counter",
                "Peer links refused because the certificate does not match the node id or region claimed.",
                &[("", load(&self.counters.peer_identity_refusals))],
            );
        }
    }
}

/// Polls the security files and reloads those that changed, until shutdown.
pub async fn reload_loop(state: Arc<crate::state::NodeState>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let state = state.clone();
        // File reads and certificate parsing are blocking work.
        let done = tokio::task::spawn_blocking(move || {
            state.security.reload_if_changed(&state.info.node_id, &state.info.region)
        })
        .await;
        if let Err(e) = done {
            tracing::error!(error = %e, "security file reload task failed");
        }
    }
}
