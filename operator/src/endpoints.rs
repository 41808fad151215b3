//! Cross-region wiring: where each region's replication port is reached from.
//!
//! - A region with an explicit `endpoint` is reached there, from everywhere.
//! - Regions in the same cluster reach each other through the replication Service's
//!   cluster DNS name, whatever its type.
//! - From another cluster, a region is reached through its replication Service: the
//!   load balancer's ingress, or a node address and the node port.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, Service};

use crate::crd::ServiceType;
use crate::names::PEER_PORT;
use crate::validate::{Plan, RegionPlan};

/// The address other clusters reach `service` at, read from its status (load balancer) or
/// its node port and the host of one of the region's ready pods.
pub fn observed_endpoint(service: &Service, pods: &[Pod]) -> Option<String> {
    let spec = service.spec.as_ref()?;
    match spec.type_.as_deref() {
        Some("LoadBalancer") => {
            let ingress = service.status.as_ref()?.load_balancer.as_ref()?.ingress.as_ref()?.first()?;
            let host = ingress.ip.as_deref().filter(|s| !s.is_empty()).or(ingress.hostname.as_deref())?;
            Some(host_port(host, PEER_PORT))
        }
        Some("NodePort") => {
            let node_port = spec.ports.as_ref()?.iter().find_map(|p| p.node_port)?;
            let host_ip = pods.iter().filter(|p| is_ready(p)).find_map(|p| p.status.as_ref()?.host_ip.clone())?;
            Some(host_port(&host_ip, node_port))
        }
        _ => None,
    }
}

/// `host:port`, with brackets around an IPv6 address.
pub fn host_port(host: &str, port: i32) -> String {
    if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") }
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The endpoint of `region` for the other clusters and for status: explicit, else observed,
/// else (a ClusterIP Service, all regions in one cluster) its cluster DNS name.
pub fn public_endpoint(plan: &Plan, region: &RegionPlan, observed: Option<&String>) -> Option<String> {
    if let Some(endpoint) = &region.endpoint {
        return Some(endpoint.clone());
    }
    if let Some(observed) = observed {
        return Some(observed.clone());
    }
    (region.service.type_ == ServiceType::ClusterIP)
        .then(|| region.names.replication_service_addr(&plan.namespace, &region.cluster_domain))
}

/// The endpoints of the other regions as reachable from `from`. `public` holds each
/// region's public endpoint where known.
pub fn endpoints_seen_from(
    plan: &Plan,
    from: &RegionPlan,
    public: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    plan.regions
        .iter()
        .filter(|to| to.name != from.name)
        .filter_map(|to| {
            let addr = if to.endpoint.is_none() && from.same_cluster(to) {
                Some(to.names.replication_service_addr(&plan.namespace, &to.cluster_domain))
            } else {
                public.get(&to.name).cloned()
            };
            addr.map(|a| (to.name.clone(), a))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        LoadBalancerIngress, LoadBalancerStatus, PodCondition, PodStatus, ServicePort, ServiceSpec, ServiceStatus,
    };

    use super::*;
    use crate::build::test_support::{plan_of, two_region_plan};
    use crate::fixtures::{cluster, geocache, region};

    fn lb_service(ingress: Option<LoadBalancerIngress>) -> Service {
        Service {
            spec: Some(ServiceSpec { type_: Some("LoadBalancer".into()), ..Default::default() }),
            status: Some(ServiceStatus {
                load_balancer: Some(LoadBalancerStatus { ingress: ingress.map(|i| vec![i]) }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn ready_pod_on(host_ip: &str) -> Pod {
        Pod {
            status: Some(PodStatus {
                host_ip: Some(host_ip.into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_load_balancer_is_reached_at_its_ingress_address() {
        let ip = LoadBalancerIngress { ip: Some("203.0.113.9".into()), ..Default::default() };
        assert_eq!(observed_endpoint(&lb_service(Some(ip)), &[]).as_deref(), Some("203.0.113.9:7946"));
        let name = LoadBalancerIngress { hostname: Some("lb.example.com".into()), ..Default::default() };
        assert_eq!(observed_endpoint(&lb_service(Some(name)), &[]).as_deref(), Some("lb.example.com:7946"));
    }

    #[test]
    fn a_load_balancer_still_being_provisioned_has_no_endpoint() {
        assert_eq!(observed_endpoint(&lb_service(None), &[]), None);
    }

    #[test]
    fn a_node_port_is_reached_on_the_host_of_a_ready_pod() {
        let svc = Service {
            spec: Some(ServiceSpec {
                type_: Some("NodePort".into()),
                ports: Some(vec![ServicePort { port: 7946, node_port: Some(31946), ..Default::default() }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(observed_endpoint(&svc, &[]), None, "no ready pod, no host");
        assert_eq!(observed_endpoint(&svc, &[ready_pod_on("10.1.2.3")]).as_deref(), Some("10.1.2.3:31946"));
        assert_eq!(observed_endpoint(&svc, &[ready_pod_on("fd00::3")]).as_deref(), Some("[fd00::3]:31946"));
    }

    #[test]
    fn regions_in_one_cluster_reach_each_other_by_cluster_dns() {
        let plan = two_region_plan();
        let seen = endpoints_seen_from(&plan, &plan.regions[0], &BTreeMap::new());
        assert_eq!(seen["us"], "cache-us-replication.default.svc.cluster.local:7946");
        assert!(!seen.contains_key("eu"), "a region does not list itself");
    }

    #[test]
    fn regions_in_other_clusters_are_reached_at_their_public_endpoint_once_known() {
        let mut gc = geocache("cache", vec![region("eu"), region("us")]);
        gc.spec.regions[1].cluster = Some(cluster("us-kubeconfig"));
        let plan = plan_of(&gc);
        assert!(endpoints_seen_from(&plan, &plan.regions[0], &BTreeMap::new()).is_empty());
        let public = BTreeMap::from([("us".to_string(), "198.51.100.4:7946".to_string())]);
        assert_eq!(endpoints_seen_from(&plan, &plan.regions[0], &public)["us"], "198.51.100.4:7946");
    }

    #[test]
    fn an_explicit_endpoint_wins_everywhere() {
        let mut gc = geocache("cache", vec![region("eu"), region("us")]);
        gc.spec.regions[1].endpoint = Some("us.mesh.internal:7946".into());
        let plan = plan_of(&gc);
        let public = BTreeMap::from([(
            "us".to_string(),
            public_endpoint(&plan, &plan.regions[1], Some(&"203.0.113.1:7946".to_string())).unwrap(),
        )]);
        assert_eq!(public["us"], "us.mesh.internal:7946");
        assert_eq!(endpoints_seen_from(&plan, &plan.regions[0], &public)["us"], "us.mesh.internal:7946");
    }
}
