//! Reconcile-flow tests against a hand-rolled API server (`tower::service_fn`). The fake
//! only records the calls and answers them generically (applies are echoed, lists are
//! empty unless a test says otherwise): it checks the order and shape of the calls, never
//! what a real API server would do with them. Pure logic is tested where it lives.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use kube::Client;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use serde_json::{Value, json};

use super::{Context, Settings, error_policy, reconcile};
use crate::crd::{FINALIZER, GeoCache, ORPHAN_ANNOTATION};
use crate::fixtures::{cluster, geocache, region};
use crate::metrics::Metrics;

/// One call the operator made.
#[derive(Debug, Clone)]
struct Call {
    method: String,
    path: String,
    query: String,
    body: Value,
}

impl Call {
    fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

type Responder = Arc<dyn Fn(&Call) -> Option<(StatusCode, Value)> + Send + Sync>;

/// The fake API server: a log of calls, and an optional responder that overrides the
/// generic answers.
#[derive(Clone)]
struct FakeApi {
    calls: Arc<Mutex<Vec<Call>>>,
    responder: Responder,
}

impl FakeApi {
    fn new() -> Self {
        Self::with(|_| None)
    }

    fn with(responder: impl Fn(&Call) -> Option<(StatusCode, Value)> + Send + Sync + 'static) -> Self {
        FakeApi { calls: Arc::default(), responder: Arc::new(responder) }
    }

    fn client(&self) -> Client {
        let api = self.clone();
        let service = tower::service_fn(move |req: Request<kube::client::Body>| {
            let api = api.clone();
            async move {
                let (parts, body) = req.into_parts();
                let bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                let call = Call {
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_string(),
                    query: parts.uri.query().unwrap_or_default().to_string(),
                    body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                };
                let (status, answer) = (api.responder)(&call).unwrap_or_else(|| generic_answer(&call));
                api.calls.lock().unwrap().push(call);
                let response = Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(answer.to_string())))
                    .unwrap();
                Ok::<_, Infallible>(response)
            }
        });
        Client::new(service, "default")
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn lines(&self) -> Vec<String> {
        self.calls().iter().map(Call::line).collect()
    }
}

fn not_found() -> (StatusCode, Value) {
    (
        StatusCode::NOT_FOUND,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
               "message": "not found"}),
    )
}

fn generic_answer(call: &Call) -> (StatusCode, Value) {
    match call.method.as_str() {
        "GET" if call.path.contains("/secrets/") => not_found(),
        "GET" if call.path.contains("/proxy/") => not_found(),
        "GET" => (StatusCode::OK, json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": []})),
        "PATCH" if call.path.contains("/geocaches/") => {
            // finalizer patches and status applies answer with the stored object
            let mut object = json!({
                "apiVersion": "geocache.dev/v1alpha1", "kind": "GeoCache",
                "metadata": {"name": "cache", "namespace": "default"},
                "spec": {"image": "geocache/node:0.1.0", "regions": []}
            });
            if let Some(status) = call.body.get("status") {
                object["status"] = status.clone();
            }
            (StatusCode::OK, object)
        }
        "PATCH" | "POST" | "PUT" => {
            let mut object = call.body.clone();
            if !object.is_object() {
                object = json!({"metadata": {"name": "patched", "namespace": "default"}});
            }
            (StatusCode::OK, object)
        }
        "DELETE" => (StatusCode::OK, json!({"kind": "Status", "apiVersion": "v1", "status": "Success"})),
        _ => not_found(),
    }
}

fn context(api: &FakeApi) -> Arc<Context> {
    Arc::new(Context::new(api.client(), Arc::new(Metrics::default()), Settings::default()))
}

fn finalized(mut gc: GeoCache) -> GeoCache {
    gc.metadata.finalizers = Some(vec![FINALIZER.to_string()]);
    gc
}

fn guard(gc: GeoCache) -> Arc<DeserializeGuard<GeoCache>> {
    Arc::new(DeserializeGuard(Ok(gc)))
}

async fn run(api: &FakeApi, gc: GeoCache) -> Result<Action, crate::Error> {
    let ctx = context(api);
    tokio::time::timeout(Duration::from_secs(10), reconcile(guard(gc), ctx)).await.expect("reconcile finished in time")
}

fn status_patch(api: &FakeApi) -> Option<Value> {
    api.calls().into_iter().find(|c| c.path == format!("{GC_PATH}/status")).map(|c| c.body["status"].clone())
}

const GC_PATH: &str = "/apis/geocache.dev/v1alpha1/namespaces/default/geocaches/cache";

#[tokio::test]
async fn a_new_geocache_first_gets_the_finalizer_and_nothing_else() {
    let api = FakeApi::new();
    let action = run(&api, geocache("cache", vec![region("eu")])).await.unwrap();
    assert_eq!(api.lines(), vec![format!("PATCH {GC_PATH}")]);
    assert_eq!(api.calls()[0].body[1]["path"], "/metadata/finalizers");
    assert_eq!(action, Action::await_change());
}

#[tokio::test]
async fn a_region_is_applied_services_first_then_peers_file_statefulset_and_budget_then_status() {
    let api = FakeApi::new();
    let action = run(&api, finalized(geocache("cache", vec![region("eu")]))).await.unwrap();
    assert_eq!(
        api.lines(),
        vec![
            // the GeoCache's CA and client password, made the first time
            "GET /api/v1/namespaces/default/secrets/cache-ca",
            "PATCH /api/v1/namespaces/default/secrets/cache-ca",
            "GET /api/v1/namespaces/default/secrets/cache-client-auth",
            // Not there yet: does a region of this cluster hold the password (deleted by mistake)?
            "GET /api/v1/namespaces/default/secrets/cache-eu-client-auth",
            "PATCH /api/v1/namespaces/default/secrets/cache-client-auth",
            "PATCH /api/v1/namespaces/default/services/cache-eu-peers",
            "PATCH /api/v1/namespaces/default/services/cache-eu",
            "PATCH /api/v1/namespaces/default/services/cache-eu-replication",
            "GET /api/v1/namespaces/default/pods",
            // the region's certificate (issued: there was none) and passwords
            "GET /api/v1/namespaces/default/secrets/cache-eu-peer-tls",
            "PATCH /api/v1/namespaces/default/secrets/cache-eu-peer-tls",
            "PATCH /api/v1/namespaces/default/secrets/cache-eu-client-auth",
            "PATCH /api/v1/namespaces/default/configmaps/cache-eu-peers",
            "PATCH /apis/apps/v1/namespaces/default/statefulsets/cache-eu",
            "PATCH /apis/policy/v1/namespaces/default/poddisruptionbudgets/cache-eu",
            "GET /apis/apps/v1/namespaces/default/statefulsets",
            "GET /apis/policy/v1/namespaces/default/poddisruptionbudgets",
            "GET /api/v1/namespaces/default/services",
            "GET /api/v1/namespaces/default/configmaps",
            "GET /api/v1/namespaces/default/secrets",
            &format!("PATCH {GC_PATH}/status"),
            "POST /api/v1/namespaces/default/events",
        ]
    );
    let calls = api.calls();
    for apply in calls.iter().filter(|c| c.method == "PATCH") {
        assert!(apply.query.contains("fieldManager=geocache-operator"), "{}: {}", apply.path, apply.query);
        assert!(apply.query.contains("force=true"), "{}: {}", apply.path, apply.query);
    }
    let sts = &calls.iter().find(|c| c.path.ends_with("/statefulsets/cache-eu")).unwrap().body;
    assert_eq!(sts["metadata"]["ownerReferences"][0]["kind"], "GeoCache");
    assert_eq!(sts["metadata"]["ownerReferences"][0]["controller"], true);
    let status = status_patch(&api).unwrap();
    assert_eq!(status["ready"], "0/1");
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(calls.last().unwrap().body["reason"], "RegionCreated");
    assert_eq!(calls.last().unwrap().body["message"], "region eu created with 3 nodes");
    // A new status: look again soon, when the nodes' view has settled.
    assert_eq!(action, Action::requeue(Settings::default().requeue_settling));
}

#[tokio::test]
async fn the_sweep_of_removed_regions_selects_by_label_keeping_the_wanted_ones() {
    let api = FakeApi::new();
    run(&api, finalized(geocache("cache", vec![region("eu"), region("us")]))).await.unwrap();
    let list = api.calls().into_iter().find(|c| c.path == "/apis/apps/v1/namespaces/default/statefulsets").unwrap();
    assert!(list.query.contains("labelSelector="), "{}", list.query);
    assert!(list.query.contains("notin"), "{}", list.query);
    assert!(list.query.contains("eu%2Cus") || list.query.contains("eu,us"), "{}", list.query);
}

#[tokio::test]
async fn a_removed_regions_objects_are_deleted() {
    let api = FakeApi::with(|call| {
        (call.method == "GET" && call.path == "/apis/apps/v1/namespaces/default/statefulsets").then(|| {
            (
                StatusCode::OK,
                json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList", "metadata": {},
                       "items": [{"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                                  "metadata": {"name": "cache-us", "namespace": "default"}}]}),
            )
        })
    });
    run(&api, finalized(geocache("cache", vec![region("eu")]))).await.unwrap();
    assert!(api.lines().contains(&"DELETE /apis/apps/v1/namespaces/default/statefulsets/cache-us".to_string()));
}

#[tokio::test]
async fn an_invalid_spec_is_reported_in_status_and_events_and_nothing_is_applied() {
    let api = FakeApi::new();
    let gc = finalized(geocache("cache", vec![region("eu"), region("eu")]));
    let ctx = context(&api);
    let error = reconcile(guard(gc.clone()), ctx.clone()).await.unwrap_err();
    assert_eq!(error.category(), "invalid_spec");
    assert_eq!(api.lines(), vec![format!("PATCH {GC_PATH}/status"), "POST /api/v1/namespaces/default/events".into()]);
    let status = status_patch(&api).unwrap();
    let degraded = status["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Degraded").unwrap();
    assert_eq!(degraded["reason"], "InvalidSpec");
    assert!(degraded["message"].as_str().unwrap().contains("must be unique"));
    assert_eq!(api.calls()[1].body["reason"], "InvalidSpec");
    assert_eq!(error_policy(guard(gc), &error, ctx), Action::await_change());
}

#[tokio::test]
async fn a_member_cluster_without_its_secret_is_reported_while_the_other_regions_are_applied() {
    let api = FakeApi::new();
    let mut gc = finalized(geocache("cache", vec![region("eu"), region("us")]));
    gc.spec.regions[1].cluster = Some(cluster("us-kubeconfig"));
    let ctx = context(&api);
    let error = reconcile(guard(gc.clone()), ctx.clone()).await.unwrap_err();
    assert_eq!(error.category(), "kubeconfig_secret");
    let lines = api.lines();
    assert!(lines.contains(&"GET /api/v1/namespaces/default/secrets/us-kubeconfig".to_string()), "{lines:#?}");
    assert!(lines.contains(&"PATCH /apis/apps/v1/namespaces/default/statefulsets/cache-eu".to_string()));
    assert!(!lines.iter().any(|l| l.contains("cache-us")), "{lines:#?}");
    let status = status_patch(&api).unwrap();
    let degraded = status["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Degraded").unwrap();
    assert_eq!(degraded["status"], "True");
    assert!(degraded["message"].as_str().unwrap().contains("us: kubeconfig secret default/us-kubeconfig not found"));
    // transient: retried after a delay (which grows with each failed retry, not with each
    // event-triggered failure in between: see controller::backoff)
    let first = error_policy(guard(gc.clone()), &error, ctx.clone());
    assert_eq!(first, Action::requeue(Duration::from_secs(5)));
    let second = error_policy(guard(gc), &error, ctx);
    assert_ne!(second, Action::await_change(), "a transient error is retried");
    assert_ne!(second, Action::requeue(Duration::from_secs(10)), "a failure before the retry does not double it");
}

#[tokio::test]
async fn an_unchanged_status_is_not_written_again() {
    let first = FakeApi::new();
    run(&first, finalized(geocache("cache", vec![region("eu")]))).await.unwrap();
    let written: crate::crd::GeoCacheStatus = serde_json::from_value(status_patch(&first).unwrap()).unwrap();

    let second = FakeApi::new();
    let mut gc = finalized(geocache("cache", vec![region("eu")]));
    gc.status = Some(written);
    run(&second, gc).await.unwrap();
    assert!(status_patch(&second).is_none(), "{:#?}", second.lines());
    assert!(!second.lines().iter().any(|l| l.contains("/events")), "no transition, no event");
}

#[tokio::test]
async fn node_status_is_read_through_the_pod_proxy_of_ready_pods() {
    let api = FakeApi::with(|call| {
        if call.method == "GET" && call.path == "/api/v1/namespaces/default/pods" {
            return Some((
                StatusCode::OK,
                json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [
                    {"metadata": {"name": "cache-eu-0"}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}},
                    {"metadata": {"name": "cache-eu-1"}, "status": {"conditions": [{"type": "Ready", "status": "False"}]}}
                ]}),
            ));
        }
        call.path.ends_with("/proxy/v1/status").then(|| {
            (
                StatusCode::OK,
                json!({"node_id": "cache-eu-0", "region": "eu", "version": "0.1.0", "uptime_s": 5, "keys": 1,
                       "memory_bytes": 10, "ready": true,
                       "peers": [{"node_id": "cache-eu-1", "region": "eu", "addr": "x:7946", "state": "up",
                                  "last_seen_ms_ago": 3, "lag": {"writes": 1, "ms": 42}}]}),
            )
        })
    });
    run(&api, finalized(geocache("cache", vec![region("eu")]))).await.unwrap();
    let proxied: Vec<String> = api.lines().into_iter().filter(|l| l.contains("/proxy/")).collect();
    assert_eq!(proxied, vec!["GET /api/v1/namespaces/default/pods/cache-eu-0:8080/proxy/v1/status"]);
    let status = status_patch(&api).unwrap();
    assert_eq!(status["regions"][0]["maxLagMs"], 42);
    assert_eq!(status["regions"][0]["peersUp"], 1);
    assert_eq!(status["maxLag"], "42ms");
}

fn deleted(mut gc: GeoCache) -> GeoCache {
    gc.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
    gc
}

#[tokio::test]
async fn deleting_a_geocache_whose_member_cluster_secret_is_gone_releases_the_finalizer() {
    let api = FakeApi::new();
    let mut gc = finalized(geocache("cache", vec![region("eu"), region("us")]));
    gc.spec.regions[1].cluster = Some(cluster("us-kubeconfig"));
    let action = run(&api, deleted(gc)).await.unwrap();
    assert_eq!(
        api.lines(),
        vec![
            "GET /api/v1/namespaces/default/secrets/us-kubeconfig".to_string(),
            "POST /api/v1/namespaces/default/events".to_string(),
            format!("PATCH {GC_PATH}"),
        ]
    );
    assert_eq!(api.calls()[1].body["reason"], "ClusterForgotten");
    assert_eq!(api.calls()[2].body[1]["op"], "remove");
    assert_eq!(action, Action::await_change());
}

#[tokio::test]
async fn the_orphan_annotation_deletes_without_touching_member_clusters() {
    let api = FakeApi::new();
    let mut gc = finalized(geocache("cache", vec![region("us")]));
    gc.spec.regions[0].cluster = Some(cluster("us-kubeconfig"));
    gc.metadata.annotations = Some([(ORPHAN_ANNOTATION.to_string(), "true".to_string())].into());
    run(&api, deleted(gc)).await.unwrap();
    assert!(!api.lines().iter().any(|l| l.contains("/secrets/")), "{:#?}", api.lines());
    assert_eq!(api.lines().last().unwrap(), &format!("PATCH {GC_PATH}"));
}

#[tokio::test]
async fn a_member_cluster_that_cannot_be_reached_keeps_the_finalizer_and_says_how_to_force_it() {
    let kubeconfig = "apiVersion: v1\nkind: Config\nclusters:\n- name: us\n  cluster: {server: 'https://127.0.0.1:1'}\n\
                      users:\n- name: u\n  user: {token: t}\ncontexts:\n- name: us\n  context: {cluster: us, user: u}\n\
                      current-context: us\n";
    let secret = json!({"apiVersion": "v1", "kind": "Secret",
                        "metadata": {"name": "us-kubeconfig", "namespace": "default", "resourceVersion": "1"},
                        "data": {"kubeconfig": base64(kubeconfig)}});
    let api = FakeApi::with(move |call| call.path.contains("/secrets/").then(|| (StatusCode::OK, secret.clone())));
    let mut gc = finalized(geocache("cache", vec![region("us")]));
    gc.spec.regions[0].cluster = Some(cluster("us-kubeconfig"));
    let error = run(&api, deleted(gc)).await.unwrap_err();
    assert!(matches!(error, crate::Error::Cleanup(_)), "{error}");
    let event = api.calls().into_iter().find(|c| c.path.ends_with("/events")).unwrap();
    assert_eq!(event.body["reason"], "CleanupFailed");
    assert!(event.body["message"].as_str().unwrap().contains(ORPHAN_ANNOTATION));
    assert!(event.body["lastTimestamp"].is_string() && event.body["count"] == 1, "{}", event.body);
    assert!(!api.lines().contains(&format!("PATCH {GC_PATH}")), "the finalizer stays");
}

fn base64(text: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = text.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A member cluster's API server on loopback, answering like [`FakeApi`], whose
/// replication Services already have a load balancer address.
async fn member_cluster() -> (String, Arc<Mutex<Vec<Call>>>) {
    use warp::Filter;
    let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
    let log = calls.clone();
    let route = warp::method()
        .and(warp::path::full())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::body::bytes())
        .map(move |method: http::Method, path: warp::path::FullPath, query: String, body: Bytes| {
            let call = Call {
                method: method.to_string(),
                path: path.as_str().to_string(),
                query,
                body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            };
            let (status, mut answer) = generic_answer(&call);
            if call.method == "PATCH" && call.path.ends_with("-replication") {
                answer["status"] = json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.50"}]}});
            }
            log.lock().unwrap().push(call);
            warp::reply::with_status(warp::reply::json(&answer), status)
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(warp::serve(route).incoming(listener).run());
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: us\n  cluster: {{server: 'http://{addr}'}}\n\
         users:\n- name: u\n  user: {{token: t}}\ncontexts:\n- name: us\n  context: {{cluster: us, user: u}}\n\
         current-context: us\n"
    );
    (kubeconfig, calls)
}

#[tokio::test]
async fn a_member_cluster_region_is_applied_there_unowned_and_its_load_balancer_feeds_the_other_peers_files() {
    let (kubeconfig, remote_calls) = member_cluster().await;
    let secret = json!({"apiVersion": "v1", "kind": "Secret",
                        "metadata": {"name": "us-kubeconfig", "namespace": "default", "resourceVersion": "7"},
                        "data": {"kubeconfig": base64(&kubeconfig)}});
    let local = FakeApi::with(move |call| {
        call.path.ends_with("/secrets/us-kubeconfig").then(|| (StatusCode::OK, secret.clone()))
    });
    let mut gc = finalized(geocache("cache", vec![region("eu"), region("us")]));
    gc.spec.regions[1].cluster = Some(cluster("us-kubeconfig"));
    run(&local, gc).await.unwrap();

    let remote: Vec<Call> = remote_calls.lock().unwrap().clone();
    let remote_sts =
        remote.iter().find(|c| c.path == "/apis/apps/v1/namespaces/default/statefulsets/cache-us").unwrap();
    assert!(remote_sts.body["metadata"].get("ownerReferences").is_none(), "no owner across clusters");
    assert!(!local.lines().iter().any(|l| l.contains("cache-us")), "nothing of us in the operator's cluster");

    let eu_peers = local.calls().into_iter().find(|c| c.path.ends_with("/configmaps/cache-eu-peers")).unwrap();
    let eu_file = eu_peers.body["data"]["peers.json"].as_str().unwrap().to_string();
    assert!(eu_file.contains("\"203.0.113.50:7946\""), "{eu_file}");

    let status = status_patch(&local).unwrap();
    assert_eq!(status["regions"][1]["endpoint"], "203.0.113.50:7946");
    assert_eq!(status["memberClusters"][0]["kubeconfigSecretRef"]["name"], "us-kubeconfig");
    let progressing = status["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Progressing").unwrap();
    assert_eq!(progressing["reason"], "WaitingForEndpoints", "eu's load balancer has no address yet");
}

#[tokio::test]
async fn a_region_certificate_that_is_still_good_is_not_issued_again_and_the_ca_is_kept() {
    let first = FakeApi::new();
    run(&first, finalized(geocache("cache", vec![region("eu")]))).await.unwrap();
    let stored =
        |path: &str| first.calls().into_iter().find(|c| c.method == "PATCH" && c.path.ends_with(path)).unwrap().body;
    let (ca, cert, password) =
        (stored("/secrets/cache-ca"), stored("/secrets/cache-eu-peer-tls"), stored("/secrets/cache-client-auth"));
    assert_eq!(
        cert["metadata"]["annotations"]["geocache.dev/dns-names"].as_str().map(|n| n.contains("cache-eu-peers")),
        Some(true)
    );
    assert!(password["data"]["password"].as_str().is_some_and(|p| !p.is_empty()));

    let second = FakeApi::with(move |call| {
        let answer = |v: &Value| Some((StatusCode::OK, v.clone()));
        match (call.method.as_str(), call.path.rsplit('/').next()) {
            ("GET", Some("cache-ca")) => answer(&ca),
            ("GET", Some("cache-eu-peer-tls")) => answer(&cert),
            ("GET", Some("cache-client-auth")) => answer(&password),
            _ => None,
        }
    });
    run(&second, finalized(geocache("cache", vec![region("eu")]))).await.unwrap();
    let lines = second.lines();
    for kept in ["secrets/cache-ca", "secrets/cache-eu-peer-tls", "secrets/cache-client-auth"] {
        assert!(
            !lines.contains(&format!("PATCH /api/v1/namespaces/default/{kept}")),
            "{kept} written again: {lines:#?}"
        );
    }
    // The region's passwords are the generated one; the nodes' status is read with it.
    let region_auth = second.calls().into_iter().find(|c| c.path.ends_with("/secrets/cache-eu-client-auth")).unwrap();
    assert_eq!(region_auth.body["data"]["passwords"], stored("/secrets/cache-client-auth")["data"]["password"]);
}

#[tokio::test]
async fn with_a_cert_manager_issuer_the_operator_requests_a_certificate_and_keeps_no_ca() {
    let api = FakeApi::new();
    let mut gc = finalized(geocache("cache", vec![region("eu")]));
    gc.spec.security.peer_tls.issuer_ref = Some(crate::crd::IssuerRef {
        name: "fleet-ca".into(),
        kind: "ClusterIssuer".into(),
        group: "cert-manager.io".into(),
    });
    run(&api, gc).await.unwrap();
    let lines = api.lines();
    assert!(
        lines.contains(&"PATCH /apis/cert-manager.io/v1/namespaces/default/certificates/cache-eu-peer".to_string())
    );
    assert!(!lines.iter().any(|l| l.contains("cache-ca") || l.contains("cache-eu-peer-tls")), "{lines:#?}");
}

#[tokio::test]
async fn a_missing_password_secret_is_reported_and_nothing_is_applied() {
    let api = FakeApi::new();
    let mut gc = finalized(geocache("cache", vec![region("eu")]));
    gc.spec.security.client_auth.password_secret_ref =
        Some(crate::crd::PasswordSecretRef { name: "mine".into(), key: "passwords".into() });
    let error = run(&api, gc).await.unwrap_err();
    assert_eq!(error.category(), "password_secret");
    assert!(error.to_string().contains("default/mine"), "{error}");
    let lines = api.lines();
    assert!(!lines.iter().any(|l| l.contains("statefulsets")), "{lines:#?}");
    let event = api.calls().into_iter().find(|c| c.path.ends_with("/events")).unwrap();
    assert_eq!(event.body["reason"], "SecurityFailed");
}

#[tokio::test]
async fn a_deleted_client_password_secret_is_restored_with_the_password_the_nodes_accept() {
    let api = FakeApi::with(|call| {
        (call.method == "GET" && call.path == "/api/v1/namespaces/default/secrets/cache-eu-client-auth").then(|| {
            (
                StatusCode::OK,
                json!({"apiVersion": "v1", "kind": "Secret",
                       "metadata": {"name": "cache-eu-client-auth", "namespace": "default"},
                       "data": {"passwords": base64("s3cret\nold\n")}}),
            )
        })
    });
    run(&api, finalized(geocache("cache", vec![region("eu")]))).await.unwrap();
    let restored = api
        .calls()
        .into_iter()
        .find(|c| c.method == "PATCH" && c.path == "/api/v1/namespaces/default/secrets/cache-client-auth")
        .expect("the password Secret is applied again");
    assert_eq!(restored.body["data"]["password"], base64("s3cret"));
}

#[test]
fn a_secret_maps_to_the_geocaches_that_own_or_name_it_in_its_namespace() {
    use kube::api::ObjectMeta;
    let mut named = geocache("orders", vec![region("eu"), region("us")]);
    named.spec.regions[1].cluster = Some(cluster("us-kubeconfig"));
    let owner = geocache("cache", vec![region("eu")]);
    let geocaches = vec![named, owner];
    let secret = |name: &str, namespace: &str, instance: Option<&str>| ObjectMeta {
        name: Some(name.into()),
        namespace: Some(namespace.into()),
        labels: instance
            .map(|i| std::collections::BTreeMap::from([("app.kubernetes.io/instance".to_string(), i.to_string())])),
        ..ObjectMeta::default()
    };
    let names = |meta: ObjectMeta| -> Vec<String> {
        super::geocaches_of_secret(&meta, &geocaches).into_iter().map(|r| r.name).collect()
    };
    assert_eq!(names(secret("us-kubeconfig", "default", None)), ["orders"]);
    assert_eq!(names(secret("cache-client-auth", "default", Some("cache"))), ["cache"]);
    assert!(names(secret("us-kubeconfig", "elsewhere", None)).is_empty(), "another namespace");
    assert!(names(secret("unrelated", "default", None)).is_empty());
}
