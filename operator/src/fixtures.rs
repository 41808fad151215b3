//! Test fixtures: `GeoCache` objects built in code or parsed from YAML.

use kube::api::ObjectMeta;

use crate::crd::{ClusterRef, GeoCache, GeoCacheSpec, Persistence, RegionSpec, SecretKeyRef};

/// A GeoCache in namespace `default` with the spec's defaults, as the API server would
/// store it.
pub fn geocache(name: &str, regions: Vec<RegionSpec>) -> GeoCache {
    let mut gc = GeoCache::new(
        name,
        GeoCacheSpec {
            image: "geocache/node:0.1.0".into(),
            image_pull_policy: None,
            regions,
            default_ttl: None,
            tombstone_retention: None,
            max_memory: "512mb".into(),
            persistence: Persistence::default(),
            resources: None,
            security: Default::default(),
            placement: Default::default(),
        },
    );
    gc.metadata = ObjectMeta {
        name: Some(name.into()),
        namespace: Some("default".into()),
        uid: Some("6b1e3f9c-0000-4000-8000-000000000001".into()),
        generation: Some(1),
        ..ObjectMeta::default()
    };
    gc
}

/// A region in the operator's cluster, with the defaults.
pub fn region(name: &str) -> RegionSpec {
    RegionSpec {
        name: name.into(),
        replicas: 3,
        cluster: None,
        endpoint: None,
        service: None,
        client_service: None,
        resources: None,
        storage: None,
        node_selector: None,
        tolerations: None,
        cluster_domain: "cluster.local".into(),
        placement: Default::default(),
    }
}

/// A member cluster reached through the kubeconfig in Secret `secret`.
pub fn cluster(secret: &str) -> ClusterRef {
    ClusterRef { kubeconfig_secret_ref: SecretKeyRef { name: secret.into(), key: "kubeconfig".into() } }
}

/// Parses a GeoCache from YAML (as `kubectl apply` would send it, before defaulting).
pub fn from_yaml(yaml: &str) -> GeoCache {
    match serde_saphyr::from_str(yaml) {
        Ok(gc) => gc,
        Err(e) => panic!("fixture is not a GeoCache: {e}"),
    }
}
