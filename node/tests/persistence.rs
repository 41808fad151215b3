//! `--data-dir`: every acknowledged write survives `kill -9` (with `--fsync always` and
//! by default), expired keys stay gone, a torn or corrupt log tail is reported and
//! skipped (never served), restarts are idempotent, and the log is compacted.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test: failing loudly is its job

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use redis::AsyncCommands;
use serde_json::{Value as Json, json};

type Con = redis::aio::MultiplexedConnection;

async fn cmd<T: redis::FromRedisValue>(con: &mut Con, args: &[&str]) -> T {
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    c.query_async(con).await.unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// The `log-*.gclog` segment written last (by modification time, then name).
fn newest_segment(dir: &Path) -> PathBuf {
    let mut segments: Vec<(std::time::SystemTime, PathBuf)> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with("log-") && name.ends_with(".gclog")
        })
        .map(|p| (fs::metadata(&p).and_then(|m| m.modified()).unwrap(), p))
        .collect();
    segments.sort();
    segments.pop().unwrap_or_else(|| panic!("no log-*.gclog segment in {}: {:?}", dir.display(), list_dir(dir))).1
}

fn list_dir(dir: &Path) -> Vec<(String, u64)> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().map(|m| m.len()).unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn dir_size(dir: &Path) -> u64 {
    list_dir(dir).iter().map(|(_, len)| len).sum()
}

/// The lines of the last start's log that contain `needle` (case-insensitive).
fn log_lines_with(node: &NodeProcess, needle: &str) -> Vec<String> {
    node.log_of_last_start()
        .lines()
        .filter(|l| l.to_lowercase().contains(&needle.to_lowercase()))
        .map(str::to_string)
        .collect()
}

fn assert_recovery_logged(node: &NodeProcess) {
    let lines = log_lines_with(node, "recovered");
    assert!(!lines.is_empty(), "the start-up log says what was recovered:\n{}", node.log_of_last_start());
}

fn assert_corrupt_tail_warned(node: &NodeProcess) {
    let lines = log_lines_with(node, "corrupt");
    assert!(
        lines.iter().any(|l| l.to_lowercase().contains("warn")),
        "a warning mentions the corrupt tail; log of the last start:\n{}",
        node.log_of_last_start()
    );
}

/// What a key must read as over RESP (`None`: absent).
type Model = BTreeMap<String, Option<Vec<u8>>>;

struct Workload {
    model: Model,
    /// ETags read before the crash, which must survive it.
    etags: BTreeMap<String, String>,
    /// Keys with a long TTL, with their `expires_at` in Unix ms.
    long_ttl: BTreeMap<String, u64>,
    /// Keys whose TTL was removed.
    persisted: Vec<String>,
    /// When the 1-second TTLs were acknowledged.
    short_ttl_acked: Instant,
}

/// A mixed workload over both interfaces; returns right after the last write is
/// acknowledged, so that the caller can `kill -9` at once.
async fn write_mixed_workload(http: &Http, con: &mut Con) -> Workload {
    let mut model = Model::new();
    let mut etags = BTreeMap::new();
    let mut long_ttl = BTreeMap::new();

    // HTTP: creates, replaces, deletes, a merge patch, TTLs.
    for i in 0..60 {
        let doc = json!({"i": i, "via": "http"}).to_string();
        http.put_ok(&format!("h:{i}"), "", &doc).await;
        model.insert(format!("h:{i}"), Some(doc.into_bytes()));
    }
    for i in 0..10 {
        let doc = format!("{{\"i\": {i}, \"v\": 2}}");
        http.put_ok(&format!("h:{i}"), "?ack=local", &doc).await;
        model.insert(format!("h:{i}"), Some(doc.into_bytes()));
    }
    for i in 10..20 {
        assert_eq!(http.delete(&format!("h:{i}")).await.status().as_u16(), 204);
        model.insert(format!("h:{i}"), None);
    }
    let r = http.patch("h:20", "", "application/merge-patch+json", r#"{"via":null,"patched":true}"#).await;
    assert_eq!(r.status().as_u16(), 200);
    let patched: Vec<u8> = con.get("h:20").await.unwrap();
    assert_eq!(serde_json::from_slice::<Json>(&patched).unwrap(), json!({"i": 20, "patched": true}));
    model.insert("h:20".into(), Some(patched));
    let put = http.put_ok("h:long", "?ttl=1h", r#"{"ttl":"1h"}"#).await;
    long_ttl.insert("h:long".to_string(), parse_rfc3339_ms(put["expires_at"].as_str().unwrap()).unwrap());
    model.insert("h:long".into(), Some(br#"{"ttl":"1h"}"#.to_vec()));
    http.put_ok("h:persisted", "?ttl=1h", "[\"persisted\"]").await;
    assert_eq!(http.expire("h:persisted", "?ttl=none").await.status().as_u16(), 200);
    model.insert("h:persisted".into(), Some(b"[\"persisted\"]".to_vec()));
    for i in [0, 5, 30, 59] {
        let r = http.get(&format!("h:{i}")).await;
        etags.insert(format!("h:{i}"), header(&r, "etag").expect("ETag"));
    }

    // RESP: SET, MSET, DEL, JSON.SET, binary values, EXPIRE, PERSIST.
    let mut pipe = redis::pipe();
    for i in 0..60 {
        pipe.cmd("SET").arg(format!("r:{i}")).arg(format!("value {i} with spaces")).ignore();
        model.insert(format!("r:{i}"), Some(format!("value {i} with spaces").into_bytes()));
    }
    let _: () = pipe.query_async(con).await.unwrap();
    for i in 0..10 {
        let _: () = con.set(format!("r:{i}"), format!("overwritten {i}")).await.unwrap();
        model.insert(format!("r:{i}"), Some(format!("overwritten {i}").into_bytes()));
    }
    let deleted: i64 = cmd(con, &["DEL", "r:10", "r:11", "r:12", "r:13", "r:14", "nothing"]).await;
    assert_eq!(deleted, 5);
    for i in 10..15 {
        model.insert(format!("r:{i}"), None);
    }
    assert_eq!(cmd::<i64>(con, &["UNLINK", "r:15"]).await, 1);
    model.insert("r:15".into(), None);
    let _: () = con.mset(&[("m:a", "alpha"), ("m:b", "{\"beta\":true}")]).await.unwrap();
    model.insert("m:a".into(), Some(b"alpha".to_vec()));
    model.insert("m:b".into(), Some(b"{\"beta\":true}".to_vec()));
    assert_eq!(cmd::<String>(con, &["JSON.SET", "j", "$", "{\"j\":[1,2]}"]).await, "OK");
    model.insert("j".into(), Some(b"{\"j\":[1,2]}".to_vec()));
    let binary: Vec<u8> = (0u8..=255).rev().collect();
    let _: () = con.set("r:binary", &binary[..]).await.unwrap();
    model.insert("r:binary".into(), Some(binary));
    let _: String = cmd(con, &["SET", "r:long", "long-lived", "EX", "3600"]).await;
    let pttl: i64 = cmd(con, &["PTTL", "r:long"]).await;
    long_ttl.insert("r:long".to_string(), now_unix_ms() + pttl as u64);
    model.insert("r:long".into(), Some(b"long-lived".to_vec()));
    let _: String = cmd(con, &["SET", "r:persisted", "p", "EX", "3600"]).await;
    assert_eq!(cmd::<i64>(con, &["PERSIST", "r:persisted"]).await, 1);
    model.insert("r:persisted".into(), Some(b"p".to_vec()));
    assert_eq!(cmd::<i64>(con, &["DEL", "r:0"]).await, 1);
    let _: () = con.set("r:0", "reborn").await.unwrap();
    model.insert("r:0".into(), Some(b"reborn".to_vec()));
    let r = http.get("r:30").await;
    etags.insert("r:30".into(), header(&r, "etag").expect("ETag"));

    // Keys whose TTL runs out before the restart: they must stay gone.
    http.put_ok("h:short", "?ttl=1s", r#"{"ttl":"1s"}"#).await;
    let _: String = cmd(con, &["SET", "r:short", "v", "EX", "1"]).await;
    let _: String = cmd(con, &["SET", "r:expire-later", "v"]).await;
    assert_eq!(cmd::<i64>(con, &["PEXPIRE", "r:expire-later", "1000"]).await, 1);
    let short_ttl_acked = Instant::now();
    for k in ["h:short", "r:short", "r:expire-later"] {
        model.insert(k.into(), None);
    }
    // The very last acknowledged writes: one over each interface.
    http.put_ok("h:last", "", r#"{"last":true}"#).await;
    model.insert("h:last".into(), Some(br#"{"last":true}"#.to_vec()));
    let _: () = con.set("r:last", "the last write").await.unwrap();
    model.insert("r:last".into(), Some(b"the last write".to_vec()));

    Workload { model, etags, long_ttl, persisted: vec!["h:persisted".into(), "r:persisted".into()], short_ttl_acked }
}

/// Checks the node's state against what the workload acknowledged.
async fn assert_workload_recovered(node: &NodeProcess, w: &Workload, what: &str) {
    let http = Http::new(node);
    let mut con = redis_conn(node).await;
    for (key, expected) in &w.model {
        let got: Option<Vec<u8>> = con.get(key).await.unwrap();
        assert_eq!(
            got.as_deref().map(String::from_utf8_lossy),
            expected.as_deref().map(String::from_utf8_lossy),
            "{what}: key {key:?}"
        );
        if expected.is_none() {
            assert_eq!(http.get(key).await.status().as_u16(), 404, "{what}: {key:?} stays gone over HTTP");
        }
    }
    for (key, etag) in &w.etags {
        let r = http.get(key).await;
        assert_eq!(header(&r, "etag").as_ref(), Some(etag), "{what}: {key:?} keeps its version");
    }
    for (key, at) in &w.long_ttl {
        let pttl: i64 = cmd(&mut con, &["PTTL", key]).await;
        let now = now_unix_ms();
        assert!(pttl > 0, "{what}: {key:?} keeps its expiry, PTTL {pttl}");
        assert!(
            now + pttl as u64 <= at + 1500 && now + pttl as u64 + 1500 >= *at,
            "{what}: {key:?} expires at {at}, PTTL {pttl}"
        );
    }
    let r = http.get("h:long").await;
    let h = header(&r, "x-geocache-expires-at").expect("h:long keeps X-Geocache-Expires-At");
    assert_eq!(parse_rfc3339_ms(&h), w.long_ttl.get("h:long").copied(), "{what}: h:long expires_at");
    for key in &w.persisted {
        assert_eq!(cmd::<i64>(&mut con, &["TTL", key]).await, -1, "{what}: {key:?} stays persisted");
    }
    let live = w.model.values().filter(|v| v.is_some()).count() as u64;
    assert_eq!(http.keys().await, live, "{what}: /v1/status keys");
    assert_eq!(cmd::<i64>(&mut con, &["DBSIZE"]).await, live as i64, "{what}: DBSIZE");
}

async fn every_acknowledged_write_survives_kill_9(fsync: Option<&str>) {
    let mut opts = NodeOptions::new().persistent();
    if let Some(f) = fsync {
        opts = opts.fsync(f);
    }
    let mut node = start_with(opts);
    let w = {
        let http = Http::new(&node);
        let mut con = redis_conn(&node).await;
        write_mixed_workload(&http, &mut con).await
    };
    let status = node.kill();
    assert!(geocache_tests::killed_by(status, 9), "SIGKILL: {status}");
    // Let the short TTLs run out before the node is back.
    tokio::time::sleep_until((w.short_ttl_acked + Duration::from_millis(1200)).into()).await;
    node.restart();
    assert_recovery_logged(&node);
    assert_workload_recovered(&node, &w, "after kill -9").await;

    // The recovered node keeps working: replaces, deletes, and re-creations.
    let http = Http::new(&node);
    let r = http.put("h:0", "", r#"{"after":"restart"}"#).await;
    assert_eq!(r.status().as_u16(), 200, "a recovered key is replaced, not created");
    let r = http.get("h:0").await;
    assert_ne!(header(&r, "etag").as_ref(), w.etags.get("h:0"), "a new write after restart has a new version");
    assert_eq!(http.delete("h:10").await.status().as_u16(), 404, "a key deleted before the crash stays deleted");
    assert_eq!(http.put("h:10", "", "1").await.status().as_u16(), 201);
    assert_eq!(http.put("h:short", "", "1").await.status().as_u16(), 201, "an expired key is absent after restart");
}

#[tokio::test]
async fn every_acknowledged_write_survives_kill_9_with_fsync_always() {
    within(Duration::from_secs(120), every_acknowledged_write_survives_kill_9(Some("always"))).await;
}

#[tokio::test]
async fn every_acknowledged_write_survives_kill_9_with_the_default_fsync_policy() {
    within(Duration::from_secs(120), every_acknowledged_write_survives_kill_9(None)).await;
}

#[tokio::test]
async fn every_acknowledged_write_survives_kill_9_with_fsync_every_second() {
    within(Duration::from_secs(120), every_acknowledged_write_survives_kill_9(Some("every-second"))).await;
}

#[tokio::test]
async fn restarting_is_idempotent_after_kill_9_and_after_a_graceful_stop() {
    let mut node = start_with(NodeOptions::new().persistent());
    within(Duration::from_secs(180), async {
        let w = {
            let http = Http::new(&node);
            let mut con = redis_conn(&node).await;
            write_mixed_workload(&http, &mut con).await
        };
        node.kill();
        tokio::time::sleep_until((w.short_ttl_acked + Duration::from_millis(1200)).into()).await;
        node.restart();
        assert_workload_recovered(&node, &w, "first restart").await;
        node.kill();
        node.restart();
        assert_recovery_logged(&node);
        assert_workload_recovered(&node, &w, "second restart (after kill -9 without writes)").await;
        let status = node.stop();
        assert!(status.success(), "SIGTERM shuts the node down cleanly: {status}\n{}", node.log_of_last_start());
        node.restart();
        assert_workload_recovered(&node, &w, "third restart (after SIGTERM)").await;
        node.restart();
        assert_workload_recovered(&node, &w, "fourth restart").await;
    })
    .await;
}

#[tokio::test]
async fn startup_logs_how_many_entries_were_recovered() {
    let mut node = start_with(NodeOptions::new().persistent());
    within(MIN, async {
        let http = Http::new(&node);
        for i in 0..17 {
            http.put_ok(&format!("k{i}"), "", "{}").await;
        }
        node.kill();
        node.restart();
        let lines = log_lines_with(&node, "recovered");
        assert!(
            lines.iter().any(|l| l.split(|c: char| !c.is_ascii_digit()).any(|n| n == "17")),
            "a 'recovered' line gives the count 17: {lines:#?}"
        );
        assert_eq!(Http::new(&node).keys().await, 17);
    })
    .await;
}

#[tokio::test]
async fn without_a_data_dir_a_restarted_node_starts_empty() {
    let mut node = start();
    within(MIN, async {
        Http::new(&node).put_ok("volatile", "", "1").await;
        node.kill();
        node.restart();
        let http = Http::new(&node);
        assert_eq!(http.keys().await, 0);
        assert_eq!(http.get("volatile").await.status().as_u16(), 404);
    })
    .await;
}

/// Writes `n` documents `k:i`, then a raw value `last` over RESP; returns the model.
async fn write_then_last(node: &NodeProcess, n: usize, last: &[u8]) -> Model {
    let http = Http::new(node);
    let mut con = redis_conn(node).await;
    let mut model = Model::new();
    for i in 0..n {
        let doc = json!({"i": i, "pad": "p".repeat(40)}).to_string();
        http.put_ok(&format!("k:{i}"), "", &doc).await;
        model.insert(format!("k:{i}"), Some(doc.into_bytes()));
    }
    let _: () = con.set("last", last).await.unwrap();
    model
}

async fn assert_model(node: &NodeProcess, model: &Model, what: &str) {
    let mut con = redis_conn(node).await;
    for (key, expected) in model {
        let got: Option<Vec<u8>> = con.get(key).await.unwrap();
        assert_eq!(got, *expected, "{what}: {key}");
    }
}

/// `last` is either absent or exactly what was written — never anything else.
async fn assert_absent_or_exact(node: &NodeProcess, key: &str, value: &[u8]) -> bool {
    let mut con = redis_conn(node).await;
    let got: Option<Vec<u8>> = con.get(key).await.unwrap();
    match got {
        None => false,
        Some(v) => {
            assert_eq!(String::from_utf8_lossy(&v), String::from_utf8_lossy(value), "{key} is never garbage");
            true
        }
    }
}

/// After recovering from a damaged tail, new writes must survive the next crash too
/// (the damaged bytes must not swallow records appended after them).
async fn assert_new_writes_survive_another_crash(node: &mut NodeProcess, model: &Model) {
    let mut con = redis_conn(node).await;
    for i in 0..10 {
        let _: () = con.set(format!("after:{i}"), format!("after corruption {i}")).await.unwrap();
    }
    drop(con);
    node.kill();
    node.restart();
    assert_model(node, model, "after the second crash").await;
    let mut con = redis_conn(node).await;
    for i in 0..10 {
        let got: Option<String> = con.get(format!("after:{i}")).await.unwrap();
        assert_eq!(got, Some(format!("after corruption {i}")), "a write acknowledged after the recovery survives");
    }
}

#[tokio::test]
async fn a_truncated_log_tail_is_reported_and_skipped_and_every_earlier_record_is_served() {
    let mut node = start_with(NodeOptions::new().persistent());
    within(Duration::from_secs(120), async {
        let last = b"the final record, torn by the crash".repeat(4);
        let model = write_then_last(&node, 50, &last).await;
        node.kill();
        let segment = newest_segment(node.data_dir().unwrap());
        let len = fs::metadata(&segment).unwrap().len();
        assert!(len > 100, "{} holds the records ({len} bytes)", segment.display());
        fs::OpenOptions::new().write(true).open(&segment).unwrap().set_len(len - 7).unwrap();

        node.restart();
        assert_corrupt_tail_warned(&node);
        assert_model(&node, &model, "after a torn tail").await;
        let kept = assert_absent_or_exact(&node, "last", &last).await;
        assert_eq!(Http::new(&node).keys().await, 50 + kept as u64);
        assert_new_writes_survive_another_crash(&mut node, &model).await;
    })
    .await;
}

#[tokio::test]
async fn garbage_appended_to_the_log_tail_is_reported_and_skipped_and_never_served() {
    let mut node = start_with(NodeOptions::new().persistent());
    within(Duration::from_secs(120), async {
        let last = b"last intact record".to_vec();
        let mut model = write_then_last(&node, 50, &last).await;
        model.insert("last".into(), Some(last));
        node.kill();
        let segment = newest_segment(node.data_dir().unwrap());
        let mut f = fs::OpenOptions::new().append(true).open(&segment).unwrap();
        // A plausible record header with a wrong checksum, then random bytes.
        let mut garbage = Vec::new();
        garbage.extend_from_slice(&40u32.to_le_bytes());
        garbage.extend_from_slice(&0xdead_beefu32.to_le_bytes());
        garbage.extend_from_slice(&[b'G'; 40]);
        garbage.extend_from_slice(&pseudo_random_bytes(0x5eed, 333));
        f.write_all(&garbage).unwrap();
        drop(f);

        node.restart();
        assert_corrupt_tail_warned(&node);
        assert_model(&node, &model, "after garbage at the tail").await;
        assert_eq!(Http::new(&node).keys().await, 51, "no key appears out of the garbage");
        assert_new_writes_survive_another_crash(&mut node, &model).await;
    })
    .await;
}

#[tokio::test]
async fn a_flipped_byte_in_the_last_record_fails_its_checksum_and_the_previous_value_is_served() {
    let mut node = start_with(NodeOptions::new().persistent());
    within(Duration::from_secs(120), async {
        let http = Http::new(&node);
        for i in 0..20 {
            http.put_ok(&format!("k:{i}"), "", &json!({"i": i}).to_string()).await;
        }
        http.put_ok("doc", "", r#"{"v":"first"}"#).await;
        let marker = "Z".repeat(64);
        http.put_ok("doc", "", &format!("{{\"v\":\"second {marker}\"}}")).await;
        node.kill();

        let segment = newest_segment(node.data_dir().unwrap());
        let mut bytes = fs::read(&segment).unwrap();
        let at = bytes
            .windows(marker.len())
            .rposition(|w| w == marker.as_bytes())
            .unwrap_or_else(|| panic!("the value of the last record is in {}", segment.display()));
        bytes[at + 10] = b'Y';
        fs::write(&segment, &bytes).unwrap();

        node.restart();
        assert_corrupt_tail_warned(&node);
        let http = Http::new(&node);
        assert_eq!(
            http.get_body("doc").await.map(|b| String::from_utf8_lossy(&b).into_owned()).as_deref(),
            Some(r#"{"v":"first"}"#),
            "the damaged record is skipped; the earlier one is served"
        );
        for i in 0..20 {
            assert_eq!(http.get_body(&format!("k:{i}")).await.unwrap(), json!({"i": i}).to_string().into_bytes());
        }
        assert_eq!(http.keys().await, 21);
    })
    .await;
}

#[tokio::test]
async fn the_log_is_compacted_into_snapshots_so_that_it_does_not_grow_without_bound() {
    let mut node = start_with(NodeOptions::new().persistent().args(["--compact-min", "256kb"]));
    within(Duration::from_secs(180), async {
        let mut con = redis_conn(&node).await;
        let value = |round: usize, k: usize| format!("round {round:05} key {k} {}", "c".repeat(1000));
        const ROUNDS: usize = 1000;
        for round in 0..ROUNDS {
            let mut pipe = redis::pipe();
            for k in 0..10 {
                pipe.cmd("SET").arg(format!("hot:{k}")).arg(value(round, k)).ignore();
            }
            let _: () = pipe.query_async(&mut con).await.unwrap();
        }
        let dir = node.data_dir().unwrap().to_path_buf();
        // About 10 MB were logged; what stays on disk is bounded by the compaction threshold.
        let bounded = wait_until(Duration::from_secs(30), || dir_size(&dir) < 2 * 1024 * 1024);
        assert!(bounded, "the data dir stays small after 10 MB of overwrites: {:?}", list_dir(&dir));
        assert!(
            list_dir(&dir).iter().any(|(name, _)| name.starts_with("snapshot-") && name.ends_with(".gcsnap")),
            "a snapshot was written: {:?}",
            list_dir(&dir)
        );
        node.kill();
        node.restart();
        let mut con = redis_conn(&node).await;
        for k in 0..10 {
            let v: Option<String> = con.get(format!("hot:{k}")).await.unwrap();
            assert_eq!(v, Some(value(ROUNDS - 1, k)), "the latest value of hot:{k} after compaction and kill -9");
        }
        assert_eq!(Http::new(&node).keys().await, 10);
    })
    .await;
}

#[tokio::test]
async fn a_second_node_cannot_open_a_data_dir_that_a_running_node_uses() {
    let mut node = start_with(NodeOptions::new().persistent());
    within(MIN, async {
        Http::new(&node).put_ok("k", "", r#"{"owner":"first"}"#).await;
        let dir = node.data_dir().unwrap().to_string_lossy().into_owned();
        let args = [
            "--node-id",
            "intruder",
            "--http-addr",
            "127.0.0.1:0",
            "--resp-addr",
            "off",
            "--peer-addr",
            "127.0.0.1:0",
            "--data-dir",
            &dir,
        ];
        let out = geocache_tests::run_node_to_exit(bin(), &args, Duration::from_secs(20));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "the second node must refuse the data dir in use; stderr: {stderr}");
        assert!(stderr.contains(&dir), "the error names the data dir; stderr: {stderr}");
        assert!(!stderr.contains("panicked"), "an error, not a panic: {stderr}");
        // The first node is unharmed, and after a crash its lock is released.
        assert_eq!(Http::new(&node).get_body("k").await.unwrap(), br#"{"owner":"first"}"#);
        node.kill();
        node.restart();
        assert_eq!(Http::new(&node).get_body("k").await.unwrap(), br#"{"owner":"first"}"#);
    })
    .await;
}
