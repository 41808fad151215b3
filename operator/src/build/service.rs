//! A region's three Services: headless for the pods' stable names, client for
//! applications, and replication for the other regions.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::metadata;
use crate::crd::ServiceType;
use crate::names::{HTTP_PORT, PEER_PORT, RESP_PORT, selector_labels};
use crate::validate::{Plan, RegionPlan};

/// The headless Service that gives every node a stable DNS name
/// (`<pod>.<name>-<region>-peers.<ns>.svc.<domain>`). Not-ready pods are published too:
/// nodes must find each other before they are ready.
pub fn build_peers_service(plan: &Plan, region: &RegionPlan, owner: Option<&OwnerReference>) -> Service {
    Service {
        metadata: metadata(plan, region, &region.names.peers, owner),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(&plan.instance, &region.name)),
            ports: Some(vec![port("peer", PEER_PORT), port("http", HTTP_PORT)]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The region's address for applications: HTTP and the Redis protocol, on ready nodes;
/// a `ClusterIP` unless the region's `clientService` says otherwise.
pub fn build_client_service(plan: &Plan, region: &RegionPlan, owner: Option<&OwnerReference>) -> Service {
    Service {
        metadata: annotated(metadata(plan, region, &region.names.base, owner), &region.client_service.annotations),
        spec: Some(ServiceSpec {
            type_: Some(region.client_service.type_.as_str().into()),
            selector: Some(selector_labels(&plan.instance, &region.name)),
            ports: Some(vec![port("http", HTTP_PORT), port("resp", RESP_PORT)]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The Service that exposes the replication port to the other regions: a load balancer
/// by default, or what the region's `service` says.
pub fn build_replication_service(plan: &Plan, region: &RegionPlan, owner: Option<&OwnerReference>) -> Service {
    let type_ = region.service.type_;
    Service {
        metadata: annotated(metadata(plan, region, &region.names.replication, owner), &region.service.annotations),
        spec: Some(ServiceSpec {
            type_: Some(type_.as_str().into()),
            selector: Some(selector_labels(&plan.instance, &region.name)),
            ports: Some(vec![port("peer", PEER_PORT)]),
            // Keep client source addresses and skip a second hop where the platform allows it.
            external_traffic_policy: (type_ != ServiceType::ClusterIP).then(|| "Local".into()),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// `meta` with the annotations a region's spec gives its Service (none: none).
fn annotated(mut meta: ObjectMeta, annotations: &BTreeMap<String, String>) -> ObjectMeta {
    if !annotations.is_empty() {
        meta.annotations = Some(annotations.clone());
    }
    meta
}

fn port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::test_support::{plan_of, two_region_plan};
    use crate::crd::{ClientService, ReplicationService};
    use crate::fixtures::{geocache, region};
    use crate::names::labels;

    fn ports(svc: &Service) -> Vec<(String, i32)> {
        svc.spec.iter().flat_map(|s| s.ports.iter().flatten()).map(|p| (p.name.clone().unwrap(), p.port)).collect()
    }

    #[test]
    fn the_peers_service_is_headless_and_publishes_pods_before_they_are_ready() {
        let plan = two_region_plan();
        let svc = build_peers_service(&plan, &plan.regions[0], None);
        assert_eq!(svc.metadata.name.as_deref(), Some("cache-eu-peers"));
        let spec = svc.spec.clone().unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
        assert_eq!(spec.selector, Some(selector_labels("cache", "eu")));
        assert!(ports(&svc).contains(&("peer".into(), 7946)));
    }

    #[test]
    fn the_client_service_serves_http_and_redis_on_the_region_name() {
        let plan = two_region_plan();
        let svc = build_client_service(&plan, &plan.regions[1], None);
        assert_eq!(svc.metadata.name.as_deref(), Some("cache-us"));
        assert_eq!(ports(&svc), vec![("http".into(), 8080), ("resp".into(), 6379)]);
        assert_eq!(svc.metadata.labels, Some(labels("cache", "us")));
        assert_eq!(svc.spec.unwrap().type_.as_deref(), Some("ClusterIP"), "applications in the cluster, by default");
        assert_eq!(svc.metadata.annotations, None);
    }

    #[test]
    fn the_client_service_takes_the_type_and_annotations_of_the_region_s_client_service() {
        let mut gc = geocache("cache", vec![region("eu")]);
        gc.spec.regions[0].client_service = Some(ClientService {
            type_: ServiceType::LoadBalancer,
            annotations: [("lb.example.com/internal".to_string(), "true".to_string())].into(),
        });
        let plan = plan_of(&gc);
        let svc = build_client_service(&plan, &plan.regions[0], None);
        assert_eq!(svc.spec.unwrap().type_.as_deref(), Some("LoadBalancer"));
        assert_eq!(svc.metadata.annotations.unwrap()["lb.example.com/internal"], "true");
    }

    #[test]
    fn the_replication_service_is_a_load_balancer_by_default() {
        let plan = two_region_plan();
        let svc = build_replication_service(&plan, &plan.regions[0], None);
        assert_eq!(svc.metadata.name.as_deref(), Some("cache-eu-replication"));
        let spec = svc.spec.clone().unwrap();
        assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
        assert_eq!(ports(&svc), vec![("peer".into(), 7946)]);
        assert_eq!(svc.metadata.annotations, None);
    }

    #[test]
    fn the_replication_service_takes_the_type_and_annotations_of_the_spec() {
        let mut gc = geocache("cache", vec![region("eu")]);
        gc.spec.regions[0].service = Some(ReplicationService {
            type_: ServiceType::NodePort,
            annotations: [("lb.example.com/internal".to_string(), "true".to_string())].into(),
        });
        let plan = plan_of(&gc);
        let svc = build_replication_service(&plan, &plan.regions[0], None);
        assert_eq!(svc.spec.unwrap().type_.as_deref(), Some("NodePort"));
        assert_eq!(svc.metadata.annotations.unwrap()["lb.example.com/internal"], "true");
    }
}
