//! Expiry (TTL over both interfaces, the background sweeper, `--default-ttl`) and
//! eviction under a small `--max-memory`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test: failing loudly is its job

mod common;

use std::time::{Duration, Instant};

use common::*;
use redis::AsyncCommands;
use serde_json::Value as Json;

async fn cmd<T: redis::FromRedisValue>(con: &mut redis::aio::MultiplexedConnection, args: &[&str]) -> T {
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    c.query_async(con).await.unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

#[tokio::test]
async fn a_key_with_a_one_second_ttl_is_gone_after_1_2_seconds_over_http_and_resp() {
    let node = start();
    within(MIN, async {
        let http = Http::new(&node);
        let mut con = redis_conn(&node).await;
        let started = Instant::now();
        http.put_ok("over-http", "?ttl=1s", r#"{"short":"lived"}"#).await;
        let _: () = redis::cmd("SET").arg("over-resp").arg("v").arg("EX").arg(1).query_async(&mut con).await.unwrap();
        let _: () =
            redis::cmd("SET").arg("over-resp-px").arg("v").arg("PX").arg(1000).query_async(&mut con).await.unwrap();
        let _: () = redis::cmd("SETEX").arg("over-setex").arg(1).arg("v").query_async(&mut con).await.unwrap();
        let acked = Instant::now();
        if started.elapsed() < Duration::from_millis(700) {
            // Only meaningful while the TTL surely has not run out yet.
            assert_eq!(http.get("over-http").await.status().as_u16(), 200, "readable before its TTL");
            assert_eq!(con.get::<_, Option<String>>("over-resp").await.unwrap().as_deref(), Some("v"));
        }
        // Waiting for time to pass is the point of this test.
        tokio::time::sleep_until((acked + Duration::from_millis(1200)).into()).await;
        for key in ["over-http", "over-resp", "over-resp-px", "over-setex"] {
            expect_error(&format!("HTTP GET {key} after its TTL"), http.get(key).await, 404, "not_found").await;
            assert_eq!(con.get::<_, Option<Vec<u8>>>(key).await.unwrap(), None, "RESP GET {key} after its TTL");
            assert_eq!(cmd::<i64>(&mut con, &["EXISTS", key]).await, 0, "EXISTS {key}");
            assert_eq!(cmd::<i64>(&mut con, &["TTL", key]).await, -2, "TTL {key}");
            assert_eq!(cmd::<i64>(&mut con, &["PTTL", key]).await, -2, "PTTL {key}");
            let mget: Vec<Option<String>> = cmd(&mut con, &["MGET", key]).await;
            assert_eq!(mget, vec![None], "MGET {key}");
        }
        // An expired key can be created again (PUT answers 201, SET NX writes).
        assert_eq!(http.put("over-http", "", "1").await.status().as_u16(), 201);
        assert_eq!(cmd::<Option<String>>(&mut con, &["SET", "over-resp", "again", "NX"]).await.as_deref(), Some("OK"));
    })
    .await;
}

#[tokio::test]
async fn expired_keys_are_swept_in_the_background_and_counted_in_metrics() {
    let node = start();
    within(MIN, async {
        let http = Http::new(&node);
        let mut con = redis_conn(&node).await;
        let mut pipe = redis::pipe();
        for i in 0..200 {
            pipe.cmd("SET").arg(format!("temp:{i}")).arg("x".repeat(200)).arg("PX").arg(300).ignore();
        }
        for i in 0..5 {
            pipe.cmd("SET").arg(format!("keep:{i}")).arg("forever").ignore();
        }
        let _: () = pipe.query_async(&mut con).await.unwrap();
        // Nobody reads the expired keys: only the background sweeper can free them.
        let swept = wait_until(Duration::from_secs(20), || node.status_doc()["keys"] == 5);
        let status = node.status_doc();
        assert!(swept, "the sweeper frees expired keys without reads; /v1/status: {status}");
        let metrics = http.metrics().await;
        assert_eq!(metric(&metrics, "geocache_keys"), 5.0);
        assert!(metric(&metrics, "geocache_expired_keys_total") >= 200.0, "expired keys are counted:\n{metrics}");
        for i in 0..5 {
            assert_eq!(con.get::<_, Option<String>>(format!("keep:{i}")).await.unwrap().as_deref(), Some("forever"));
        }
        assert_eq!(cmd::<i64>(&mut con, &["DBSIZE"]).await, 5);
    })
    .await;
}

#[tokio::test]
async fn ttl_pttl_and_x_geocache_expires_at_agree_across_interfaces() {
    let node = start();
    within(MIN, async {
        let http = Http::new(&node);
        let mut con = redis_conn(&node).await;

        let put = http.put_ok("k", "?ttl=90s", r#"{"v":1}"#).await;
        let expires_at = rfc3339_millis_utc("PUT expires_at", put["expires_at"].as_str().unwrap());
        let before = now_unix_ms();
        let pttl: i64 = cmd(&mut con, &["PTTL", "k"]).await;
        let ttl: i64 = cmd(&mut con, &["TTL", "k"]).await;
        let after = now_unix_ms();
        assert!(pttl > 0 && ttl > 0, "TTL {ttl}, PTTL {pttl}");
        assert!(
            before + pttl as u64 <= expires_at + 1000 && after + pttl as u64 + 1000 >= expires_at,
            "PTTL {pttl} agrees with expires_at {expires_at} (now {before}..{after})"
        );
        assert!((ttl * 1000 - pttl).abs() <= 1000, "TTL {ttl} is PTTL {pttl} in seconds");

        // EXPIRE over RESP shows in X-Geocache-Expires-At.
        let before = now_unix_ms();
        assert_eq!(cmd::<i64>(&mut con, &["EXPIRE", "k", "500"]).await, 1);
        let after = now_unix_ms();
        let r = http.get("k").await;
        let h = header(&r, "x-geocache-expires-at").expect("X-Geocache-Expires-At after EXPIRE");
        assert_expiry_near("EXPIRE 500 seen over HTTP", rfc3339_millis_utc("header", &h), before, after, 500_000);

        // POST expire over HTTP shows in TTL.
        let r = http.expire("k", "?ttl=77s").await;
        assert_eq!(r.status().as_u16(), 200);
        let ttl: i64 = cmd(&mut con, &["TTL", "k"]).await;
        assert!((67..=77).contains(&ttl), "TTL after POST expire ttl=77s: {ttl}");

        // PERSIST over RESP removes the header; ttl=none over HTTP makes TTL -1.
        assert_eq!(cmd::<i64>(&mut con, &["PERSIST", "k"]).await, 1);
        assert_eq!(header(&http.get("k").await, "x-geocache-expires-at"), None);
        assert_eq!(cmd::<i64>(&mut con, &["EXPIRE", "k", "100"]).await, 1);
        assert_eq!(http.expire("k", "?ttl=none").await.status().as_u16(), 200);
        assert_eq!(cmd::<i64>(&mut con, &["TTL", "k"]).await, -1);

        // Expiring now on one interface hides the key on the other.
        assert_eq!(http.expire("k", "?ttl=0").await.status().as_u16(), 200);
        assert_eq!(con.get::<_, Option<String>>("k").await.unwrap(), None);
        let _: () = con.set("r", "v").await.unwrap();
        assert_eq!(cmd::<i64>(&mut con, &["PEXPIRE", "r", "0"]).await, 1);
        assert_eq!(http.get("r").await.status().as_u16(), 404);
    })
    .await;
}

#[tokio::test]
async fn the_default_ttl_applies_to_writes_without_a_ttl_over_both_interfaces() {
    let node = start_with(NodeOptions::new().default_ttl("30s"));
    within(MIN, async {
        let http = Http::new(&node);
        let mut con = redis_conn(&node).await;

        let before = now_unix_ms();
        let put = http.put_ok("plain", "", "{}").await;
        let after = now_unix_ms();
        let at = put["expires_at"].as_str().unwrap_or_else(|| panic!("default ttl sets expires_at: {put}"));
        assert_expiry_near("PUT without ttl", rfc3339_millis_utc("expires_at", at), before, after, 30_000);

        let before = now_unix_ms();
        let put = http.put_ok("explicit", "?ttl=1h", "{}").await;
        let after = now_unix_ms();
        assert_expiry_near(
            "PUT ttl=1h",
            rfc3339_millis_utc("expires_at", put["expires_at"].as_str().unwrap()),
            before,
            after,
            3_600_000,
        );

        let r = http.patch("patched", "", "application/merge-patch+json", r#"{"a":1}"#).await;
        assert_eq!(r.status().as_u16(), 201);
        let body: Json = r.json().await.unwrap();
        assert!(body["expires_at"].is_string(), "PATCH creating a key gets the default ttl: {body}");

        let _: () = con.set("resp", "v").await.unwrap();
        let ttl: i64 = cmd(&mut con, &["TTL", "resp"]).await;
        assert!((20..=30).contains(&ttl), "SET without EX gets the default ttl: TTL {ttl}");
        let _: String = cmd(&mut con, &["SET", "resp-ex", "v", "EX", "500"]).await;
        let ttl: i64 = cmd(&mut con, &["TTL", "resp-ex"]).await;
        assert!((490..=500).contains(&ttl), "EX beats the default: TTL {ttl}");
        let _: String = cmd(&mut con, &["JSON.SET", "json", "$", "[1]"]).await;
        let ttl: i64 = cmd(&mut con, &["TTL", "json"]).await;
        assert!((20..=30).contains(&ttl), "JSON.SET gets the default ttl: TTL {ttl}");

        // Persisting explicitly still works.
        assert_eq!(cmd::<i64>(&mut con, &["PERSIST", "resp"]).await, 1);
        assert_eq!(cmd::<i64>(&mut con, &["TTL", "resp"]).await, -1);
        let r = http.expire("plain", "?ttl=none").await;
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.json::<Json>().await.unwrap()["expires_at"], Json::Null);
    })
    .await;
}

#[tokio::test]
async fn under_a_2mb_memory_limit_20k_keys_of_1kb_are_evicted_while_the_node_stays_within_the_limit() {
    const LIMIT: u64 = 2 * 1024 * 1024;
    const KEYS: usize = 20_000;
    let node = start_with(NodeOptions::new().max_memory("2mb"));
    within(Duration::from_secs(240), async {
        let http = Http::new(&node);
        let mut con = redis_conn(&node).await;
        let value = |i: usize| format!("{i:08}:{}", "x".repeat(1015));
        assert_eq!(value(1).len(), 1024);

        let mut peak = 0;
        for batch in 0..(KEYS / 500) {
            let mut pipe = redis::pipe();
            for i in batch * 500..(batch + 1) * 500 {
                pipe.cmd("SET").arg(format!("key:{i:06}")).arg(value(i)).ignore();
            }
            let _: () = pipe.query_async(&mut con).await.unwrap_or_else(|e| panic!("batch {batch}: {e}"));
            if batch % 4 == 3 {
                let status = http.status_doc().await;
                let used = status["memory_bytes"].as_u64().expect("memory_bytes");
                peak = peak.max(used);
                assert!(
                    used <= LIMIT,
                    "after {} keys memory_bytes {used} exceeds the limit {LIMIT}: {status}",
                    (batch + 1) * 500
                );
            }
        }

        let status = http.status_doc().await;
        let used = status["memory_bytes"].as_u64().unwrap();
        assert!(used <= LIMIT, "memory_bytes {used} ≤ {LIMIT}: {status}");
        assert!(peak > LIMIT / 2, "the limit was actually approached (peak {peak})");
        let keys = status["keys"].as_u64().unwrap();
        assert!(keys > 0 && keys < KEYS as u64, "some keys were evicted, some kept: {keys}");
        let metrics = http.metrics().await;
        let evicted = metric(&metrics, "geocache_evicted_keys_total");
        assert!(evicted > 0.0, "geocache_evicted_keys_total counts evictions:\n{metrics}");
        assert!(metric(&metrics, "geocache_memory_bytes") <= LIMIT as f64);
        assert_eq!(evicted as u64 + keys, KEYS as u64, "every key is either kept or was evicted (none expired)");

        // The node is up and the most recent writes are readable.
        assert_eq!(cmd::<String>(&mut con, &["PING"]).await, "PONG");
        assert_eq!(http.get_path("/healthz").await.status().as_u16(), 200);
        let mut evicted_recent = Vec::new();
        for i in KEYS - 20..KEYS {
            let v: Option<String> = con.get(format!("key:{i:06}")).await.unwrap();
            match v {
                Some(v) => assert!(v == value(i), "key {i} reads back its own value"),
                None => evicted_recent.push(i),
            }
        }
        assert!(
            evicted_recent.is_empty(),
            "the 20 most recently written keys are readable (eviction takes cold keys), but these were evicted: \
             {evicted_recent:?} ({keys} of {KEYS} keys kept)"
        );
        // New writes keep working, over both interfaces.
        assert_eq!(http.put("after-eviction", "", r#"{"still":"writable"}"#).await.status().as_u16(), 201);
        assert_eq!(http.get_body("after-eviction").await.unwrap(), br#"{"still":"writable"}"#);
    })
    .await;
}

#[tokio::test]
async fn nothing_is_evicted_while_the_data_fits_under_the_memory_limit() {
    let node = start_with(NodeOptions::new().max_memory("2mb"));
    within(MIN, async {
        let http = Http::new(&node);
        let mut con = redis_conn(&node).await;
        let mut pipe = redis::pipe();
        for i in 0..200 {
            pipe.cmd("SET").arg(format!("k{i}")).arg("v".repeat(1000)).ignore();
        }
        let _: () = pipe.query_async(&mut con).await.unwrap();
        assert_eq!(http.keys().await, 200);
        assert_eq!(metric(&http.metrics().await, "geocache_evicted_keys_total"), 0.0);
        let all: Vec<Option<String>> = {
            let mut c = redis::cmd("MGET");
            for i in 0..200 {
                c.arg(format!("k{i}"));
            }
            c.query_async(&mut con).await.unwrap()
        };
        assert!(all.iter().all(|v| v.as_deref() == Some("v".repeat(1000).as_str())), "every key is there");
    })
    .await;
}
