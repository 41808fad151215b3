use std::sync::Arc;

use warp::http::StatusCode;

use super::*;
use crate::db::{Db, Limits};
use crate::metrics::Metrics;
use crate::state::{NodeInfo, NodeState};
use crate::store::{Origin, OriginTable, Store, StoreConfig};

fn state() -> Arc<NodeState> {
    let origins = Arc::new(OriginTable::new(Origin { node_id: "eu-0".into(), region: "eu".into() }));
    let db = Db::standalone(
        Store::new(StoreConfig::default(), origins),
        Limits { max_key_bytes: 16, max_value_bytes: 64 },
        Arc::new(Metrics::default()),
    );
    let state = Arc::new(NodeState::standalone(db, NodeInfo { node_id: "eu-0".into(), region: "eu".into() }, None));
    state.set_ready(true);
    state
}

async fn call(
    state: &Arc<NodeState>,
    req: warp::test::RequestBuilder,
) -> (StatusCode, serde_json::Value, warp::http::HeaderMap) {
    let res = req.reply(&http_handlers(state.clone())).await;
    let body = serde_json::from_slice(res.body()).unwrap_or(serde_json::Value::Null);
    (res.status(), body, res.headers().clone())
}

#[tokio::test]
async fn put_creates_then_replaces_and_get_returns_the_document_with_its_headers() {
    let s = state();
    let (st, body, _) =
        call(&s, warp::test::request().method("PUT").path("/v1/keys/user%2F1?ttl=1h").body(r#"{"n":1}"#)).await;
    assert_eq!(st, StatusCode::CREATED);
    assert_eq!(body["key"], "user/1");
    let version = body["version"].as_str().unwrap().to_string();
    assert!(version.ends_with("-eu-0"));
    assert!(body["expires_at"].as_str().unwrap().ends_with('Z'));
    let (st, _, _) = call(&s, warp::test::request().method("PUT").path("/v1/keys/user%2F1").body(r#"{"n":2}"#)).await;
    assert_eq!(st, StatusCode::OK);
    let (st, body, headers) = call(&s, warp::test::request().path("/v1/keys/user%2F1")).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(body, serde_json::json!({"n": 2}));
    assert_eq!(headers["x-geocache-origin-region"], "eu");
    assert!(headers.get("x-geocache-expires-at").is_none(), "a put without ttl clears the expiry");
    assert_ne!(headers["etag"].to_str().unwrap(), format!("\"{version}\""));
}

#[tokio::test]
async fn errors_have_a_code_a_message_and_the_right_status() {
    let s = state();
    let cases = [
        (warp::test::request().method("PUT").path("/v1/keys/a").body("{nope"), StatusCode::BAD_REQUEST, "invalid_json"),
        (warp::test::request().method("PUT").path("/v1/keys/").body("1"), StatusCode::BAD_REQUEST, "invalid_key"),
        (
            warp::test::request().method("PUT").path("/v1/keys/aaaaaaaaaaaaaaaaa").body("1"),
            StatusCode::BAD_REQUEST,
            "key_too_long",
        ),
        (
            warp::test::request().method("PUT").path("/v1/keys/a").body(format!("\"{}\"", "x".repeat(80))),
            StatusCode::PAYLOAD_TOO_LARGE,
            "value_too_large",
        ),
        (
            warp::test::request().method("PUT").path("/v1/keys/a?ttl=soon").body("1"),
            StatusCode::BAD_REQUEST,
            "invalid_ttl",
        ),
        (
            warp::test::request().method("PUT").path("/v1/keys/a?ack=all").body("1"),
            StatusCode::BAD_REQUEST,
            "invalid_ack",
        ),
        (
            warp::test::request().method("PUT").path("/v1/keys/a").header("content-type", "text/plain").body("1"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            warp::test::request()
                .method("PATCH")
                .path("/v1/keys/a")
                .header("content-type", "application/json")
                .body("{}"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (warp::test::request().method("GET").path("/v1/keys/missing"), StatusCode::NOT_FOUND, "not_found"),
        (warp::test::request().method("DELETE").path("/v1/keys/missing"), StatusCode::NOT_FOUND, "not_found"),
        (warp::test::request().method("POST").path("/v1/keys/a"), StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        (warp::test::request().method("POST").path("/v1/keys/a/expire"), StatusCode::BAD_REQUEST, "invalid_ttl"),
        (warp::test::request().method("GET").path("/v2/nothing"), StatusCode::NOT_FOUND, "not_found"),
    ];
    for (req, status, code) in cases {
        let (st, body, _) = call(&s, req).await;
        assert_eq!((st, body["error"]["code"].as_str()), (status, Some(code)), "{body}");
        assert!(!body["error"]["message"].as_str().unwrap().is_empty());
    }
    assert_eq!(s.db.store().len(), 0, "no bad request may change the store");
}

#[tokio::test]
async fn patch_merges_and_keeps_the_expiry() {
    let s = state();
    call(&s, warp::test::request().method("PUT").path("/v1/keys/d?ttl=1h").body(r#"{"a":1,"b":{"c":2}}"#)).await;
    let (st, body, _) = call(
        &s,
        warp::test::request()
            .method("PATCH")
            .path("/v1/keys/d")
            .header("content-type", "application/merge-patch+json")
            .body(r#"{"b":{"c":null,"d":3}}"#),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert!(body["expires_at"].is_string());
    let (_, doc, _) = call(&s, warp::test::request().path("/v1/keys/d")).await;
    assert_eq!(doc, serde_json::json!({"a":1,"b":{"d":3}}));
}

#[tokio::test]
async fn expire_sets_clears_and_expires_now() {
    let s = state();
    call(&s, warp::test::request().method("PUT").path("/v1/keys/e").body("1")).await;
    let (st, body, _) = call(&s, warp::test::request().method("POST").path("/v1/keys/e/expire?ttl=30s")).await;
    assert_eq!(st, StatusCode::OK);
    assert!(body["expires_at"].is_string());
    let (_, body, _) = call(&s, warp::test::request().method("POST").path("/v1/keys/e/expire?ttl=none")).await;
    assert!(body["expires_at"].is_null());
    let (st, _, _) = call(&s, warp::test::request().method("POST").path("/v1/keys/e/expire?ttl=0")).await;
    assert_eq!(st, StatusCode::OK);
    let (st, _, _) = call(&s, warp::test::request().path("/v1/keys/e")).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn delete_answers_no_content_then_not_found() {
    let s = state();
    call(&s, warp::test::request().method("PUT").path("/v1/keys/x").body("1")).await;
    let (st, _, _) = call(&s, warp::test::request().method("DELETE").path("/v1/keys/x")).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, _, _) = call(&s, warp::test::request().method("DELETE").path("/v1/keys/x")).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn readiness_follows_the_node_state_and_status_has_the_contract_fields() {
    let s = state();
    let (st, _, _) = call(&s, warp::test::request().path("/readyz")).await;
    assert_eq!(st, StatusCode::OK);
    s.set_ready(false);
    let (st, _, _) = call(&s, warp::test::request().path("/readyz")).await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
    let (st, _, _) = call(&s, warp::test::request().path("/healthz")).await;
    assert_eq!(st, StatusCode::OK);
    let (_, status, _) = call(&s, warp::test::request().path("/v1/status")).await;
    for field in ["node_id", "region", "version", "uptime_s", "keys", "memory_bytes", "ready", "peers"] {
        assert!(status.get(field).is_some(), "status lacks {field}: {status}");
    }
}

/// A node that requires one of `passwords` (and, with `protect_metrics`, for
/// `/metrics` too).
fn state_with_passwords(passwords: &str, protect_metrics: bool) -> Arc<NodeState> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("passwords");
    std::fs::write(&path, passwords).unwrap();
    let auth = crate::security::ClientAuth::load(&path, protect_metrics).unwrap();
    let origins = Arc::new(OriginTable::new(Origin { node_id: "eu-0".into(), region: "eu".into() }));
    let db = Db::standalone(
        Store::new(StoreConfig::default(), origins),
        Limits { max_key_bytes: 16, max_value_bytes: 64 },
        Arc::new(Metrics::default()),
    );
    let state = NodeState::standalone(db, NodeInfo { node_id: "eu-0".into(), region: "eu".into() }, None)
        .with_security(crate::security::Security { auth: Some(Arc::new(auth)), ..Default::default() });
    state.set_ready(true);
    Arc::new(state)
}

#[tokio::test]
async fn without_a_good_bearer_password_every_route_answers_401_and_changes_nothing() {
    let s = state_with_passwords("s3cret\n", false);
    let cases = [
        warp::test::request().method("PUT").path("/v1/keys/a").body("1"),
        warp::test::request().method("PUT").path("/v1/keys/a").header("authorization", "Bearer wrong").body("1"),
        warp::test::request().method("PUT").path("/v1/keys/a").header("authorization", "Basic czNjcmV0").body("1"),
        warp::test::request().path("/v1/keys/a").header("authorization", b"Bearer s3cret\xff".as_slice()),
        warp::test::request().path("/v1/status"),
        warp::test::request().path("/no/such/route"),
        warp::test::request().method("DELETE").path("/v1/keys/a").header("authorization", "Bearer  "),
    ];
    for req in cases {
        let (st, body, headers) = call(&s, req).await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "{body}");
        assert_eq!(body["error"]["code"], "unauthorized");
        assert!(headers["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
    }
    assert_eq!(s.db.store().len(), 0);
    let auth = s.security.auth.as_ref().unwrap();
    assert_eq!(auth.failures_http.load(std::sync::atomic::Ordering::Relaxed), 7);
}

#[tokio::test]
async fn an_accepted_bearer_password_opens_every_route() {
    let s = state_with_passwords("old\nnew\n", false);
    for pw in ["old", "new"] {
        let (st, _, _) = call(
            &s,
            warp::test::request()
                .method("PUT")
                .path("/v1/keys/a")
                .header("authorization", format!("bearer {pw}"))
                .body("1"),
        )
        .await;
        assert!(st.is_success(), "{pw}: {st}");
    }
    let (st, body, _) = call(&s, warp::test::request().path("/v1/status").header("authorization", "Bearer new")).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(body["node_id"], "eu-0");
    // Behind a proxy that consumes Authorization (the Kubernetes API server's pod proxy).
    let req = warp::test::request().path("/v1/status").header("x-geocache-authorization", "Bearer old");
    assert_eq!(call(&s, req).await.0, StatusCode::OK);
    let req = warp::test::request().path("/v1/status").header("x-geocache-authorization", "Bearer nope");
    assert_eq!(call(&s, req).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn health_readiness_and_metrics_stay_open_unless_metrics_auth_is_set() {
    let s = state_with_passwords("pw\n", false);
    for path in ["/healthz", "/readyz", "/metrics"] {
        let (st, _, _) = call(&s, warp::test::request().path(path)).await;
        assert_eq!(st, StatusCode::OK, "{path}");
    }
    let s = state_with_passwords("pw\n", true);
    let (st, _, _) = call(&s, warp::test::request().path("/metrics")).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let res = warp::test::request()
        .path("/metrics")
        .header("authorization", "Bearer pw")
        .reply(&http_handlers(s.clone()))
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let text = String::from_utf8_lossy(res.body()).into_owned();
    assert!(text.contains("geocache_auth_failures_total{interface=\"http\"} 1"), "{text}");
    assert!(!text.contains("pw\n") && !text.contains("\"pw\""));
    let (st, _, _) = call(&s, warp::test::request().path("/healthz")).await;
    assert_eq!(st, StatusCode::OK);
}
