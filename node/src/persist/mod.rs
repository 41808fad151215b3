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

/// Reads records one by one from a stream, telling a clean end from a torn one.
struct RecordReader<R> {
    inner: R,
    buf: Vec<u8>,
    offset: u64,
}

enum Next {
    Record,
    End,
    Bad(String),
}

impl<R: Read> RecordReader<R> {
    fn new(inner: R, offset: u64) -> Self {
        RecordReader { inner, buf: Vec::new(), offset }
    }

    /// Reads the next record into `self.buf`.
    fn next(&mut self) -> io::Result<Next> {
        let mut header = [0u8; record::HEADER_LEN];
        let got = read_full(&mut self.inner, &mut header)?;
        if got == 0 {
            return Ok(Next::End);
        }
        if got < header.len() {
            return Ok(Next::Bad(format!("torn record header ({got} of {} bytes)", header.len())));
        }
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if len > record::MAX_PAYLOAD {
            return Ok(Next::Bad(format!("record length {len} exceeds the limit")));
        }
        self.buf.clear();
        self.buf.extend_from_slice(&header);
        self.buf.resize(record::HEADER_LEN + len, 0);
        let got = read_full(&mut self.inner, &mut self.buf[record::HEADER_LEN..])?;
        if got < len {
            return Ok(Next::Bad(format!("torn record ({got} of {len} payload bytes)")));
        }
        Ok(Next::Record)
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Replays the records `input` holds (a segment, a snapshot body, or one shard's range of
/// it), which starts at byte `start` of the file at `path` and ends at `file_len` (for the
/// report of a corruption); returns the number of records and the corruption if any.
/// Positions reached are merged into `positions`. `apply` gets each record and its encoding.
#[allow(clippy::too_many_arguments)]
fn replay_records(
    path: &Path,
    input: impl Read,
    start: u64,
    file_len: u64,
    origins: &OriginTable,
    local_node: &str,
    expect_end_marker: bool,
    positions: &mut Positions,
    apply: &mut impl FnMut(RecordRef<'_>, &[u8]),
) -> Result<(u64, Option<Corruption>), PersistError> {
    let mut reader = RecordReader::new(io::BufReader::with_capacity(1 << 20, input), start);
    let mut count = 0;
    let read_err = |source| PersistError::Read { path: path.to_path_buf(), source };
    loop {
        let at = reader.offset;
        let bad = match reader.next().map_err(read_err)? {
            Next::End if expect_end_marker => Some("snapshot ends without its end marker".to_string()),
            Next::End => None,
            Next::Bad(reason) => Some(reason),
            Next::Record => {
                if expect_end_marker && reader.buf.as_slice() == SNAPSHOT_END {
                    return Ok((count, None));
                }
                match record::decode(&reader.buf) {
                    Ok((d, used)) => {
                        reader.offset += used as u64;
                        if let Some(marker) = d.marker {
                            match Positions::decode(marker) {
                                Ok((p, _)) => positions.merge_max(&p),
                                Err(e) => {
                                    tracing::warn!(file = %path.display(), error = %e, "ignoring a damaged positions marker")
                                }
                            }
                            continue;
                        }
                        if d.seq > 0 {
                            let stream = StreamId::new(d.node_id, d.epoch);
                            if positions.get(&stream) < d.seq {
                                positions.set(stream, d.seq);
                            }
                        }
                        let origin =
                            if d.node_id == local_node { OriginId::LOCAL } else { origins.intern(d.node_id, d.region) };
                        apply(d.record(origin), &reader.buf[..used]);
                        count += 1;
                        continue;
                    }
                    Err(e) => Some(e.to_string()),
                }
            }
        };
        let corruption = bad.map(|reason| Corruption {
            file: path.to_path_buf(),
            offset: at,
            skipped_bytes: file_len.saturating_sub(at),
            reason,
        });
        return Ok((count, corruption));
    }
}

/// Ends the index of a snapshot's shards, after the end marker: `offset (u64) × n`, `n
/// (u32)`, CRC-32 of those (u32), this magic. Readers that do not know it stop at the end
/// marker; those that do load the shards' byte ranges in parallel.
const SNAPSHOT_INDEX_MAGIC: &[u8; 8] = b"GCIDX001";

/// The byte ranges of a snapshot's records, one per shard (in file order), from the index
/// after its end marker; `None` when there is none or it does not check out (then the
/// records are read in one pass, as always).
fn read_shard_index(file: &mut File, records_start: u64, file_len: u64) -> io::Result<Option<Vec<(u64, u64)>>> {
    let Some(tail_at) = file_len.checked_sub(16) else { return Ok(None) };
    let mut tail = [0u8; 16];
    file.seek(io::SeekFrom::Start(tail_at))?;
    if read_full(file, &mut tail)? != 16 || &tail[8..] != SNAPSHOT_INDEX_MAGIC {
        return Ok(None);
    }
    let n = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]) as u64;
    let crc = u32::from_le_bytes([tail[4], tail[5], tail[6], tail[7]]);
    let Some(offsets_at) = n.checked_mul(8).and_then(|len| tail_at.checked_sub(len)) else { return Ok(None) };
    if n == 0 || n > 1 << 16 {
        return Ok(None);
    }
    let mut offsets = vec![0u8; (n * 8) as usize];
    file.seek(io::SeekFrom::Start(offsets_at))?;
    if read_full(file, &mut offsets)? != offsets.len() {
        return Ok(None);
    }
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&offsets);
    hasher.update(&tail[..4]);
    if hasher.finalize() != crc {
        return Ok(None);
    }
    // The end marker sits right before the index.
    let Some(end_marker_at) = offsets_at.checked_sub(SNAPSHOT_END.len() as u64) else { return Ok(None) };
    let mut marker = [0u8; 8];
    file.seek(io::SeekFrom::Start(end_marker_at))?;
    if read_full(file, &mut marker)? != 8 || &marker != SNAPSHOT_END {
        return Ok(None);
    }
    let starts: Vec<u64> =
        offsets.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default())).collect();
    let ordered = starts.first() == Some(&records_start)
        && starts.windows(2).all(|w| w[0] <= w[1])
        && starts.last().is_some_and(|&last| last <= end_marker_at);
    if !ordered {
        return Ok(None);
    }
    let ends = starts.iter().skip(1).copied().chain(std::iter::once(end_marker_at));
    Ok(Some(starts.iter().copied().zip(ends).collect()))
}

/// Loads a snapshot's shard ranges on several threads (one group of consecutive ranges
/// each, of about the same size). Each range is a whole sequence of records, so a thread
/// reads its part as if it were a file of its own.
fn load_ranges(
    path: &Path,
    ranges: &[(u64, u64)],
    origins: &OriginTable,
    local_node: &str,
    positions: &mut Positions,
    apply: &(impl Fn(RecordRef<'_>) + Sync),
) -> Result<(u64, Vec<Corruption>), PersistError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8);
    let total: u64 = ranges.iter().map(|(a, b)| b - a).sum();
    let per_thread = total.div_ceil(threads as u64).max(1);
    // Consecutive shards per thread, about the same number of bytes each.
    let mut groups: Vec<&[(u64, u64)]> = Vec::new();
    let (mut first, mut bytes) = (0, 0);
    for (i, (start, end)) in ranges.iter().enumerate() {
        bytes += end - start;
        if bytes >= per_thread || i + 1 == ranges.len() {
            groups.push(&ranges[first..=i]);
            (first, bytes) = (i + 1, 0);
        }
    }
    type Loaded = (u64, Vec<Corruption>, Positions);
    let results: Vec<Result<Loaded, PersistError>> = std::thread::scope(|scope| {
        let workers: Vec<_> = groups
            .iter()
            .map(|&group| {
                scope.spawn(move || {
                    let read_err = |source| PersistError::Read { path: path.to_path_buf(), source };
                    let mut file = File::open(path).map_err(read_err)?;
                    let (mut records, mut corruptions, mut found) = (0, Vec::new(), Positions::new());
                    // Shard by shard: a damaged record costs the rest of its shard only.
                    for &(start, end) in group {
                        file.seek(io::SeekFrom::Start(start)).map_err(read_err)?;
                        let input = (&mut file).take(end - start);
                        let mut apply = |record: RecordRef<'_>, _: &[u8]| apply(record);
                        let (n, c) = replay_records(
                            path, input, start, end, origins, local_node, false, &mut found, &mut apply,
                        )?;
                        records += n;
                        corruptions.extend(c);
                    }
                    Ok((records, corruptions, found))
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join().unwrap_or_else(|_| {
                    Err(PersistError::Read {
                        path: path.to_path_buf(),
                        source: io::Error::other("loader thread panicked"),
                    })
                })
            })
            .collect()
    });
    let mut records = 0;
    let mut corruptions = Vec::new();
    for result in results {
        let (n, found_corruptions, found) = result?;
        records += n;
        positions.merge_max(&found);
        corruptions.extend(found_corruptions);
    }
    Ok((records, corruptions))
}

/// Logs at least this big are replayed on one thread per core.
const PARALLEL_REPLAY_MIN_BYTES: u64 = 4 << 20;

/// How many records `bytes` of the log segments `ids` hold, going by the average size of
/// their first records (at most 4096 of them); 0 when none can be read.
fn estimate_records(dir: &Path, ids: &[u64], bytes: u64) -> u64 {
    const SAMPLE: u64 = 4096;
    let (mut sampled, mut sampled_bytes) = (0u64, 0u64);
    for &id in ids {
        let Ok(mut file) = File::open(segment_path(dir, id)) else { continue };
        let mut magic = [0u8; 8];
        if !matches!(read_full(&mut file, &mut magic), Ok(8)) || &magic != SEGMENT_MAGIC {
            continue;
        }
        let mut reader = RecordReader::new(io::BufReader::with_capacity(1 << 20, file), 8);
        while sampled < SAMPLE {
            match reader.next() {
                Ok(Next::Record) => {
                    sampled += 1;
                    sampled_bytes += reader.buf.len() as u64;
                }
                _ => break,
            }
        }
        if sampled >= SAMPLE {
            break;
        }
    }
    if sampled == 0 { 0 } else { bytes / sampled_bytes.div_ceil(sampled).max(1) }
}

/// Replays the log segments `ids` in order through `apply`; a damaged record ends its
/// segment, which is cut there (nothing after it is trusted), and empty segments are
/// removed. Returns the bytes of log kept.
fn replay_segments(
    dir: &Path,
    ids: &[u64],
    origins: &OriginTable,
    local_node: &str,
    positions: &mut Positions,
    report: &mut RecoveryReport,
    apply: &mut impl FnMut(RecordRef<'_>, &[u8]),
) -> Result<u64, PersistError> {
    let mut log_bytes = 0;
    for &id in ids {
        let path = segment_path(dir, id);
        let mut file = File::open(&path).map_err(|source| PersistError::Read { path: path.clone(), source })?;
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut magic = [0u8; 8];
        let got =
            read_full(&mut file, &mut magic).map_err(|source| PersistError::Read { path: path.clone(), source })?;
        report.segments += 1;
        let corruption = if got < magic.len() || &magic != SEGMENT_MAGIC {
            Some(Corruption {
                file: path.clone(),
                offset: 0,
                skipped_bytes: len,
                reason: "segment header is damaged".into(),
            })
        } else {
            let (n, corruption) = replay_records(&path, file, 8, len, origins, local_node, false, positions, apply)?;
            report.log_records += n;
            corruption
        };
        if let Some(c) = corruption {
            // Nothing after a damaged record in this file is trusted: cut it off, so
            // that the next start does not trip over it again.
            if c.offset >= SEGMENT_MAGIC.len() as u64
                && let Ok(f) = OpenOptions::new().write(true).open(&path)
            {
                let _ = f.set_len(c.offset).and_then(|_| f.sync_all());
            }
            report.corruptions.push(c);
        }
        let len = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if len <= SEGMENT_MAGIC.len() as u64 {
            // An empty segment (a start without writes) carries nothing.
            let _ = fs::remove_file(&path);
        }
        log_bytes += len;
    }
    Ok(log_bytes)
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
        let dir_err = |source| PersistError::DataDir { path: dir.clone(), source };
        fs::create_dir_all(&dir).map_err(dir_err)?;
        // Two processes appending to one log would corrupt it: refuse to share.
        let lock =
            OpenOptions::new().create(true).truncate(false).write(true).open(dir.join("LOCK")).map_err(dir_err)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(PersistError::Locked { path: dir.clone() }),
            Err(fs::TryLockError::Error(e)) => return Err(dir_err(e)),
        }
        let local = origins.local();
        let mut segments = Vec::new();
        let mut snapshots = Vec::new();
        for entry in fs::read_dir(&dir).map_err(dir_err)? {
            let entry = entry.map_err(dir_err)?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(id) = parse_id(name, "log-", ".gclog") {
                segments.push(id);
            } else if let Some(id) = parse_id(name, "snapshot-", ".gcsnap") {
                snapshots.push(id);
            } else if name == "snapshot.tmp" {
                // An interrupted compaction: the segments it covered are still there.
                let _ = fs::remove_file(entry.path());
            }
        }
        segments.sort_unstable();
        snapshots.sort_unstable();

        let mut report = RecoveryReport::default();
        let mut positions = Positions::new();
        let mut first_segment = 0;
        let mut snapshot_bytes = 0;
        if let Some(&snap) = snapshots.last() {
            let path = snapshot_path(&dir, snap);
            let read_err = |source| PersistError::Read { path: path.clone(), source };
            let mut file = File::open(&path).map_err(read_err)?;
            snapshot_bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
            let mut header = [0u8; 28];
            let got = read_full(&mut file, &mut header[..8]).map_err(read_err)?;
            // v2 counts its records; v1 (the same without the count) is still read.
            let (header_len, counted) = match &header[..8] {
                m if got == 8 && m == SNAPSHOT_MAGIC => (28, true),
                m if got == 8 && m == SNAPSHOT_MAGIC_V1 => (20, false),
                _ => (0, false),
            };
            let mut positions_bytes = Vec::new();
            let header_ok = header_len > 0
                && read_full(&mut file, &mut header[8..header_len]).map_err(read_err)? == header_len - 8
                && {
                    let at = header_len - 4;
                    let len = u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]]) as usize;
                    positions_bytes.resize(len.min(record::MAX_PAYLOAD), 0);
                    read_full(&mut file, &mut positions_bytes).map_err(read_err)? == len
                };
            match header_ok.then(|| Positions::decode(&positions_bytes)) {
                Some(Ok((p, _))) => {
                    first_segment = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
                    if counted {
                        // The header has no checksum: never believe more records than
                        // the file could hold (each takes well over 16 bytes).
                        let count = u64::from_le_bytes(header[16..24].try_into().unwrap_or_default());
                        reserve(count.min(snapshot_bytes / 16));
                    }
                    positions = p;
                    let start = (header_len + positions_bytes.len()) as u64;
                    let ranges = read_shard_index(&mut file, start, snapshot_bytes).map_err(read_err)?;
                    let (n, corruptions) = match ranges {
                        Some(ranges) if ranges.len() > 1 => {
                            load_ranges(&path, &ranges, &origins, &local.node_id, &mut positions, &apply)?
                        }
                        _ => {
                            file.seek(io::SeekFrom::Start(start)).map_err(read_err)?;
                            let (n, c) = replay_records(
                                &path,
                                file,
                                start,
                                snapshot_bytes,
                                &origins,
                                &local.node_id,
                                true,
                                &mut positions,
                                &mut |record, _| apply(record),
                            )?;
                            (n, c.into_iter().collect())
                        }
                    };
                    report.snapshot_records = n;
                    report.corruptions.extend(corruptions);
                }
                _ => report.corruptions.push(Corruption {
                    file: path.clone(),
                    offset: 0,
                    skipped_bytes: snapshot_bytes,
                    reason: "snapshot header is damaged".into(),
                }),
            }
            // Older snapshots are superseded (a crash can leave one behind).
            for &old in &snapshots[..snapshots.len() - 1] {
                let _ = fs::remove_file(snapshot_path(&dir, old));
            }
        }

        // The log is replayed on one thread per core (each owning a part of the keys) when
        // it is big enough for that to pay.
        let to_replay: Vec<u64> = segments.iter().copied().filter(|&id| id >= first_segment).collect();
        let replay_bytes: u64 =
            to_replay.iter().map(|&id| fs::metadata(segment_path(&dir, id)).map_or(0, |m| m.len())).sum();
        let big = replay_bytes >= PARALLEL_REPLAY_MIN_BYTES;
        let workers = if big { std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8) } else { 1 };
        if big {
            // A log does not count its records: size the store for as many as its first
            // records' average size says it holds, rather than grow and rehash it step by
            // step. Overwrites make that too many; the spare room is mostly address space
            // (2 M records of 10 k keys: +21 MB resident), and compaction keeps such a log
            // near `--compact-min` anyway.
            reserve(estimate_records(&dir, &to_replay, replay_bytes));
        }
        report.log_threads = workers;
        let log_bytes = std::thread::scope(|scope| {
            let mut spread = (workers > 1).then(|| key_spread::KeySpread::spawn(scope, workers, &apply));
            let mut sink = |record: RecordRef<'_>, frame: &[u8]| match spread.as_mut() {
                Some(spread) => spread.push(&record, frame),
                None => apply(record),
            };
            let replayed =
                replay_segments(&dir, &to_replay, &origins, &local.node_id, &mut positions, &mut report, &mut sink);
            if let Some(spread) = spread {
                spread
                    .finish()
                    .map_err(|reason| PersistError::Read { path: dir.clone(), source: io::Error::other(reason) })?;
            }
            replayed
        })?;
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
            last_snapshot_bytes: AtomicU64::new(snapshot_bytes),
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
