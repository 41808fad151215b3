//! The ConfigMap holding a region's peers file (`geocache_node::PeersFile`): the region's
//! own pods by their stable DNS names, then every other region's replication endpoint.

use std::collections::BTreeMap;

use geocache_node::{PeerEntry, PeersFile};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use super::metadata;
use crate::names::{PEER_PORT, PEERS_FILE_KEY};
use crate::validate::{Plan, RegionPlan};

/// The peers file of `region`. `endpoints` maps each other region to its replication
/// endpoint as reachable from `region`; a region without one yet (a load balancer still
/// being provisioned) is left out until it has one.
pub fn peers_file(plan: &Plan, region: &RegionPlan, endpoints: &BTreeMap<String, String>) -> PeersFile {
    let own = (0..region.replicas).map(|ordinal| PeerEntry {
        addr: format!("{}:{PEER_PORT}", region.names.pod_host(ordinal, &plan.namespace, &region.cluster_domain)),
        region: Some(region.name.clone()),
        node_id: Some(region.names.pod_name(ordinal)),
    });
    let others = plan.regions.iter().filter(|other| other.name != region.name).filter_map(|other| {
        endpoints.get(&other.name).map(|addr| PeerEntry {
            addr: addr.clone(),
            region: Some(other.name.clone()),
            node_id: None,
        })
    });
    PeersFile::new(own.chain(others).collect())
}

pub fn build_peers_config_map(
    plan: &Plan,
    region: &RegionPlan,
    peers: &PeersFile,
    owner: Option<&OwnerReference>,
) -> ConfigMap {
    ConfigMap {
        metadata: metadata(plan, region, &region.names.peers, owner),
        data: Some(BTreeMap::from([(PEERS_FILE_KEY.to_string(), peers.to_json())])),
        ..ConfigMap::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::test_support::two_region_plan;

    #[test]
    fn the_peers_file_lists_own_pods_then_the_other_regions_endpoints() {
        let plan = two_region_plan();
        let endpoints = BTreeMap::from([("us".to_string(), "203.0.113.7:7946".to_string())]);
        let file = peers_file(&plan, &plan.regions[0], &endpoints);
        let addrs: Vec<&str> = file.peers.iter().map(|p| p.addr.as_str()).collect();
        assert_eq!(
            addrs,
            vec![
                "cache-eu-0.cache-eu-peers.default.svc.cluster.local:7946",
                "cache-eu-1.cache-eu-peers.default.svc.cluster.local:7946",
                "cache-eu-2.cache-eu-peers.default.svc.cluster.local:7946",
                "203.0.113.7:7946",
            ]
        );
        assert_eq!(file.peers[0].node_id.as_deref(), Some("cache-eu-0"));
        assert_eq!(file.peers[3].region.as_deref(), Some("us"));
        assert_eq!(file.peers[3].node_id, None);
    }

    #[test]
    fn a_region_without_a_known_endpoint_is_left_out_until_it_has_one() {
        let plan = two_region_plan();
        let file = peers_file(&plan, &plan.regions[0], &BTreeMap::new());
        assert!(file.peers.iter().all(|p| p.region.as_deref() == Some("eu")));
    }

    #[test]
    fn the_config_map_holds_a_peers_file_the_node_accepts() {
        let plan = two_region_plan();
        let endpoints = BTreeMap::from([("us".to_string(), "[2001:db8::1]:7946".to_string())]);
        let file = peers_file(&plan, &plan.regions[0], &endpoints);
        let cm = build_peers_config_map(&plan, &plan.regions[0], &file, None);
        assert_eq!(cm.metadata.name.as_deref(), Some("cache-eu-peers"));
        let text = &cm.data.unwrap()["peers.json"];
        assert_eq!(PeersFile::parse(text.as_bytes()).unwrap(), file);
    }
}
