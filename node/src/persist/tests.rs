use std::sync::Arc;

use super::recovery::{PARALLEL_REPLAY_MIN_BYTES, read_shard_index};
use super::*;
use crate::clock::Hlc;
use crate::db::{Db, Expiry, Limits};
use crate::journal::Journal;
use crate::store::{StoreConfig, Value};

struct Opened {
    db: Db,
    report: RecoveryReport,
}

fn open(dir: &Path, fsync: FsyncPolicy, compact_min_bytes: u64) -> Opened {
    let origins = Arc::new(OriginTable::new(Origin { node_id: "eu-0".into(), region: "eu".into() }));
    let metrics = Arc::new(Metrics::default());
    let store = Store::new(StoreConfig::default(), origins.clone());
    let config = PersistConfig { dir: dir.to_path_buf(), fsync, compact_min_bytes };
    let now = clock::now_ms();
    let (persist, report) = Persist::open(
        config,
        origins,
        metrics.clone(),
        |n| store.reserve(n),
        |r| {
            store.apply(r, now);
        },
    )
    .unwrap();
    let local = Origin { node_id: "eu-0".into(), region: "eu".into() };
    let stream = StreamId::new("eu-0", clock::now_ms());
    let journal = Journal::new(stream, local, Some(Arc::new(persist)), report.positions.clone(), Some(1 << 20));
    let db = Db::new(store, Hlc::new(), Limits::default(), journal, metrics);
    Opened { db, report }
}

async fn put(db: &Db, key: &str, json: &str, expiry: Expiry) {
    let w = db.put(key, Value::json(json.as_bytes().to_vec()).unwrap(), expiry).unwrap();
    db.wait_durable(w.lsn).await.unwrap();
}

fn value(db: &Db, key: &str) -> Option<String> {
    db.get(key).unwrap().map(|f| String::from_utf8(f.value.bytes.to_vec()).unwrap())
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "gclog"))
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn acknowledged_writes_survive_a_crash_without_any_sync() {
    let dir = tempfile::tempdir().unwrap();
    {
        let o = open(dir.path(), FsyncPolicy::EverySecond, 1 << 30);
        for i in 0..100 {
            put(&o.db, &format!("k{i}"), &format!("{{\"i\":{i}}}"), Expiry::Never).await;
        }
        let w = o.db.delete("k7").unwrap();
        o.db.wait_durable(w.lsn).await.unwrap();
        // Dropped without sync_all: what was acknowledged is in the OS already.
    }
    let o = open(dir.path(), FsyncPolicy::EverySecond, 1 << 30);
    assert_eq!(o.report.log_records, 101);
    assert!(o.report.corruptions.is_empty());
    assert_eq!(o.db.store().len(), 99);
    assert_eq!(value(&o.db, "k42").as_deref(), Some("{\"i\":42}"));
    assert_eq!(value(&o.db, "k7"), None);
    assert_eq!(o.db.store().tombstones(), 1);
    // The positions of the stream that wrote them are recovered.
    assert_eq!(o.report.positions.len(), 1);
    assert_eq!(o.report.positions.iter().next().map(|(_, seq)| seq), Some(101));
}

#[tokio::test]
async fn expired_entries_stay_gone_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let o = open(dir.path(), FsyncPolicy::Always, 1 << 30);
        put(&o.db, "short", "1", Expiry::At(clock::now_ms() + 50)).await;
        put(&o.db, "long", "2", Expiry::after_ms(3_600_000)).await;
    }
    std::thread::sleep(Duration::from_millis(80));
    let o = open(dir.path(), FsyncPolicy::Always, 1 << 30);
    assert_eq!(value(&o.db, "short"), None);
    assert_eq!(value(&o.db, "long").as_deref(), Some("2"));
    assert_eq!(o.db.store().len(), 1);
}

#[tokio::test]
async fn a_torn_tail_is_reported_skipped_and_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    {
        let o = open(dir.path(), FsyncPolicy::EverySecond, 1 << 30);
        for i in 0..10 {
            put(&o.db, &format!("k{i}"), "\"0123456789\"", Expiry::Never).await;
        }
    }
    let seg = segments(dir.path()).pop().unwrap();
    let len = fs::metadata(&seg).unwrap().len();
    OpenOptions::new().write(true).open(&seg).unwrap().set_len(len - 5).unwrap();

    let o = open(dir.path(), FsyncPolicy::EverySecond, 1 << 30);
    assert_eq!(o.report.log_records, 9);
    assert_eq!(o.report.corruptions.len(), 1);
    assert!(o.report.corruptions[0].reason.contains("torn"), "{:?}", o.report.corruptions);
    assert_eq!(value(&o.db, "k8").as_deref(), Some("\"0123456789\""));
    assert_eq!(value(&o.db, "k9"), None);
    drop(o);
    // The damaged file was cut at the last good record: the next start is clean.
    let o = open(dir.path(), FsyncPolicy::EverySecond, 1 << 30);
    assert!(o.report.corruptions.is_empty());
    assert_eq!(o.db.store().len(), 9);
}

#[tokio::test]
async fn garbage_after_the_last_record_never_becomes_a_value() {
    let dir = tempfile::tempdir().unwrap();
    {
        let o = open(dir.path(), FsyncPolicy::EverySecond, 1 << 30);
        put(&o.db, "a", "1", Expiry::Never).await;
    }
    let seg = segments(dir.path()).pop().unwrap();
    let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
    // A plausible header (small length) followed by junk: the checksum must catch it.
    f.write_all(&[20, 0, 0, 0, 1, 2, 3, 4]).unwrap();
    f.write_all(&[0xAB; 20]).unwrap();
    drop(f);
    let o = open(dir.path(), FsyncPolicy::EverySecond, 1 << 30);
    assert_eq!(o.report.corruptions.len(), 1);
    assert_eq!(o.report.corruptions[0].reason, "checksum mismatch");
    assert_eq!(o.db.store().len(), 1);
    assert_eq!(value(&o.db, "a").as_deref(), Some("1"));
}

#[tokio::test]
async fn compaction_bounds_the_log_and_keeps_every_entry() {
    let dir = tempfile::tempdir().unwrap();
    let big = format!("\"{}\"", "x".repeat(1000));
    {
        let o = open(dir.path(), FsyncPolicy::EverySecond, 64 << 10);
        let persist = o.db.persist().unwrap().clone();
        // Overwrite the same 20 keys many times: the log grows, the data does not.
        for round in 0..20 {
            for i in 0..20 {
                put(&o.db, &format!("k{i}"), &big, Expiry::Never).await;
            }
            let w = o.db.delete("k0").unwrap();
            o.db.wait_durable(w.lsn).await.unwrap();
            if persist.should_compact() {
                let r = o.db.compact().unwrap().unwrap();
                assert_eq!(r.records, 20, "round {round}: 19 entries and 1 tombstone");
            }
        }
        assert!(persist.metrics.compactions.load(Ordering::Relaxed) > 0);
        put(&o.db, "after", "true", Expiry::Never).await;
    }
    let total: u64 = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
    assert!(total < 200 << 10, "data dir holds {total} bytes");
    let o = open(dir.path(), FsyncPolicy::EverySecond, 64 << 10);
    assert!(o.report.corruptions.is_empty(), "{:?}", o.report.corruptions);
    assert!(o.report.snapshot_records > 0);
    assert_eq!(o.db.store().len(), 20);
    assert_eq!(value(&o.db, "k0"), None);
    assert_eq!(value(&o.db, "k5").as_deref(), Some(big.as_str()));
    assert_eq!(value(&o.db, "after").as_deref(), Some("true"));
    // Positions survive compaction: in the snapshot header, then the log after it.
    assert_eq!(o.report.positions.iter().next().map(|(_, seq)| seq), Some(20 * 21 + 1));
}

#[tokio::test]
async fn a_snapshot_without_its_end_marker_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    {
        let o = open(dir.path(), FsyncPolicy::EverySecond, 1);
        put(&o.db, "a", "1", Expiry::Never).await;
        put(&o.db, "b", "2", Expiry::Never).await;
        o.db.compact().unwrap().unwrap();
    }
    let snap = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "gcsnap"))
        .unwrap();
    // Cut the file right before its end marker (which the shard index follows).
    let bytes = fs::read(&snap).unwrap();
    let end_marker = bytes.windows(8).rposition(|w| w == SNAPSHOT_END).unwrap();
    OpenOptions::new().write(true).open(&snap).unwrap().set_len(end_marker as u64).unwrap();
    let o = open(dir.path(), FsyncPolicy::EverySecond, 1);
    assert_eq!(o.report.corruptions.len(), 1);
    assert!(o.report.corruptions[0].reason.contains("end marker"));
    assert_eq!(o.db.store().len(), 2);
}

fn snapshot_file(dir: &Path) -> PathBuf {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "gcsnap"))
        .unwrap()
}

/// Opens `dir` and returns how many entries recovery reserved room for.
fn reserved_on_open(dir: &Path) -> (Option<u64>, usize) {
    let origins = Arc::new(OriginTable::new(Origin { node_id: "eu-0".into(), region: "eu".into() }));
    let store = Store::new(StoreConfig::default(), origins.clone());
    let config = PersistConfig { dir: dir.to_path_buf(), fsync: FsyncPolicy::EverySecond, compact_min_bytes: 1 << 30 };
    let mut reserved = None;
    let now = clock::now_ms();
    let opened = Persist::open(
        config,
        origins,
        Arc::new(Metrics::default()),
        |n| reserved = Some(n),
        |r| {
            store.apply(r, now);
        },
    );
    drop(opened.unwrap());
    (reserved, store.len())
}

#[tokio::test]
async fn a_snapshot_counts_its_entries_so_recovery_sizes_the_store_once() {
    let dir = tempfile::tempdir().unwrap();
    {
        let o = open(dir.path(), FsyncPolicy::EverySecond, 1);
        for i in 0..50 {
            put(&o.db, &format!("k{i}"), "1", Expiry::Never).await;
        }
        o.db.compact().unwrap().unwrap();
    }
    assert_eq!(reserved_on_open(dir.path()), (Some(50), 50));

    // A damaged count is never believed beyond what the file could hold.
    let snap = snapshot_file(dir.path());
    let len = fs::metadata(&snap).unwrap().len();
    std::os::unix::fs::FileExt::write_all_at(
        &File::options().write(true).open(&snap).unwrap(),
        &u64::MAX.to_le_bytes(),
        16,
    )
    .unwrap();
    let (reserved, entries) = reserved_on_open(dir.path());
    assert_eq!(reserved, Some(len / 16));
    assert_eq!(entries, 50);
}

/// A data dir with a snapshot of `n` keys `k<i>` (value `<i>`).
async fn snapshot_of(n: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let o = open(dir.path(), FsyncPolicy::EverySecond, 1);
    for i in 0..n {
        put(&o.db, &format!("k{i}"), &i.to_string(), Expiry::Never).await;
    }
    o.db.compact().unwrap().unwrap();
    dir
}

#[tokio::test]
async fn a_snapshot_loads_its_shards_in_parallel_with_every_entry() {
    let dir = snapshot_of(2000).await;
    let snap = snapshot_file(dir.path());
    let mut file = File::open(&snap).unwrap();
    let len = file.metadata().unwrap().len();
    let bytes = fs::read(&snap).unwrap();
    let positions_len = u32::from_le_bytes(bytes[24..28].try_into().unwrap()) as u64;
    let ranges = read_shard_index(&mut file, 28 + positions_len, len).unwrap().expect("an index of the shards");
    assert_eq!(ranges.len(), StoreConfig::default().shards.next_power_of_two());
    let o = open(dir.path(), FsyncPolicy::EverySecond, 1 << 30);
    assert!(o.report.corruptions.is_empty(), "{:?}", o.report.corruptions);
    assert_eq!(o.report.snapshot_records, 2000);
    assert_eq!(o.db.store().len(), 2000);
    for i in [0, 999, 1999] {
        assert_eq!(value(&o.db, &format!("k{i}")), Some(i.to_string()));
    }
}

#[tokio::test]
async fn a_damaged_shard_index_falls_back_to_reading_the_snapshot_in_one_pass() {
    let dir = snapshot_of(500).await;
    let snap = snapshot_file(dir.path());
    let mut bytes = fs::read(&snap).unwrap();
    let at = bytes.len() - 16 - 8; // inside the last offset of the index
    bytes[at] ^= 0x40;
    fs::write(&snap, &bytes).unwrap();
    let o = open(dir.path(), FsyncPolicy::EverySecond, 1 << 30);
    assert!(o.report.corruptions.is_empty(), "{:?}", o.report.corruptions);
    assert_eq!(o.db.store().len(), 500);
}

#[tokio::test]
async fn a_damaged_record_loses_only_the_rest_of_its_shard_and_is_reported() {
    let dir = snapshot_of(2000).await;
    let snap = snapshot_file(dir.path());
    let mut bytes = fs::read(&snap).unwrap();
    let positions_len = u32::from_le_bytes(bytes[24..28].try_into().unwrap()) as usize;
    let first_record = 28 + positions_len;
    bytes[first_record + 12] ^= 0xff; // in the first record of the first shard
    fs::write(&snap, &bytes).unwrap();
    let o = open(dir.path(), FsyncPolicy::EverySecond, 1 << 30);
    assert_eq!(o.report.corruptions.len(), 1, "{:?}", o.report.corruptions);
    assert_eq!(o.report.corruptions[0].offset, first_record as u64);
    let loaded = o.db.store().len();
    assert!(loaded < 2000 && loaded > 1800, "only the first shard's entries are lost: {loaded}");
}

#[tokio::test]
async fn a_snapshot_of_the_first_format_still_loads() {
    let dir = tempfile::tempdir().unwrap();
    {
        let o = open(dir.path(), FsyncPolicy::EverySecond, 1);
        put(&o.db, "a", "1", Expiry::Never).await;
        put(&o.db, "b", "2", Expiry::Never).await;
        o.db.compact().unwrap().unwrap();
    }
    // Rewrite it as v1: the same header without the record count.
    let snap = snapshot_file(dir.path());
    let bytes = fs::read(&snap).unwrap();
    let mut v1 = Vec::new();
    v1.extend_from_slice(SNAPSHOT_MAGIC_V1);
    v1.extend_from_slice(&bytes[8..16]);
    v1.extend_from_slice(&bytes[24..]);
    fs::write(&snap, v1).unwrap();
    let (reserved, entries) = reserved_on_open(dir.path());
    assert_eq!(reserved, None, "a v1 snapshot has no count");
    assert_eq!(entries, 2);
}

#[tokio::test]
async fn always_fsync_syncs_before_acknowledging() {
    let dir = tempfile::tempdir().unwrap();
    let o = open(dir.path(), FsyncPolicy::Always, 1 << 30);
    put(&o.db, "a", "1", Expiry::Never).await;
    let persist = o.db.persist().unwrap();
    assert!(persist.metrics.log_fsyncs.load(Ordering::Relaxed) >= 1);
    assert_eq!(persist.synced.load(Ordering::Relaxed), persist.written.load(Ordering::Relaxed));
}

#[test]
fn a_data_dir_cannot_be_opened_twice() {
    let dir = tempfile::tempdir().unwrap();
    let _first = open(dir.path(), FsyncPolicy::EverySecond, 1 << 30);
    let origins = Arc::new(OriginTable::new(Origin { node_id: "eu-1".into(), region: "eu".into() }));
    let config = PersistConfig { dir: dir.path().to_path_buf(), fsync: FsyncPolicy::EverySecond, compact_min_bytes: 1 };
    let second = Persist::open(config, origins, Arc::new(Metrics::default()), |_| {}, |_| {});
    assert!(matches!(second, Err(PersistError::Locked { .. })));
}

#[tokio::test]
async fn a_big_log_is_replayed_on_several_threads_with_every_key_s_last_write_winning() {
    let dir = tempfile::tempdir().unwrap();
    let filler = "x".repeat(400);
    {
        let o = open(dir.path(), FsyncPolicy::EverySecond, 1 << 40);
        // About 6 MB of log: 2,000 keys written 6 times each, every 7th key deleted last.
        for round in 0..6 {
            for k in 0..2000 {
                let json = format!("{{\"round\":{round},\"k\":{k},\"f\":\"{filler}\"}}");
                let _ = o.db.put(&format!("key{k}"), Value::json(json.into_bytes()).unwrap(), Expiry::Never).unwrap();
            }
        }
        let mut last = None;
        for k in (0..2000).step_by(7) {
            last = o.db.delete(&format!("key{k}")).unwrap().lsn;
        }
        o.db.wait_durable(last).await.unwrap();
    }
    let log_bytes: u64 = segments(dir.path()).iter().map(|p| fs::metadata(p).unwrap().len()).sum();
    assert!(log_bytes >= PARALLEL_REPLAY_MIN_BYTES, "the log is big enough to be replayed in parallel");
    let o = open(dir.path(), FsyncPolicy::EverySecond, 1 << 40);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8);
    assert_eq!(o.report.log_threads, cores);
    assert_eq!(o.report.log_records, 6 * 2000 + 286);
    assert!(o.report.corruptions.is_empty());
    for k in 0..2000 {
        let got = value(&o.db, &format!("key{k}"));
        if k % 7 == 0 {
            assert_eq!(got, None, "key{k} was deleted last");
        } else {
            let expected = format!("{{\"round\":5,\"k\":{k},\"f\":\"{filler}\"}}");
            assert_eq!(got.as_deref(), Some(expected.as_str()), "key{k} holds its last write");
        }
    }
    assert_eq!(o.db.store().len(), 2000 - 286);
    assert_eq!(o.report.positions.iter().next().map(|(_, seq)| seq), Some(6 * 2000 + 286));
    drop(o);
    // The store was sized for about as many records as the log holds.
    let (reserved, len) = reserved_on_open(dir.path());
    let reserved = reserved.expect("a big log sizes the store");
    assert!((11_500..=13_000).contains(&reserved), "reserved room for {reserved} records, the log holds 12286");
    assert_eq!(len, 2000 - 286);
}
