//! The database: the store, the clock and the journal (on-disk log) behind one API
//! that both client interfaces (HTTP and RESP) use.
//!
//! Every local write goes through [`Db::update`]: it validates, decides under the
//! shard lock, stamps a new HLC version, applies, and appends the record to the
//! journal in the same critical section. The caller acknowledges the write only after
//! [`Db::wait_durable`] says the record reached the operating system (or the disk,
//! with `--fsync always`). Reads never see an expired entry.

use std::sync::Arc;

use bytes::Bytes;

use crate::clock::{self, Hlc};
use crate::journal::{Journal, Offered};
use crate::metrics::Metrics;
use crate::persist::record::Decoded;
use crate::persist::{CompactionReport, Lsn, Persist, PersistError};
use crate::replication::{Positions, StreamId};
use crate::store::{Current, Decision, Found, OriginId, RecordRef, Store, Value, Version};

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
    /// Its sequence number in this node's stream, when something was written.
    pub seq: Option<u64>,
    pub lsn: Option<Lsn>,
}

/// What a plain put did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutOutcome {
    pub created: bool,
    pub expires_at: Option<u64>,
}

/// What applying a peer's record did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteApplied {
    pub offered: Offered,
    pub lsn: Option<Lsn>,
}

/// The database of one node.
pub struct Db {
    store: Store,
    clock: Hlc,
    limits: Limits,
    journal: Journal,
    metrics: Arc<Metrics>,
}

impl Db {
    pub fn new(store: Store, clock: Hlc, limits: Limits, journal: Journal, metrics: Arc<Metrics>) -> Self {
        Db { store, clock, limits, journal, metrics }
    }

    /// A memory-only database with no replication (for tests and tools).
    pub fn standalone(store: Store, limits: Limits, metrics: Arc<Metrics>) -> Self {
        let local = store.origins().local();
        let stream = StreamId::new(local.node_id.clone(), clock::now_ms());
        let journal = Journal::new(stream, local, None, Positions::new(), None);
        Db::new(store, Hlc::new(), limits, journal, metrics)
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

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    pub fn persist(&self) -> Option<&Arc<Persist>> {
        self.journal.persist()
    }

    /// Writes coordinated by this node in this run.
    pub fn local_writes(&self) -> u64 {
        self.journal.lock().local_seq
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
            |replaced| self.next_version(replaced),
            |record| journal.append_local(record, now),
        )?;
        match written {
            Some((version, appended)) => {
                Ok(Written { reply, version: Some(version), seq: Some(appended.seq), lsn: appended.lsn })
            }
            None => Ok(Written { reply, version: None, seq: None, lsn: None }),
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

    /// Writes several keys at once (Redis MSET): no reader on this node sees some of the
    /// new values without the others (other nodes receive them as one batch, applied one by
    /// one). Every key and value is checked first; nothing is written when one is invalid.
    pub fn put_many(
        &self,
        entries: Vec<(&str, Value)>,
        expires_at: Option<u64>,
    ) -> Result<Vec<Written<PutOutcome>>, DbError> {
        for (key, value) in &entries {
            self.check_key(key)?;
            self.check_value(value.len())?;
        }
        let now = clock::now_ms();
        let entries: Vec<(&str, Value, Option<u64>)> = entries.into_iter().map(|(k, v)| (k, v, expires_at)).collect();
        let journal = &self.journal;
        let written = self.store.put_many(
            &entries,
            now,
            |replaced| self.next_version(replaced),
            |record| journal.append_local(record, now),
        );
        Ok(written
            .into_iter()
            .map(|(created, version, appended)| Written {
                reply: PutOutcome { created, expires_at },
                version: Some(version),
                seq: Some(appended.seq),
                lsn: appended.lsn,
            })
            .collect())
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

    /// The version of a local write replacing `replaced` (the key's current version, if
    /// it has one): the clock's next timestamp, or just above `replaced` when that is
    /// ahead — a write made by a region whose clock is ahead of ours — so that a local
    /// write always supersedes what it replaced, and every replica agrees, whatever the
    /// clocks say. The clock itself is not moved ahead (only this key's version is): one
    /// fast clock elsewhere must not push every later version of this node into the future.
    fn next_version(&self, replaced: Option<Version>) -> Version {
        let now = self.clock.now();
        let hlc = match replaced {
            Some(r) if r.hlc >= now => r.hlc + 1,
            _ => now,
        };
        Version { hlc, origin: OriginId::LOCAL }
    }

    /// Applies a versioned record from the log (last-writer-wins).
    pub fn apply(&self, record: RecordRef<'_>) -> bool {
        self.clock.advance_to(record.version.hlc);
        self.store.apply(record, clock::now_ms())
    }

    /// Resolves the origin of a decoded record to an id in the origin table.
    fn origin_id(&self, d: &Decoded<'_>) -> OriginId {
        if *self.store.origins().local().node_id == *d.node_id {
            OriginId::LOCAL
        } else {
            self.store.origins().intern(d.node_id, d.region)
        }
    }

    /// Offers a record streamed by a peer: applied only when it is the next one of
    /// its stream, so that positions stay contiguous prefixes.
    pub fn apply_remote(&self, d: &Decoded<'_>, encoded: &Bytes, max_skew_ms: u64) -> RemoteApplied {
        let now = clock::now_ms();
        if self.clock.observe(d.hlc, max_skew_ms).is_err() {
            self.metrics.clock_skew_refusals.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let stream = StreamId::new(d.node_id, d.epoch);
        let record = d.record(self.origin_id(d));
        let journal = &self.journal;
        let result = self.store.apply_gated(
            record,
            now,
            || journal.gate(&stream, d.seq),
            |granted, changed| (changed, journal.commit_remote(granted, &stream, d.seq, encoded, now)),
        );
        match result {
            Ok((changed, lsn)) => RemoteApplied { offered: Offered::Applied { changed }, lsn },
            Err(offered) => RemoteApplied { offered, lsn: None },
        }
    }

    /// Applies an entry of a full snapshot sent by a peer.
    pub fn apply_snapshot_record(&self, d: &Decoded<'_>, max_skew_ms: u64) -> Option<Lsn> {
        let now = clock::now_ms();
        let _ = self.clock.observe(d.hlc, max_skew_ms);
        let record = d.record(self.origin_id(d));
        let journal = &self.journal;
        self.store
            .apply_gated::<(), (), _>(
                record,
                now,
                || Ok(()),
                |(), changed| changed.then(|| journal.append_snapshot_record(record)).flatten(),
            )
            .unwrap_or(None)
    }

    /// Compacts the on-disk log into a snapshot (blocking).
    pub fn compact(&self) -> Option<Result<CompactionReport, PersistError>> {
        let persist = self.journal.persist()?;
        let journal = &self.journal;
        Some(persist.compact(&self.store, |p| {
            let st = journal.lock();
            let segment = p.rotate()?;
            Ok((segment, st.positions.clone()))
        }))
    }

    /// Waits until the journal holds everything up to `lsn` as the fsync policy
    /// requires. Without `--data-dir` this returns at once.
    pub async fn wait_durable(&self, lsn: Option<Lsn>) -> Result<(), DbError> {
        match (lsn, self.journal.persist()) {
            (Some(lsn), Some(persist)) => persist.flush_to(lsn).await.map_err(|e| DbError::Persistence(e.to_string())),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Origin, OriginTable, Record, StoreConfig};

    fn db() -> Db {
        let origins = Arc::new(OriginTable::new(Origin { node_id: "eu-0".into(), region: "eu".into() }));
        Db::standalone(Store::new(StoreConfig::default(), origins), Limits::default(), Arc::new(Metrics::default()))
    }

    fn json(s: &str) -> Value {
        Value::json(s.as_bytes().to_vec()).unwrap()
    }

    /// A record written by `us-0`, whose clock is `ahead_ms` ahead of ours.
    fn from_a_clock_ahead(db: &Db, key: &str, value: Option<&str>, ahead_ms: u64) -> Version {
        let origin = db.store().origins().intern("us-0", "us");
        let version = Version { hlc: clock::pack(clock::now_ms() + ahead_ms, 3), origin };
        let record = Record { key: key.into(), version, expires_at: None, value: value.map(json) };
        // As replication applies it: the clock does not follow a timestamp that far ahead.
        assert!(db.store().apply(record.as_ref(), clock::now_ms()));
        version
    }

    #[test]
    fn a_local_write_supersedes_an_entry_written_by_a_clock_far_ahead() {
        let db = db();
        let remote = from_a_clock_ahead(&db, "k", Some("1"), 10_000);
        let written = db.put("k", json("2"), Expiry::Keep).unwrap();
        let version = written.version.unwrap();
        assert_eq!(db.store().cmp_versions(version, remote), std::cmp::Ordering::Greater);
        assert_eq!(&*db.get("k").unwrap().unwrap().value.bytes, b"2");
        // The clock itself is not pushed 10 s ahead by it: another key gets a timestamp of now.
        let other = db.put("other", json("3"), Expiry::Keep).unwrap().version.unwrap();
        assert!(clock::physical_ms(other.hlc) < clock::now_ms() + 1_000, "the clock jumped ahead");
    }

    #[test]
    fn a_local_delete_supersedes_an_entry_written_by_a_clock_far_ahead() {
        let db = db();
        let remote = from_a_clock_ahead(&db, "k", Some("1"), 10_000);
        let deleted = db.delete("k").unwrap();
        assert!(deleted.reply);
        let tombstone = deleted.version.unwrap();
        assert_eq!(db.store().cmp_versions(tombstone, remote), std::cmp::Ordering::Greater);
        // The same record arriving again (a duplicate) does not bring the key back.
        let record = Record { key: "k".into(), version: remote, expires_at: None, value: Some(json("1")) };
        assert!(!db.store().apply(record.as_ref(), clock::now_ms()));
        assert!(db.get("k").unwrap().is_none());
    }

    #[test]
    fn a_write_after_a_tombstone_from_a_clock_far_ahead_is_above_the_tombstone() {
        let db = db();
        let remote = from_a_clock_ahead(&db, "k", None, 10_000);
        let version = db.put("k", json("2"), Expiry::Keep).unwrap().version.unwrap();
        assert_eq!(db.store().cmp_versions(version, remote), std::cmp::Ordering::Greater);
        assert!(db.get("k").unwrap().is_some());
    }

    #[test]
    fn every_key_of_an_mset_supersedes_what_it_replaced() {
        let db = db();
        let remote = from_a_clock_ahead(&db, "a", Some("1"), 60_000);
        let written = db.put_many(vec![("a", json("2")), ("b", json("3"))], None).unwrap();
        assert_eq!(db.store().cmp_versions(written[0].version.unwrap(), remote), std::cmp::Ordering::Greater);
        assert_eq!(&*db.get("a").unwrap().unwrap().value.bytes, b"2");
    }
}
