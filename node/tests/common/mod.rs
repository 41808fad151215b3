//! Shared helpers of the node's black-box tests: every test starts its own
//! `geocache-node` process on a random loopback address (see `geocache-tests`).
#![allow(dead_code, unused_imports)]

use std::future::Future;
use std::path::Path;
use std::time::Duration;

pub use geocache_tests::http::HttpResponse;
pub use geocache_tests::resp::{Frame, RespConn, encode_command};
pub use geocache_tests::{
    NodeOptions, NodeProcess, encode_key, key_path, metric_value, now_unix_ms, parse_rfc3339_ms, wait_until,
};
use serde_json::Value as Json;

/// The node binary under test.
pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_geocache-node"))
}

/// A fresh memory-only node.
pub fn start() -> NodeProcess {
    NodeProcess::start(bin(), NodeOptions::new())
}

/// A fresh node with these options.
pub fn start_with(opts: NodeOptions) -> NodeProcess {
    NodeProcess::start(bin(), opts)
}

/// Runs `f`, failing the test when it takes longer than `limit`.
pub async fn within<F: Future>(limit: Duration, f: F) -> F::Output {
    match tokio::time::timeout(limit, f).await {
        Ok(v) => v,
        Err(_) => panic!("the test did not finish within {limit:?}"),
    }
}

pub const MIN: Duration = Duration::from_secs(60);

/// An HTTP client of one node (reqwest, no proxy, 20 s per request).
#[derive(Clone)]
pub struct Http {
    pub client: reqwest::Client,
    pub base: String,
}

impl Http {
    pub fn new(node: &NodeProcess) -> Http {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(20))
            .build()
            .expect("build an HTTP client");
        Http { client, base: node.http_url("").trim_end_matches('/').to_string() }
    }

    pub fn url(&self, target: &str) -> String {
        format!("{}{}", self.base, target)
    }

    pub fn request(&self, method: reqwest::Method, target: &str) -> reqwest::RequestBuilder {
        self.client.request(method, self.url(target))
    }

    /// `PUT /v1/keys/{key}{query}` with `Content-Type: application/json`.
    pub async fn put(&self, key: &str, query: &str, body: &str) -> reqwest::Response {
        self.request(reqwest::Method::PUT, &format!("{}{query}", key_path(key)))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("PUT")
    }

    /// PUT that must succeed (200 or 201); returns the response body as JSON.
    pub async fn put_ok(&self, key: &str, query: &str, body: &str) -> Json {
        let r = self.put(key, query, body).await;
        let status = r.status().as_u16();
        let text = r.text().await.expect("PUT body");
        assert!(status == 200 || status == 201, "PUT {key}{query}: {status} {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("PUT {key}: body is not JSON ({e}): {text}"))
    }

    pub async fn get(&self, key: &str) -> reqwest::Response {
        self.request(reqwest::Method::GET, &key_path(key)).send().await.expect("GET")
    }

    /// The body of `GET key` when 200, `None` when 404; panics otherwise.
    pub async fn get_body(&self, key: &str) -> Option<Vec<u8>> {
        let r = self.get(key).await;
        match r.status().as_u16() {
            200 => Some(r.bytes().await.expect("GET body").to_vec()),
            404 => None,
            s => panic!("GET {key}: unexpected {s}: {}", r.text().await.unwrap_or_default()),
        }
    }

    pub async fn delete(&self, key: &str) -> reqwest::Response {
        self.request(reqwest::Method::DELETE, &key_path(key)).send().await.expect("DELETE")
    }

    pub async fn patch(&self, key: &str, query: &str, content_type: &str, body: &str) -> reqwest::Response {
        self.request(reqwest::Method::PATCH, &format!("{}{query}", key_path(key)))
            .header("content-type", content_type)
            .body(body.to_string())
            .send()
            .await
            .expect("PATCH")
    }

    /// `POST /v1/keys/{key}/expire{query}`.
    pub async fn expire(&self, key: &str, query: &str) -> reqwest::Response {
        self.request(reqwest::Method::POST, &format!("{}/expire{query}", key_path(key)))
            .send()
            .await
            .expect("POST expire")
    }

    pub async fn get_path(&self, target: &str) -> reqwest::Response {
        self.request(reqwest::Method::GET, target).send().await.expect("GET")
    }

    pub async fn status_doc(&self) -> Json {
        let r = self.get_path("/v1/status").await;
        assert_eq!(r.status().as_u16(), 200);
        r.json().await.expect("/v1/status is JSON")
    }

    pub async fn keys(&self) -> u64 {
        self.status_doc().await["keys"].as_u64().expect("/v1/status keys is a number")
    }

    pub async fn metrics(&self) -> String {
        let r = self.get_path("/metrics").await;
        assert_eq!(r.status().as_u16(), 200);
        r.text().await.expect("/metrics body")
    }
}

/// Asserts that `r` is an error with this status and `{"error":{"code":code,"message":...}}`
/// (a non-empty message); returns the message.
pub async fn expect_error(what: &str, r: reqwest::Response, status: u16, code: &str) -> String {
    let got = r.status().as_u16();
    let content_type = r.headers().get("content-type").map(|v| v.to_str().unwrap_or("").to_string());
    let text = r.text().await.expect("error body");
    assert_eq!(got, status, "{what}: expected status {status} ({code}), got {got} with body {text:?}");
    let body: Json =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: error body is not JSON ({e}): {text:?}"));
    assert_eq!(body["error"]["code"], code, "{what}: error code; body {text}");
    let message =
        body["error"]["message"].as_str().unwrap_or_else(|| panic!("{what}: error.message is not a string: {text}"));
    assert!(!message.trim().is_empty(), "{what}: error.message is empty: {text}");
    assert!(
        content_type.as_deref().is_some_and(|c| c.starts_with("application/json")),
        "{what}: error Content-Type is {content_type:?}, expected application/json"
    );
    message.to_string()
}

/// A multiplexed connection of the `redis` crate to the node.
pub async fn redis_conn(node: &NodeProcess) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(node.redis_url()).expect("redis URL");
    client.get_multiplexed_async_connection().await.expect("connect with the redis crate")
}

/// The header `name` of `r` as a string.
pub fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers().get(name).map(|v| v.to_str().expect("header is ASCII").to_string())
}

/// Asserts that `s` is an RFC 3339 UTC timestamp with milliseconds, e.g.
/// `2026-11-26T04:30:00.123Z`; returns it as Unix milliseconds.
pub fn rfc3339_millis_utc(what: &str, s: &str) -> u64 {
    let b = s.as_bytes();
    assert!(
        b.len() == 24 && b[19] == b'.' && b[23] == b'Z' && b[20..23].iter().all(u8::is_ascii_digit),
        "{what}: {s:?} is not RFC 3339 UTC with milliseconds like 2026-11-26T04:30:00.123Z"
    );
    parse_rfc3339_ms(s).unwrap_or_else(|| panic!("{what}: {s:?} is not RFC 3339"))
}

/// Asserts `expires_at_ms` lies `ttl_ms` after a moment between `before_ms` and
/// `after_ms` (with 1 s of slack for clock granularity).
pub fn assert_expiry_near(what: &str, expires_at_ms: u64, before_ms: u64, after_ms: u64, ttl_ms: u64) {
    let lo = (before_ms + ttl_ms).saturating_sub(1000);
    let hi = after_ms + ttl_ms + 1000;
    assert!(
        (lo..=hi).contains(&expires_at_ms),
        "{what}: expires_at {expires_at_ms} is not ttl {ttl_ms} ms after the request ([{lo}, {hi}])"
    );
}

/// The value of a sample in Prometheus text; panics when absent.
pub fn metric(text: &str, sample: &str) -> f64 {
    metric_value(text, sample).unwrap_or_else(|| panic!("metric {sample} missing from /metrics:\n{text}"))
}

/// Deterministic pseudo-random bytes (xorshift), for fuzz-like inputs that reproduce.
pub fn pseudo_random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}
