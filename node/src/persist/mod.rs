//! Optional persistence (`--data-dir`): an append-only log of records, compacted by
//! snapshots.
//!
//! - **Log.** Every local write appends a checksummed [`record`] to an in-memory
//!   buffer under the journal lock; before the write is acknowledged,
//!   [`Persist::flush_to`] writes the buffer to the current segment file (group commit:
//!   one `write(2)` covers every write that is waiting). With [`FsyncPolicy::Always`]
//!   it also `fdatasync`s before the acknowledgement; with the default
//!   [`FsyncPolicy::EverySecond`] a background task syncs at least once a second.
//!   So `kill -9` never loses an acknowledged write, and a power loss loses at most
//!   the last second (or nothing, with `always`).
//! - **Segments.** The log is a sequence of files `log-<id>.gclog`; each start of the
//!   node opens a new one.
//! - **Snapshots.** When the log since the last snapshot grows past
//!   `max(compact_min_bytes, size of the last snapshot)`, [`Persist::compact`] starts a
//!   new segment, writes every live entry and tombstone to `snapshot-<id>.gcsnap`
//!   (through a temporary file, fsync, rename), and deletes the segments before `<id>`.
//!   Records carry their versions and apply is last-writer-wins, so writes that land
//!   in both the snapshot and the new segment are harmless.
//!   A snapshot is written shard by shard and ends with an index of where each shard's
//!   records start (checksummed, after the end marker).
//! - **Recovery.** [`Persist::open`] sizes the store for the newest snapshot's entries
//!   (counted in its header), loads it — its shards on one thread per core, each thread
//!   a run of consecutive shards, so they never contend for a shard — then replays the
//!   segments after it: read in order by one thread, applied by one thread per core, each
//!   owning the keys that hash to it (so each key's records apply in log order). A torn
//!   or corrupt record (bad length, bad checksum) ends the replay of its file: it is
//!   reported, the file is truncated there, and nothing after it in that file is trusted.
//!   Expired entries are not restored.

mod key_spread;
pub mod record;
mod recovery;

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::clock;
use crate::metrics::Metrics;
use crate::replication::{Positions, StreamId};
use crate::store::{Origin, OriginId, OriginTable, RecordRef, Store};

use recovery::{Listing, Recovery, SnapshotLoad};

/// A position in the log stream of this process (bytes appended since start).
pub type Lsn = u64;

const SEGMENT_MAGIC: &[u8; 8] = b"GCLOG001";
/// Snapshot header: magic, first segment (u64), record count (u64), positions length
/// (u32), positions. The count lets recovery size the store once instead of growing it.
const SNAPSHOT_MAGIC: &[u8; 8] = b"GCSNAP02";
/// The first snapshot format: the same header without the record count (still read).
const SNAPSHOT_MAGIC_V1: &[u8; 8] = b"GCSNAP01";
/// Ends a snapshot: a record header with length 0 (no real record is empty).
const SNAPSHOT_END: &[u8; 8] = &[0, 0, 0, 0, b'G', b'C', b'E', b'N'];
/// Ends the index of a snapshot's shards, after the end marker: `offset (u64) × n`, `n
/// (u32)`, CRC-32 of those (u32), this magic. Readers that do not know it stop at the end
/// marker; those that do load the shards' byte ranges in parallel.
const SNAPSHOT_INDEX_MAGIC: &[u8; 8] = b"GCIDX001";

/// When the log is flushed to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// fsync at least once a second (acknowledged writes survive a process crash;
    /// a power loss can take the last second).
    #[default]
    EverySecond,
    /// fsync before every acknowledgement (group commit).
    Always,
}

/// Persistence settings.
#[derive(Debug, Clone)]
pub struct PersistConfig {
    pub dir: PathBuf,
    pub fsync: FsyncPolicy,
    /// Do not compact before the log since the last snapshot reaches this size.
    pub compact_min_bytes: u64,
}

/// Errors opening or compacting the data directory.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("cannot use data dir {path}: {source}")]
    DataDir { path: PathBuf, source: io::Error },
    #[error("cannot open log segment {path}: {source}")]
    OpenSegment { path: PathBuf, source: io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write snapshot {path}: {source}")]
    WriteSnapshot { path: PathBuf, source: io::Error },
    #[error("cannot write log: {0}")]
    WriteLog(io::Error),
    #[error("data dir {path} is in use by another process")]
    Locked { path: PathBuf },
}

/// A damaged part of a file found during recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corruption {
    pub file: PathBuf,
    pub offset: u64,
    pub skipped_bytes: u64,
    pub reason: String,
}

/// What recovery found.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    pub snapshot_records: u64,
    pub log_records: u64,
    pub segments: usize,
    /// Threads the log was applied on (1 for a small log).
    pub log_threads: usize,
    pub corruptions: Vec<Corruption>,
    pub duration: Duration,
    /// Replication positions reached by what was recovered.
    pub positions: Positions,
}

/// What a compaction did.
#[derive(Debug, Clone)]
pub struct CompactionReport {
    pub records: u64,
    pub snapshot_bytes: u64,
    pub removed_segments: usize,
    pub duration: Duration,
}

struct Pending {
    bytes: Vec<u8>,
    appended: Lsn,
}

struct Writer {
    file: Arc<File>,
    segment: u64,
    segment_len: u64,
    spare: Vec<u8>,
}

/// The on-disk log of a node.
pub struct Persist {
    config: PersistConfig,
    origins: Arc<OriginTable>,
    local: Origin,
    metrics: Arc<Metrics>,
    pending: Mutex<Pending>,
    writer: Mutex<Writer>,
    written: AtomicU64,
    synced: AtomicU64,
    sync_lock: tokio::sync::Mutex<()>,
    /// Bytes written to segments since the last snapshot.
    log_bytes: AtomicU64,
    last_snapshot_bytes: AtomicU64,
    compaction: Mutex<()>,
    /// Holds an exclusive lock on `<dir>/LOCK` for the life of the process.
    _lock: File,
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("log-{id:016x}.gclog"))
}

fn snapshot_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("snapshot-{id:016x}.gcsnap"))
}

fn parse_id(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    let hex = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn create_segment(dir: &Path, id: u64) -> io::Result<File> {
    let path = segment_path(dir, id);
    let mut file = OpenOptions::new().create_new(true).append(true).open(&path)?;
    file.write_all(SEGMENT_MAGIC)?;
    file.sync_data()?;
    sync_dir(dir)?;
    Ok(file)
}

impl Persist {
    /// Opens (creating it if needed) the data directory, replays what it holds through
    /// `apply`, and starts a new log segment.
    pub fn open(
        config: PersistConfig,
        origins: Arc<OriginTable>,
        metrics: Arc<Metrics>,
        mut reserve: impl FnMut(u64),
        apply: impl Fn(RecordRef<'_>) + Sync,
    ) -> Result<(Persist, RecoveryReport), PersistError> {
        let started = Instant::now();
        let dir = config.dir.clone();
        let lock = recovery::lock_data_dir(&dir)?;
        let Listing { segments, snapshots } = recovery::list_data_dir(&dir)?;
        let local = origins.local();
        let mut recovery = Recovery {
            dir: &dir,
            origins: &origins,
            local_node: &local.node_id,
            positions: Positions::new(),
            report: RecoveryReport::default(),
        };
        let mut snapshot = SnapshotLoad { first_segment: 0, bytes: 0 };
        if let Some((&newest, older)) = snapshots.split_last() {
            snapshot = recovery.load_snapshot(newest, &mut reserve, &apply)?;
            // Older snapshots are superseded (a crash can leave one behind).
            for &old in older {
                let _ = fs::remove_file(snapshot_path(&dir, old));
            }
        }
        let first_segment = snapshot.first_segment;
        let to_replay: Vec<u64> = segments.iter().copied().filter(|&id| id >= first_segment).collect();
        let log_bytes = recovery.replay_log(&to_replay, &mut reserve, &apply)?;
        let Recovery { positions, mut report, .. } = recovery;
        // Segments older than the snapshot are covered by it.
        for &id in segments.iter().filter(|&&id| id < first_segment) {
            let _ = fs::remove_file(segment_path(&dir, id));
        }

        let next_segment = segments.last().map_or(first_segment, |&last| last + 1).max(first_segment);
        let path = segment_path(&dir, next_segment);
        let file = create_segment(&dir, next_segment).map_err(|source| PersistError::OpenSegment { path, source })?;
        report.positions = positions;
        report.duration = started.elapsed();
        metrics.recovered_records.store(report.snapshot_records + report.log_records, Ordering::Relaxed);
        metrics.recovery_millis.store(report.duration.as_millis() as u64, Ordering::Relaxed);
        metrics.corrupt_tails.fetch_add(report.corruptions.len() as u64, Ordering::Relaxed);
        let persist = Persist {
            config,
            origins,
            local,
            metrics,
            pending: Mutex::new(Pending { bytes: Vec::with_capacity(64 << 10), appended: 0 }),
            writer: Mutex::new(Writer {
                file: Arc::new(file),
                segment: next_segment,
                segment_len: SEGMENT_MAGIC.len() as u64,
                spare: Vec::with_capacity(64 << 10),
            }),
            written: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            sync_lock: tokio::sync::Mutex::new(()),
            log_bytes: AtomicU64::new(log_bytes),
            last_snapshot_bytes: AtomicU64::new(snapshot.bytes),
            compaction: Mutex::new(()),
            _lock: lock,
        };
        Ok((persist, report))
    }

    pub fn config(&self) -> &PersistConfig {
        &self.config
    }

    fn origin_of(&self, id: OriginId) -> Origin {
        if id == OriginId::LOCAL {
            return self.local.clone();
        }
        self.origins.get(id).unwrap_or_else(|| Origin { node_id: "unknown".into(), region: "".into() })
    }

    /// Appends a record of stream `stream` (or a snapshot record, without one) to the
    /// buffer; returns the position to wait for.
    pub fn append(&self, stream: Option<(&StreamId, u64)>, record: RecordRef<'_>) -> Lsn {
        let remote;
        let origin = if record.version.origin == OriginId::LOCAL {
            &self.local
        } else {
            remote = self.origin_of(record.version.origin);
            &remote
        };
        let (epoch, seq) = stream.map(|(s, seq)| (s.epoch, seq)).unwrap_or((0, 0));
        let mut p = self.pending.lock();
        let before = p.bytes.len();
        record::encode(&mut p.bytes, seq, epoch, origin, record);
        p.appended += (p.bytes.len() - before) as u64;
        p.appended
    }

    /// Appends already encoded records (from a peer) to the buffer.
    pub fn append_encoded(&self, encoded: &[u8]) -> Lsn {
        let mut p = self.pending.lock();
        p.bytes.extend_from_slice(encoded);
        p.appended += encoded.len() as u64;
        p.appended
    }

    /// Appends a positions marker (after a full resync) to the buffer.
    pub fn append_marker(&self, positions: &Positions) -> Lsn {
        let mut encoded = Vec::new();
        positions.encode(&mut encoded);
        let mut p = self.pending.lock();
        let before = p.bytes.len();
        record::encode_marker(&mut p.bytes, &encoded);
        p.appended += (p.bytes.len() - before) as u64;
        p.appended
    }

    /// Writes the buffer to the current segment if `lsn` is not written yet.
    fn write_pending(&self, lsn: Lsn) -> io::Result<()> {
        let mut w = self.writer.lock();
        if self.written.load(Ordering::Acquire) >= lsn {
            return Ok(());
        }
        let w = &mut *w;
        let upto = {
            let mut p = self.pending.lock();
            std::mem::swap(&mut p.bytes, &mut w.spare);
            p.appended
        };
        let mut data = std::mem::take(&mut w.spare);
        match (&*w.file).write_all(&data) {
            Ok(()) => {
                w.segment_len += data.len() as u64;
                self.log_bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                self.metrics.log_appended_bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                self.written.store(upto, Ordering::Release);
                data.clear();
                w.spare = data;
                Ok(())
            }
            Err(e) => {
                // Undo a partial write and keep the records for the next attempt: the
                // callers waiting for them get the error, nothing is acknowledged.
                let _ = w.file.set_len(w.segment_len);
                let mut p = self.pending.lock();
                data.extend_from_slice(&p.bytes);
                p.bytes = data;
                self.metrics.log_write_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, segment = w.segment, "cannot write to the log");
                Err(e)
            }
        }
    }

    /// Waits until the log holds everything up to `lsn`: written to the operating
    /// system, and with `--fsync always` also synced to disk.
    pub async fn flush_to(&self, lsn: Lsn) -> io::Result<()> {
        if self.written.load(Ordering::Acquire) < lsn {
            self.write_pending(lsn)?;
        }
        if self.config.fsync == FsyncPolicy::Always && self.synced.load(Ordering::Acquire) < lsn {
            let _guard = self.sync_lock.lock().await;
            if self.synced.load(Ordering::Acquire) < lsn {
                let target = self.written.load(Ordering::Acquire);
                let file = self.writer.lock().file.clone();
                tokio::task::spawn_blocking(move || file.sync_data())
                    .await
                    .map_err(|e| io::Error::other(e.to_string()))??;
                self.metrics.log_fsyncs.fetch_add(1, Ordering::Relaxed);
                self.synced.fetch_max(target, Ordering::AcqRel);
            }
        }
        Ok(())
    }

    /// Writes and syncs everything appended so far (blocking; the once-a-second task
    /// and shutdown call it).
    pub fn sync_all(&self) -> io::Result<()> {
        let appended = self.pending.lock().appended;
        self.write_pending(appended)?;
        let target = self.written.load(Ordering::Acquire);
        if self.synced.load(Ordering::Acquire) >= target {
            return Ok(());
        }
        let file = self.writer.lock().file.clone();
        file.sync_data()?;
        self.metrics.log_fsyncs.fetch_add(1, Ordering::Relaxed);
        self.synced.fetch_max(target, Ordering::AcqRel);
        Ok(())
    }

    /// True when the log since the last snapshot is large enough to compact.
    pub fn should_compact(&self) -> bool {
        let log = self.log_bytes.load(Ordering::Relaxed);
        log >= self.config.compact_min_bytes.max(self.last_snapshot_bytes.load(Ordering::Relaxed))
    }

    /// Starts a new segment; everything appended before is written and synced to the
    /// old one. Returns the new segment's id. The caller holds the journal lock, so
    /// that the positions it captures match the segments before the new one.
    pub fn rotate(&self) -> Result<u64, PersistError> {
        let appended = self.pending.lock().appended;
        self.write_pending(appended).map_err(PersistError::WriteLog)?;
        let mut w = self.writer.lock();
        // Anything appended since is still in the buffer and goes to the new segment.
        w.file.sync_data().map_err(PersistError::WriteLog)?;
        let id = w.segment + 1;
        let path = segment_path(&self.config.dir, id);
        let file = create_segment(&self.config.dir, id).map_err(|source| PersistError::OpenSegment { path, source })?;
        w.file = Arc::new(file);
        w.segment = id;
        w.segment_len = SEGMENT_MAGIC.len() as u64;
        Ok(id)
    }

    /// Compacts the log (blocking): `rotate` starts a new segment under the journal
    /// lock and returns its id with the positions the older segments reach; then a
    /// snapshot of `store` replaces those segments.
    pub fn compact(
        &self,
        store: &Store,
        rotate: impl FnOnce(&Persist) -> Result<(u64, Positions), PersistError>,
    ) -> Result<CompactionReport, PersistError> {
        let _one_at_a_time = self.compaction.lock();
        let started = Instant::now();
        let dir = &self.config.dir;
        let (segment, positions) = rotate(self)?;
        let tmp = dir.join("snapshot.tmp");
        let snap_err = |source| PersistError::WriteSnapshot { path: tmp.clone(), source };
        let file = File::create(&tmp).map_err(snap_err)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let mut encoded_positions = Vec::new();
        positions.encode(&mut encoded_positions);
        let mut header = Vec::with_capacity(28 + encoded_positions.len());
        header.extend_from_slice(SNAPSHOT_MAGIC);
        header.extend_from_slice(&segment.to_le_bytes());
        // The record count, written once known (below).
        header.extend_from_slice(&0u64.to_le_bytes());
        header.extend_from_slice(&(encoded_positions.len() as u32).to_le_bytes());
        header.extend_from_slice(&encoded_positions);
        out.write_all(&header).map_err(snap_err)?;
        let mut written = header.len() as u64;
        let mut shard_starts: Vec<u8> = Vec::with_capacity(store.shard_count() * 8);
        let now = clock::now_ms();
        let mut records = 0u64;
        let mut buf = Vec::with_capacity(1 << 20);
        let mut names: Vec<Option<Origin>> = Vec::new();
        for shard in 0..store.shard_count() {
            buf.clear();
            store.scan_shard(shard, now, |rec| {
                let i = rec.version.origin.0 as usize;
                if names.len() <= i {
                    names.resize(i + 1, None);
                }
                let origin = names[i].get_or_insert_with(|| self.origin_of(rec.version.origin));
                record::encode(&mut buf, 0, 0, origin, rec);
                records += 1;
            });
            shard_starts.extend_from_slice(&written.to_le_bytes());
            out.write_all(&buf).map_err(snap_err)?;
            written += buf.len() as u64;
        }
        out.write_all(SNAPSHOT_END).map_err(snap_err)?;
        let count = ((shard_starts.len() / 8) as u32).to_le_bytes();
        let mut crc = crc32fast::Hasher::new();
        crc.update(&shard_starts);
        crc.update(&count);
        out.write_all(&shard_starts).map_err(snap_err)?;
        out.write_all(&count).map_err(snap_err)?;
        out.write_all(&crc.finalize().to_le_bytes()).map_err(snap_err)?;
        out.write_all(SNAPSHOT_INDEX_MAGIC).map_err(snap_err)?;
        let file = out.into_inner().map_err(|e| snap_err(e.into_error()))?;
        std::os::unix::fs::FileExt::write_all_at(&file, &records.to_le_bytes(), 16).map_err(snap_err)?;
        file.sync_all().map_err(snap_err)?;
        let snapshot_bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
        drop(file);
        let path = snapshot_path(dir, segment);
        fs::rename(&tmp, &path).map_err(snap_err)?;
        sync_dir(dir).map_err(snap_err)?;
        // The snapshot now covers every segment before `segment`.
        let mut removed = 0;
        if let Ok(entries) = fs::read_dir(dir) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                let old = parse_id(name, "log-", ".gclog").is_some_and(|id| id < segment)
                    || parse_id(name, "snapshot-", ".gcsnap").is_some_and(|id| id < segment);
                if old && fs::remove_file(entry.path()).is_ok() {
                    removed += 1;
                }
            }
        }
        let current = self.writer.lock().segment_len;
        self.log_bytes.store(current, Ordering::Relaxed);
        self.last_snapshot_bytes.store(snapshot_bytes, Ordering::Relaxed);
        self.metrics.compactions.fetch_add(1, Ordering::Relaxed);
        Ok(CompactionReport { records, snapshot_bytes, removed_segments: removed, duration: started.elapsed() })
    }
}

#[cfg(test)]
mod tests;
