//! The build step: pure functions from a [`Plan`](crate::validate::Plan) to the Kubernetes
//! objects of one region, one file per kind. Nothing here talks to a cluster.

mod configmap;
mod pdb;
pub mod security;
mod service;
mod statefulset;

pub use configmap::{build_peers_config_map, peers_file};
pub use pdb::build_pdb;
pub use service::{build_client_service, build_peers_service, build_replication_service};
pub use statefulset::build_statefulset;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::ObjectMeta;

use crate::names::labels;
use crate::validate::{Plan, RegionPlan};

/// Every object of one region, in apply order: the Services first (the replication
/// Service's address feeds the other regions' peers files), then the peers file, the
/// StatefulSet that mounts it, and the PodDisruptionBudget that guards its pods.
#[derive(Debug, Clone, PartialEq)]
pub struct RegionServices {
    pub peers: Service,
    pub client: Service,
    pub replication: Service,
}

/// The objects of one region that depend on the other regions' endpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct RegionWorkload {
    pub config_map: ConfigMap,
    pub statefulset: StatefulSet,
    pub pdb: PodDisruptionBudget,
}

/// Builds a region's Services. `owner` is set for regions in the operator's own cluster.
pub fn build_region_services(plan: &Plan, region: &RegionPlan, owner: Option<&OwnerReference>) -> RegionServices {
    RegionServices {
        peers: build_peers_service(plan, region, owner),
        client: build_client_service(plan, region, owner),
        replication: build_replication_service(plan, region, owner),
    }
}

/// Builds a region's peers file, StatefulSet and PodDisruptionBudget.
pub fn build_region_workload(
    plan: &Plan,
    region: &RegionPlan,
    peers: &geocache_node::PeersFile,
    owner: Option<&OwnerReference>,
) -> RegionWorkload {
    RegionWorkload {
        config_map: build_peers_config_map(plan, region, peers, owner),
        statefulset: build_statefulset(plan, region, owner),
        pdb: build_pdb(plan, region, owner),
    }
}

/// Metadata of a region's object: name, namespace, the DESIGN labels and the owner.
fn metadata(plan: &Plan, region: &RegionPlan, name: &str, owner: Option<&OwnerReference>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(plan.namespace.clone()),
        labels: Some(labels(&plan.instance, &region.name)),
        owner_references: owner.map(|o| vec![o.clone()]),
        ..ObjectMeta::default()
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use kube::Resource;

    use crate::crd::GeoCache;
    use crate::fixtures::{geocache, region};
    use crate::validate::{Plan, validate};

    pub fn plan_of(gc: &GeoCache) -> Plan {
        match validate(gc) {
            Ok(plan) => plan,
            Err(e) => panic!("fixture is invalid: {e}"),
        }
    }

    pub fn two_region_plan() -> Plan {
        plan_of(&geocache("cache", vec![region("eu"), region("us")]))
    }

    pub fn owner() -> OwnerReference {
        let gc = geocache("cache", vec![region("eu")]);
        gc.controller_owner_ref(&()).expect("fixture has a name and uid")
    }
}
