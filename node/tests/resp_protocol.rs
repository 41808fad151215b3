//! The Redis protocol of `geocache-node`: the real `redis-cli`, the Rust `redis` crate,
//! raw RESP2/RESP3 bytes, and values crossing between the Redis port and HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test: failing loudly is its job

mod common;

use std::time::Duration;

use common::*;
use proptest::prelude::*;
use redis::AsyncCommands;
use serde_json::{Value as Json, json};

/// Runs `redis-cli args` and returns its stdout; fails the test when it exits non-zero.
fn cli(node: &NodeProcess, args: &[&str]) -> String {
    let out = node.redis_cli(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "redis-cli {args:?} exited {}: stdout {stdout:?} stderr {:?}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn cli_int(node: &NodeProcess, args: &[&str]) -> i64 {
    let s = cli(node, args);
    s.trim().parse().unwrap_or_else(|_| panic!("redis-cli {args:?}: expected an integer, got {s:?}"))
}

async fn cmd<T: redis::FromRedisValue>(con: &mut redis::aio::MultiplexedConnection, args: &[&str]) -> T {
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    c.query_async(con).await.unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

async fn cmd_err(con: &mut redis::aio::MultiplexedConnection, args: &[&str]) -> redis::RedisError {
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    match c.query_async::<redis::Value>(con).await {
        Ok(v) => panic!("{args:?} should be an error, got {v:?}"),
        Err(e) => e,
    }
}

// ---------------------------------------------------------------------------------
// redis-cli
// ---------------------------------------------------------------------------------

#[test]
fn redis_cli_can_ping_set_get_del_and_count_keys() {
    let node = start();
    assert_eq!(cli(&node, &["PING"]), "PONG\n");
    assert_eq!(cli(&node, &["SET", "greeting", "hello"]), "OK\n");
    assert_eq!(cli(&node, &["SET", "other", "x"]), "OK\n");
    assert_eq!(cli(&node, &["GET", "greeting"]), "hello\n");
    assert_eq!(cli_int(&node, &["DBSIZE"]), 2);
    assert_eq!(cli_int(&node, &["DEL", "greeting", "never-there"]), 1);
    assert_eq!(cli(&node, &["GET", "greeting"]), "\n", "GET of a deleted key is nil");
    assert_eq!(cli_int(&node, &["DBSIZE"]), 1);
}

#[test]
fn redis_cli_sets_expiries_and_reads_ttl_and_pttl() {
    let node = start();
    cli(&node, &["SET", "k", "v"]);
    assert_eq!(cli_int(&node, &["TTL", "k"]), -1, "no expiry");
    assert_eq!(cli_int(&node, &["EXPIRE", "k", "100"]), 1);
    let ttl = cli_int(&node, &["TTL", "k"]);
    assert!((90..=100).contains(&ttl), "TTL after EXPIRE 100: {ttl}");
    let pttl = cli_int(&node, &["PTTL", "k"]);
    assert!((90_000..=100_000).contains(&pttl), "PTTL after EXPIRE 100: {pttl}");
    assert_eq!(cli_int(&node, &["PERSIST", "k"]), 1);
    assert_eq!(cli_int(&node, &["TTL", "k"]), -1);
    assert_eq!(cli_int(&node, &["EXPIRE", "missing", "10"]), 0);
    assert_eq!(cli_int(&node, &["TTL", "missing"]), -2);
    assert_eq!(cli(&node, &["SET", "short", "v", "EX", "50"]), "OK\n");
    let ttl = cli_int(&node, &["TTL", "short"]);
    assert!((40..=50).contains(&ttl), "TTL after SET EX 50: {ttl}");
}

#[test]
fn redis_cli_json_set_and_json_get_handle_whole_documents() {
    let node = start();
    let doc = json!({"a": 1, "b": [true, null, "x y"], "c": {"d": "é"}});
    assert_eq!(cli(&node, &["JSON.SET", "doc", "$", &doc.to_string()]), "OK\n");
    let got: Json = serde_json::from_str(cli(&node, &["JSON.GET", "doc"]).trim_end()).expect("JSON.GET answers JSON");
    assert_eq!(got, doc);
    let got: Json =
        serde_json::from_str(cli(&node, &["JSON.GET", "doc", "$"]).trim_end()).expect("JSON.GET $ answers JSON");
    assert_eq!(got, json!([doc]), "JSON.GET k $ is [doc]");
    let over_http = node.get(&key_path("doc"));
    assert_eq!(over_http.status, 200);
    assert_eq!(over_http.json(), doc);
    assert_eq!(cli_int(&node, &["JSON.DEL", "doc"]), 1);
    assert_eq!(cli(&node, &["JSON.GET", "doc"]), "\n", "JSON.GET after JSON.DEL is nil");
}

#[test]
fn redis_cli_info_has_sections_with_a_redis_version_and_dbsize_counts_keys() {
    let node = start();
    for k in ["a", "b", "c"] {
        cli(&node, &["SET", k, "1"]);
    }
    assert_eq!(cli_int(&node, &["DBSIZE"]), 3);
    let info = cli(&node, &["INFO"]);
    assert!(info.lines().any(|l| l.starts_with("# ")), "INFO has '# Section' headers:\n{info}");
    assert!(info.lines().any(|l| l.starts_with("redis_version:")), "INFO has redis_version (clients read it):\n{info}");
    assert!(info.lines().filter(|l| l.contains(':')).count() >= 3, "INFO has field:value lines:\n{info}");
}

#[test]
fn redis_cli_round_trips_values_with_spaces_and_binary_bytes_byte_for_byte() {
    let node = start();
    assert_eq!(cli(&node, &["SET", "spaced", "  a b   c  "]), "OK\n");
    assert_eq!(cli(&node, &["GET", "spaced"]), "  a b   c  \n");

    let value: &[u8] =
        b"hello big world \t tab \x00nul \x01\x02\x1b[0m \x7f \xff\xfe\x80 \"quoted\" 'single' back\\slash \r\n crlf \n lf \xc3\xa9 \xf0\x9f\xa6\x80 end";
    let out = node.redis_cli_with_input(["-x", "SET", "binary"], value);
    assert!(out.status.success() && out.stdout == b"OK\n", "redis-cli -x SET: {out:?}");
    let out = node.redis_cli(["GET", "binary"]);
    assert!(out.status.success(), "{out:?}");
    let mut expected = value.to_vec();
    expected.push(b'\n');
    assert_eq!(out.stdout, expected, "GET returns the bytes exactly (plus redis-cli's newline)");

    // Over HTTP a raw text value is a JSON string (not JSON itself, never garbage); bytes
    // that are not text come back as they are, as application/octet-stream.
    let r = node.get(&key_path("spaced"));
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!("  a b   c  "));
    let r = node.get(&key_path("binary"));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/octet-stream"), "{:?}", r.headers);
    assert_eq!(r.body, value, "a binary value reads over HTTP byte for byte");
    // JSON.GET refuses it rather than hand out a lossy string.
    let out = node.redis_cli(["JSON.GET", "binary"]);
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(all.contains("WRONGTYPE"), "JSON.GET of a binary value: {all:?}");
}

#[test]
fn redis_cli_reports_an_unknown_command_as_an_error_and_the_node_keeps_serving() {
    let node = start();
    let out = node.redis_cli(["NOSUCHCOMMAND", "x"]);
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(all.contains("ERR"), "redis-cli shows the error: {all:?}");
    assert_eq!(cli(&node, &["PING"]), "PONG\n");
}

#[test]
fn redis_benchmark_runs_set_and_get_against_the_node_without_errors() {
    let node = start();
    let mut bench = std::process::Command::new("redis-benchmark");
    bench.args(["-h", &node.resp_addr().ip().to_string(), "-p", &node.resp_addr().port().to_string()]);
    bench.args(["-t", "set,get", "-n", "5000", "-P", "16", "-c", "8", "-q"]);
    let out = match geocache_tests::run_with_timeout(&mut bench, None, Duration::from_secs(120)) {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("redis-benchmark not found: run the README's test command, which installs redis-tools")
        }
        Err(e) => panic!("redis-benchmark: {e}"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "redis-benchmark exited {}: {stdout}\n{stderr}", out.status);
    for test in ["SET", "GET"] {
        assert!(
            stdout
                .split(['\r', '\n'])
                .map(str::trim)
                .any(|l| l.starts_with(&format!("{test}: ")) && l.contains("requests per second")),
            "redis-benchmark reports {test}: {stdout}\n{stderr}"
        );
    }
    assert!(!stdout.contains("ERR") && !stderr.contains("ERR"), "no errors: {stdout}\n{stderr}");
    let keys = node.status_doc()["keys"].as_u64().unwrap();
    assert!(keys >= 1, "redis-benchmark's SETs landed ({keys} keys)");
}

#[test]
fn with_resp_addr_off_no_redis_port_is_opened_and_http_still_works() {
    let node = start_with(NodeOptions::new().resp(false));
    let refused = std::net::TcpStream::connect_timeout(&node.resp_addr(), Duration::from_secs(2));
    assert!(refused.is_err(), "nothing listens on the Redis address when --resp-addr off");
    let r = node.http("PUT", &key_path("k"), &[("Content-Type", "application/json")], b"{\"ok\":1}");
    assert_eq!(r.status, 201);
    assert_eq!(node.get(&key_path("k")).body, b"{\"ok\":1}");
}

// ---------------------------------------------------------------------------------
// The redis crate
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn pipelines_return_every_reply_in_order() {
    let node = start();
    within(MIN, async {
        let mut con = redis_conn(&node).await;
        let (s1, s2, a, b, missing, deleted, exists): (String, String, String, String, Option<String>, i64, i64) =
            redis::pipe()
                .cmd("SET")
                .arg("a")
                .arg("x")
                .cmd("SET")
                .arg("b")
                .arg("y")
                .cmd("GET")
                .arg("a")
                .cmd("GET")
                .arg("b")
                .cmd("GET")
                .arg("nope")
                .cmd("DEL")
                .arg("a")
                .arg("nope")
                .cmd("EXISTS")
                .arg("a")
                .arg("b")
                .query_async(&mut con)
                .await
                .unwrap();
        assert_eq!(
            (s1.as_str(), s2.as_str(), a.as_str(), b.as_str(), missing, deleted, exists),
            ("OK", "OK", "x", "y", None, 1, 1)
        );

        let mut pipe = redis::pipe();
        for i in 0..1000 {
            pipe.cmd("SET").arg(format!("k{i}")).arg(format!("value {i}")).ignore();
        }
        for i in 0..1000 {
            pipe.cmd("GET").arg(format!("k{i}"));
        }
        let values: Vec<String> = pipe.query_async(&mut con).await.unwrap();
        assert_eq!(values.len(), 1000);
        for (i, v) in values.iter().enumerate() {
            assert_eq!(v, &format!("value {i}"));
        }
        let n: i64 = cmd(&mut con, &["DBSIZE"]).await;
        assert_eq!(n, 1001);
    })
    .await;
}

#[tokio::test]
async fn mset_and_mget_handle_present_and_missing_keys() {
    let node = start();
    within(MIN, async {
        let mut con = redis_conn(&node).await;
        let _: () = con.mset(&[("k1", "v1"), ("k2", "v 2"), ("k3", "{\"j\":3}")]).await.unwrap();
        let got: Vec<Option<String>> = cmd(&mut con, &["MGET", "k1", "missing", "k2", "k3"]).await;
        assert_eq!(got, vec![Some("v1".into()), None, Some("v 2".into()), Some("{\"j\":3}".into())]);
        let _: () = con.mset(&[("k1", "new")]).await.unwrap();
        let got: Vec<Option<String>> = cmd(&mut con, &["MGET", "k1"]).await;
        assert_eq!(got, vec![Some("new".into())]);
        cmd_err(&mut con, &["MSET", "odd", "number", "of"]).await;
        let exists: i64 = cmd(&mut con, &["EXISTS", "odd"]).await;
        assert_eq!(exists, 0, "a refused MSET writes nothing");
    })
    .await;
}

#[tokio::test]
async fn set_honours_nx_xx_ex_px_exat_pxat_get_and_keepttl() {
    let node = start();
    within(MIN, async {
        let mut con = redis_conn(&node).await;
        let r: Option<String> = cmd(&mut con, &["SET", "k", "v1", "NX"]).await;
        assert_eq!(r.as_deref(), Some("OK"), "NX on an absent key writes");
        let r: Option<String> = cmd(&mut con, &["SET", "k", "v2", "NX"]).await;
        assert_eq!(r, None, "NX on a present key is nil");
        let r: Option<String> = cmd(&mut con, &["SET", "x", "v", "XX"]).await;
        assert_eq!(r, None, "XX on an absent key is nil");
        let e: i64 = cmd(&mut con, &["EXISTS", "x"]).await;
        assert_eq!(e, 0);
        let r: Option<String> = cmd(&mut con, &["SET", "k", "v2", "XX"]).await;
        assert_eq!(r.as_deref(), Some("OK"));
        let v: String = cmd(&mut con, &["GET", "k"]).await;
        assert_eq!(v, "v2");

        let _: String = cmd(&mut con, &["SET", "k", "v3", "EX", "100"]).await;
        let ttl: i64 = cmd(&mut con, &["TTL", "k"]).await;
        assert!((90..=100).contains(&ttl), "EX 100 → TTL {ttl}");
        let _: String = cmd(&mut con, &["SET", "k", "v4", "KEEPTTL"]).await;
        let ttl: i64 = cmd(&mut con, &["TTL", "k"]).await;
        assert!((90..=100).contains(&ttl), "KEEPTTL keeps the expiry: TTL {ttl}");
        let v: String = cmd(&mut con, &["GET", "k"]).await;
        assert_eq!(v, "v4");
        let _: String = cmd(&mut con, &["SET", "k", "v5"]).await;
        let ttl: i64 = cmd(&mut con, &["TTL", "k"]).await;
        assert_eq!(ttl, -1, "a plain SET clears the expiry");

        let old: Option<String> = cmd(&mut con, &["SET", "k", "v6", "GET"]).await;
        assert_eq!(old.as_deref(), Some("v5"), "SET GET returns the old value");
        let old: Option<String> = cmd(&mut con, &["SET", "fresh", "f", "GET"]).await;
        assert_eq!(old, None, "SET GET of an absent key returns nil");
        let v: String = cmd(&mut con, &["GET", "fresh"]).await;
        assert_eq!(v, "f");

        let _: String = cmd(&mut con, &["SET", "px", "v", "PX", "50000"]).await;
        let pttl: i64 = cmd(&mut con, &["PTTL", "px"]).await;
        assert!((40_000..=50_000).contains(&pttl), "PX 50000 → PTTL {pttl}");
        let at = (now_unix_ms() / 1000 + 100).to_string();
        let _: String = cmd(&mut con, &["SET", "exat", "v", "EXAT", &at]).await;
        let ttl: i64 = cmd(&mut con, &["TTL", "exat"]).await;
        assert!((90..=100).contains(&ttl), "EXAT now+100 → TTL {ttl}");
        let at = (now_unix_ms() + 100_000).to_string();
        let _: String = cmd(&mut con, &["SET", "pxat", "v", "PXAT", &at]).await;
        let pttl: i64 = cmd(&mut con, &["PTTL", "pxat"]).await;
        assert!((90_000..=100_000).contains(&pttl), "PXAT now+100s → PTTL {pttl}");
        let _: String = cmd(&mut con, &["SETEX", "sx", "100", "v"]).await;
        let ttl: i64 = cmd(&mut con, &["TTL", "sx"]).await;
        assert!((90..=100).contains(&ttl), "SETEX 100 → TTL {ttl}");

        cmd_err(&mut con, &["SET", "k", "v", "NX", "XX"]).await;
        cmd_err(&mut con, &["SET", "k", "v", "EX", "10", "PX", "10"]).await;
        cmd_err(&mut con, &["SET", "k", "v", "EX", "0"]).await;
        cmd_err(&mut con, &["SET", "k", "v", "EX", "ten"]).await;
        let v: String = cmd(&mut con, &["GET", "k"]).await;
        assert_eq!(v, "v6", "refused SETs change nothing");
    })
    .await;
}

#[tokio::test]
async fn ttl_pttl_expire_pexpire_expireat_and_persist_follow_redis() {
    let node = start();
    within(MIN, async {
        let mut con = redis_conn(&node).await;
        let _: String = cmd(&mut con, &["SET", "k", "v"]).await;
        assert_eq!(cmd::<i64>(&mut con, &["TTL", "k"]).await, -1);
        assert_eq!(cmd::<i64>(&mut con, &["PTTL", "k"]).await, -1);
        assert_eq!(cmd::<i64>(&mut con, &["TTL", "missing"]).await, -2);
        assert_eq!(cmd::<i64>(&mut con, &["PTTL", "missing"]).await, -2);

        assert_eq!(cmd::<i64>(&mut con, &["PEXPIRE", "k", "50000"]).await, 1);
        let pttl: i64 = cmd(&mut con, &["PTTL", "k"]).await;
        assert!((40_000..=50_000).contains(&pttl), "PEXPIRE 50000 → PTTL {pttl}");
        let at = (now_unix_ms() / 1000 + 200).to_string();
        assert_eq!(cmd::<i64>(&mut con, &["EXPIREAT", "k", &at]).await, 1);
        let ttl: i64 = cmd(&mut con, &["TTL", "k"]).await;
        assert!((190..=200).contains(&ttl), "EXPIREAT now+200 → TTL {ttl}");
        assert_eq!(cmd::<i64>(&mut con, &["PERSIST", "k"]).await, 1);
        assert_eq!(cmd::<i64>(&mut con, &["PERSIST", "k"]).await, 0, "nothing to persist");
        assert_eq!(cmd::<i64>(&mut con, &["TTL", "k"]).await, -1);
        assert_eq!(cmd::<i64>(&mut con, &["EXPIRE", "missing", "10"]).await, 0);
        assert_eq!(cmd::<i64>(&mut con, &["PEXPIRE", "missing", "10"]).await, 0);

        // An expiry in the past deletes, as in Redis.
        let _: String = cmd(&mut con, &["SET", "past", "v"]).await;
        assert_eq!(cmd::<i64>(&mut con, &["EXPIREAT", "past", "1000"]).await, 1);
        assert_eq!(cmd::<Option<String>>(&mut con, &["GET", "past"]).await, None);
        let _: String = cmd(&mut con, &["SET", "zero", "v"]).await;
        assert_eq!(cmd::<i64>(&mut con, &["EXPIRE", "zero", "0"]).await, 1);
        assert_eq!(cmd::<i64>(&mut con, &["EXISTS", "zero"]).await, 0);
        let _: String = cmd(&mut con, &["SET", "neg", "v"]).await;
        assert_eq!(cmd::<i64>(&mut con, &["EXPIRE", "neg", "-5"]).await, 1);
        assert_eq!(cmd::<i64>(&mut con, &["TTL", "neg"]).await, -2);
        assert_eq!(cmd::<i64>(&mut con, &["DBSIZE"]).await, 1);
    })
    .await;
}

#[tokio::test]
async fn type_exists_unlink_echo_select_and_command_work_for_client_handshakes() {
    let node = start();
    within(MIN, async {
        let mut con = redis_conn(&node).await;
        let _: String = cmd(&mut con, &["SET", "a", "1"]).await;
        let _: String = cmd(&mut con, &["SET", "b", "2"]).await;
        assert_eq!(cmd::<String>(&mut con, &["TYPE", "a"]).await, "string");
        assert_eq!(cmd::<String>(&mut con, &["TYPE", "missing"]).await, "none");
        assert_eq!(cmd::<i64>(&mut con, &["EXISTS", "a", "a", "missing", "b"]).await, 3, "EXISTS counts repeats");
        assert_eq!(cmd::<i64>(&mut con, &["UNLINK", "a", "missing"]).await, 1);
        assert_eq!(cmd::<i64>(&mut con, &["EXISTS", "a"]).await, 0);
        assert_eq!(cmd::<String>(&mut con, &["ECHO", "hi there"]).await, "hi there");
        assert_eq!(cmd::<String>(&mut con, &["SELECT", "0"]).await, "OK");
        assert_eq!(cmd::<String>(&mut con, &["PING"]).await, "PONG");
        assert_eq!(cmd::<String>(&mut con, &["ping"]).await, "PONG", "commands are case-insensitive");
        let _: redis::Value = cmd(&mut con, &["COMMAND"]).await;
        let _: redis::Value = cmd(&mut con, &["COMMAND", "DOCS"]).await;
        assert_eq!(cmd::<String>(&mut con, &["gEt", "b"]).await, "2");
    })
    .await;
}

#[tokio::test]
async fn json_set_json_get_and_json_del_work_on_whole_documents() {
    let node = start();
    within(MIN, async {
        let mut con = redis_conn(&node).await;
        let http = Http::new(&node);
        let doc = r#"{"a":[1,2,{"b":null}],"s":"x y"}"#;
        assert_eq!(cmd::<String>(&mut con, &["JSON.SET", "d", "$", doc]).await, "OK");
        let got: String = cmd(&mut con, &["JSON.GET", "d"]).await;
        assert_eq!(serde_json::from_str::<Json>(&got).unwrap(), serde_json::from_str::<Json>(doc).unwrap());
        let got: String = cmd(&mut con, &["JSON.GET", "d", "$"]).await;
        assert_eq!(serde_json::from_str::<Json>(&got).unwrap(), json!([serde_json::from_str::<Json>(doc).unwrap()]));
        assert_eq!(
            http.get_body("d").await.map(|b| serde_json::from_slice::<Json>(&b).unwrap()),
            Some(serde_json::from_str(doc).unwrap())
        );

        cmd_err(&mut con, &["JSON.SET", "d", "$", "{not json"]).await;
        let got: String = cmd(&mut con, &["JSON.GET", "d"]).await;
        assert_eq!(
            serde_json::from_str::<Json>(&got).unwrap(),
            serde_json::from_str::<Json>(doc).unwrap(),
            "refused JSON.SET changes nothing"
        );

        assert_eq!(cmd::<i64>(&mut con, &["JSON.DEL", "d"]).await, 1);
        assert_eq!(cmd::<i64>(&mut con, &["JSON.DEL", "d"]).await, 0);
        assert_eq!(cmd::<Option<String>>(&mut con, &["JSON.GET", "d"]).await, None);
        assert_eq!(http.get_body("d").await, None);
    })
    .await;
}

#[tokio::test]
async fn hello_3_switches_the_connection_to_resp3_with_a_map_reply_and_null() {
    let node = start();
    within(MIN, async {
        let mut c = node.resp_conn();
        assert_eq!(c.cmd(&["GET", "missing"]).unwrap(), Frame::NullBulk, "RESP2 nil before HELLO");

        let hello = c.cmd(&["HELLO", "3"]).unwrap();
        assert!(matches!(hello, Frame::Map(_)), "HELLO 3 answers a RESP3 % map, got {hello:?}");
        assert_eq!(hello.get("proto"), Some(&Frame::Integer(3)), "{hello:?}");
        assert!(hello.get("server").is_some() && hello.get("version").is_some(), "{hello:?}");

        assert_eq!(c.cmd(&["SET", "k", "v"]).unwrap(), Frame::Simple("OK".into()));
        assert_eq!(c.cmd(&["GET", "k"]).unwrap(), Frame::Bulk(b"v".to_vec()));
        // Byte-exact: a RESP3 null is `_\r\n`.
        c.send_raw(&encode_command(&["GET", "missing"])).unwrap();
        let mut raw = [0u8; 3];
        std::io::Read::read_exact(&mut c.stream(), &mut raw).unwrap();
        assert_eq!(&raw, b"_\r\n", "RESP3 null");
        assert_eq!(
            c.cmd(&["MGET", "k", "missing"]).unwrap(),
            Frame::Array(vec![Frame::Bulk(b"v".to_vec()), Frame::Null])
        );
        assert_eq!(c.cmd(&["TTL", "k"]).unwrap(), Frame::Integer(-1));

        let hello2 = c.cmd(&["HELLO", "2"]).unwrap();
        assert!(matches!(hello2, Frame::Array(_)), "HELLO 2 answers a flat array, got {hello2:?}");
        assert_eq!(hello2.get("proto"), Some(&Frame::Integer(2)));
        assert_eq!(c.cmd(&["GET", "missing"]).unwrap(), Frame::NullBulk, "back to RESP2 nil");

        let e = c.cmd(&["HELLO", "4"]).unwrap();
        assert!(matches!(e, Frame::Error(_)), "HELLO 4 is an error, got {e:?}");
        assert_eq!(c.cmd(&["PING"]).unwrap(), Frame::Simple("PONG".into()));
    })
    .await;
}

#[tokio::test]
async fn the_redis_crate_works_over_resp3() {
    let node = start();
    within(MIN, async {
        let client = redis::Client::open(format!("{}?protocol=resp3", node.redis_url())).unwrap();
        let mut con = client.get_multiplexed_async_connection().await.expect("RESP3 handshake (HELLO 3)");
        let _: () = con.set("k", "v").await.unwrap();
        assert_eq!(con.get::<_, Option<String>>("k").await.unwrap().as_deref(), Some("v"));
        assert_eq!(con.get::<_, Option<String>>("missing").await.unwrap(), None);
        let got: Vec<Option<String>> = cmd(&mut con, &["MGET", "k", "missing"]).await;
        assert_eq!(got, vec![Some("v".into()), None]);
        assert_eq!(cmd::<i64>(&mut con, &["TTL", "k"]).await, -1);
    })
    .await;
}

// ---------------------------------------------------------------------------------
// Values crossing interfaces
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn a_string_written_over_resp_reads_over_http_as_a_json_string_and_json_stays_json() {
    let node = start_with(NodeOptions::new().region("us-east"));
    within(MIN, async {
        let mut con = redis_conn(&node).await;
        let http = Http::new(&node);
        let _: () = con.set("greeting", "hello world").await.unwrap();
        let _: () = con.set("quoted", "say \"hi\"\n\tnow \\ ü").await.unwrap();
        let _: () = con.set("empty", "").await.unwrap();
        let _: () = con.set("number", "42").await.unwrap();
        let _: () = con.set("object", "{\"a\": [1, 2]}").await.unwrap();

        let r = http.get("greeting").await;
        assert_eq!(r.status().as_u16(), 200);
        assert!(header(&r, "content-type").is_some_and(|c| c.starts_with("application/json")));
        assert!(header(&r, "etag").is_some(), "RESP writes have versions too");
        assert_eq!(header(&r, "x-geocache-origin-region").as_deref(), Some("us-east"));
        assert_eq!(r.bytes().await.unwrap().as_ref(), b"\"hello world\"");
        let body = http.get_body("quoted").await.unwrap();
        assert_eq!(serde_json::from_slice::<Json>(&body).unwrap(), json!("say \"hi\"\n\tnow \\ ü"));
        assert_eq!(http.get_body("empty").await.unwrap(), b"\"\"");
        assert_eq!(http.get_body("number").await.unwrap(), b"42", "JSON written over RESP stays JSON");
        assert_eq!(http.get_body("object").await.unwrap(), b"{\"a\": [1, 2]}");
    })
    .await;
}

#[tokio::test]
async fn a_resp_value_with_invalid_utf8_reads_back_byte_for_byte_over_resp_and_http() {
    let node = start();
    within(MIN, async {
        let mut con = redis_conn(&node).await;
        let http = Http::new(&node);
        // JSON look-alikes that are not JSON (JSON text is UTF-8, RFC 8259), and plain bytes.
        let values: [&[u8]; 4] = [b"\"\xff\xfe\"", b"[\"\xc3\"]", b"{\"k\":\"\xed\xa0\x80\"}", b"\xff plain"];
        for (i, value) in values.iter().enumerate() {
            let key = format!("v{i}");
            let _: () = con.set(&key, *value).await.unwrap();
            let back: Vec<u8> = con.get(&key).await.unwrap();
            assert_eq!(&back[..], *value, "RESP GET {key} is byte for byte");
            // Not text, so not a JSON string either: HTTP serves the bytes, saying so.
            let r = http.get(&key).await;
            assert_eq!(header(&r, "content-type").as_deref(), Some("application/octet-stream"), "HTTP GET {key}");
            assert_eq!(r.bytes().await.unwrap().as_ref(), *value, "HTTP GET {key} is byte for byte");
        }
    })
    .await;
}

#[tokio::test]
async fn a_json_document_written_over_http_reads_byte_for_byte_over_resp() {
    let node = start();
    within(MIN, async {
        let mut con = redis_conn(&node).await;
        let http = Http::new(&node);
        let doc = "{\n  \"name\": \"ada\",\n  \"tags\": [ \"x\", \"y\" ],\n  \"n\": 1.50\n}";
        http.put_ok("doc", "", doc).await;
        let got: Vec<u8> = con.get("doc").await.unwrap();
        assert_eq!(String::from_utf8_lossy(&got), doc, "RESP GET is the HTTP body byte for byte");
        let got: String = cmd(&mut con, &["JSON.GET", "doc"]).await;
        assert_eq!(serde_json::from_str::<Json>(&got).unwrap(), serde_json::from_str::<Json>(doc).unwrap());
        let mget: Vec<Option<Vec<u8>>> = cmd(&mut con, &["MGET", "doc"]).await;
        assert_eq!(mget, vec![Some(doc.as_bytes().to_vec())]);
    })
    .await;
}

#[tokio::test]
async fn many_clients_with_their_own_connections_work_side_by_side() {
    let node = start();
    within(MIN, async {
        let url = node.redis_url();
        let tasks: Vec<_> = (0..16)
            .map(|c| {
                let url = url.clone();
                tokio::spawn(async move {
                    let mut con = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
                    for i in 0..100 {
                        let key = format!("c{c}:k{i}");
                        let _: () = con.set(&key, format!("{c}/{i}")).await.unwrap();
                        let v: String = con.get(&key).await.unwrap();
                        assert_eq!(v, format!("{c}/{i}"));
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let mut con = redis_conn(&node).await;
        assert_eq!(cmd::<i64>(&mut con, &["DBSIZE"]).await, 1600);
    })
    .await;
}

// ---------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------

fn arb_json() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        any::<i64>().prop_map(Json::from),
        (-1e12f64..1e12).prop_map(|f| json!(f)),
        "\\PC{0,16}".prop_map(Json::String),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Json::Array),
            prop::collection::btree_map("\\PC{0,8}", inner, 0..6).prop_map(|m| Json::Object(m.into_iter().collect())),
        ]
    })
}

fn proptest_config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, failure_persistence: None, max_shrink_time: 20_000, ..ProptestConfig::default() }
}

fn sync_redis(node: &NodeProcess) -> redis::Connection {
    let client = redis::Client::open(node.redis_url()).unwrap();
    let con = client.get_connection_with_timeout(Duration::from_secs(10)).expect("connect");
    con.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    con.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    con
}

#[test]
fn any_key_and_json_document_round_trips_byte_for_byte_over_http_and_resp() {
    let node = start();
    let con = std::cell::RefCell::new(sync_redis(&node));
    proptest!(proptest_config(48), |(key in "\\PC{1,40}", doc in arb_json(), pretty in any::<bool>())| {
        let body = if pretty { serde_json::to_string_pretty(&doc).unwrap() } else { doc.to_string() };
        let r = node.http("PUT", &key_path(&key), &[("Content-Type", "application/json")], body.as_bytes());
        prop_assert!(r.status == 200 || r.status == 201, "PUT {:?}: {} {}", key, r.status, r.text());
        let r = node.get(&key_path(&key));
        prop_assert_eq!(r.status, 200);
        prop_assert_eq!(r.text(), body.clone());
        let over_resp: Option<Vec<u8>> = redis::cmd("GET").arg(&key).query(&mut *con.borrow_mut()).unwrap();
        prop_assert_eq!(over_resp.map(|b| String::from_utf8_lossy(&b).into_owned()), Some(body));
    });
}

#[test]
fn any_byte_string_written_over_resp_reads_back_byte_for_byte_and_over_http_as_json_or_bytes() {
    let node = start();
    let con = std::cell::RefCell::new(sync_redis(&node));
    proptest!(proptest_config(64), |(key in "[a-z0-9:]{1,20}", value in prop::collection::vec(any::<u8>(), 0..300))| {
        let _: () = redis::cmd("SET").arg(&key).arg(&value[..]).query(&mut *con.borrow_mut()).unwrap();
        let back: Vec<u8> = redis::cmd("GET").arg(&key).query(&mut *con.borrow_mut()).unwrap();
        prop_assert_eq!(&back, &value);
        let r = node.get(&key_path(&key));
        prop_assert_eq!(r.status, 200);
        match std::str::from_utf8(&value) {
            Ok(s) => {
                prop_assert_eq!(r.header("content-type"), Some("application/json"));
                let parsed: Result<Json, _> = serde_json::from_slice(&r.body);
                prop_assert!(parsed.is_ok(), "HTTP body of a RESP text value is JSON: {:?}", r.text());
                if serde_json::from_str::<Json>(s).is_err() {
                    prop_assert_eq!(parsed.unwrap(), Json::String(s.to_string()), "a non-JSON string reads as that JSON string");
                } else {
                    prop_assert_eq!(&r.body, &value, "JSON stays JSON byte for byte");
                }
            }
            Err(_) => {
                prop_assert_eq!(r.header("content-type"), Some("application/octet-stream"));
                prop_assert_eq!(&r.body, &value, "bytes that are not text read back byte for byte");
            }
        }
    });
}
