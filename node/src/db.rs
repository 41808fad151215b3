//! The database: the store, the clock and the journal (on-disk log) behind one API
//! that both client interfaces (HTTP and RESP) use.
//!
//! Every local write goes through [`Db::update`]: it validates, decides under the
//! shard lock, stamps a new HLC version, applies, and appends the record to the
//! journal in the same critical section. The caller acknowledges the write only after
//! [`Db::wait_durable`] says the record reached the operating system (or the disk,
//! with `--fsync always`). Reads never see an expired entry.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::clock::{self, Hlc};
use crate::metrics::Metrics;
use crate::persist::{Lsn, Persist};
use crate::store::{Current, Decision, Found, OriginId, Record, RecordRef, Store, Value, Version};

/// Size limits for keys and values.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_key_bytes: 1024, max_value_bytes: 1024 * 1024 }
    }
}

/// Errors of database operations. [`DbError::code`] is the stable machine-readable
/// code used in HTTP error bodies and RESP error replies.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("key must not be empty")]
    EmptyKey,
    #[error("key is {len} bytes, the limit is {max}")]
    KeyTooLong { len: usize, max: usize },
    #[error("value is {len} bytes, the limit is {max}")]
    ValueTooLarge { len: usize, max: usize },
    #[error("{0}")]
    InvalidJson(#[from] crate::store::InvalidJson),
    #[error("{0}")]
    InvalidTtl(String),
    #[error("write could not be persisted: {0}")]
    Persistence(String),
}

impl DbError {
    pub fn code(&self) -> &'static str {
        match self {
            DbError::EmptyKey => "invalid_key",
            DbError::KeyTooLong { .. } => "key_too_long",
            DbError::ValueTooLarge { .. } => "value_too_large",
            DbError::InvalidJson(_) => "invalid_json",
            DbError::InvalidTtl(_) => "invalid_ttl",
            DbError::Persistence(_) => "persistence_failed",
        }
    }
}

/// How a write sets the expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Keep the current entry's expiry (none for a new entry).
    Keep,
    /// No expiry.
    Never,
    /// Expire at this Unix time in milliseconds.
    At(u64),
}

impl Expiry {
    /// Expire `ttl_ms` from now.
    pub fn after_ms(ttl_ms: u64) -> Expiry {
        Expiry::At(clock::now_ms().saturating_add(ttl_ms))
    }

    /// The absolute expiry this gives, given the current entry.
    pub fn resolve(self, current: Option<&Current<'_>>) -> Option<u64> {
        match self {
            Expiry::Keep => current.and_then(|c| c.expires_at),
            Expiry::Never => None,
            Expiry::At(at) => Some(at),
        }
    }
}

/// The result of a write, and the journal position to wait for before acknowledging it.
#[derive(Debug)]
#[must_use = "a write must be awaited with Db::wait_durable before it is acknowledged"]
pub struct Written<R> {
    pub reply: R,
    /// The new version, when something was written.
    pub version: Option<Version>,
    pub lsn: Option<Lsn>,
}

/// What a plain put did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutOutcome {
    pub created: bool,
    pub expires_at: Option<u64>,
}

/// The database of one node.
pub struct Db {
    store: Store,
    clock: Hlc,
    limits: Limits,
    journal: Journal,
    metrics: Arc<Metrics>,
}

/// Orders local writes: hands out per-origin sequence numbers and appends records to
/// the on-disk log in that order (with a log, the sequence number is taken under the
/// log's buffer lock so that log order and sequence order agree). The replication
/// backlog will hang off it as well.
struct Journal {
    next_seq: AtomicU64,
    persist: Option<Arc<Persist>>,
}

impl Db {
    pub fn new(store: Store, limits: Limits, persist: Option<Arc<Persist>>, metrics: Arc<Metrics>) -> Self {
        Db { store, clock: Hlc::new(), limits, journal: Journal { next_seq: AtomicU64::new(1), persist }, metrics }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn clock(&self) -> &Hlc {
        &self.clock
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn persist(&self) -> Option<&Arc<Persist>> {
        self.journal.persist.as_ref()
    }

    /// Writes coordinated by this node (its latest sequence number, across restarts
    /// when the data is persisted).
    pub fn local_writes(&self) -> u64 {
        self.next_seq().saturating_sub(1)
    }

    /// The sequence number the next local write will get.
    pub fn next_seq(&self) -> u64 {
        match &self.journal.persist {
            Some(p) => p.next_seq(),
            None => self.journal.next_seq.load(Ordering::Acquire),
        }
    }

    /// Sets the next local sequence number (after recovery).
    pub fn set_next_seq(&self, seq: u64) {
        match &self.journal.persist {
            Some(p) => p.set_next_seq(seq),
            None => {
                self.journal.next_seq.fetch_max(seq, Ordering::AcqRel);
            }
        }
    }

    pub fn check_key(&self, key: &str) -> Result<(), DbError> {
        if key.is_empty() {
            return Err(DbError::EmptyKey);
        }
        if key.len() > self.limits.max_key_bytes {
            return Err(DbError::KeyTooLong { len: key.len(), max: self.limits.max_key_bytes });
        }
        Ok(())
    }

    pub fn check_value(&self, len: usize) -> Result<(), DbError> {
        if len > self.limits.max_value_bytes {
            return Err(DbError::ValueTooLarge { len, max: self.limits.max_value_bytes });
        }
        Ok(())
    }

    /// The live entry at `key`.
    pub fn get(&self, key: &str) -> Result<Option<Found>, DbError> {
        self.check_key(key)?;
        Ok(self.store.get(key, clock::now_ms()))
    }

    /// Calls `f` with the live entry at `key`, without copying it.
    pub fn read<R>(&self, key: &str, f: impl FnOnce(Option<Current<'_>>) -> R) -> Result<R, DbError> {
        self.check_key(key)?;
        Ok(self.store.read(key, clock::now_ms(), f))
    }

    /// A local read-modify-write: `decide` sees the live entry and either keeps it or
    /// writes a new value (or a tombstone). Values are checked against the limits.
    pub fn update<R>(
        &self,
        key: &str,
        decide: impl FnOnce(Option<Current<'_>>) -> Result<Decision<R>, DbError>,
    ) -> Result<Written<R>, DbError> {
        self.check_key(key)?;
        let now = clock::now_ms();
        let limits = &self.limits;
        let journal = &self.journal;
        let (reply, written) = self.store.update(
            key,
            now,
            |current| {
                let decision = decide(current)?;
                if let Decision::Write { value: Some(v), .. } = &decision
                    && v.len() > limits.max_value_bytes
                {
                    return Err(DbError::ValueTooLarge { len: v.len(), max: limits.max_value_bytes });
                }
                Ok(decision)
            },
            || Version { hlc: self.clock.now(), origin: OriginId::LOCAL },
            |record| journal.append(record),
        )?;
        match written {
            Some((version, lsn)) => Ok(Written { reply, version: Some(version), lsn }),
            None => Ok(Written { reply, version: None, lsn: None }),
        }
    }

    /// Writes `value` at `key` (replacing any entry).
    pub fn put(&self, key: &str, value: Value, expiry: Expiry) -> Result<Written<PutOutcome>, DbError> {
        self.update(key, |current| {
            let expires_at = expiry.resolve(current.as_ref());
            Ok(Decision::Write {
                value: Some(value),
                expires_at,
                reply: PutOutcome { created: current.is_none(), expires_at },
            })
        })
    }

    /// Deletes `key` (writes a tombstone); the reply says whether there was an entry.
    pub fn delete(&self, key: &str) -> Result<Written<bool>, DbError> {
        self.update(key, |current| match current {
            None => Ok(Decision::Keep(false)),
            Some(_) => Ok(Decision::Write { value: None, expires_at: None, reply: true }),
        })
    }

    /// Sets the expiry of an existing entry; the reply is the new expiry, or `None`
    /// when there is no entry. An expiry in the past deletes the key at once.
    pub fn set_expiry(&self, key: &str, expiry: Expiry) -> Result<Written<Option<PutOutcome>>, DbError> {
        self.update(key, |current| {
            let Some(cur) = current else { return Ok(Decision::Keep(None)) };
            let expires_at = expiry.resolve(Some(&cur));
            Ok(Decision::Write {
                value: Some(cur.value.to_owned()),
                expires_at,
                reply: Some(PutOutcome { created: false, expires_at }),
            })
        })
    }

    /// Applies a versioned record from the log or a peer (last-writer-wins).
    pub fn apply(&self, record: RecordRef<'_>) -> bool {
        self.clock.advance_to(record.version.hlc);
        self.store.apply(record, clock::now_ms())
    }

    /// Waits until the journal holds everything up to `lsn` as the fsync policy
    /// requires. Without `--data-dir` this returns at once.
    pub async fn wait_durable(&self, lsn: Option<Lsn>) -> Result<(), DbError> {
        match (lsn, &self.journal.persist) {
            (Some(lsn), Some(persist)) => persist.flush_to(lsn).await.map_err(|e| DbError::Persistence(e.to_string())),
            _ => Ok(()),
        }
    }

    /// Copies of every live record, for tests and snapshots.
    pub fn records(&self) -> Vec<Record> {
        let now = clock::now_ms();
        let mut out = Vec::new();
        for i in 0..self.store.shard_count() {
            self.store.scan_shard(i, now, |r| out.push(r.to_owned()));
        }
        out
    }
}

impl Journal {
    /// Called under the shard lock of the written key.
    fn append(&self, record: RecordRef<'_>) -> Option<Lsn> {
        match &self.persist {
            Some(p) => Some(p.append(record)),
            None => {
                self.next_seq.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }
}
