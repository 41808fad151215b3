use std::sync::Arc;

use proptest::prelude::*;

use super::*;

fn origins() -> Arc<OriginTable> {
    Arc::new(OriginTable::new(Origin { node_id: "eu-0".into(), region: "eu".into() }))
}

fn store() -> Store {
    Store::new(StoreConfig::default(), origins())
}

fn json(s: &str) -> Value {
    Value::json(s.as_bytes().to_vec()).unwrap()
}

const NOW: u64 = 1_000_000;

fn put(store: &Store, key: &str, value: &str, hlc: u64, expires_at: Option<u64>) {
    store
        .update::<(), (), ()>(
            key,
            NOW,
            |_| Ok(Decision::Write { value: Some(json(value)), expires_at, reply: () }),
            |_| Version { hlc, origin: OriginId::LOCAL },
            |_| (),
        )
        .unwrap();
}

fn record(key: &str, value: Option<&str>, hlc: u64, origin: OriginId) -> Record {
    Record { key: key.into(), version: Version { hlc, origin }, expires_at: None, value: value.map(json) }
}

#[test]
fn a_written_value_reads_back_with_its_version() {
    let s = store();
    put(&s, "k", r#"{"a":1}"#, clock::pack(NOW, 0), None);
    let found = s.get("k", NOW).unwrap();
    assert_eq!(&*found.value.bytes, br#"{"a":1}"#);
    assert_eq!(found.version.hlc, clock::pack(NOW, 0));
    assert_eq!(s.len(), 1);
}

#[test]
fn an_expired_entry_is_never_returned() {
    let s = store();
    put(&s, "k", "1", 1, Some(NOW + 10));
    assert!(s.get("k", NOW + 9).is_some());
    assert!(s.get("k", NOW + 10).is_none());
    assert!(s.read("k", NOW + 11, |c| c.is_none()));
    // And a write sees it as absent.
    let (seen, _) =
        s.update::<_, (), ()>("k", NOW + 20, |c| Ok(Decision::Keep(c.is_some())), |_| unreachable!(), |_| ()).unwrap();
    assert!(!seen);
}

#[test]
fn the_sweeper_frees_expired_entries_and_their_memory() {
    let s = store();
    for i in 0..1000 {
        put(&s, &format!("k{i}"), "1", 1, Some(NOW + 10));
    }
    put(&s, "keep", "1", 1, None);
    let before = s.memory_bytes();
    let mut freed = 0;
    while freed < 1000 {
        let f = s.sweep(NOW + 10, 64);
        assert!(f.expired > 0 || freed == 1000, "sweep made no progress");
        freed += f.expired;
    }
    assert_eq!(s.len(), 1);
    assert!(s.memory_bytes() < before);
    assert!(s.get("keep", NOW + 10).is_some());
    assert_eq!(s.counters().expired.load(Ordering::Relaxed), 1000);
}

#[test]
fn apply_keeps_the_highest_version_whatever_the_order() {
    let origins = origins();
    let us = origins.intern("us-0", "us");
    let a = record("k", Some("\"a\""), 10, OriginId::LOCAL);
    let b = record("k", Some("\"b\""), 20, us);
    let c = record("k", None, 15, us);
    for order in [[&a, &b, &c], [&c, &b, &a], [&b, &a, &c], [&a, &c, &b]] {
        let s = Store::new(StoreConfig::default(), origins.clone());
        for r in order {
            s.apply(r.as_ref(), NOW);
        }
        let found = s.get("k", NOW).unwrap();
        assert_eq!(&*found.value.bytes, b"\"b\"");
    }
}

#[test]
fn equal_timestamps_are_broken_by_node_id_the_same_way_everywhere() {
    let origins = origins();
    let zz = origins.intern("zz", "ap");
    let low = record("k", Some("\"from-eu-0\""), 10, OriginId::LOCAL);
    let high = record("k", Some("\"from-zz\""), 10, zz);
    for order in [[&low, &high], [&high, &low]] {
        let s = Store::new(StoreConfig::default(), origins.clone());
        for r in order {
            s.apply(r.as_ref(), NOW);
        }
        assert_eq!(&*s.get("k", NOW).unwrap().value.bytes, b"\"from-zz\"");
    }
}

#[test]
fn applying_the_same_record_twice_changes_nothing_the_second_time() {
    let s = store();
    let r = record("k", Some("1"), 10, OriginId::LOCAL);
    assert!(s.apply(r.as_ref(), NOW));
    let mem = s.memory_bytes();
    assert!(!s.apply(r.as_ref(), NOW));
    assert_eq!(s.memory_bytes(), mem);
    assert_eq!(s.len(), 1);
}

#[test]
fn a_tombstone_hides_the_key_and_blocks_older_writes() {
    let s = store();
    s.apply(record("k", Some("1"), 10, OriginId::LOCAL).as_ref(), NOW);
    s.apply(record("k", None, clock::pack(NOW, 0), OriginId::LOCAL).as_ref(), NOW);
    assert!(s.get("k", NOW).is_none());
    assert_eq!(s.len(), 0);
    assert_eq!(s.tombstones(), 1);
    assert!(!s.apply(record("k", Some("2"), 11, OriginId::LOCAL).as_ref(), NOW));
    assert!(s.get("k", NOW).is_none());
}

#[test]
fn tombstones_are_purged_after_their_retention() {
    let cfg = StoreConfig { tombstone_retention_ms: 1000, ..StoreConfig::default() };
    let s = Store::new(cfg, origins());
    s.apply(record("k", None, clock::pack(NOW, 0), OriginId::LOCAL).as_ref(), NOW);
    assert_eq!(s.sweep(NOW + 999, 100).tombstones, 0);
    assert_eq!(s.sweep(NOW + 1001, 100).tombstones, 1);
    assert_eq!(s.tombstones(), 0);
}

#[test]
fn while_held_tombstones_outlive_the_retention_in_sweeps_snapshots_and_replays() {
    let cfg = StoreConfig { tombstone_retention_ms: 1000, ..StoreConfig::default() };
    let s = Store::new(cfg, origins());
    s.apply(record("k", None, clock::pack(NOW, 0), OriginId::LOCAL).as_ref(), NOW);
    assert!(!s.set_tombstone_hold(true));
    assert_eq!(s.sweep(NOW + 5000, 100).tombstones, 0, "a held tombstone is not purged");
    let mut scanned = Vec::new();
    for shard in 0..s.shard_count() {
        s.scan_shard(shard, NOW + 5000, |r| scanned.push((r.key.to_string(), r.value.is_none())));
    }
    assert_eq!(scanned, [("k".to_string(), true)], "a full resync carries a held tombstone");
    // A delete as old arriving from a peer is kept too (not taken as simply absent).
    s.apply(record("j", None, clock::pack(NOW, 0), OriginId::LOCAL).as_ref(), NOW + 5000);
    assert_eq!(s.tombstones(), 2);
    // ... and it stops the older write it hides.
    assert!(!s.apply(record("j", Some("1"), clock::pack(NOW - 10, 0), OriginId::LOCAL).as_ref(), NOW + 5000));
    // Held for 10 times the retention, not forever.
    assert_eq!(s.sweep(NOW + 10_001, 100).tombstones, 2);
    // Released: the retention applies again.
    s.apply(record("i", None, clock::pack(NOW, 0), OriginId::LOCAL).as_ref(), NOW + 5000);
    assert!(s.set_tombstone_hold(false));
    assert_eq!(s.sweep(NOW + 5000, 100).tombstones, 1);
    assert_eq!(s.tombstones(), 0);
}

#[test]
fn eviction_keeps_accounted_memory_under_the_limit_and_prefers_cold_keys() {
    let cfg = StoreConfig { max_memory: Some(200_000), ..StoreConfig::default() };
    let s = Store::new(cfg, origins());
    // A hot key, read at every step, should survive.
    put(&s, "hot", "0", 1, None);
    let value = format!("\"{}\"", "x".repeat(200));
    for i in 0..5000u64 {
        let now = NOW + i * 1000;
        s.update::<(), (), ()>(
            &format!("key-{i}"),
            now,
            |_| Ok(Decision::Write { value: Some(json(&value)), expires_at: None, reply: () }),
            |_| Version { hlc: i + 2, origin: OriginId::LOCAL },
            |_| (),
        )
        .unwrap();
        assert!(s.get("hot", now).is_some(), "the hot key was evicted at step {i}");
        assert!(s.memory_bytes() <= 200_000, "memory {} over the limit", s.memory_bytes());
    }
    assert!(s.counters().evicted.load(Ordering::Relaxed) > 4000);
    assert!(s.len() > 100);
}

#[test]
fn update_can_keep_the_entry_unchanged() {
    let s = store();
    put(&s, "k", "1", 5, None);
    let (reply, written) = s
        .update::<_, (), ()>("k", NOW, |c| Ok(Decision::Keep(c.map(|c| c.version.hlc))), |_| unreachable!(), |_| ())
        .unwrap();
    assert_eq!(reply, Some(5));
    assert!(written.is_none());
}

#[test]
fn an_error_in_decide_changes_nothing() {
    let s = store();
    put(&s, "k", "1", 5, None);
    let r = s.update::<(), (), &str>("k", NOW, |_| Err("no"), |_| unreachable!(), |_| ());
    assert_eq!(r.unwrap_err(), "no");
    assert_eq!(&*s.get("k", NOW).unwrap().value.bytes, b"1");
}

proptest! {
    // Whatever the order in which a set of versioned writes arrives, and whether some
    // arrive twice, every store ends up with the same contents.
    #[test]
    fn replicas_converge_whatever_the_delivery_order(
        writes in proptest::collection::vec((0u8..6, 0u64..40, 0u8..3, proptest::option::of(0u8..5)), 1..60),
        seed in any::<u64>(),
    ) {
        let origins = origins();
        let ids = [OriginId::LOCAL, origins.intern("us-0", "us"), origins.intern("ap-0", "ap")];
        // An origin never issues the same timestamp twice: make versions unique.
        let records: Vec<Record> = writes.iter().enumerate().map(|(i, &(k, hlc, o, v))| {
            record(&format!("k{k}"), v.map(|v| v.to_string()).as_deref(), hlc * 64 + i as u64 + 1, ids[o as usize])
        }).collect();
        let a = Store::new(StoreConfig::default(), origins.clone());
        for r in &records { a.apply(r.as_ref(), 1); }
        let mut shuffled: Vec<&Record> = records.iter().chain(records.iter().take(records.len() / 2)).collect();
        fastrand::Rng::with_seed(seed).shuffle(&mut shuffled);
        let b = Store::new(StoreConfig::default(), origins.clone());
        for r in shuffled { b.apply(r.as_ref(), 1); }
        for k in 0..6 {
            let key = format!("k{k}");
            prop_assert_eq!(a.get(&key, 1), b.get(&key, 1));
        }
        prop_assert_eq!(a.len(), b.len());
        prop_assert_eq!(a.memory_bytes(), b.memory_bytes());
    }
}

#[test]
fn a_swept_expired_entry_still_stops_an_older_write_from_coming_back() {
    let s = store();
    s.apply(
        Record { expires_at: Some(NOW + 10), ..record("k", Some("\"new\""), clock::pack(NOW, 5), OriginId::LOCAL) }
            .as_ref(),
        NOW,
    );
    let freed = s.sweep(NOW + 20, 100);
    assert_eq!(freed.expired, 1);
    assert_eq!(s.tombstones(), 1, "the expired entry is kept as a tombstone");
    // A write older than the expired one arrives late: it must not resurrect the key.
    assert!(!s.apply(record("k", Some("\"old\""), clock::pack(NOW, 1), OriginId::LOCAL).as_ref(), NOW + 20));
    assert!(s.get("k", NOW + 20).is_none());
}

#[test]
fn a_resync_gives_an_entry_expired_by_our_clock_as_it_is_and_the_receiver_judges_by_its_own() {
    let s = store();
    let entry = Record { expires_at: Some(NOW + 10), ..record("k", Some("1"), clock::pack(NOW, 5), OriginId::LOCAL) };
    s.apply(entry.as_ref(), NOW);
    let mut seen = Vec::new();
    // Our clock is ahead: the entry expired here.
    for i in 0..s.shard_count() {
        s.scan_shard_for_resync(i, NOW + 20, |r| seen.push(r.to_owned()));
    }
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].value.as_ref().map(|v| v.as_ref().bytes.to_vec()), Some(b"1".to_vec()));
    assert_eq!(seen[0].expires_at, Some(NOW + 10));
    // A receiver whose clock has not reached the expiry serves it...
    let slower = store();
    slower.apply(seen[0].as_ref(), NOW);
    assert!(slower.get("k", NOW).is_some(), "a live entry was hidden by the sender's clock");
    // ...and one whose clock has keeps it absent.
    let faster = store();
    faster.apply(seen[0].as_ref(), NOW + 20);
    assert!(faster.get("k", NOW + 20).is_none());
}

#[test]
fn snapshots_give_expired_entries_as_tombstones_of_the_same_version() {
    let s = store();
    s.apply(
        Record { expires_at: Some(NOW + 10), ..record("k", Some("1"), clock::pack(NOW, 5), OriginId::LOCAL) }.as_ref(),
        NOW,
    );
    let mut seen = Vec::new();
    for i in 0..s.shard_count() {
        s.scan_shard(i, NOW + 20, |r| seen.push(r.to_owned()));
    }
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].value, None);
    assert_eq!(seen[0].version.hlc, clock::pack(NOW, 5));
    // A replica holding an older live version drops it when it applies this.
    let other = store();
    other.apply(record("k", Some("0"), clock::pack(NOW, 1), OriginId::LOCAL).as_ref(), NOW);
    other.apply(seen[0].as_ref(), NOW + 20);
    assert!(other.get("k", NOW + 20).is_none());
}

fn text(found: Option<Found>) -> Option<String> {
    found.map(|f| String::from_utf8(f.value.bytes.to_vec()).unwrap())
}

#[test]
fn put_many_writes_every_key_and_the_last_of_a_repeated_one() {
    let s = store();
    put(&s, "b", "0", clock::pack(NOW, 0), None);
    let mut hlc = clock::pack(NOW, 1);
    let entries = [("a", json("1"), None), ("b", json("2"), Some(NOW + 60_000)), ("a", json("3"), None)];
    let mut committed = Vec::new();
    let out = s.put_many(
        &entries,
        NOW,
        |_| {
            hlc += 1;
            Version { hlc, origin: OriginId::LOCAL }
        },
        |r| committed.push(r.key.to_string()),
    );
    assert_eq!(out.iter().map(|(created, _, _)| *created).collect::<Vec<_>>(), [true, false, false]);
    assert_eq!(committed, ["a", "b", "a"], "every write is committed, in order");
    assert_eq!(text(s.get("a", NOW)).as_deref(), Some("3"));
    assert_eq!(text(s.get("b", NOW)).as_deref(), Some("2"));
    assert_eq!(s.get("b", NOW).unwrap().expires_at, Some(NOW + 60_000));
}

#[test]
fn no_reader_sees_half_of_a_put_many() {
    // The writer sets a and b to the same number, a first; a reader that reads a then b
    // would see b behind a if the two writes were visible one at a time.
    let s = Arc::new(store());
    let keys = ["atom-a", "atom-b"];
    let writer = {
        let s = s.clone();
        std::thread::spawn(move || {
            for i in 1..=20_000u64 {
                let n = json(&i.to_string());
                let entries = [(keys[0], n.clone(), None), (keys[1], n, None)];
                s.put_many(
                    &entries,
                    NOW,
                    |_| Version { hlc: clock::pack(NOW, 0) + i, origin: OriginId::LOCAL },
                    |_| (),
                );
            }
        })
    };
    let read = |k: &str| text(s.get(k, NOW)).map_or(0, |t| t.parse::<u64>().unwrap());
    let mut checks = 0;
    while !writer.is_finished() || checks == 0 {
        let a = read(keys[0]);
        let b = read(keys[1]);
        assert!(b >= a, "read a = {a}, then b = {b}: half of a put_many was visible");
        checks += 1;
    }
    writer.join().unwrap();
    assert_eq!((read(keys[0]), read(keys[1])), (20_000, 20_000));
}
