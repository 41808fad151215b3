//! The shared state of a running node, handed to every interface.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::db::{Db, Expiry};
use crate::metrics::{self, Gauges};
use crate::replication::Replication;
use crate::security::Security;
use crate::status::StatusDocument;

/// Who this node is.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub node_id: String,
    pub region: String,
}

/// Everything the HTTP and RESP interfaces share.
pub struct NodeState {
    pub db: Db,
    pub replication: Replication,
    pub info: NodeInfo,
    /// TTL applied to writes that do not give one (`--default-ttl`).
    pub default_ttl_ms: Option<u64>,
    pub started: Instant,
    /// Client authentication and TLS (none by default).
    pub security: Security,
    ready: AtomicBool,
}

impl NodeState {
    pub fn new(db: Db, replication: Replication, info: NodeInfo, default_ttl_ms: Option<u64>) -> Self {
        NodeState {
            db,
            replication,
            info,
            default_ttl_ms,
            started: Instant::now(),
            security: Security::default(),
            ready: AtomicBool::new(false),
        }
    }

    /// The same node with these security settings.
    pub fn with_security(mut self, security: Security) -> Self {
        self.security = security;
        self
    }

    /// A node with no peers (for tests and tools).
    pub fn standalone(db: Db, info: NodeInfo, default_ttl_ms: Option<u64>) -> Self {
        let replication =
            Replication::new(crate::replication::ReplicationConfig::standalone(), &info.node_id, &info.region);
        NodeState::new(db, replication, info, default_ttl_ms)
    }

    /// True once recovery finished and the listeners are up.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// The expiry of a write that gives no TTL: `--default-ttl`, or none.
    pub fn default_expiry(&self) -> Expiry {
        match self.default_ttl_ms {
            Some(ttl) => Expiry::after_ms(ttl),
            None => Expiry::Never,
        }
    }

    pub fn uptime_s(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// The status document served at `GET /v1/status`.
    pub fn status(&self) -> StatusDocument {
        StatusDocument {
            node_id: self.info.node_id.clone(),
            region: self.info.region.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_s: self.uptime_s(),
            keys: self.db.store().len() as u64,
            memory_bytes: self.db.store().memory_bytes(),
            ready: self.is_ready(),
            peers: self.replication.peer_statuses(self),
        }
    }

    /// Gauges for `/metrics`.
    pub fn gauges(&self) -> Gauges {
        let store = self.db.store();
        let counters = store.counters();
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        Gauges {
            keys: store.len() as u64,
            tombstones: store.tombstones() as u64,
            memory_bytes: store.memory_bytes(),
            max_memory_bytes: store.config().max_memory,
            resident_bytes: metrics::resident_bytes(),
            uptime_s: self.uptime_s(),
            ready: self.is_ready(),
            expired_total: load(&counters.expired),
            evicted_total: load(&counters.evicted),
            tombstones_purged_total: load(&counters.tombstones_purged),
            local_writes_total: self.db.local_writes(),
        }
    }
}
