//! Recovery: what [`Persist::open`] does before the node serves — lock the data
//! directory, list it, load the newest snapshot, replay the log segments after it — and
//! the record reader both use.

use super::*;

/// Reads records one by one from a stream, telling a clean end from a torn one.
pub(super) struct RecordReader<R> {
    inner: R,
    buf: Vec<u8>,
    offset: u64,
}

pub(super) enum Next {
    Record,
    End,
    Bad(String),
}

impl<R: Read> RecordReader<R> {
    pub(super) fn new(inner: R, offset: u64) -> Self {
        RecordReader { inner, buf: Vec::new(), offset }
    }

    /// Reads the next record into `self.buf`.
    pub(super) fn next(&mut self) -> io::Result<Next> {
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

pub(super) fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
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
pub(super) fn replay_records(
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

/// The byte ranges of a snapshot's records, one per shard (in file order), from the index
/// after its end marker; `None` when there is none or it does not check out (then the
/// records are read in one pass, as always).
pub(super) fn read_shard_index(
    file: &mut File,
    records_start: u64,
    file_len: u64,
) -> io::Result<Option<Vec<(u64, u64)>>> {
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
pub(super) fn load_ranges(
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
pub(super) const PARALLEL_REPLAY_MIN_BYTES: u64 = 4 << 20;

/// How many records `bytes` of the log segments `ids` hold, going by the average size of
/// their first records (at most 4096 of them); 0 when none can be read.
pub(super) fn estimate_records(dir: &Path, ids: &[u64], bytes: u64) -> u64 {
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
pub(super) fn replay_segments(
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

/// The data directory's files: log segments and snapshots, by id, in order.
pub(super) struct Listing {
    pub(super) segments: Vec<u64>,
    pub(super) snapshots: Vec<u64>,
}

/// Creates the data directory if needed and takes its lock: two processes appending
/// to one log would corrupt it.
pub(super) fn lock_data_dir(dir: &Path) -> Result<File, PersistError> {
    let dir_err = |source| PersistError::DataDir { path: dir.to_path_buf(), source };
    fs::create_dir_all(dir).map_err(dir_err)?;
    let lock = OpenOptions::new().create(true).truncate(false).write(true).open(dir.join("LOCK")).map_err(dir_err)?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(fs::TryLockError::WouldBlock) => Err(PersistError::Locked { path: dir.to_path_buf() }),
        Err(fs::TryLockError::Error(e)) => Err(dir_err(e)),
    }
}

/// Lists the segments and snapshots; removes the temporary file of an interrupted
/// compaction (the segments it covered are still there).
pub(super) fn list_data_dir(dir: &Path) -> Result<Listing, PersistError> {
    let dir_err = |source| PersistError::DataDir { path: dir.to_path_buf(), source };
    let mut listing = Listing { segments: Vec::new(), snapshots: Vec::new() };
    for entry in fs::read_dir(dir).map_err(dir_err)? {
        let entry = entry.map_err(dir_err)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(id) = parse_id(name, "log-", ".gclog") {
            listing.segments.push(id);
        } else if let Some(id) = parse_id(name, "snapshot-", ".gcsnap") {
            listing.snapshots.push(id);
        } else if name == "snapshot.tmp" {
            let _ = fs::remove_file(entry.path());
        }
    }
    listing.segments.sort_unstable();
    listing.snapshots.sort_unstable();
    Ok(listing)
}

/// What loading the newest snapshot gave: the first segment it does not cover, and its size.
pub(super) struct SnapshotLoad {
    pub(super) first_segment: u64,
    pub(super) bytes: u64,
}

/// What every step of recovery reads, and where it records what it found.
pub(super) struct Recovery<'a> {
    pub(super) dir: &'a Path,
    pub(super) origins: &'a OriginTable,
    pub(super) local_node: &'a str,
    /// Replication positions reached by what was applied so far.
    pub(super) positions: Positions,
    pub(super) report: RecoveryReport,
}

impl Recovery<'_> {
    /// Loads snapshot `snap` through `apply` (its shards in parallel when it has an index),
    /// after sizing the store for the records its header counts. A damaged header is
    /// reported and the snapshot skipped.
    pub(super) fn load_snapshot(
        &mut self,
        snap: u64,
        reserve: &mut impl FnMut(u64),
        apply: &(impl Fn(RecordRef<'_>) + Sync),
    ) -> Result<SnapshotLoad, PersistError> {
        let Recovery { dir, origins, local_node, positions, report } = self;
        let (dir, origins, local_node) = (*dir, *origins, *local_node);
        let path = snapshot_path(dir, snap);
        let read_err = |source| PersistError::Read { path: path.clone(), source };
        let mut file = File::open(&path).map_err(read_err)?;
        let snapshot_bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
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
        let Some(Ok((p, _))) = header_ok.then(|| Positions::decode(&positions_bytes)) else {
            report.corruptions.push(Corruption {
                file: path.clone(),
                offset: 0,
                skipped_bytes: snapshot_bytes,
                reason: "snapshot header is damaged".into(),
            });
            return Ok(SnapshotLoad { first_segment: 0, bytes: snapshot_bytes });
        };
        let first_segment = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
        if counted {
            // The header has no checksum: never believe more records than the file could
            // hold (each takes well over 16 bytes).
            let count = u64::from_le_bytes(header[16..24].try_into().unwrap_or_default());
            reserve(count.min(snapshot_bytes / 16));
        }
        *positions = p;
        let start = (header_len + positions_bytes.len()) as u64;
        let ranges = read_shard_index(&mut file, start, snapshot_bytes).map_err(read_err)?;
        let (n, corruptions) = match ranges {
            Some(ranges) if ranges.len() > 1 => load_ranges(&path, &ranges, origins, local_node, positions, apply)?,
            _ => {
                file.seek(io::SeekFrom::Start(start)).map_err(read_err)?;
                let (n, c) = replay_records(
                    &path,
                    file,
                    start,
                    snapshot_bytes,
                    origins,
                    local_node,
                    true,
                    positions,
                    &mut |record, _| apply(record),
                )?;
                (n, c.into_iter().collect())
            }
        };
        report.snapshot_records = n;
        report.corruptions.extend(corruptions);
        Ok(SnapshotLoad { first_segment, bytes: snapshot_bytes })
    }

    /// Replays the log segments `ids` through `apply`: on one thread per core (each
    /// owning a part of the keys) when the log is big enough for that to pay. Returns the
    /// bytes of log kept.
    pub(super) fn replay_log(
        &mut self,
        ids: &[u64],
        reserve: &mut impl FnMut(u64),
        apply: &(impl Fn(RecordRef<'_>) + Sync),
    ) -> Result<u64, PersistError> {
        let Recovery { dir, origins, local_node, positions, report } = self;
        let (dir, origins, local_node) = (*dir, *origins, *local_node);
        let replay_bytes: u64 = ids.iter().map(|&id| fs::metadata(segment_path(dir, id)).map_or(0, |m| m.len())).sum();
        let big = replay_bytes >= PARALLEL_REPLAY_MIN_BYTES;
        let workers = if big { std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8) } else { 1 };
        if big {
            // A log does not count its records: size the store for as many as its first
            // records' average size says it holds, rather than grow and rehash it step by
            // step. Overwrites make that too many; the spare room is mostly address space
            // (2 M records of 10 k keys: +21 MB resident), and compaction keeps such a log
            // near `--compact-min` anyway.
            reserve(estimate_records(dir, ids, replay_bytes));
        }
        report.log_threads = workers;
        std::thread::scope(|scope| {
            let mut spread = (workers > 1).then(|| key_spread::KeySpread::spawn(scope, workers, apply));
            let mut sink = |record: RecordRef<'_>, frame: &[u8]| match spread.as_mut() {
                Some(spread) => spread.push(&record, frame),
                None => apply(record),
            };
            let replayed = replay_segments(dir, ids, origins, local_node, positions, report, &mut sink);
            if let Some(spread) = spread {
                spread.finish().map_err(|reason| PersistError::Read {
                    path: dir.to_path_buf(),
                    source: io::Error::other(reason),
                })?;
            }
            replayed
        })
    }
}
