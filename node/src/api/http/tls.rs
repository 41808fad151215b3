//! HTTPS: the same routes served over TLS (warp 0.4 has no TLS of its own, so the
//! connections are served here with hyper-util over tokio-rustls streams).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::security::ClientPortsTls;
use crate::security::tls::{explain, rustls_error};
use crate::state::NodeState;

/// How long a client gets to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the HTTP API over TLS on `listener` until `shutdown` becomes true, then
/// stops accepting and lets open connections finish their requests.
pub async fn serve_tls(
    listener: TcpListener,
    state: Arc<NodeState>,
    tls: Arc<ClientPortsTls>,
    mut shutdown: watch::Receiver<bool>,
) {
    let filter = super::http_handlers(state);
    let graceful = GracefulShutdown::new();
    tracing::info!(addr = ?listener.local_addr().ok(), "https listener started");
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let (socket, remote) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "https accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let acceptor = tls.http_acceptor();
        let tls = tls.clone();
        let service = TowerToHyperService::new(warp::service(filter.clone()));
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tls.handshake_failures.fetch_add(1, Ordering::Relaxed);
                    let reason = rustls_error(&e).map(|r| explain(r, "--tls-cert")).unwrap_or_else(|| e.to_string());
                    tracing::debug!(remote = %remote, reason = %reason, "https handshake failed");
                    return;
                }
                Err(_) => {
                    tls.handshake_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(remote = %remote, "https handshake timed out");
                    return;
                }
            };
            let builder = auto::Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!(remote = %remote, error = %e, "https connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
