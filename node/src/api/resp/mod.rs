//! The Redis protocol (RESP2, and RESP3 after `HELLO 3`) interface of the node.
//!
//! [`serve`] accepts connections and runs one task per connection. A connection reads
//! as much as is available, executes every complete command in its read buffer
//! (pipelining), appends the replies to one output buffer, waits once for the journal
//! to hold the writes of the batch, then writes all the replies: a write is never
//! acknowledged before it is in the log. See `connection` for what happens when the
//! journal fails.
//!
//! - [`codec`]: the incremental request parser (multibulk and inline commands).
//! - [`reply`]: reply encoding in RESP2 or RESP3.
//! - `commands`: the commands.

pub mod codec;
mod commands;
mod connection;
pub mod reply;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use codec::{ParserLimits, ProtocolError};
pub use commands::REDIS_VERSION;

use crate::security::ClientPortsTls;
use crate::security::tls::{explain, rustls_error};
use crate::state::NodeState;
use commands::{Session, Shared};

/// How long open connections get to finish their batch once shutdown is asked.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client gets to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the Redis protocol on `listener` until `shutdown` becomes true (or its
/// sender is dropped). Then stops accepting, lets open connections finish their current
/// batch and close, and returns once they did (or after a few seconds).
pub async fn serve(listener: TcpListener, state: Arc<NodeState>, shutdown: watch::Receiver<bool>) {
    serve_with(listener, state, None, shutdown).await
}

/// Like [`serve`], over TLS when `tls` is given (the handshake runs in the
/// connection's task, bounded by [`HANDSHAKE_TIMEOUT`]).
pub async fn serve_with(
    listener: TcpListener,
    state: Arc<NodeState>,
    tls: Option<Arc<ClientPortsTls>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let local = listener.local_addr().ok();
    let shared = Arc::new(Shared::new(local.map_or(0, |a| a.port())));
    tracing::info!(addr = ?local, tls = tls.is_some(), "resp listener started");
    let mut connections = JoinSet::new();
    if !*shutdown.borrow_and_update() {
        loop {
            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow_and_update() {
                        break;
                    }
                }
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        if let Err(e) = stream.set_nodelay(true) {
                            tracing::debug!(peer = %peer, error = %e, "could not set tcp_nodelay");
                        }
                        let local = stream.local_addr().ok();
                        let (state, shared, shutdown) = (state.clone(), shared.clone(), shutdown.clone());
                        match &tls {
                            None => {
                                connections.spawn(async move {
                                    serve_connection(stream, Some(peer), local, state, shared, shutdown).await;
                                });
                            }
                            Some(tls) => {
                                let (acceptor, tls) = (tls.resp_acceptor(), tls.clone());
                                connections.spawn(async move {
                                    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                                        Ok(Ok(stream)) => stream,
                                        Ok(Err(e)) => {
                                            tls.handshake_failures.fetch_add(1, Ordering::Relaxed);
                                            let reason = rustls_error(&e).map(|r| explain(r, "--tls-cert")).unwrap_or_else(|| e.to_string());
                                            tracing::debug!(peer = %peer, reason = %reason, "resp tls handshake failed");
                                            return;
                                        }
                                        Err(_) => {
                                            tls.handshake_failures.fetch_add(1, Ordering::Relaxed);
                                            tracing::debug!(peer = %peer, "resp tls handshake timed out");
                                            return;
                                        }
                                    };
                                    serve_connection(stream, Some(peer), local, state, shared, shutdown).await;
                                });
                            }
                        }
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off a little.
                        tracing::warn!(error = %e, "resp accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(done) = connections.join_next(), if !connections.is_empty() => log_join(done),
            }
        }
    }
    drop(listener);
    let open = connections.len();
    tracing::info!(open_connections = open, "resp listener stopped, draining connections");
    let drain = async {
        while let Some(done) = connections.join_next().await {
            log_join(done);
        }
    };
    if tokio::time::timeout(DRAIN_TIMEOUT, drain).await.is_err() {
        tracing::warn!(open_connections = connections.len(), "resp connections did not close in time, aborting them");
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
}

fn log_join(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done
        && e.is_panic()
    {
        tracing::error!(error = %e, "resp connection task panicked");
    }
}

/// Counts a connection as open for as long as it lives (even if its task panics).
struct OpenConnection {
    state: Arc<NodeState>,
    shared: Arc<Shared>,
}

impl OpenConnection {
    fn new(state: Arc<NodeState>, shared: Arc<Shared>) -> Self {
        state.db.metrics().resp_connection_opened();
        shared.clients.fetch_add(1, Ordering::Relaxed);
        shared.connections_total.fetch_add(1, Ordering::Relaxed);
        OpenConnection { state, shared }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.state.db.metrics().resp_connection_closed();
        self.shared.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one connection over any byte stream (a TCP stream, or a TLS stream on top
/// of one) until the client leaves, a protocol error, or shutdown.
async fn serve_connection<S>(
    stream: S,
    peer: Option<SocketAddr>,
    local: Option<SocketAddr>,
    state: Arc<NodeState>,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let open = OpenConnection::new(state.clone(), shared.clone());
    let mut session = Session::new(shared.next_client_id(), peer, local);
    session.authenticated = !state.security.auth_required();
    let client_id = session.id;
    tracing::debug!(client_id, peer = ?peer, "resp connection opened");
    connection::run(stream, &state, &shared, session, shutdown).await;
    tracing::debug!(client_id, peer = ?peer, "resp connection closed");
    drop(open);
}

#[cfg(test)]
mod tests;
