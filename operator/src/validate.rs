//! The validate step: a pure check of a `GeoCache` that turns it into a [`Plan`], the
//! resolved desired state the builders work from.
//!
//! It repeats the CRD's CEL rules (so an object admitted under an older CRD is reported,
//! not half applied) and adds what CEL cannot say well: sizes and TTLs parsed exactly as
//! the node parses them, host:port endpoints checked as the node checks them, and `maxMemory`
//! against the container's memory limit.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use geocache_node::duration::{parse_size, parse_ttl_ms};
use geocache_node::{PeerEntry, PeersFile};
use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::ResourceExt;

use crate::crd::{
    ClientService, ClusterRef, Fsync, GeoCache, IssuerRef, MAX_COMBINED_NAME_LEN, MAX_REGION_NAME_LEN, MAX_REGIONS,
    PullPolicy, ReplicationService, ServiceType,
};
use crate::names::{RegionNames, client_auth_secret};

/// Why a `GeoCache` cannot be applied: every problem found, each a sentence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct InvalidSpec {
    pub problems: Vec<String>,
}

impl fmt::Display for InvalidSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.problems.join("; "))
    }
}

/// The desired state of a `GeoCache`, checked and with every default resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The GeoCache's name (`app.kubernetes.io/instance`).
    pub instance: String,
    /// Its namespace; children go to the namespace of that name in every cluster.
    pub namespace: String,
    pub image: String,
    pub image_pull_policy: Option<PullPolicy>,
    pub max_memory: String,
    pub default_ttl: Option<String>,
    pub tombstone_retention: Option<String>,
    pub fsync: Fsync,
    pub regions: Vec<RegionPlan>,
    pub security: SecurityPlan,
}

/// How the nodes are secured.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SecurityPlan {
    /// Mutual TLS between nodes (`None`: off).
    pub peer_tls: Option<PeerTlsPlan>,
    /// Client passwords (`None`: off).
    pub client_auth: Option<ClientAuthPlan>,
    /// TLS on the client ports, with certificates from the same source as `peer_tls`.
    pub client_tls: bool,
}

/// Where the nodes' peer certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerTlsPlan {
    /// A CA the operator keeps for this GeoCache (Secret `<name>-ca`).
    OperatorCa,
    /// cert-manager, through this issuer.
    CertManager(IssuerRef),
}

/// Where the accepted client passwords come from: a key of a Secret in the GeoCache's
/// namespace, which the operator creates when the spec references none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuthPlan {
    pub secret: String,
    pub key: String,
    /// Whether the operator creates the Secret (with a random password).
    pub generated: bool,
}

/// One region's desired state.
#[derive(Debug, Clone, PartialEq)]
pub struct RegionPlan {
    pub name: String,
    pub names: RegionNames,
    pub replicas: i32,
    /// `None`: the operator's own cluster.
    pub cluster: Option<ClusterRef>,
    pub endpoint: Option<String>,
    pub service: ReplicationService,
    pub client_service: ClientService,
    pub resources: ResourceRequirements,
    /// The volume of each node, when persistence is on.
    pub storage: Option<VolumePlan>,
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<Toleration>,
    pub cluster_domain: String,
}

/// A node's volume.
#[derive(Debug, Clone, PartialEq)]
pub struct VolumePlan {
    pub size: Quantity,
    pub storage_class_name: Option<String>,
}

impl Plan {
    pub fn region(&self, name: &str) -> Option<&RegionPlan> {
        self.regions.iter().find(|r| r.name == name)
    }
}

impl RegionPlan {
    /// Whether both regions live in the same cluster (and so reach each other by cluster DNS).
    pub fn same_cluster(&self, other: &RegionPlan) -> bool {
        self.cluster == other.cluster
    }
}

/// The resources of a node when neither the region nor the spec sets them: the memory
/// limit leaves room above the default `maxMemory` of 512mb for the process itself.
pub fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity("100m".to_string())),
            ("memory".to_string(), Quantity("640Mi".to_string())),
        ])),
        limits: Some(BTreeMap::from([("memory".to_string(), Quantity("768Mi".to_string()))])),
        ..ResourceRequirements::default()
    }
}

/// Checks `gc` and resolves its defaults.
pub fn validate(gc: &GeoCache) -> Result<Plan, InvalidSpec> {
    let mut problems = Vec::new();
    let instance = gc.name_any();
    let namespace = gc.namespace().unwrap_or_default();
    if namespace.is_empty() {
        problems.push("the GeoCache has no namespace".to_string());
    }
    let spec = &gc.spec;

    if spec.image.trim().is_empty() {
        problems.push("image must not be empty (the cache node container image)".to_string());
    } else if spec.image.chars().any(char::is_whitespace) {
        problems.push(format!("image {:?} must not contain spaces", spec.image));
    }
    if let Err(message) = parse_size(&spec.max_memory) {
        problems.push(format!("maxMemory: {message}"));
    }
    if let Some(ttl) = &spec.default_ttl
        && let Err(message) = parse_ttl_ms(ttl)
    {
        problems.push(format!("defaultTtl: {message}"));
    }
    if let Some(retention) = &spec.tombstone_retention
        && let Err(message) = parse_ttl_ms(retention)
    {
        problems.push(format!("tombstoneRetention: {message}"));
    }
    if spec.regions.is_empty() {
        problems.push("at least one region is required".to_string());
    }
    if spec.regions.len() > MAX_REGIONS {
        problems.push(format!("at most {MAX_REGIONS} regions are supported, not {}", spec.regions.len()));
    }

    let mut seen = BTreeSet::new();
    let mut regions = Vec::with_capacity(spec.regions.len());
    for region in &spec.regions {
        let name = &region.name;
        if !seen.insert(name.as_str()) {
            problems.push(format!("region names must be unique: {name:?} appears more than once"));
        }
        if !is_dns_label(name) || name.len() > MAX_REGION_NAME_LEN {
            problems.push(format!(
                "region name {name:?} must be a DNS label of at most {MAX_REGION_NAME_LEN} characters: \
                 lowercase letters, digits and '-', starting and ending with a letter or digit"
            ));
        }
        if instance.len() + name.len() > MAX_COMBINED_NAME_LEN {
            problems.push(format!(
                "the GeoCache name {instance:?} and region name {name:?} together must be at most \
                 {MAX_COMBINED_NAME_LEN} characters"
            ));
        }
        if region.replicas < 0 {
            problems.push(format!("region {name}: replicas must be 0 or more, not {}", region.replicas));
        }
        if let Some(endpoint) = &region.endpoint
            && let Err(message) = node_accepts_addr(endpoint)
        {
            problems.push(format!("region {name}: endpoint: {message}"));
        }
        if let Some(cluster) = &region.cluster
            && !is_dns_subdomain(&cluster.kubeconfig_secret_ref.name)
        {
            problems.push(format!("region {name}: kubeconfigSecretRef.name must be the name of a Secret"));
        }
        if !is_dns_subdomain(&region.cluster_domain) {
            problems.push(format!("region {name}: clusterDomain {:?} is not a DNS name", region.cluster_domain));
        }
        let resources = region.resources.clone().or_else(|| spec.resources.clone()).unwrap_or_else(default_resources);
        if let (Ok(max_memory), Some(limit)) = (parse_size(&spec.max_memory), memory_limit(&resources))
            && max_memory >= limit
        {
            problems.push(format!(
                "region {name}: maxMemory {} must be below the memory limit of the nodes ({} bytes), \
                 or the node is killed before it evicts",
                spec.max_memory, limit
            ));
        }
        let storage = spec.persistence.enabled.then(|| {
            let overrides = region.storage.clone().unwrap_or_default();
            VolumePlan {
                size: overrides.size.unwrap_or_else(|| spec.persistence.size.clone()),
                storage_class_name: overrides
                    .storage_class_name
                    .or_else(|| spec.persistence.storage_class_name.clone()),
            }
        });
        regions.push(RegionPlan {
            name: name.clone(),
            names: RegionNames::new(&instance, name),
            replicas: region.replicas,
            cluster: region.cluster.clone(),
            endpoint: region.endpoint.clone(),
            service: region.service.clone().unwrap_or_default(),
            client_service: region.client_service.clone().unwrap_or_default(),
            resources,
            storage,
            node_selector: region.node_selector.clone().unwrap_or_default(),
            tolerations: region.tolerations.clone().unwrap_or_default(),
            cluster_domain: region.cluster_domain.clone(),
        });
    }

    // A ClusterIP replication Service cannot be reached from another cluster.
    for region in &regions {
        if region.service.type_ != ServiceType::ClusterIP || region.endpoint.is_some() {
            continue;
        }
        if let Some(other) = regions.iter().find(|o| !o.same_cluster(region)) {
            problems.push(format!(
                "region {}: a ClusterIP replication Service cannot be reached from region {} in another \
                 cluster; set endpoint or use a LoadBalancer or NodePort service",
                region.name, other.name
            ));
        }
    }

    let security = &spec.security;
    if let Some(issuer) = &security.peer_tls.issuer_ref
        && !matches!(issuer.kind.as_str(), "Issuer" | "ClusterIssuer")
    {
        problems
            .push(format!("security.peerTls.issuerRef.kind must be Issuer or ClusterIssuer, not {:?}", issuer.kind));
    }
    if let Some(secret) = &security.client_auth.password_secret_ref
        && !is_dns_subdomain(&secret.name)
    {
        problems.push("security.clientAuth.passwordSecretRef.name must be the name of a Secret".to_string());
    }
    if security.client_tls.enabled && !security.peer_tls.enabled {
        problems.push(
            "security.clientTls needs security.peerTls: its certificates come from the same CA or issuer".to_string(),
        );
    }
    let security = SecurityPlan {
        client_tls: security.client_tls.enabled && security.peer_tls.enabled,
        peer_tls: security.peer_tls.enabled.then(|| match &security.peer_tls.issuer_ref {
            Some(issuer) => PeerTlsPlan::CertManager(issuer.clone()),
            None => PeerTlsPlan::OperatorCa,
        }),
        client_auth: security.client_auth.enabled.then(|| match &security.client_auth.password_secret_ref {
            Some(r) => ClientAuthPlan { secret: r.name.clone(), key: r.key.clone(), generated: false },
            None => ClientAuthPlan { secret: client_auth_secret(&instance), key: "password".into(), generated: true },
        }),
    };

    if !problems.is_empty() {
        return Err(InvalidSpec { problems });
    }
    Ok(Plan {
        instance,
        namespace,
        image: spec.image.clone(),
        image_pull_policy: spec.image_pull_policy,
        max_memory: spec.max_memory.clone(),
        default_ttl: spec.default_ttl.clone(),
        tombstone_retention: spec.tombstone_retention.clone(),
        fsync: spec.persistence.fsync,
        regions,
        security,
    })
}

/// Whether a node would accept `addr` in its peers file: the check is the node's own.
pub fn node_accepts_addr(addr: &str) -> Result<(), String> {
    let file = PeersFile::new(vec![PeerEntry { addr: addr.to_string(), region: None, node_id: None }]);
    PeersFile::parse(file.to_json().as_bytes()).map(drop).map_err(|e| match e {
        geocache_node::membership::PeersFileError::Peer { message, .. } => message,
        other => other.to_string(),
    })
}

/// RFC 1123 label: what Kubernetes accepts as a Service name part.
pub fn is_dns_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// RFC 1123 subdomain: dot-separated labels, at most 253 characters.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn memory_limit(resources: &ResourceRequirements) -> Option<u64> {
    resources.limits.as_ref()?.get("memory").and_then(|q| parse_quantity_bytes(&q.0))
}

/// Parses a Kubernetes memory quantity (`768Mi`, `1G`, `1.5Gi`, `1e9`) into bytes; `None`
/// for forms it does not know, which then go unchecked.
pub fn parse_quantity_bytes(q: &str) -> Option<u64> {
    let q = q.trim();
    let split = q.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let value: f64 = number.parse().ok()?;
    let factor: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        "Pi" => 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0,
        s if s.starts_with('e') || s.starts_with('E') => 10f64.powi(s[1..].parse().ok()?),
        _ => return None,
    };
    let bytes = value * factor;
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{geocache, region};

    fn problems(gc: &GeoCache) -> Vec<String> {
        validate(gc).expect_err("should be invalid").problems
    }

    #[test]
    fn a_minimal_geocache_resolves_every_default() {
        let plan = validate(&geocache("cache", vec![region("eu")])).unwrap();
        assert_eq!(plan.instance, "cache");
        assert_eq!(plan.namespace, "default");
        let eu = &plan.regions[0];
        assert_eq!(eu.replicas, 3);
        assert_eq!(eu.names.base, "cache-eu");
        assert_eq!(eu.service.type_, ServiceType::LoadBalancer);
        assert_eq!(eu.resources, default_resources());
        assert_eq!(eu.storage, None);
        assert_eq!(eu.cluster_domain, "cluster.local");
    }

    #[test]
    fn a_yaml_object_without_optional_fields_gets_the_schema_defaults() {
        let gc = crate::fixtures::from_yaml(
            "
apiVersion: geocache.dev/v1alpha1
kind: GeoCache
metadata: {name: cache, namespace: prod}
spec:
  image: geocache/node:0.1.0
  regions:
    - name: eu
      replicas: 1
",
        );
        let plan = validate(&gc).unwrap();
        assert_eq!(plan.namespace, "prod");
        assert_eq!(plan.max_memory, "512mb");
        assert_eq!(plan.fsync, Fsync::EverySecond);
        assert_eq!(plan.regions[0].replicas, 1);
        assert_eq!(plan.regions[0].cluster, None);
    }

    #[test]
    fn duplicate_region_names_are_refused() {
        let p = problems(&geocache("cache", vec![region("eu"), region("eu")]));
        assert!(p.iter().any(|m| m.contains("must be unique")), "{p:?}");
    }

    #[test]
    fn region_names_that_are_not_dns_labels_are_refused() {
        for bad in ["EU", "eu_west", "-eu", "eu-", ""] {
            let p = problems(&geocache("cache", vec![region(bad)]));
            assert!(p.iter().any(|m| m.contains("DNS label")), "{bad}: {p:?}");
        }
    }

    #[test]
    fn negative_replicas_are_refused() {
        let mut gc = geocache("cache", vec![region("eu")]);
        gc.spec.regions[0].replicas = -1;
        assert!(problems(&gc).iter().any(|m| m.contains("replicas must be 0 or more")));
    }

    #[test]
    fn a_blank_image_is_refused() {
        let mut gc = geocache("cache", vec![region("eu")]);
        gc.spec.image = " ".into();
        assert!(problems(&gc).iter().any(|m| m.contains("image must not be empty")));
    }

    #[test]
    fn an_endpoint_must_be_host_and_port() {
        let mut gc = geocache("cache", vec![region("eu")]);
        gc.spec.regions[0].endpoint = Some("eu.example.com".into());
        assert!(problems(&gc).iter().any(|m| m.contains("endpoint")));
        gc.spec.regions[0].endpoint = Some("eu.example.com:7946".into());
        assert!(validate(&gc).is_ok());
    }

    #[test]
    fn sizes_and_ttls_are_parsed_as_the_node_parses_them() {
        let mut gc = geocache("cache", vec![region("eu")]);
        gc.spec.max_memory = "lots".into();
        gc.spec.default_ttl = Some("1 hour".into());
        let p = problems(&gc);
        assert!(p.iter().any(|m| m.starts_with("maxMemory")), "{p:?}");
        assert!(p.iter().any(|m| m.starts_with("defaultTtl")), "{p:?}");
        gc.spec.tombstone_retention = Some("a day".into());
        assert!(problems(&gc).iter().any(|m| m.starts_with("tombstoneRetention")));
    }

    #[test]
    fn max_memory_must_stay_below_the_memory_limit() {
        let mut gc = geocache("cache", vec![region("eu")]);
        gc.spec.max_memory = "1gb".into();
        assert!(problems(&gc).iter().any(|m| m.contains("below the memory limit")));
    }

    #[test]
    fn long_names_that_would_break_object_names_are_refused() {
        let long = "a".repeat(40);
        let p = problems(&geocache("a-rather-long-geocache-name", vec![region(&long)]));
        assert!(p.iter().any(|m| m.contains("together must be at most 50")), "{p:?}");
    }

    #[test]
    fn a_cluster_ip_replication_service_needs_all_regions_in_one_cluster() {
        let mut gc = geocache("cache", vec![region("eu"), region("us")]);
        gc.spec.regions[0].service = Some(ReplicationService { type_: ServiceType::ClusterIP, ..Default::default() });
        assert!(validate(&gc).is_ok(), "same cluster is fine");
        gc.spec.regions[1].cluster = Some(crate::fixtures::cluster("us-kubeconfig"));
        assert!(problems(&gc).iter().any(|m| m.contains("cannot be reached from region us")));
    }

    #[test]
    fn client_tls_needs_peer_tls_for_its_certificates() {
        let mut gc = geocache("cache", vec![region("eu")]);
        gc.spec.security.client_tls.enabled = true;
        assert!(validate(&gc).unwrap().security.client_tls);
        gc.spec.security.peer_tls.enabled = false;
        assert!(problems(&gc).iter().any(|m| m.starts_with("security.clientTls needs security.peerTls")));
    }

    #[test]
    fn region_settings_override_the_spec_wide_ones() {
        let mut gc = geocache("cache", vec![region("eu")]);
        gc.spec.persistence.enabled = true;
        gc.spec.regions[0].storage =
            Some(crate::crd::Storage { size: Some(Quantity("5Gi".into())), storage_class_name: Some("fast".into()) });
        let plan = validate(&gc).unwrap();
        let storage = plan.regions[0].storage.clone().unwrap();
        assert_eq!(storage.size, Quantity("5Gi".into()));
        assert_eq!(storage.storage_class_name.as_deref(), Some("fast"));
    }

    #[test]
    fn memory_quantities_parse_in_both_unit_systems() {
        assert_eq!(parse_quantity_bytes("768Mi"), Some(768 << 20));
        assert_eq!(parse_quantity_bytes("1G"), Some(1_000_000_000));
        assert_eq!(parse_quantity_bytes("1.5Gi"), Some(3 << 29));
        assert_eq!(parse_quantity_bytes("1e3"), Some(1000));
        assert_eq!(parse_quantity_bytes("12"), Some(12));
        assert_eq!(parse_quantity_bytes("lots"), None);
    }
}
