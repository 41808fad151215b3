//! Wires a node together: recovery, listeners and background tasks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::clock::{self, Hlc};
use crate::config::Config;
use crate::db::{Db, Limits};
use crate::journal::Journal;
use crate::metrics::Metrics;
use crate::persist::{Persist, PersistConfig, PersistError, RecoveryReport};
use crate::replication::{Positions, Replication, StreamId};
use crate::state::{NodeInfo, NodeState};
use crate::store::{Origin, OriginTable, Store, StoreConfig};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Persist(#[from] PersistError),
    #[error(transparent)]
    Security(#[from] crate::security::SecurityError),
    #[error("cannot listen for {what} on {addr}: {source}")]
    Listen { what: &'static str, addr: SocketAddr, source: std::io::Error },
}

/// A running node. Dropping the handle does not stop it; call [`NodeHandle::shutdown`].
pub struct NodeHandle {
    pub state: Arc<NodeState>,
    pub http_addr: SocketAddr,
    pub resp_addr: Option<SocketAddr>,
    pub peer_addr: SocketAddr,
    shutdown_tx: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl NodeHandle {
    /// Stops accepting requests, lets in-flight ones finish, and syncs the log.
    pub async fn shutdown(mut self) {
        self.state.set_ready(false);
        let _ = self.shutdown_tx.send(true);
        let drain = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(10), drain).await.is_err() {
            tracing::warn!("tasks did not stop within 10s; aborting them");
            self.tasks.abort_all();
        }
        if let Some(persist) = self.state.db.persist().cloned() {
            match tokio::task::spawn_blocking(move || persist.sync_all()).await {
                Ok(Ok(())) => tracing::info!("log synced"),
                Ok(Err(e)) => tracing::error!(error = %e, "cannot sync the log at shutdown"),
                Err(e) => tracing::error!(error = %e, "log sync task failed"),
            }
        }
    }
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|source| StartError::Listen { what, addr, source })
}

fn log_recovery(report: &RecoveryReport) {
    for c in &report.corruptions {
        tracing::warn!(
            file = %c.file.display(), offset = c.offset, skipped_bytes = c.skipped_bytes, reason = %c.reason,
            "corrupt or torn log tail detected; skipped it and kept every record before it"
        );
    }
    tracing::info!(
        entries = report.snapshot_records + report.log_records,
        from_snapshot = report.snapshot_records,
        from_log = report.log_records,
        segments = report.segments,
        log_threads = report.log_threads,
        corrupt = report.corruptions.len(),
        elapsed_ms = report.duration.as_millis() as u64,
        "recovered {} entries in {} ms",
        report.snapshot_records + report.log_records,
        report.duration.as_millis()
    );
}

/// Starts a node: recovers from `--data-dir`, binds its listeners, starts its
/// background tasks, and returns once it is ready.
pub async fn spawn_node(config: Config) -> Result<NodeHandle, StartError> {
    // Security files first: a node that cannot secure itself must not start at all.
    let security = crate::security::Security::load(&config.security, &config.node_id, &config.region)?;
    let local = Origin { node_id: config.node_id.as_str().into(), region: config.region.as_str().into() };
    let origins = Arc::new(OriginTable::new(local.clone()));
    let metrics = Arc::new(Metrics::default());
    let store = Store::new(
        StoreConfig {
            shards: 64,
            max_memory: config.max_memory,
            tombstone_retention_ms: config.tombstone_retention_ms,
        },
        origins.clone(),
    );
    // Until the peers are reached, they may have missed deletes: keep tombstones (also
    // those recovered from disk) until the replication manager sees every peer up.
    store.set_tombstone_hold(!config.replication.seeds.is_empty() || config.replication.peers_file.is_some());
    let limits = Limits { max_key_bytes: config.max_key_bytes, max_value_bytes: config.max_value_bytes };

    // The newest version recovered (loader threads raise it; writes are rare once it is high).
    let max_hlc = std::sync::atomic::AtomicU64::new(0);
    let (persist, positions) = match &config.data_dir {
        None => (None, Positions::new()),
        Some(dir) => {
            let persist_config =
                PersistConfig { dir: dir.clone(), fsync: config.fsync, compact_min_bytes: config.compact_min_bytes };
            let store_ref = &store;
            // Recovery runs before anything else is scheduled, so blocking here is fine.
            let now = clock::now_ms();
            let (persist, report) = Persist::open(
                persist_config,
                origins.clone(),
                metrics.clone(),
                |entries| store_ref.reserve(entries),
                |record| {
                    if record.version.hlc > max_hlc.load(std::sync::atomic::Ordering::Relaxed) {
                        max_hlc.fetch_max(record.version.hlc, std::sync::atomic::Ordering::Relaxed);
                    }
                    store_ref.apply(record, now);
                },
            )?;
            log_recovery(&report);
            (Some(Arc::new(persist)), report.positions)
        }
    };
    // Versions made after a restart order after the ones recovered; every start
    // opens a new stream, so no sequence number is ever reused.
    let hlc = Hlc::new();
    hlc.advance_to(max_hlc.into_inner());
    let stream = StreamId::new(config.node_id.as_str(), hlc.now());
    let journal = Journal::new(stream, local, persist, positions, Some(config.backlog_bytes));
    let db = Db::new(store, hlc, limits, journal, metrics);
    let replication = Replication::new(config.replication.clone(), &config.node_id, &config.region);

    let state = Arc::new(
        NodeState::new(
            db,
            replication,
            NodeInfo { node_id: config.node_id.clone(), region: config.region.clone() },
            config.default_ttl_ms,
        )
        .with_security(security),
    );
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();

    let http_listener = bind("http", config.http_addr).await?;
    let http_addr = http_listener.local_addr().unwrap_or(config.http_addr);
    let resp_listener = match config.resp_addr {
        Some(addr) => Some(bind("resp", addr).await?),
        None => None,
    };
    let resp_addr = resp_listener.as_ref().map(|l| l.local_addr().unwrap_or(config.resp_addr.unwrap_or(http_addr)));
    let peer_listener = bind("peers", config.peer_addr).await?;
    let peer_addr = peer_listener.local_addr().unwrap_or(config.peer_addr);

    if let Some(tls) = state.security.client_tls.clone() {
        tasks.spawn(crate::api::http::serve_tls(http_listener, state.clone(), tls, shutdown_rx.clone()));
    } else {
        let mut rx = shutdown_rx.clone();
        let filter = crate::api::http::http_handlers(state.clone());
        tasks.spawn(async move {
            warp::serve(filter)
                .incoming(http_listener)
                .graceful(async move {
                    let _ = rx.wait_for(|stop| *stop).await;
                })
                .run()
                .await;
        });
    }
    if let Some(listener) = resp_listener {
        let tls = state.security.client_tls.clone();
        tasks.spawn(crate::api::resp::serve_with(listener, state.clone(), tls, shutdown_rx.clone()));
    }
    crate::replication::spawn(state.clone(), Some(peer_listener), shutdown_rx.clone(), &mut tasks);
    tasks.spawn(sweeper(state.clone(), shutdown_rx.clone()));
    if state.security.watches_files() {
        tasks.spawn(crate::security::reload_loop(state.clone(), shutdown_rx.clone()));
    }
    if state.db.persist().is_some() {
        tasks.spawn(log_maintenance(state.clone(), shutdown_rx.clone()));
    }

    state.set_ready(true);
    tracing::info!(
        node_id = %config.node_id, region = %config.region, http = %http_addr,
        resp = %resp_addr.map(|a| a.to_string()).unwrap_or_else(|| "off".into()),
        peers = %peer_addr, advertise = %config.replication.advertise,
        client_tls = state.security.client_tls.is_some(), peer_tls = state.security.peer_tls.is_some(),
        auth = state.security.auth_required(),
        data_dir = %config.data_dir.as_ref().map(|d| d.display().to_string()).unwrap_or_else(|| "none (memory only)".into()),
        "node ready"
    );
    Ok(NodeHandle { state, http_addr, resp_addr, peer_addr, shutdown_tx, tasks })
}

/// Frees expired entries and old tombstones in the background, a slice at a time.
async fn sweeper(state: Arc<NodeState>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        // Keep going while a large share of what we look at is expired (like Redis'
        // active expiry), but yield between rounds.
        for _ in 0..16 {
            let freed = state.db.store().sweep(clock::now_ms(), 256);
            if freed.expired + freed.tombstones < (state.db.store().shard_count() as u64 * 256) / 4 {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
}

/// Syncs the log once a second and compacts it when it has grown.
async fn log_maintenance(state: Arc<NodeState>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let Some(persist) = state.db.persist().cloned() else { return };
        let sync = persist.clone();
        match tokio::task::spawn_blocking(move || sync.sync_all()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "cannot sync the log"),
            Err(e) => tracing::error!(error = %e, "log sync task failed"),
        }
        if persist.should_compact() {
            let state = state.clone();
            let result = tokio::task::spawn_blocking(move || state.db.compact()).await;
            match result {
                Ok(None) => {}
                Ok(Some(Ok(r))) => tracing::info!(
                    records = r.records,
                    snapshot_bytes = r.snapshot_bytes,
                    removed_segments = r.removed_segments,
                    elapsed_ms = r.duration.as_millis() as u64,
                    "log compacted into a snapshot"
                ),
                Ok(Some(Err(e))) => tracing::error!(error = %e, "log compaction failed; will retry"),
                Err(e) => tracing::error!(error = %e, "log compaction task failed"),
            }
        }
    }
}
