//! Observing a region: its pods, and its nodes' `/v1/status` documents read through the
//! API server's pod proxy, which works the same for member clusters.

use std::time::Duration;

use futures_util::future::join_all;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client};

use crate::error::ApplyError;
use crate::names::{HTTP_PORT, selector_labels};
use crate::status::PodObservation;
use crate::validate::{Plan, RegionPlan};
use geocache_node::StatusDocument;

/// The pods of `region`.
pub async fn list_pods(client: &Client, plan: &Plan, region: &RegionPlan) -> Result<Vec<Pod>, ApplyError> {
    let selector: Vec<String> =
        selector_labels(&plan.instance, &region.name).into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    let api: Api<Pod> = Api::namespaced(client.clone(), &plan.namespace);
    api.list(&ListParams::default().labels(&selector.join(",")))
        .await
        .map(|list| list.items)
        .map_err(|source| ApplyError::List { kind: "Pod", source })
}

/// The path of a node's status document through the API server's pod proxy (which speaks
/// HTTPS to the pod when `tls`; it does not verify the pod's certificate).
pub fn status_path(namespace: &str, pod: &str, tls: bool) -> String {
    let scheme = if tls { "https:" } else { "" };
    format!("/api/v1/namespaces/{namespace}/pods/{scheme}{pod}:{HTTP_PORT}/proxy/v1/status")
}

/// What the status needs of a pod: readiness, restarts, why its container waits.
pub fn pod_observation(pod: &Pod) -> PodObservation {
    let container = pod.status.as_ref().and_then(|s| s.container_statuses.as_ref()).and_then(|c| c.first());
    PodObservation {
        name: pod.metadata.name.clone().unwrap_or_default(),
        ready: is_ready(pod),
        restarts: container.map(|c| c.restart_count).unwrap_or(0),
        waiting: container
            .and_then(|c| c.state.as_ref())
            .and_then(|s| s.waiting.as_ref())
            .and_then(|w| w.reason.clone()),
        terminating: pod.metadata.deletion_timestamp.is_some(),
    }
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The header that carries the client password through the API server's pod proxy,
/// which consumes `Authorization` itself (the node accepts both).
pub const PASSWORD_HEADER: &str = "x-geocache-authorization";

/// Asks every ready pod for its status document, concurrently, each within `timeout`,
/// with the client password when the nodes require one.
pub async fn node_statuses(
    client: &Client,
    namespace: &str,
    pods: &[Pod],
    password: Option<&str>,
    tls: bool,
    timeout: Duration,
) -> Vec<Result<StatusDocument, String>> {
    let asks = pods.iter().filter(|p| is_ready(p)).filter_map(|p| p.metadata.name.clone()).map(|pod| async move {
        let mut request = http::Request::get(status_path(namespace, &pod, tls));
        if let Some(password) = password {
            request = request.header(PASSWORD_HEADER, format!("Bearer {password}"));
        }
        let request = request.body(Vec::new());
        let request = match request {
            Ok(r) => r,
            Err(e) => return Err(format!("{pod}: cannot build the request: {e}")),
        };
        match tokio::time::timeout(timeout, client.request_text(request)).await {
            Err(_) => Err(format!("{pod}: no answer within {}s", timeout.as_secs())),
            Ok(Err(e)) => Err(format!("{pod}: {}", crate::error::brief(&e))),
            Ok(Ok(body)) => crate::parse_node_status(body.as_bytes())
                .map_err(|e| format!("{pod}: status document does not parse: {e}")),
        }
    });
    join_all(asks).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_status_is_read_through_the_pod_proxy_on_the_http_port() {
        assert_eq!(
            status_path("prod", "cache-eu-0", false),
            "/api/v1/namespaces/prod/pods/cache-eu-0:8080/proxy/v1/status"
        );
        assert_eq!(
            status_path("prod", "cache-eu-0", true),
            "/api/v1/namespaces/prod/pods/https:cache-eu-0:8080/proxy/v1/status"
        );
    }
}
