//! The in-memory store: entries by key, each with a version and an absolute expiry.
//!
//! The store is sharded; each shard keeps its entries densely in a `Vec<Slot>` and
//! indexes them with a `hashbrown::HashTable<u32>` of positions. The dense vector makes
//! random sampling (for eviction) and incremental sweeping (for expiry) cheap, and keeps
//! the per-entry overhead low: one allocation holding key and value, 48 bytes of slot,
//! and ~5 bytes of index.
//!
//! Every mutation goes through [`Store::update`] (a local write: read-modify-write under
//! the shard lock) or [`Store::apply`] (a write that already has a version, from the log
//! or from a peer: last-writer-wins). Both are deterministic functions of the versions,
//! so replaying or receiving writes in any order, any number of times, converges.

mod origin;
mod value;

use std::cmp::Ordering as CmpOrdering;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use hashbrown::HashTable;
use parking_lot::Mutex;

pub use origin::{Origin, OriginId, OriginTable};
pub use value::{Encoding, InvalidJson, Value, ValueRef, merge_patch, validate_json};

use crate::clock;

/// Bytes we account per entry beyond its key and value: the slot, its index entry and
/// the allocator's header. Used for `--max-memory`.
pub const ENTRY_OVERHEAD: u64 = std::mem::size_of::<Slot>() as u64 + 5 + 16;

const FLAG_RAW: u8 = 1;
const FLAG_TOMBSTONE: u8 = 2;

/// The version of an entry: an HLC timestamp and the node that made the write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Version {
    pub hlc: u64,
    pub origin: OriginId,
}

/// A live entry, as seen inside [`Store::update`].
#[derive(Debug, Clone, Copy)]
pub struct Current<'a> {
    pub value: ValueRef<'a>,
    pub version: Version,
    pub expires_at: Option<u64>,
}

/// A copy of a live entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub value: Value,
    pub version: Version,
    pub expires_at: Option<u64>,
}

/// A versioned write, borrowed: what the log and replication see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    pub key: &'a str,
    pub version: Version,
    pub expires_at: Option<u64>,
    /// `None` is a tombstone (a delete).
    pub value: Option<ValueRef<'a>>,
}

/// A versioned write, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub key: String,
    pub version: Version,
    pub expires_at: Option<u64>,
    pub value: Option<Value>,
}

impl Record {
    pub fn as_ref(&self) -> RecordRef<'_> {
        RecordRef {
            key: &self.key,
            version: self.version,
            expires_at: self.expires_at,
            value: self.value.as_ref().map(Value::as_ref),
        }
    }
}

impl RecordRef<'_> {
    pub fn to_owned(self) -> Record {
        Record {
            key: self.key.to_owned(),
            version: self.version,
            expires_at: self.expires_at,
            value: self.value.map(ValueRef::to_owned),
        }
    }
}

/// What a local write decided after looking at the current entry.
#[derive(Debug)]
pub enum Decision<R> {
    /// Change nothing and answer `R`.
    Keep(R),
    /// Write a new version: a value, or a tombstone when `value` is `None`.
    Write { value: Option<Value>, expires_at: Option<u64>, reply: R },
}

/// Store settings.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Number of shards, rounded up to a power of two.
    pub shards: usize,
    /// Evict cold entries when the accounted memory exceeds this many bytes.
    pub max_memory: Option<u64>,
    /// How long a tombstone is kept after the delete it records.
    pub tombstone_retention_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig { shards: 64, max_memory: None, tombstone_retention_ms: 3600 * 1000 }
    }
}

/// What a sweep or an eviction freed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Freed {
    pub expired: u64,
    pub tombstones: u64,
    pub evicted: u64,
}

/// Counters kept by the store.
#[derive(Debug, Default)]
pub struct StoreCounters {
    pub expired: AtomicU64,
    pub evicted: AtomicU64,
    pub tombstones_purged: AtomicU64,
}

/// An entry in a shard: key and value share one allocation.
struct Slot {
    data: Box<[u8]>,
    hlc: u64,
    /// Absolute expiry in Unix milliseconds; 0 = never.
    expires_at: u64,
    origin: u32,
    /// Last access, in milliseconds since the store started, wrapping (for eviction).
    access: u32,
    key_len: u16,
    flags: u8,
}

impl Slot {
    fn key(&self) -> &[u8] {
        &self.data[..self.key_len as usize]
    }
    fn key_str(&self) -> &str {
        // Keys are only ever built from `&str`.
        std::str::from_utf8(self.key()).unwrap_or_default()
    }
    fn is_tombstone(&self) -> bool {
        self.flags & FLAG_TOMBSTONE != 0
    }
    fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at != 0 && self.expires_at <= now_ms
    }
    /// When the key became absent (for a tombstone or an expired entry): the later of
    /// the write and the expiry. Retention counts from here.
    fn absent_since(&self) -> u64 {
        clock::physical_ms(self.hlc).max(self.expires_at)
    }
    fn is_live(&self, now_ms: u64) -> bool {
        !self.is_tombstone() && !self.is_expired(now_ms)
    }
    fn version(&self) -> Version {
        Version { hlc: self.hlc, origin: OriginId(self.origin) }
    }
    fn expires_at(&self) -> Option<u64> {
        (self.expires_at != 0).then_some(self.expires_at)
    }
    fn value(&self) -> Option<ValueRef<'_>> {
        if self.is_tombstone() {
            return None;
        }
        let encoding = if self.flags & FLAG_RAW != 0 { Encoding::Raw } else { Encoding::Json };
        Some(ValueRef { encoding, bytes: &self.data[self.key_len as usize..] })
    }
    fn record(&self) -> RecordRef<'_> {
        RecordRef { key: self.key_str(), version: self.version(), expires_at: self.expires_at(), value: self.value() }
    }
    fn accounted(&self) -> u64 {
        self.data.len() as u64 + ENTRY_OVERHEAD
    }

    fn new(key: &str, version: Version, expires_at: Option<u64>, value: Option<ValueRef<'_>>, access: u32) -> Slot {
        let vbytes = value.map(|v| v.bytes).unwrap_or_default();
        let mut data = Vec::with_capacity(key.len() + vbytes.len());
        data.extend_from_slice(key.as_bytes());
        data.extend_from_slice(vbytes);
        let flags = match value {
            None => FLAG_TOMBSTONE,
            Some(v) if v.encoding == Encoding::Raw => FLAG_RAW,
            Some(_) => 0,
        };
        Slot {
            data: data.into_boxed_slice(),
            hlc: version.hlc,
            expires_at: expires_at.unwrap_or(0),
            origin: version.origin.0,
            access,
            key_len: key.len() as u16,
            flags,
        }
    }
}

#[derive(Default)]
struct Shard {
    index: HashTable<u32>,
    slots: Vec<Slot>,
    /// Slots that are not tombstones (expired ones included until swept).
    live: usize,
    /// Sweep position.
    cursor: usize,
}

impl Shard {
    fn find(&self, hash: u64, key: &[u8]) -> Option<usize> {
        let slots = &self.slots;
        self.index.find(hash, |&i| slots[i as usize].key() == key).map(|&i| i as usize)
    }

    fn insert(&mut self, hash: u64, slot: Slot, hasher: &impl BuildHasher) {
        let pos = self.slots.len() as u32;
        if !slot.is_tombstone() {
            self.live += 1;
        }
        self.slots.push(slot);
        let slots = &self.slots;
        self.index.insert_unique(hash, pos, |&i| hasher.hash_one(slots[i as usize].key()));
    }

    /// Replaces the slot at `pos`; returns the old one.
    fn replace(&mut self, pos: usize, slot: Slot) -> Slot {
        let old = std::mem::replace(&mut self.slots[pos], slot);
        match (old.is_tombstone(), self.slots[pos].is_tombstone()) {
            (true, false) => self.live += 1,
            (false, true) => self.live -= 1,
            _ => {}
        }
        old
    }

    /// Removes the slot at `pos`, moving the last slot into its place.
    fn remove(&mut self, pos: usize, hasher: &impl BuildHasher) -> Slot {
        let hash = hasher.hash_one(self.slots[pos].key());
        if let Ok(entry) = self.index.find_entry(hash, |&i| i as usize == pos) {
            entry.remove();
        }
        let last = self.slots.len() - 1;
        let slot = self.slots.swap_remove(pos);
        if pos != last {
            let moved_hash = hasher.hash_one(self.slots[pos].key());
            if let Some(i) = self.index.find_mut(moved_hash, |&i| i as usize == last) {
                *i = pos as u32;
            }
        }
        if !slot.is_tombstone() {
            self.live -= 1;
        }
        slot
    }
}

/// The sharded store.
pub struct Store {
    shards: Box<[Mutex<Shard>]>,
    shard_mask: usize,
    hasher: foldhash::fast::FixedState,
    used: AtomicU64,
    evict_cursor: AtomicU64,
    config: StoreConfig,
    origins: Arc<OriginTable>,
    counters: StoreCounters,
    /// Wall-clock ms when the store started: the origin of access times.
    started_ms: u64,
    /// Set while a peer is unreachable: tombstones are then kept for
    /// [`TOMBSTONE_HOLD_FACTOR`] times the retention, so that a delete made during a
    /// partition still reaches the other side when it ends.
    tombstone_hold: AtomicBool,
}

/// How much longer than the retention tombstones are kept while a peer is unreachable.
pub const TOMBSTONE_HOLD_FACTOR: u64 = 10;

impl Store {
    /// Access time of `now_ms`: ms since the store started, wrapping after ~49 days
    /// (ages are compared with wrapping arithmetic, so only entries untouched for
    /// longer than that look younger than they are).
    fn access_now(&self, now_ms: u64) -> u32 {
        now_ms.wrapping_sub(self.started_ms) as u32
    }

    pub fn new(config: StoreConfig, origins: Arc<OriginTable>) -> Self {
        let n = config.shards.max(1).next_power_of_two();
        Store {
            shards: (0..n).map(|_| Mutex::new(Shard::default())).collect(),
            shard_mask: n - 1,
            hasher: foldhash::fast::FixedState::with_seed(fastrand::u64(..)),
            used: AtomicU64::new(0),
            evict_cursor: AtomicU64::new(0),
            config,
            origins,
            counters: StoreCounters::default(),
            started_ms: clock::now_ms(),
            tombstone_hold: AtomicBool::new(false),
        }
    }

    /// Holds tombstones past the retention (while a peer is unreachable: up to
    /// [`TOMBSTONE_HOLD_FACTOR`] times it) or lets them go; returns the previous setting.
    pub fn set_tombstone_hold(&self, hold: bool) -> bool {
        self.tombstone_hold.swap(hold, Ordering::Relaxed)
    }

    /// How long an absent key is remembered now: the retention, or longer while held.
    pub fn tombstone_retention_ms(&self) -> u64 {
        if self.tombstone_hold.load(Ordering::Relaxed) {
            self.tombstone_hold_ms()
        } else {
            self.config.tombstone_retention_ms
        }
    }

    /// How long an absent key is remembered while held: the longest partition whose
    /// deletes still reach the other side.
    pub fn tombstone_hold_ms(&self) -> u64 {
        self.config.tombstone_retention_ms.saturating_mul(TOMBSTONE_HOLD_FACTOR)
    }

    pub fn origins(&self) -> &Arc<OriginTable> {
        &self.origins
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    pub fn counters(&self) -> &StoreCounters {
        &self.counters
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Makes room for `entries` more entries in all (spread evenly over the shards, with
    /// a margin for uneven spread), so that loading them does not grow and rehash the
    /// index step by step. Recovery calls it with the snapshot's record count.
    pub fn reserve(&self, entries: u64) {
        let per_shard = usize::try_from(entries / self.shards.len() as u64).unwrap_or(usize::MAX);
        let per_shard = per_shard.saturating_add(per_shard / 16).saturating_add(16);
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            let Shard { index, slots, .. } = &mut *shard;
            slots.reserve(per_shard);
            index.reserve(per_shard, |&i| self.hasher.hash_one(slots[i as usize].key()));
        }
    }

    fn locate(&self, key: &str) -> (u64, &Mutex<Shard>) {
        let (hash, shard) = self.hash_and_shard(key);
        (hash, &self.shards[shard])
    }

    /// The key's hash and the index of its shard.
    fn hash_and_shard(&self, key: &str) -> (u64, usize) {
        let hash = self.hasher.hash_one(key.as_bytes());
        // The shard comes from bits the hash table does not use for small tables
        // (it uses the low bits for the bucket and the top 7 for its tag).
        (hash, ((hash >> 32) as usize) & self.shard_mask)
    }

    /// Compares two versions: by timestamp, then by origin node id.
    pub fn cmp_versions(&self, a: Version, b: Version) -> CmpOrdering {
        a.hlc.cmp(&b.hlc).then_with(|| self.origins.cmp(a.origin, b.origin))
    }

    /// The live entry at `key`, if any; marks it as recently used.
    pub fn get(&self, key: &str, now_ms: u64) -> Option<Found> {
        let (hash, shard) = self.locate(key);
        let mut s = shard.lock();
        let pos = s.find(hash, key.as_bytes())?;
        let slot = &mut s.slots[pos];
        if !slot.is_live(now_ms) {
            return None;
        }
        slot.access = self.access_now(now_ms);
        let value = slot.value()?.to_owned();
        Some(Found { value, version: slot.version(), expires_at: slot.expires_at() })
    }

    /// Calls `f` with the live entry at `key` without copying it.
    pub fn read<R>(&self, key: &str, now_ms: u64, f: impl FnOnce(Option<Current<'_>>) -> R) -> R {
        let (hash, shard) = self.locate(key);
        let mut s = shard.lock();
        let Some(pos) = s.find(hash, key.as_bytes()) else { return f(None) };
        let slot = &mut s.slots[pos];
        if !slot.is_live(now_ms) {
            return f(None);
        }
        slot.access = self.access_now(now_ms);
        let slot = &s.slots[pos];
        match slot.value() {
            Some(value) => f(Some(Current { value, version: slot.version(), expires_at: slot.expires_at() })),
            None => f(None),
        }
    }

    /// A local read-modify-write under the shard lock.
    ///
    /// `decide` sees the live entry (or `None`) and decides; when it writes, `stamp`
    /// gives the new version from the version the key holds now (live, expired or a
    /// tombstone), which it must exceed, and `commit` sees the new record — both still
    /// under the lock, so versions, the store and the log agree on the order of writes
    /// to a key.
    pub fn update<R, C, E>(
        &self,
        key: &str,
        now_ms: u64,
        decide: impl FnOnce(Option<Current<'_>>) -> Result<Decision<R>, E>,
        stamp: impl FnOnce(Option<Version>) -> Version,
        commit: impl FnOnce(RecordRef<'_>) -> C,
    ) -> Result<(R, Option<(Version, C)>), E> {
        let (hash, shard) = self.locate(key);
        let mut s = shard.lock();
        let pos = s.find(hash, key.as_bytes());
        let current = pos.and_then(|p| {
            let slot = &s.slots[p];
            if !slot.is_live(now_ms) {
                return None;
            }
            slot.value().map(|value| Current { value, version: slot.version(), expires_at: slot.expires_at() })
        });
        let (value, expires_at, reply) = match decide(current)? {
            Decision::Keep(reply) => return Ok((reply, None)),
            Decision::Write { value, expires_at, reply } => (value, expires_at, reply),
        };
        let version = stamp(pos.map(|p| s.slots[p].version()));
        let slot = Slot::new(key, version, expires_at, value.as_ref().map(Value::as_ref), self.access_now(now_ms));
        let pos = self.put_slot(&mut s, pos, hash, slot);
        let committed = commit(s.slots[pos].record());
        drop(s);
        self.enforce_memory_limit(now_ms);
        Ok((reply, Some((version, committed))))
    }

    /// Puts `slot` at `pos` (the key's slot, if it has one) or adds it, keeping the memory
    /// accounting; returns where it is.
    #[inline]
    fn put_slot(&self, s: &mut Shard, pos: Option<usize>, hash: u64, slot: Slot) -> usize {
        let added = slot.accounted();
        let pos = match pos {
            Some(p) => {
                let old = s.replace(p, slot);
                self.used.fetch_sub(old.accounted(), Ordering::Relaxed);
                p
            }
            None => {
                s.insert(hash, slot, &self.hasher);
                s.slots.len() - 1
            }
        };
        self.used.fetch_add(added, Ordering::Relaxed);
        pos
    }

    /// Writes every `(key, value, expires_at)` of `entries` at once: the shards of all the
    /// keys are locked together (in shard order, the only place more than one shard lock is
    /// held, so no two callers can wait for each other), every entry is written and
    /// committed, then they are all released — no reader sees some of the new values without
    /// the others. A key given twice ends with its last value. Returns, per entry, whether
    /// the key was absent before and what `commit` returned.
    pub fn put_many<C>(
        &self,
        entries: &[(&str, Value, Option<u64>)],
        now_ms: u64,
        mut stamp: impl FnMut(Option<Version>) -> Version,
        mut commit: impl FnMut(RecordRef<'_>) -> C,
    ) -> Vec<(bool, Version, C)> {
        let located: Vec<(u64, usize)> = entries.iter().map(|(key, _, _)| self.hash_and_shard(key)).collect();
        let mut order: Vec<usize> = located.iter().map(|&(_, shard)| shard).collect();
        order.sort_unstable();
        order.dedup();
        let mut guards: Vec<(usize, parking_lot::MutexGuard<'_, Shard>)> =
            order.iter().map(|&i| (i, self.shards[i].lock())).collect();
        let mut out = Vec::with_capacity(entries.len());
        for ((key, value, expires_at), &(hash, shard)) in entries.iter().zip(&located) {
            let Ok(g) = guards.binary_search_by_key(&shard, |(i, _)| *i) else { continue };
            let s = &mut guards[g].1;
            let pos = s.find(hash, key.as_bytes());
            let absent = pos.is_none_or(|p| !s.slots[p].is_live(now_ms) || s.slots[p].is_tombstone());
            let version = stamp(pos.map(|p| s.slots[p].version()));
            let slot = Slot::new(key, version, *expires_at, Some(value.as_ref()), self.access_now(now_ms));
            let pos = self.put_slot(s, pos, hash, slot);
            let committed = commit(s.slots[pos].record());
            out.push((absent, version, committed));
        }
        drop(guards);
        self.enforce_memory_limit(now_ms);
        out
    }

    /// Applies a write that already has a version (from the log or a snapshot):
    /// last-writer-wins. Returns whether it changed the store.
    pub fn apply(&self, record: RecordRef<'_>, now_ms: u64) -> bool {
        self.apply_gated::<(), (), _>(record, now_ms, || Ok(()), |(), changed| changed).unwrap_or(false)
    }

    /// Like [`Store::apply`], but under the shard lock first asks `gate` whether to
    /// apply at all, and then hands what `gate` gave and whether the store changed to
    /// `commit` — still under the lock (replication numbers and logs records there).
    pub fn apply_gated<G, E, R>(
        &self,
        record: RecordRef<'_>,
        now_ms: u64,
        gate: impl FnOnce() -> Result<G, E>,
        commit: impl FnOnce(G, bool) -> R,
    ) -> Result<R, E> {
        let (hash, shard) = self.locate(record.key);
        let mut s = shard.lock();
        let granted = gate()?;
        let pos = s.find(hash, record.key.as_bytes());
        if let Some(p) = pos
            && self.cmp_versions(s.slots[p].version(), record.version) != CmpOrdering::Less
        {
            return Ok(commit(granted, false));
        }
        // An expired value is as absent as a tombstone: keep it as one (so that older
        // writes cannot come back) until its retention has passed.
        let expired = record.value.is_some() && record.expires_at.is_some_and(|at| at <= now_ms);
        let absent_since = clock::physical_ms(record.version.hlc).max(record.expires_at.unwrap_or(0));
        let absent = record.value.is_none() || expired;
        if absent && absent_since.saturating_add(self.tombstone_retention_ms()) <= now_ms {
            // Newer than what we hold, but absent for longer than the retention: the
            // key is simply absent.
            if let Some(p) = pos {
                let old = s.remove(p, &self.hasher);
                self.used.fetch_sub(old.accounted(), Ordering::Relaxed);
            }
            return Ok(commit(granted, pos.is_some()));
        }
        let record = if expired { RecordRef { value: None, ..record } } else { record };
        let slot = Slot::new(record.key, record.version, record.expires_at, record.value, self.access_now(now_ms));
        let added = slot.accounted();
        match pos {
            Some(p) => {
                let old = s.replace(p, slot);
                self.used.fetch_sub(old.accounted(), Ordering::Relaxed);
            }
            None => s.insert(hash, slot, &self.hasher),
        }
        self.used.fetch_add(added, Ordering::Relaxed);
        let result = commit(granted, true);
        drop(s);
        self.enforce_memory_limit(now_ms);
        Ok(result)
    }

    /// Number of keys (tombstones excluded; expired entries count until swept).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().live).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of tombstones held.
    pub fn tombstones(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock();
                s.slots.len() - s.live
            })
            .sum()
    }

    /// Bytes accounted to entries (keys, values and per-entry overhead).
    pub fn memory_bytes(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Calls `f` with every record of shard `shard` (live entries and tombstones within
    /// retention), under that shard's lock.
    ///
    /// An expired entry is given as a tombstone of the same version: absent, but still
    /// able to stop an older write from coming back.
    pub fn scan_shard(&self, shard: usize, now_ms: u64, f: impl FnMut(RecordRef<'_>)) {
        self.scan(shard, now_ms, true, f)
    }

    /// Like [`Store::scan_shard`], but an entry expired by our clock keeps its value and
    /// expiry: for a full resync, whose receiver judges the expiry by its own clock. Given
    /// as a tombstone, an entry that a receiver with a slower clock still holds live would
    /// be hidden there by a tombstone of the same version until it expired there too.
    pub fn scan_shard_for_resync(&self, shard: usize, now_ms: u64, f: impl FnMut(RecordRef<'_>)) {
        self.scan(shard, now_ms, false, f)
    }

    fn scan(&self, shard: usize, now_ms: u64, expired_as_tombstones: bool, mut f: impl FnMut(RecordRef<'_>)) {
        let retention = self.tombstone_retention_ms();
        let s = self.shards[shard].lock();
        for slot in &s.slots {
            let absent = slot.is_tombstone() || slot.is_expired(now_ms);
            if absent && slot.absent_since().saturating_add(retention) <= now_ms {
                continue;
            }
            let record = slot.record();
            f(if absent && expired_as_tombstones { RecordRef { value: None, ..record } } else { record });
        }
    }

    /// Frees up to `budget` slots' worth of expired entries and old tombstones in
    /// every shard, continuing where the previous sweep stopped.
    pub fn sweep(&self, now_ms: u64, budget: usize) -> Freed {
        let mut freed = Freed::default();
        let tombstone_cutoff = now_ms.saturating_sub(self.tombstone_retention_ms());
        for shard in self.shards.iter() {
            let mut s = shard.lock();
            let mut seen = 0;
            while seen < budget && !s.slots.is_empty() {
                if s.cursor >= s.slots.len() {
                    s.cursor = 0;
                }
                let pos = s.cursor;
                let slot = &s.slots[pos];
                let expired = !slot.is_tombstone() && slot.is_expired(now_ms);
                let stale = (slot.is_tombstone() || expired) && slot.absent_since() < tombstone_cutoff;
                if stale {
                    let old = s.remove(pos, &self.hasher);
                    self.used.fetch_sub(old.accounted(), Ordering::Relaxed);
                    if expired { freed.expired += 1 } else { freed.tombstones += 1 }
                    // The last slot moved into `pos`: look at it next.
                } else if expired {
                    // Free the value, keep the version as a tombstone until retention.
                    let tombstone = {
                        let r = slot.record();
                        Slot::new(r.key, r.version, r.expires_at, None, slot.access)
                    };
                    let added = tombstone.accounted();
                    let old = s.replace(pos, tombstone);
                    self.used.fetch_sub(old.accounted(), Ordering::Relaxed);
                    self.used.fetch_add(added, Ordering::Relaxed);
                    freed.expired += 1;
                    s.cursor += 1;
                } else {
                    s.cursor += 1;
                }
                seen += 1;
            }
        }
        self.counters.expired.fetch_add(freed.expired, Ordering::Relaxed);
        self.counters.tombstones_purged.fetch_add(freed.tombstones, Ordering::Relaxed);
        freed
    }

    /// Drops the oldest of a few sampled tombstones in one shard.
    fn evict_tombstone(&self, seed: usize) -> bool {
        for k in 0..self.shards.len() {
            let i = (seed + k) & self.shard_mask;
            let mut s = self.shards[i].lock();
            if s.slots.len() == s.live {
                continue;
            }
            let mut best: Option<(u64, usize)> = None;
            for _ in 0..20 {
                let pos = fastrand::usize(..s.slots.len());
                let slot = &s.slots[pos];
                if slot.is_tombstone() && best.is_none_or(|(since, _)| slot.absent_since() < since) {
                    best = Some((slot.absent_since(), pos));
                }
            }
            if let Some((_, pos)) = best {
                let old = s.remove(pos, &self.hasher);
                self.used.fetch_sub(old.accounted(), Ordering::Relaxed);
                self.counters.tombstones_purged.fetch_add(1, Ordering::Relaxed);
                return true;
            }
        }
        false
    }

    /// Evicts cold entries while the accounted memory exceeds `--max-memory`.
    /// Eviction is local: it writes no tombstone and is never replicated.
    ///
    /// Approximated LRU across shards: each round samples a few entries in each of a
    /// few random shards and evicts the least recently used of them (an expired one
    /// wins outright). Tombstones go only when nothing else is left to evict: dropping
    /// one early could let an older write resurrect its key.
    fn enforce_memory_limit(&self, now_ms: u64) -> Freed {
        const SHARDS_PER_ROUND: usize = 4;
        const SAMPLES: usize = 5;
        let mut freed = Freed::default();
        let Some(max) = self.config.max_memory else { return freed };
        let mut fruitless = 0;
        while self.used.load(Ordering::Relaxed) > max && fruitless < 8 {
            // (expired, age, hlc, shard, position, access): the oldest access wins,
            // and among equal accesses the oldest write.
            let now_tick = self.access_now(now_ms);
            let mut best: Option<(bool, u32, u64, usize, usize, u32)> = None;
            let first = self.evict_cursor.fetch_add(1, Ordering::Relaxed) as usize;
            // Distinct entries compared this round: a round goes on to further shards until
            // it compared at least SAMPLES of them, so that a nearly empty store never
            // evicts its only recently used entry for lack of anything to compare it with.
            // (On the stack: this runs on writes under memory pressure. A round stops adding
            // shards once it has SAMPLES, so it never holds more than 6 shards' samples.)
            let mut compared = [(0usize, 0usize); 32];
            let mut distinct = 0;
            for k in 0..self.shards.len() {
                if k >= SHARDS_PER_ROUND && distinct >= SAMPLES {
                    break;
                }
                let i = if k < SHARDS_PER_ROUND {
                    (first.wrapping_mul(0x9E37_79B9) + k * (self.shards.len() / SHARDS_PER_ROUND).max(1))
                        & self.shard_mask
                } else {
                    (first.wrapping_mul(0x9E37_79B9) + k) & self.shard_mask
                };
                let s = self.shards[i].lock();
                if s.live == 0 {
                    continue;
                }
                let mut found = 0;
                for _ in 0..SAMPLES * 4 {
                    let pos = fastrand::usize(..s.slots.len());
                    let slot = &s.slots[pos];
                    if slot.is_tombstone() {
                        continue;
                    }
                    if distinct < compared.len() && !compared[..distinct].contains(&(i, pos)) {
                        compared[distinct] = (i, pos);
                        distinct += 1;
                    }
                    let age = now_tick.wrapping_sub(slot.access);
                    let candidate = (slot.is_expired(now_ms), age, slot.hlc, i, pos, slot.access);
                    let better = match best {
                        None => true,
                        Some((exp, best_age, best_hlc, ..)) => {
                            (candidate.0 && !exp)
                                || (candidate.0 == exp && (age > best_age || (age == best_age && slot.hlc < best_hlc)))
                        }
                    };
                    if better {
                        best = Some(candidate);
                    }
                    found += 1;
                    if found == SAMPLES {
                        break;
                    }
                }
            }
            let Some((expired, _, hlc, shard, pos, access)) = best else {
                // Only tombstones left where we looked: under memory pressure the oldest
                // of them go too (the price is that a write older than such a delete,
                // arriving later, could bring the key back).
                if self.evict_tombstone(first) {
                    freed.tombstones += 1;
                } else {
                    fruitless += 1;
                }
                continue;
            };
            let mut s = self.shards[shard].lock();
            // The shard may have changed since we sampled it: check the slot is the same.
            let same =
                s.slots.get(pos).is_some_and(|slot| !slot.is_tombstone() && slot.access == access && slot.hlc == hlc);
            if !same {
                fruitless += 1;
                continue;
            }
            fruitless = 0;
            let old = s.remove(pos, &self.hasher);
            self.used.fetch_sub(old.accounted(), Ordering::Relaxed);
            if expired { freed.expired += 1 } else { freed.evicted += 1 }
        }
        self.counters.expired.fetch_add(freed.expired, Ordering::Relaxed);
        self.counters.evicted.fetch_add(freed.evicted, Ordering::Relaxed);
        freed
    }
}

#[cfg(test)]
mod tests;
