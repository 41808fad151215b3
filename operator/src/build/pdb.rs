//! The PodDisruptionBudget of a region: voluntary disruptions (drains, upgrades) take at
//! most one node of a region at a time.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::metadata;
use crate::names::selector_labels;
use crate::validate::{Plan, RegionPlan};

pub fn build_pdb(plan: &Plan, region: &RegionPlan, owner: Option<&OwnerReference>) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: metadata(plan, region, &region.names.base, owner),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&plan.instance, &region.name)),
                ..LabelSelector::default()
            }),
            // A node that is not ready serves nothing: let a drain evict it.
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::test_support::{owner, two_region_plan};

    #[test]
    fn the_budget_lets_one_node_of_the_region_go_at_a_time() {
        let plan = two_region_plan();
        let pdb = build_pdb(&plan, &plan.regions[0], Some(&owner()));
        assert_eq!(pdb.metadata.name.as_deref(), Some("cache-eu"));
        let spec = pdb.spec.unwrap();
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
        assert_eq!(spec.selector.unwrap().match_labels, Some(selector_labels("cache", "eu")));
        assert!(pdb.metadata.owner_references.is_some());
    }
}
