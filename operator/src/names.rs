//! Names, labels and ports of the objects the operator creates, in one place.

use std::collections::BTreeMap;

/// HTTP API and probes of a node.
pub const HTTP_PORT: i32 = 8080;
/// Redis-protocol listener of a node.
pub const RESP_PORT: i32 = 6379;
/// Replication (peer) listener of a node.
pub const PEER_PORT: i32 = 7946;

/// Where the peers-file ConfigMap is mounted in a node.
pub const PEERS_DIR: &str = "/etc/geocache";
/// Key of the peers file in its ConfigMap (and file name in [`PEERS_DIR`]).
pub const PEERS_FILE_KEY: &str = "peers.json";
/// Where a node's volume is mounted when persistence is on.
pub const DATA_DIR: &str = "/var/lib/geocache";
/// Where a region's peer certificate Secret is mounted (`tls.crt`, `tls.key`, `ca.crt`).
pub const PEER_TLS_DIR: &str = "/etc/geocache-tls";
/// Where a region's client password Secret is mounted.
pub const CLIENT_AUTH_DIR: &str = "/etc/geocache-auth";
/// Where a node finds its client-port certificate and key.
pub const CLIENT_TLS_DIR: &str = "/etc/geocache-client-tls";
/// Key (and file name) of the accepted client passwords in a region's Secret.
pub const PASSWORDS_KEY: &str = "passwords";

/// The Secret of the CA the operator keeps for a GeoCache: `<name>-ca`.
pub fn ca_secret(instance: &str) -> String {
    format!("{instance}-ca")
}

/// The Secret of the client password the operator generates: `<name>-client-auth`.
pub fn client_auth_secret(instance: &str) -> String {
    format!("{instance}-client-auth")
}

pub const LABEL_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_REGION: &str = "geocache.dev/region";
/// Value of [`LABEL_NAME`].
pub const APP_NAME: &str = "geocache";
/// Value of [`LABEL_MANAGED_BY`].
pub const MANAGER: &str = "geocache-operator";

/// The names of one region's objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionNames {
    /// StatefulSet, client Service and PodDisruptionBudget: `<name>-<region>`.
    pub base: String,
    /// Headless Service of the pods and the peers-file ConfigMap: `<name>-<region>-peers`.
    pub peers: String,
    /// Service exposing the replication port to other regions: `<name>-<region>-replication`.
    pub replication: String,
    /// Secret of the region's peer certificate: `<name>-<region>-peer-tls` (and the
    /// cert-manager Certificate that fills it: `<name>-<region>-peer`).
    pub peer_tls: String,
    /// Secret of the accepted client passwords: `<name>-<region>-client-auth`.
    pub client_auth: String,
    /// Secret of the region's client-port certificate: `<name>-<region>-client-tls` (and the
    /// cert-manager Certificate that fills it: `<name>-<region>-client`).
    pub client_tls: String,
    /// ConfigMap with the CA that clients trust (`ca.crt`): `<name>-<region>-ca`.
    pub client_ca: String,
}

impl RegionNames {
    pub fn new(instance: &str, region: &str) -> Self {
        let base = format!("{instance}-{region}");
        RegionNames {
            peers: format!("{base}-peers"),
            replication: format!("{base}-replication"),
            peer_tls: format!("{base}-peer-tls"),
            client_auth: format!("{base}-client-auth"),
            client_tls: format!("{base}-client-tls"),
            client_ca: format!("{base}-ca"),
            base,
        }
    }

    /// The stable DNS name of pod `ordinal` of the region's StatefulSet.
    pub fn pod_host(&self, ordinal: i32, namespace: &str, cluster_domain: &str) -> String {
        format!("{}-{ordinal}.{}.{namespace}.svc.{cluster_domain}", self.base, self.peers)
    }

    /// The in-cluster DNS name of the replication Service, with the peer port.
    pub fn replication_service_addr(&self, namespace: &str, cluster_domain: &str) -> String {
        format!("{}.{namespace}.svc.{cluster_domain}:{PEER_PORT}", self.replication)
    }

    pub fn pod_name(&self, ordinal: i32) -> String {
        format!("{}-{ordinal}", self.base)
    }
}

/// The labels on everything the operator creates for one region (see DESIGN.md).
pub fn labels(instance: &str, region: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(instance, region);
    labels.insert(LABEL_MANAGED_BY.to_string(), MANAGER.to_string());
    labels
}

/// The labels that select one region's pods (immutable in a StatefulSet's selector).
pub fn selector_labels(instance: &str, region: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_NAME.to_string(), APP_NAME.to_string()),
        (LABEL_INSTANCE.to_string(), instance.to_string()),
        (LABEL_REGION.to_string(), region.to_string()),
    ])
}

/// A label selector for the operator's objects of `instance` in regions other than `keep`.
pub fn orphan_selector<'a>(instance: &str, keep: impl IntoIterator<Item = &'a str>) -> String {
    let mut selector = format!("{LABEL_NAME}={APP_NAME},{LABEL_INSTANCE}={instance},{LABEL_MANAGED_BY}={MANAGER}");
    let keep: Vec<&str> = keep.into_iter().collect();
    if !keep.is_empty() {
        selector.push_str(&format!(",{LABEL_REGION} notin ({})", keep.join(",")));
    }
    selector
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_objects_are_named_after_the_instance_and_the_region() {
        let names = RegionNames::new("cache", "eu");
        assert_eq!(names.base, "cache-eu");
        assert_eq!(names.peers, "cache-eu-peers");
        assert_eq!(names.replication, "cache-eu-replication");
        assert_eq!(names.pod_name(2), "cache-eu-2");
    }

    #[test]
    fn pods_get_stable_dns_names_under_the_headless_service() {
        let names = RegionNames::new("cache", "eu");
        assert_eq!(names.pod_host(0, "prod", "cluster.local"), "cache-eu-0.cache-eu-peers.prod.svc.cluster.local");
        assert_eq!(
            names.replication_service_addr("prod", "cluster.local"),
            "cache-eu-replication.prod.svc.cluster.local:7946"
        );
    }

    #[test]
    fn every_object_carries_the_design_labels() {
        let labels = labels("cache", "eu");
        assert_eq!(labels["app.kubernetes.io/name"], "geocache");
        assert_eq!(labels["app.kubernetes.io/instance"], "cache");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "geocache-operator");
        assert_eq!(labels["geocache.dev/region"], "eu");
    }

    #[test]
    fn the_orphan_selector_keeps_the_wanted_regions() {
        assert_eq!(
            orphan_selector("cache", ["eu", "us"]),
            "app.kubernetes.io/name=geocache,app.kubernetes.io/instance=cache,\
             app.kubernetes.io/managed-by=geocache-operator,geocache.dev/region notin (eu,us)"
        );
        assert!(!orphan_selector("cache", []).contains("notin"));
    }
}
