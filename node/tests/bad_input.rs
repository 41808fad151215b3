//! Bad input never crashes the node or changes the store: a table of bad HTTP
//! requests, bad Redis commands, malformed RESP frames, and random bytes on both ports.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test: failing loudly is its job

mod common;

use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use common::*;
use reqwest::Method;

struct BadRequest {
    what: &'static str,
    method: Method,
    target: String,
    headers: Vec<(&'static str, &'static str)>,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
}

fn bad(
    what: &'static str,
    method: Method,
    target: impl Into<String>,
    body: impl Into<Vec<u8>>,
    status: u16,
    code: &'static str,
) -> BadRequest {
    BadRequest {
        what,
        method,
        target: target.into(),
        headers: vec![("content-type", "application/json")],
        body: body.into(),
        status,
        code,
    }
}

fn with_headers(mut r: BadRequest, headers: Vec<(&'static str, &'static str)>) -> BadRequest {
    r.headers = headers;
    r
}

const SEED: &str = r#"{"seed":true,"n":1}"#;

/// Sends `case`; returns what went wrong (empty when the node answered the expected
/// error and nothing changed).
async fn check_bad_request(http: &Http, case: &BadRequest, etag: &str, expires: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let mut req = http.request(case.method.clone(), &case.target).body(case.body.clone());
    for (name, value) in &case.headers {
        req = req.header(*name, *value);
    }
    let r = match req.send().await {
        Ok(r) => r,
        Err(e) => return vec![format!("request failed: {e}")],
    };
    let status = r.status().as_u16();
    let content_type = header(&r, "content-type").unwrap_or_default();
    let text = r.text().await.unwrap_or_default();
    let shown: String = text.chars().take(300).collect();
    if status != case.status {
        problems.push(format!("expected status {} ({}), got {status} with body {shown:?}", case.status, case.code));
    }
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(body) => {
            if body["error"]["code"] != case.code {
                problems.push(format!("expected error.code {:?}, body {shown}", case.code));
            }
            if body["error"]["message"].as_str().is_none_or(|m| m.trim().is_empty()) {
                problems.push(format!("error.message missing or empty: {shown}"));
            }
            if !content_type.starts_with("application/json") {
                problems.push(format!("error Content-Type is {content_type:?}"));
            }
        }
        Err(e) => problems.push(format!("error body is not JSON ({e}): {shown:?}")),
    }

    // Nothing changed.
    let r = http.get("k").await;
    if r.status().as_u16() != 200 {
        problems.push(format!("k is gone: GET k answered {}", r.status()));
    }
    if header(&r, "etag").as_deref() != Some(etag) {
        problems.push(format!("k was rewritten: ETag {:?}, was {etag:?}", header(&r, "etag")));
    }
    if header(&r, "x-geocache-expires-at").as_deref() != Some(expires) {
        problems.push(format!("k's expiry changed: {:?}, was {expires:?}", header(&r, "x-geocache-expires-at")));
    }
    let body = r.bytes().await.unwrap_or_default();
    if body.as_ref() != SEED.as_bytes() {
        problems.push(format!("k's value changed to {:?}", String::from_utf8_lossy(&body)));
    }
    if http.get("fresh").await.status().as_u16() != 404 {
        problems.push("the key \"fresh\" was created".to_string());
    }
    let keys = http.keys().await;
    if keys != 2 {
        problems.push(format!("the key count changed from 2 to {keys}"));
    }
    problems
}

#[tokio::test]
async fn bad_http_requests_get_a_4xx_with_a_json_error_body_and_change_nothing() {
    let node = start();
    within(Duration::from_secs(120), async {
        let http = Http::new(&node);
        http.put_ok("k", "?ttl=1h", SEED).await;
        http.put_ok("other", "", "[1]").await;
        let seed = http.get("k").await;
        let etag = header(&seed, "etag").unwrap();
        let expires = header(&seed, "x-geocache-expires-at").unwrap();
        let k = key_path("k");
        let fresh = key_path("fresh");
        let too_big = format!("\"{}\"", "x".repeat((1 << 20) - 1));
        assert_eq!(too_big.len(), (1 << 20) + 1);

        let cases = vec![
            bad("truncated JSON", Method::PUT, &k, r#"{"a":"#, 400, "invalid_json"),
            bad("empty body", Method::PUT, &k, "", 400, "invalid_json"),
            bad("trailing garbage", Method::PUT, &k, r#"{"a":1} trailing"#, 400, "invalid_json"),
            bad("single quotes", Method::PUT, &k, "{'a':1}", 400, "invalid_json"),
            bad("two documents", Method::PUT, &k, "1 2", 400, "invalid_json"),
            bad("invalid UTF-8 in JSON", Method::PUT, &k, b"\"\xff\xfe\"".to_vec(), 400, "invalid_json"),
            bad("invalid JSON for a new key", Method::PUT, &fresh, "nope", 400, "invalid_json"),
            bad("empty key", Method::PUT, "/v1/keys/", "{}", 400, "invalid_key"),
            bad("key that is not UTF-8", Method::PUT, "/v1/keys/%FF%FE", "{}", 400, "invalid_key"),
            bad("1025-byte key", Method::PUT, key_path(&"f".repeat(1025)), "{}", 400, "key_too_long"),
            bad("value of 1 MiB + 1 byte", Method::PUT, &k, too_big.clone(), 413, "value_too_large"),
            bad("value of 1 MiB + 1 byte for a new key", Method::PUT, &fresh, too_big.clone(), 413, "value_too_large"),
            bad("ttl=abc", Method::PUT, format!("{k}?ttl=abc"), "{}", 400, "invalid_ttl"),
            bad("negative ttl", Method::PUT, format!("{k}?ttl=-5s"), "{}", 400, "invalid_ttl"),
            bad("unknown ttl unit", Method::PUT, format!("{k}?ttl=10x"), "{}", 400, "invalid_ttl"),
            bad("empty ttl", Method::PUT, format!("{k}?ttl="), "{}", 400, "invalid_ttl"),
            bad("ttl on a new key", Method::PUT, format!("{fresh}?ttl=soon"), "{}", 400, "invalid_ttl"),
            with_headers(
                bad("X-Geocache-Ttl: soon", Method::PUT, &k, "{}", 400, "invalid_ttl"),
                vec![("content-type", "application/json"), ("x-geocache-ttl", "soon")],
            ),
            bad("ack=bogus", Method::PUT, format!("{k}?ack=bogus"), "{}", 400, "invalid_ack"),
            bad("ack=bogus on a new key", Method::PUT, format!("{fresh}?ack=bogus"), "{}", 400, "invalid_ack"),
            with_headers(
                bad("text/plain PUT", Method::PUT, &k, "{}", 415, "unsupported_media_type"),
                vec![("content-type", "text/plain")],
            ),
            with_headers(
                bad("form PUT", Method::PUT, &k, "a=1", 415, "unsupported_media_type"),
                vec![("content-type", "application/x-www-form-urlencoded")],
            ),
            with_headers(
                bad("text/html PUT", Method::PUT, &k, "{}", 415, "unsupported_media_type"),
                vec![("content-type", "text/html; charset=utf-8")],
            ),
            bad("PATCH with application/json", Method::PATCH, &k, r#"{"a":1}"#, 415, "unsupported_media_type"),
            with_headers(
                bad("PATCH without Content-Type", Method::PATCH, &k, r#"{"a":1}"#, 415, "unsupported_media_type"),
                vec![],
            ),
            with_headers(
                bad("PATCH with invalid JSON", Method::PATCH, &k, "{oops", 400, "invalid_json"),
                vec![("content-type", "application/merge-patch+json")],
            ),
            with_headers(
                bad("PATCH with ttl=abc", Method::PATCH, format!("{fresh}?ttl=abc"), r#"{"a":1}"#, 400, "invalid_ttl"),
                vec![("content-type", "application/merge-patch+json")],
            ),
            with_headers(
                bad("PATCH with ack=bogus", Method::PATCH, format!("{k}?ack=maybe"), r#"{"a":1}"#, 400, "invalid_ack"),
                vec![("content-type", "application/merge-patch+json")],
            ),
            with_headers(
                bad("expire without ttl", Method::POST, format!("{k}/expire"), "", 400, "invalid_ttl"),
                vec![],
            ),
            with_headers(
                bad("expire ttl=abc", Method::POST, format!("{k}/expire?ttl=abc"), "", 400, "invalid_ttl"),
                vec![],
            ),
            with_headers(
                bad("expire ttl=1q", Method::POST, format!("{k}/expire?ttl=1q"), "", 400, "invalid_ttl"),
                vec![],
            ),
        ];

        // Every case is checked, and every failure is reported at the end; a case that
        // changed the store is followed by a re-seed so the next case starts clean.
        let (mut etag, mut expires) = (etag, expires);
        let mut failures = Vec::new();
        for case in cases {
            let problems = check_bad_request(&http, &case, &etag, &expires).await;
            if !problems.is_empty() {
                failures.push(format!("{}:\n    {}", case.what, problems.join("\n    ")));
                let _ = http.delete("fresh").await;
                http.put_ok("k", "?ttl=1h", SEED).await;
                let r = http.get("k").await;
                etag = header(&r, "etag").unwrap();
                expires = header(&r, "x-geocache-expires-at").unwrap();
            }
        }
        assert!(
            failures.is_empty(),
            "{} bad request(s) not handled as the contract says:\n{}",
            failures.len(),
            failures.join("\n")
        );
        assert_eq!(http.get_path("/healthz").await.status().as_u16(), 200);
    })
    .await;
}

#[tokio::test]
async fn bad_redis_commands_get_an_err_reply_change_nothing_and_the_connection_stays_usable() {
    let node = start();
    within(Duration::from_secs(120), async {
        let mut c = node.resp_conn();
        assert_eq!(c.cmd(&["SET", "k", "seed"]).unwrap(), Frame::Simple("OK".into()));
        let long_key = "k".repeat(1025);
        let big_value = "v".repeat((1 << 20) + 1);
        let big_doc = format!("\"{}\"", "v".repeat(1 << 20));
        let cases: Vec<Vec<&str>> = vec![
            vec!["NOSUCHCOMMAND"],
            vec!["NOSUCHCOMMAND", "k", "v"],
            vec!["GET"],
            vec!["GET", "k", "extra"],
            vec!["SET", "k"],
            vec!["SET"],
            vec!["DEL"],
            vec!["MGET"],
            vec!["MSET", "k"],
            vec!["MSET", "k", "v", "other"],
            vec!["EXPIRE", "k"],
            vec!["TTL"],
            vec!["ECHO"],
            vec!["JSON.SET", "k", "$"],
            vec!["JSON.GET"],
            vec!["SET", "k", "v", "EX", "abc"],
            vec!["SET", "k", "v", "EX", "-1"],
            vec!["SET", "k", "v", "PX", "0"],
            vec!["SET", "k", "v", "EX"],
            vec!["SET", "k", "v", "BOGUS"],
            vec!["SET", "k", "v", "NX", "XX"],
            vec!["SETEX", "k", "notanumber", "v"],
            vec!["EXPIRE", "k", "abc"],
            vec!["PEXPIRE", "k", "1.5"],
            vec!["JSON.SET", "k", "$", "{bad json"],
            vec!["JSON.SET", "k", "$", ""],
            vec!["SELECT", "abc"],
            vec!["SET", &long_key, "v"],
            vec!["SET", "k", &big_value],
            vec!["SET", "fresh", &big_value],
            vec!["JSON.SET", "k", "$", &big_doc],
        ];
        for args in &cases {
            let shown: Vec<String> = args
                .iter()
                .map(|a| if a.len() > 40 { format!("<{} bytes>", a.len()) } else { a.to_string() })
                .collect();
            let reply = c.cmd(args).unwrap_or_else(|e| panic!("{shown:?}: the connection must stay open: {e}"));
            match &reply {
                Frame::Error(e) => assert!(e.starts_with("ERR"), "{shown:?}: -ERR ..., got -{e}"),
                other => panic!("{shown:?}: expected -ERR, got {other:?}"),
            }
            assert_eq!(c.cmd(&["PING"]).unwrap(), Frame::Simple("PONG".into()), "{shown:?}: connection still usable");
            assert_eq!(c.cmd(&["GET", "k"]).unwrap(), Frame::Bulk(b"seed".to_vec()), "{shown:?}: k unchanged");
            assert_eq!(c.cmd(&["TTL", "k"]).unwrap(), Frame::Integer(-1), "{shown:?}: no expiry added");
            assert_eq!(c.cmd(&["DBSIZE"]).unwrap(), Frame::Integer(1), "{shown:?}: nothing created");
        }
        // JSON must be UTF-8 (RFC 8259): a JSON string holding invalid UTF-8 is not a document.
        let reply = c.cmd(&[&b"JSON.SET"[..], b"k", b"$", b"\"\xff\xfe\""]).unwrap();
        assert!(
            matches!(&reply, Frame::Error(e) if e.starts_with("ERR")),
            "JSON.SET of invalid UTF-8: -ERR ..., got {reply:?}"
        );
        assert_eq!(
            c.cmd(&["GET", "k"]).unwrap(),
            Frame::Bulk(b"seed".to_vec()),
            "JSON.SET of invalid UTF-8 changes nothing"
        );
    })
    .await;
}

#[tokio::test]
async fn malformed_resp_frames_get_an_err_reply_then_the_connection_is_closed_while_the_node_stays_up() {
    let node = start();
    within(Duration::from_secs(120), async {
        let mut bystander = node.resp_conn();
        assert_eq!(bystander.cmd(&["SET", "k", "v"]).unwrap(), Frame::Simple("OK".into()));
        let cases: &[(&str, &[u8])] = &[
            ("oversized bulk length", b"*1\r\n$999999999999\r\n"),
            ("malformed array length", b"*abc\r\n"),
            ("oversized array length", b"*999999999999\r\n"),
            ("negative bulk length", b"*1\r\n$-5\r\n"),
            ("malformed bulk length", b"*2\r\n$3\r\nGET\r\n$x\r\n"),
            ("integer where a bulk string belongs", b"*2\r\n$3\r\nGET\r\n:12\r\n"),
        ];
        for (what, bytes) in cases {
            let mut c = node.resp_conn();
            c.send_raw(bytes).unwrap();
            let (reply, closed) = c.read_until_closed(Duration::from_secs(10));
            let text = String::from_utf8_lossy(&reply);
            assert!(text.starts_with("-ERR"), "{what}: -ERR ..., got {text:?}");
            assert!(closed, "{what}: the node closes the connection after a protocol error (got {text:?})");
            assert_eq!(
                bystander.cmd(&["PING"]).unwrap(),
                Frame::Simple("PONG".into()),
                "{what}: other connections keep working"
            );
            assert_eq!(
                node.resp_conn().cmd(&["GET", "k"]).unwrap(),
                Frame::Bulk(b"v".to_vec()),
                "{what}: new connections work"
            );
        }
        assert_eq!(bystander.cmd(&["DBSIZE"]).unwrap(), Frame::Integer(1));
        assert_eq!(node.get("/healthz").status, 200);
    })
    .await;
}

#[tokio::test]
async fn random_bytes_on_the_redis_port_get_errors_or_a_closed_connection_and_the_node_stays_up() {
    let node = start();
    within(Duration::from_secs(120), async {
        let mut bystander = node.resp_conn();
        assert_eq!(bystander.cmd(&["SET", "k", "v"]).unwrap(), Frame::Simple("OK".into()));
        for seed in 1..=8u64 {
            let mut bytes = pseudo_random_bytes(seed * 7919, 4096);
            if seed % 2 == 0 {
                bytes[0] = b'*'; // looks like the start of a frame
            }
            let mut c = node.resp_conn();
            let _ = c.send_raw(&bytes); // the node may close early; that is fine
            let _ = c.stream().shutdown(Shutdown::Write);
            let (reply, closed) = c.read_until_closed(Duration::from_secs(10));
            assert!(
                reply.is_empty() || reply.starts_with(b"-"),
                "seed {seed}: only error replies, got {:?}",
                String::from_utf8_lossy(&reply)
            );
            assert!(closed, "seed {seed}: the connection is closed once the client is done");
            assert_eq!(bystander.cmd(&["PING"]).unwrap(), Frame::Simple("PONG".into()), "seed {seed}: node still up");
        }
        assert_eq!(bystander.cmd(&["DBSIZE"]).unwrap(), Frame::Integer(1), "random bytes wrote nothing");
        assert_eq!(bystander.cmd(&["GET", "k"]).unwrap(), Frame::Bulk(b"v".to_vec()));
    })
    .await;
}

#[tokio::test]
async fn random_bytes_on_the_http_port_get_a_4xx_or_a_closed_connection_and_the_node_stays_healthy() {
    let node = start();
    within(Duration::from_secs(120), async {
        let http = Http::new(&node);
        http.put_ok("k", "", SEED).await;
        // A keep-alive connection opened before the garbage, used again after it.
        let keep_alive = TcpStream::connect(node.http_addr()).unwrap();
        keep_alive.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let ask_health = |s: &TcpStream| {
            (&*s).write_all(b"GET /healthz HTTP/1.1\r\nHost: geocache\r\n\r\n").unwrap();
            geocache_tests::http::read_response(&mut BufReader::new(s), false).unwrap().status
        };
        assert_eq!(ask_health(&keep_alive), 200);

        let mut huge_header = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Huge: ".to_vec();
        huge_header.extend(std::iter::repeat_n(b'a', 2 << 20));
        huge_header.extend_from_slice(b"\r\n\r\n");
        let mut cases: Vec<(String, Vec<u8>)> = (1..=6u64).map(|s| (format!("random bytes, seed {s}"), pseudo_random_bytes(s * 104_729, 4096))).collect();
        cases.extend([
            ("not HTTP".to_string(), b"GARBAGE\r\n\r\n".to_vec()),
            ("header without a colon".to_string(), b"GET /healthz HTTP/1.1\r\nHost\r\n\r\n".to_vec()),
            ("unknown HTTP version".to_string(), b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n".to_vec()),
            ("TLS client hello".to_string(), b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec()),
            ("2 MiB header".to_string(), huge_header),
            (
                "bad Content-Length".to_string(),
                b"PUT /v1/keys/k HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: abc\r\n\r\n{}".to_vec(),
            ),
            (
                "bad chunk".to_string(),
                b"PUT /v1/keys/k HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\n{}\r\n0\r\n\r\n".to_vec(),
            ),
            (
                "body shorter than Content-Length".to_string(),
                b"PUT /v1/keys/k HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"short\":1}".to_vec(),
            ),
        ]);
        for (what, bytes) in &cases {
            let s = TcpStream::connect(node.http_addr()).unwrap();
            s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
            let _ = (&s).write_all(bytes); // the node may close early; that is fine
            let _ = s.shutdown(Shutdown::Write);
            let mut reply = Vec::new();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let closed = match (&s).read_to_end(&mut reply) {
                Ok(_) => true,
                Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
            };
            assert!(closed, "{what}: the connection is closed (no hang)");
            if !reply.is_empty() {
                let text = String::from_utf8_lossy(&reply);
                let status: u16 = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
                assert!(
                    text.starts_with("HTTP/1.") && ((400..500).contains(&status) || status == 505),
                    "{what}: a 4xx answer or none, got {:?}",
                    text.chars().take(200).collect::<String>()
                );
            }
            assert_eq!(node.get("/healthz").status, 200, "{what}: node healthy");
        }
        assert_eq!(ask_health(&keep_alive), 200, "an earlier keep-alive connection still works");
        assert_eq!(http.get_body("k").await.unwrap(), SEED.as_bytes(), "garbage changed nothing");
        assert_eq!(http.keys().await, 1);
    })
    .await;
}

#[tokio::test]
async fn half_sent_requests_do_not_block_other_clients_on_either_port() {
    let node = start();
    within(MIN, async {
        let mut stalled_resp = node.resp_conn();
        stalled_resp.send_raw(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$10\r\nonly").unwrap();
        let stalled_http = TcpStream::connect(node.http_addr()).unwrap();
        (&stalled_http).write_all(b"PUT /v1/keys/k HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{\"par").unwrap();

        let http = Http::new(&node);
        http.put_ok("other", "", "1").await;
        let mut c = node.resp_conn();
        assert_eq!(c.cmd(&["GET", "other"]).unwrap(), Frame::Bulk(b"1".to_vec()));
        assert_eq!(c.cmd(&["EXISTS", "k"]).unwrap(), Frame::Integer(0), "half a command writes nothing");
        assert_eq!(http.get("k").await.status().as_u16(), 404, "half a request writes nothing");

        // Finishing the RESP command later works on the same connection.
        stalled_resp.send_raw(b"sixbyt\r\n").unwrap();
        assert_eq!(stalled_resp.read_frame().unwrap(), Frame::Simple("OK".into()));
        // Clients that vanish mid-request leave no trace.
        drop(stalled_http);
        let mut vanishing = node.resp_conn();
        vanishing.send_raw(b"*2\r\n$3\r\nDEL\r\n$1\r\n").unwrap();
        drop(vanishing);
        assert_eq!(c.cmd(&["GET", "k"]).unwrap(), Frame::Bulk(b"onlysixbyt".to_vec()));
        assert_eq!(node.get("/healthz").status, 200);
    })
    .await;
}

#[test]
fn bad_flags_make_the_node_exit_with_an_error_that_names_the_flag() {
    let cases: &[(&[&str], &str)] = &[
        (&["--max-memory", "lots"], "max-memory"),
        (&["--default-ttl", "5x"], "default-ttl"),
        (&["--fsync", "sometimes"], "fsync"),
        (&["--region", "eu west"], "region"),
        (&["--resp-addr", "nowhere"], "resp-addr"),
        (&["--max-value-bytes", "huge"], "max-value-bytes"),
        (&["--data-dir", "/proc/geocache-cannot-be-here"], "/proc/geocache-cannot-be-here"),
    ];
    for (args, flag) in cases {
        let mut all = vec![
            "--node-id",
            "bad-flags",
            "--http-addr",
            "127.0.0.1:0",
            "--resp-addr",
            "off",
            "--peer-addr",
            "127.0.0.1:0",
        ];
        all.extend_from_slice(args);
        let out = geocache_tests::run_node_to_exit(bin(), &all, Duration::from_secs(20));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: the node must refuse to start; stderr: {stderr}");
        assert!(stderr.contains(flag), "{args:?}: the error names {flag}; stderr: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: an error, not a panic; stderr: {stderr}");
    }
}
