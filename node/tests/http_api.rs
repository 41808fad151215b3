//! The HTTP contract of `geocache-node`, driven over real sockets against the real
//! binary: status codes, headers, bodies, `/healthz`, `/readyz`, `/metrics`, `/v1/status`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test: failing loudly is its job

mod common;

use common::*;
use redis::AsyncCommands;
use reqwest::Method;
use serde_json::{Value as Json, json};

fn is_json_content_type(r: &reqwest::Response) -> bool {
    header(r, "content-type").is_some_and(|c| c.starts_with("application/json"))
}

#[tokio::test]
async fn put_creates_a_key_with_201_and_replacing_it_answers_200_with_a_new_version() {
    let node = start();
    within(MIN, async {
        let http = Http::new(&node);
        let r = http.put("user:1", "", r#"{"name":"ada"}"#).await;
        assert_eq!(r.status().as_u16(), 201, "first PUT creates");
        assert!(is_json_content_type(&r), "PUT answers JSON, got {:?}", header(&r, "content-type"));
        let first: Json = r.json().await.unwrap();
        assert_eq!(first["key"], "user:1");
        let v1 = first["version"].as_str().expect("version is a string").to_string();
        assert!(!v1.is_empty());
        assert!(first.as_object().unwrap().contains_key("expires_at"), "expires_at is present (null): {first}");
        assert_eq!(first["expires_at"], Json::Null);

        let r = http.put("user:1", "", r#"{"name":"grace"}"#).await;
        assert_eq!(r.status().as_u16(), 200, "second PUT replaces");
        let second: Json = r.json().await.unwrap();
        let v2 = second["version"].as_str().expect("version is a string").to_string();
        assert_ne!(v1, v2, "every write gets a new version");
        assert_eq!(http.get_body("user:1").await.unwrap(), br#"{"name":"grace"}"#);
    })
    .await;
}

#[tokio::test]
async fn get_returns_the_document_byte_for_byte_with_etag_origin_region_and_no_expiry_header() {
    let node = start_with(NodeOptions::new().region("eu-west"));
    within(MIN, async {
        let http = Http::new(&node);
        let doc =
            "{ \"b\" : [1, 2.50, \"x\", 1e3],\n  \"a\": {\"nested\": true, \"n\": null}, \"u\": \"\\u00e9 é 🦀\" }";
        let put = http.put_ok("doc", "", doc).await;
        let version = put["version"].as_str().unwrap().to_string();

        let r = http.get("doc").await;
        assert_eq!(r.status().as_u16(), 200);
        assert!(is_json_content_type(&r), "Content-Type {:?}", header(&r, "content-type"));
        assert_eq!(header(&r, "etag"), Some(format!("\"{version}\"")), "ETag is the quoted version from PUT");
        assert_eq!(header(&r, "x-geocache-origin-region").as_deref(), Some("eu-west"));
        assert_eq!(header(&r, "x-geocache-expires-at"), None, "no expiry, no X-Geocache-Expires-At");
        let body = r.bytes().await.unwrap();
        assert_eq!(String::from_utf8_lossy(&body), doc, "the document exactly as written");
    })
    .await;
}

#[tokio::test]
async fn reading_deleting_or_expiring_a_missing_key_answers_404_not_found() {
    let node = start();
    within(MIN, async {
        let http = Http::new(&node);
        expect_error("GET missing", http.get("missing").await, 404, "not_found").await;
        expect_error("DELETE missing", http.delete("missing").await, 404, "not_found").await;
        expect_error("POST expire missing", http.expire("missing", "?ttl=10s").await, 404, "not_found").await;
        assert_eq!(http.keys().await, 0, "nothing was created");
    })
    .await;
}

#[tokio::test]
async fn a_key_is_one_percent_encoded_path_segment_so_slashes_spaces_and_unicode_round_trip() {
    let node = start();
    within(MIN, async {
        let http = Http::new(&node);
        let keys = ["a/b", "a%2Fb", "with space", "ünïcødé/🦀", "q?x=1&y=2#frag", "100%", "a.b", "tab\there", "+plus+"];
        for (i, key) in keys.iter().enumerate() {
            let r = http.put(key, "", &json!({"i": i, "key": key}).to_string()).await;
            assert_eq!(r.status().as_u16(), 201, "PUT {key:?} (as {}) creates its own key", key_path(key));
        }
        assert_eq!(http.keys().await, keys.len() as u64, "every key is distinct");
        let mut redis = redis_conn(&node).await;
        for (i, key) in keys.iter().enumerate() {
            let expected = json!({"i": i, "key": key}).to_string();
            let body = http.get_body(key).await.unwrap_or_else(|| panic!("GET {key:?} is 404"));
            assert_eq!(String::from_utf8_lossy(&body), expected, "GET {key:?}");
            // The decoded key is the key: the Redis port sees the same one.
            let over_resp: Option<Vec<u8>> = redis.get(*key).await.unwrap();
            assert_eq!(over_resp.as_deref(), Some(expected.as_bytes()), "RESP GET {key:?}");
        }
    })
    .await;
}

#[tokio::test]
async fn put_with_a_ttl_returns_expires_at_in_rfc3339_with_milliseconds_and_get_shows_it() {
    let node = start();
    within(MIN, async {
        let http = Http::new(&node);
        let before = now_unix_ms();
        let put = http.put_ok("session", "?ttl=1h30m", r#"{"user":7}"#).await;
        let after = now_unix_ms();
        let expires_at = put["expires_at"].as_str().unwrap_or_else(|| panic!("expires_at is a string: {put}"));
        let ms = rfc3339_millis_utc("PUT expires_at", expires_at);
        assert_expiry_near("ttl=1h30m", ms, before, after, 90 * 60 * 1000);

        let r = http.get("session").await;
        assert_eq!(r.status().as_u16(), 200);
        let h = header(&r, "x-geocache-expires-at").expect("X-Geocache-Expires-At is set");
        assert_eq!(
            parse_rfc3339_ms(&h),
            Some(ms),
            "X-Geocache-Expires-At {h} is the expires_at of the PUT {expires_at}"
        );
    })
    .await;
}

#[tokio::test]
async fn ttl_accepts_ms_s_m_h_d_combinations_bare_seconds_and_the_x_geocache_ttl_header() {
    let node = start();
    within(MIN, async {
        let http = Http::new(&node);
        let cases: &[(&str, Option<&str>, u64)] = &[
            ("?ttl=1500ms", None, 1_500),
            ("?ttl=30s", None, 30_000),
            ("?ttl=2m", None, 120_000),
            ("?ttl=3h", None, 3 * 3_600_000),
            ("?ttl=1d", None, 86_400_000),
            ("?ttl=1h30m", None, 5_400_000),
            ("?ttl=1m30s", None, 90_000),
            ("?ttl=45", None, 45_000),
            ("", Some("10m"), 600_000),
            ("", Some("20"), 20_000),
        ];
        for (i, (query, ttl_header, ttl_ms)) in cases.iter().enumerate() {
            let key = format!("k{i}");
            let mut req = http
                .request(Method::PUT, &format!("{}{query}", key_path(&key)))
                .header("content-type", "application/json")
                .body("{}");
            if let Some(h) = ttl_header {
                req = req.header("X-Geocache-Ttl", *h);
            }
            let before = now_unix_ms();
            let r = req.send().await.unwrap();
            let after = now_unix_ms();
            let what = format!("PUT {query} X-Geocache-Ttl={ttl_header:?}");
            assert_eq!(r.status().as_u16(), 201, "{what}");
            let body: Json = r.json().await.unwrap();
            let at = body["expires_at"].as_str().unwrap_or_else(|| panic!("{what}: expires_at {body}"));
            assert_expiry_near(&what, rfc3339_millis_utc(&what, at), before, after, *ttl_ms);
        }
    })
    .await;
}

#[tokio::test]
async fn patch_applies_a_json_merge_patch_and_keeps_the_existing_expiry() {
    let node = start();
    within(MIN, async {
        let http = Http::new(&node);
        let put = http.put_ok("cfg", "?ttl=1h", r#"{"a":"b","c":{"d":"e","f":"g"},"list":[1,2]}"#).await;
        let expires_at = put["expires_at"].as_str().unwrap().to_string();

        let r =
            http.patch("cfg", "", "application/merge-patch+json", r#"{"a":"z","c":{"f":null,"h":1},"list":[3]}"#).await;
        assert_eq!(r.status().as_u16(), 200, "PATCH of an existing key");
        let patched: Json = r.json().await.unwrap();
        let version = patched["version"].as_str().expect("PATCH answers the new version").to_string();

        let r = http.get("cfg").await;
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(header(&r, "etag"), Some(format!("\"{version}\"")));
        let kept = header(&r, "x-geocache-expires-at").expect("the expiry is kept");
        assert_eq!(parse_rfc3339_ms(&kept), parse_rfc3339_ms(&expires_at), "PATCH without ttl keeps the expiry");
        let doc: Json = r.json().await.unwrap();
        assert_eq!(doc, json!({"a":"z","c":{"d":"e","h":1},"list":[3]}));
    })
    .await;
}

#[tokio::test]
async fn patch_creates_an_absent_key_with_201_and_a_ttl_on_patch_replaces_the_expiry() {
    let node = start();
    within(MIN, async {
        let http = Http::new(&node);
        let r = http.patch("new", "", "application/merge-patch+json", r#"{"x":1,"gone":null,"o":{"p":null}}"#).await;
        assert_eq!(r.status().as_u16(), 201, "PATCH creates an absent key");
        let doc: Json = serde_json::from_slice(&http.get_body("new").await.unwrap()).unwrap();
        assert_eq!(doc, json!({"x":1,"o":{}}), "the patch applied to nothing, nulls removed (RFC 7386)");

        let before = now_unix_ms();
        let r = http.patch("new", "?ttl=10m", "application/merge-patch+json; charset=utf-8", r#"{"y":2}"#).await;
        let after = now_unix_ms();
        assert_eq!(r.status().as_u16(), 200);
        let body: Json = r.json().await.unwrap();
        let at = rfc3339_millis_utc("PATCH expires_at", body["expires_at"].as_str().expect("expires_at set by ttl"));
        assert_expiry_near("PATCH ?ttl=10m", at, before, after, 600_000);
        let doc: Json = serde_json::from_slice(&http.get_body("new").await.unwrap()).unwrap();
        assert_eq!(doc, json!({"x":1,"o":{},"y":2}));
    })
    .await;
}

#[tokio::test]
async fn delete_answers_204_without_a_body_then_the_key_is_gone_and_a_second_delete_is_404() {
    let node = start();
    within(MIN, async {
        let http = Http::new(&node);
        http.put_ok("gone", "", "[1,2,3]").await;
        http.put_ok("kept", "", "true").await;
        let r = http.delete("gone").await;
        assert_eq!(r.status().as_u16(), 204);
        assert!(r.bytes().await.unwrap().is_empty(), "204 has no body");
        expect_error("GET after DELETE", http.get("gone").await, 404, "not_found").await;
        expect_error("second DELETE", http.delete("gone").await, 404, "not_found").await;
        assert_eq!(http.keys().await, 1);
        assert_eq!(http.get_body("kept").await.unwrap(), b"true");
        // A deleted key can be written again, and that is a creation.
        assert_eq!(http.put("gone", "", "1").await.status().as_u16(), 201);
    })
    .await;
}

#[tokio::test]
async fn post_expire_sets_clears_and_expires_now_and_rejects_a_missing_or_malformed_ttl() {
    let node = start();
    within(MIN, async {
        let http = Http::new(&node);
        let put = http.put_ok("k", "", r#"{"v":1}"#).await;
        let v_put = put["version"].as_str().unwrap().to_string();

        let before = now_unix_ms();
        let r = http.expire("k", "?ttl=30s").await;
        let after = now_unix_ms();
        assert_eq!(r.status().as_u16(), 200);
        let body: Json = r.json().await.unwrap();
        assert_eq!(body["key"], "k");
        assert!(body["version"].is_string(), "expire answers the version: {body}");
        let at = rfc3339_millis_utc("expire expires_at", body["expires_at"].as_str().expect("expires_at set"));
        assert_expiry_near("expire ttl=30s", at, before, after, 30_000);
        let r = http.get("k").await;
        let h = header(&r, "x-geocache-expires-at").expect("GET shows the expiry");
        assert_eq!(parse_rfc3339_ms(&h), Some(at));
        assert_eq!(r.bytes().await.unwrap().as_ref(), br#"{"v":1}"#, "EXPIRE keeps the value");

        let r = http.expire("k", "?ttl=none").await;
        assert_eq!(r.status().as_u16(), 200);
        let body: Json = r.json().await.unwrap();
        assert_eq!(body["expires_at"], Json::Null, "ttl=none clears the expiry: {body}");
        let r = http.get("k").await;
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(header(&r, "x-geocache-expires-at"), None);
        assert_ne!(
            header(&r, "etag"),
            Some(format!("\"{v_put}\"")),
            "changing the expiry is a write with a new version"
        );

        expect_error("expire without ttl", http.expire("k", "").await, 400, "invalid_ttl").await;
        expect_error("expire ttl=abc", http.expire("k", "?ttl=abc").await, 400, "invalid_ttl").await;
        expect_error("expire ttl=-1s", http.expire("k", "?ttl=-1s").await, 400, "invalid_ttl").await;
        assert_eq!(http.get("k").await.status().as_u16(), 200, "bad expire requests change nothing");

        let r = http.expire("k", "?ttl=0").await;
        assert_eq!(r.status().as_u16(), 200, "ttl=0 expires the key now");
        expect_error("GET after ttl=0", http.get("k").await, 404, "not_found").await;
        expect_error("expire of an expired key", http.expire("k", "?ttl=10s").await, 404, "not_found").await;
    })
    .await;
}

#[tokio::test]
async fn healthz_and_readyz_answer_200() {
    let node = start();
    within(MIN, async {
        let http = Http::new(&node);
        assert_eq!(http.get_path("/healthz").await.status().as_u16(), 200);
        assert_eq!(http.get_path("/readyz").await.status().as_u16(), 200);
    })
    .await;
}

#[tokio::test]
async fn metrics_are_prometheus_text_with_geocache_prefixed_names_that_count_keys_and_commands() {
    let node = start();
    within(MIN, async {
        let http = Http::new(&node);
        http.put_ok("a", "", "1").await;
        http.put_ok("b", "", "2").await;
        let mut redis = redis_conn(&node).await;
        let _: () = redis.set("c", "3").await.unwrap();
        let _: Option<String> = redis.get("a").await.unwrap();
        let _: Option<String> = redis.get("nope").await.unwrap();

        let r = http.get_path("/metrics").await;
        assert_eq!(r.status().as_u16(), 200);
        let ct = header(&r, "content-type").unwrap_or_default();
        assert!(ct.starts_with("text/plain") && ct.contains("version=0.0.4"), "Content-Type {ct:?}");
        let text = r.text().await.unwrap();

        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split_whitespace();
                let (name, kind) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                assert!(name.starts_with("geocache_"), "metric {name} is prefixed geocache_");
                assert!(["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind), "{line}");
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("sample line {line:?}"));
            assert!(series.starts_with("geocache_"), "sample {series} is prefixed geocache_");
            assert!(
                value.parse::<f64>().is_ok() || ["NaN", "+Inf", "-Inf"].contains(&value),
                "sample value of {line:?}"
            );
        }
        assert_eq!(metric(&text, "geocache_keys"), 3.0);
        assert!(metric(&text, "geocache_memory_bytes") > 0.0);
        assert_eq!(metric(&text, "geocache_evicted_keys_total"), 0.0);
        assert_eq!(metric(&text, "geocache_expired_keys_total"), 0.0);
        assert!(metric(&text, "geocache_resp_commands_total{command=\"get\"}") >= 2.0, "two GETs were counted");
        assert!(metric(&text, "geocache_resp_commands_total{command=\"set\"}") >= 1.0);
    })
    .await;
}

#[tokio::test]
async fn status_reports_node_id_region_version_uptime_keys_memory_ready_and_peers() {
    let node = start_with(NodeOptions::new().node_id("status-node-1").region("ap-south"));
    within(MIN, async {
        let http = Http::new(&node);
        for k in ["x", "y", "z"] {
            http.put_ok(k, "", r#"{"payload":"0123456789"}"#).await;
        }
        let r = http.get_path("/v1/status").await;
        assert_eq!(r.status().as_u16(), 200);
        assert!(is_json_content_type(&r));
        let s: Json = r.json().await.unwrap();
        assert_eq!(s["node_id"], "status-node-1", "{s}");
        assert_eq!(s["region"], "ap-south", "{s}");
        assert!(s["version"].as_str().is_some_and(|v| !v.is_empty()), "version: {s}");
        assert!(s["uptime_s"].is_u64(), "uptime_s: {s}");
        assert_eq!(s["keys"], 3, "{s}");
        assert!(s["memory_bytes"].as_u64().is_some_and(|m| m > 0), "memory_bytes: {s}");
        assert_eq!(s["ready"], true, "{s}");
        assert_eq!(s["peers"], json!([]), "a lone node has no peers: {s}");
        // It parses as the library's own status type, which the operator reads.
        let typed: geocache_node::StatusDocument = serde_json::from_value(s).expect("the status document type");
        assert_eq!(typed.keys, 3);
    })
    .await;
}

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_are_405_with_a_json_error() {
    let node = start();
    within(MIN, async {
        let http = Http::new(&node);
        http.put_ok("k", "", "1").await;
        expect_error("GET /nope", http.get_path("/nope").await, 404, "not_found").await;
        let r = http.request(Method::POST, &key_path("k")).body("1").send().await.unwrap();
        expect_error("POST on a key", r, 405, "method_not_allowed").await;
        let r = http.request(Method::GET, &format!("{}/expire", key_path("k"))).send().await.unwrap();
        expect_error("GET on expire", r, 405, "method_not_allowed").await;
        assert_eq!(http.get_body("k").await.unwrap(), b"1", "nothing changed");
    })
    .await;
}

#[tokio::test]
async fn every_ack_level_is_accepted_on_a_lone_node() {
    let node = start();
    within(MIN, async {
        let http = Http::new(&node);
        for (i, ack) in ["local", "region", "global"].iter().enumerate() {
            let key = format!("k{i}");
            let r = http.put(&key, &format!("?ack={ack}"), r#"{"ack":true}"#).await;
            assert_eq!(r.status().as_u16(), 201, "ack={ack}");
            let r = http.put(&key, &format!("?ttl=1h&ack={ack}"), r#"{"ack":2}"#).await;
            assert_eq!(r.status().as_u16(), 200, "ttl and ack={ack} together");
        }
        assert_eq!(http.keys().await, 3);
    })
    .await;
}

#[tokio::test]
async fn content_type_may_be_absent_or_application_json_with_a_charset() {
    let node = start();
    within(MIN, async {
        let http = Http::new(&node);
        let r = http.request(Method::PUT, &key_path("k")).body(r#"{"no":"content-type"}"#).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 201, "no Content-Type");
        let r = http
            .request(Method::PUT, &key_path("k"))
            .header("content-type", "application/json; charset=utf-8")
            .body(r#"{"with":"charset"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "application/json; charset=utf-8");
        assert_eq!(http.get_body("k").await.unwrap(), br#"{"with":"charset"}"#);
    })
    .await;
}

#[tokio::test]
async fn a_1024_byte_key_and_a_value_of_exactly_1_mib_are_accepted() {
    let node = start();
    within(MIN, async {
        let http = Http::new(&node);
        let key = "k".repeat(1024);
        assert_eq!(http.put(&key, "", r#"{"long":"key"}"#).await.status().as_u16(), 201, "1024-byte key");
        assert_eq!(http.get_body(&key).await.unwrap(), br#"{"long":"key"}"#);
        let value = format!("\"{}\"", "v".repeat((1 << 20) - 2));
        assert_eq!(value.len(), 1 << 20);
        assert_eq!(http.put("big", "", &value).await.status().as_u16(), 201, "a 1 MiB value");
        assert_eq!(http.get_body("big").await.unwrap().len(), 1 << 20);
    })
    .await;
}

#[tokio::test]
async fn concurrent_writes_to_one_key_leave_exactly_one_of_them_with_its_version_as_etag() {
    let node = start();
    within(MIN, async {
        let http = Http::new(&node);
        let writers = (0..16).map(|i| {
            let http = http.clone();
            tokio::spawn(async move {
                let body = http.put_ok("contended", "", &json!({"writer": i}).to_string()).await;
                (i, body["version"].as_str().unwrap().to_string())
            })
        });
        let mut versions = Vec::new();
        for w in writers {
            versions.push(w.await.unwrap());
        }
        let r = http.get("contended").await;
        let etag = header(&r, "etag").expect("ETag");
        let doc: Json = r.json().await.unwrap();
        let winner = doc["writer"].as_i64().expect("one writer's document");
        let (_, version) = versions.iter().find(|(i, _)| *i == winner).unwrap();
        assert_eq!(etag, format!("\"{version}\""), "the stored document carries its own write's version");
        let distinct: std::collections::HashSet<_> = versions.iter().map(|(_, v)| v).collect();
        assert_eq!(distinct.len(), versions.len(), "every write got its own version");
        assert_eq!(http.keys().await, 1);
    })
    .await;
}

#[tokio::test]
async fn size_limits_and_the_default_ttl_can_be_set_by_flags_or_geocache_environment_variables() {
    let node = start_with(
        NodeOptions::new()
            .args(["--max-key-bytes", "8"])
            .env("GEOCACHE_MAX_VALUE_BYTES", "1kb")
            .env("GEOCACHE_DEFAULT_TTL", "45s"),
    );
    within(MIN, async {
        let http = Http::new(&node);
        assert_eq!(http.put("12345678", "", "1").await.status().as_u16(), 201, "an 8-byte key fits --max-key-bytes 8");
        expect_error("9-byte key", http.put("123456789", "", "1").await, 400, "key_too_long").await;
        let fits = format!("\"{}\"", "v".repeat(1022));
        assert_eq!(http.put("fits", "", &fits).await.status().as_u16(), 201, "1 KiB fits GEOCACHE_MAX_VALUE_BYTES=1kb");
        let too_big = format!("\"{}\"", "v".repeat(1023));
        expect_error("1 KiB + 1 value", http.put("big", "", &too_big).await, 413, "value_too_large").await;
        let before = now_unix_ms();
        let put = http.put_ok("ttl", "", "{}").await;
        let after = now_unix_ms();
        let at = put["expires_at"].as_str().unwrap_or_else(|| panic!("GEOCACHE_DEFAULT_TTL applies: {put}"));
        assert_expiry_near("GEOCACHE_DEFAULT_TTL=45s", rfc3339_millis_utc("expires_at", at), before, after, 45_000);
    })
    .await;
}
