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
use k8s_openapi::api::core::v1::{
    Affinity, LocalObjectReference, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::ResourceExt;

use crate::crd::{
    ClientService, ClusterRef, Fsync, GeoCache, IssuerRef, MAX_COMBINED_NAME_LEN, MAX_REGION_NAME_LEN, MAX_REGIONS,
    Placement, PullPolicy, ReplicationService, ServiceType,
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
    /// Placement and registry settings of the pods, resolved.
    pub pod: PodPlan,
}

/// A region's pod settings: the region's own, else the GeoCache-wide ones, else defaults.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PodPlan {
    /// `None`: the default (prefer one node of the region per host).
    pub affinity: Option<Affinity>,
    /// `None`: the default spread over zones and hosts.
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
    pub image_pull_secrets: Vec<LocalObjectReference>,
    pub priority_class_name: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
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

/// The names of the Secrets of the GeoCache's namespace that `spec` refers to (member
/// clusters' kubeconfigs, the client password Secret): a change to one is a reason to
/// reconcile.
pub fn referenced_secrets(spec: &crate::crd::GeoCacheSpec) -> BTreeSet<String> {
    let kubeconfigs =
        spec.regions.iter().filter_map(|r| r.cluster.as_ref()).map(|c| c.kubeconfig_secret_ref.name.clone());
    let password = spec.security.client_auth.password_secret_ref.as_ref().map(|r| r.name.clone());
    kubeconfigs.chain(password).collect()
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
    if let Some(resources) = &spec.resources {
        quantity_problems("", resources, &mut problems);
    }
    placement_problems("", &spec.placement, &mut problems);
    if !is_quantity(&spec.persistence.size) {
        problems.push(format!("persistence.size {:?} must be a quantity such as 1Gi or 500Mi", spec.persistence.size));
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
        if let Some(size) = region.storage.as_ref().and_then(|s| s.size.as_deref())
            && !is_quantity(size)
        {
            problems.push(format!("region {name}: storage.size {size:?} must be a quantity such as 1Gi or 500Mi"));
        }
        if let Some(resources) = &region.resources {
            quantity_problems(&format!("region {name}: "), resources, &mut problems);
        }
        let resources = region
            .resources
            .as_ref()
            .or(spec.resources.as_ref())
            .map(crate::crd::Resources::to_requirements)
            .unwrap_or_else(default_resources);
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
                size: Quantity(overrides.size.unwrap_or_else(|| spec.persistence.size.clone())),
                storage_class_name: overrides
                    .storage_class_name
                    .or_else(|| spec.persistence.storage_class_name.clone()),
            }
        });
        placement_problems(&format!("region {name}: "), &region.placement, &mut problems);
        regions.push(RegionPlan {
            pod: resolve_placement(&spec.placement, &region.placement),
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

/// A region's pod settings from the GeoCache-wide and the region's own.
fn resolve_placement(wide: &Placement, own: &Placement) -> PodPlan {
    let merged = |a: &Option<BTreeMap<String, String>>, b: &Option<BTreeMap<String, String>>| {
        let mut map = a.clone().unwrap_or_default();
        map.extend(b.clone().unwrap_or_default());
        map
    };
    PodPlan {
        affinity: own.affinity.clone().or_else(|| wide.affinity.clone()),
        topology_spread_constraints: own
            .topology_spread_constraints
            .clone()
            .or_else(|| wide.topology_spread_constraints.clone()),
        image_pull_secrets: own
            .image_pull_secrets
            .clone()
            .or_else(|| wide.image_pull_secrets.clone())
            .unwrap_or_default(),
        priority_class_name: own.priority_class_name.clone().or_else(|| wide.priority_class_name.clone()),
        labels: merged(&wide.pod_labels, &own.pod_labels),
        annotations: merged(&wide.pod_annotations, &own.pod_annotations),
    }
}

/// The labels the operator selects and recognises its pods by.
const RESERVED_LABELS: &[&str] =
    &["app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/managed-by", "geocache.dev/region"];

/// What is wrong with a set of placement settings (`prefix` names where they are).
fn placement_problems(prefix: &str, placement: &Placement, problems: &mut Vec<String>) {
    for (key, value) in placement.pod_labels.iter().flatten() {
        if RESERVED_LABELS.contains(&key.as_str()) {
            problems.push(format!("{prefix}podLabels must not set {key}: the operator selects its pods by it"));
        } else if !is_qualified_name(key) {
            problems.push(format!("{prefix}podLabels key {key:?} is not a label key (an optional DNS prefix and '/', then a name of at most 63 characters)"));
        }
        if !is_label_value(value) {
            problems.push(format!("{prefix}podLabels value {value:?} of {key} is not a label value (at most 63 letters, digits, '-', '_' or '.')"));
        }
    }
    for key in placement.pod_annotations.iter().flatten().map(|(k, _)| k) {
        if !is_qualified_name(key) {
            problems.push(format!("{prefix}podAnnotations key {key:?} is not an annotation key"));
        }
    }
    if let Some(class) = &placement.priority_class_name
        && !is_dns_subdomain(class)
    {
        problems.push(format!("{prefix}priorityClassName {class:?} must be the name of a PriorityClass"));
    }
    for secret in placement.image_pull_secrets.iter().flatten() {
        if !is_dns_subdomain(&secret.name) {
            problems.push(format!("{prefix}imagePullSecrets name {:?} must be the name of a Secret", secret.name));
        }
    }
    for c in placement.topology_spread_constraints.iter().flatten() {
        if c.max_skew < 1 {
            problems.push(format!("{prefix}topologySpreadConstraints maxSkew must be 1 or more, not {}", c.max_skew));
        }
        if !matches!(c.when_unsatisfiable.as_str(), "DoNotSchedule" | "ScheduleAnyway") {
            problems.push(format!(
                "{prefix}topologySpreadConstraints whenUnsatisfiable must be DoNotSchedule or ScheduleAnyway, not {:?}",
                c.when_unsatisfiable
            ));
        }
        if !is_qualified_name(&c.topology_key) {
            problems
                .push(format!("{prefix}topologySpreadConstraints topologyKey {:?} is not a label key", c.topology_key));
        }
    }
}

/// A label or annotation key: an optional DNS subdomain prefix and `/`, then a name of at
/// most 63 letters, digits, `-`, `_` or `.`, starting and ending with a letter or digit.
pub fn is_qualified_name(key: &str) -> bool {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    prefix.is_none_or(|p| !p.is_empty() && is_dns_subdomain(p)) && !name.is_empty() && is_label_value(name)
}

/// A label value: empty, or at most 63 letters, digits, `-`, `_` or `.`, starting and
/// ending with a letter or digit.
pub fn is_label_value(value: &str) -> bool {
    let bytes = value.as_bytes();
    value.is_empty()
        || (value.len() <= 63
            && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && bytes[0].is_ascii_alphanumeric()
            && bytes[bytes.len() - 1].is_ascii_alphanumeric())
}

/// Whether `s` is a Kubernetes quantity: a decimal number (sign and fraction allowed) with
/// an optional binary (`Ki` … `Ei`), decimal (`n`, `u`, `m`, `k`, `M` … `E`) or exponent
/// (`e3`, `E-2`) suffix, as the API server parses it.
pub fn is_quantity(s: &str) -> bool {
    let unsigned = s.strip_prefix(['+', '-']).unwrap_or(s);
    let split = unsigned.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(unsigned.len());
    let (number, suffix) = unsigned.split_at(split);
    let digits = number.chars().filter(char::is_ascii_digit).count();
    let number_ok = digits > 0 && number.matches('.').count() <= 1;
    let suffix_ok = match suffix {
        "" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" | "n" | "u" | "m" | "k" | "M" | "G" | "T" | "P" | "E" => true,
        s if s.starts_with(['e', 'E']) => {
            let exponent = s[1..].strip_prefix(['+', '-']).unwrap_or(&s[1..]);
            !exponent.is_empty() && exponent.chars().all(|c| c.is_ascii_digit())
        }
        _ => false,
    };
    number_ok && suffix_ok
}

/// Every requests and limits value of `resources` that is not a quantity.
fn quantity_problems(prefix: &str, resources: &crate::crd::Resources, problems: &mut Vec<String>) {
    for (kind, map) in [("requests", &resources.requests), ("limits", &resources.limits)] {
        for (resource, value) in map.iter().flatten() {
            if !is_quantity(value) {
                problems.push(format!(
                    "{prefix}resources.{kind}.{resource} {value:?} must be a quantity such as 100m, 640Mi or 2Gi"
                ));
            }
        }
    }
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
            Some(crate::crd::Storage { size: Some("5Gi".into()), storage_class_name: Some("fast".into()) });
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

    #[test]
    fn quantities_are_checked_as_the_api_server_parses_them() {
        for good in ["1", "100m", "640Mi", "1.5Gi", "+2", "0.5", ".5", "1e3", "1E-2", "2k", "3Ei"] {
            assert!(is_quantity(good), "{good}");
        }
        for bad in ["10zz", "", "Mi", "1..5", "1 Gi", "1Gb", "1e", "e3", "-", "1mi"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }

    #[test]
    fn a_bad_quantity_anywhere_in_resources_or_storage_is_named() {
        let mut gc = geocache("cache", vec![region("eu")]);
        gc.spec.resources = Some(crate::crd::Resources {
            requests: Some(BTreeMap::from([("memory".to_string(), "10zz".to_string())])),
            limits: None,
        });
        gc.spec.regions[0].storage = Some(crate::crd::Storage { size: Some("lots".into()), storage_class_name: None });
        let problems = validate(&gc).unwrap_err().problems;
        assert!(
            problems.contains(
                &"resources.requests.memory \"10zz\" must be a quantity such as 100m, 640Mi or 2Gi".to_string()
            ),
            "{problems:?}"
        );
        assert!(problems.iter().any(|p| p.contains("storage.size \"lots\" must be a quantity")), "{problems:?}");
    }

    #[test]
    fn placement_settings_are_checked_and_name_their_region() {
        let mut gc = geocache("cache", vec![region("eu")]);
        gc.spec.placement.pod_labels = Some(BTreeMap::from([("app.kubernetes.io/instance".into(), "x".into())]));
        gc.spec.regions[0].placement.priority_class_name = Some("Not_A_Name".into());
        gc.spec.regions[0].placement.pod_labels = Some(BTreeMap::from([("team".into(), "-bad-".into())]));
        gc.spec.regions[0].placement.topology_spread_constraints =
            Some(vec![k8s_openapi::api::core::v1::TopologySpreadConstraint {
                max_skew: 0,
                topology_key: "zone".into(),
                when_unsatisfiable: "Sometimes".into(),
                ..Default::default()
            }]);
        let problems = validate(&gc).unwrap_err().problems;
        let has = |phrase: &str| problems.iter().any(|p| p.contains(phrase));
        assert!(has("podLabels must not set app.kubernetes.io/instance"), "{problems:?}");
        assert!(has("region eu: priorityClassName \"Not_A_Name\""), "{problems:?}");
        assert!(has("region eu: podLabels value \"-bad-\""), "{problems:?}");
        assert!(has("maxSkew must be 1 or more"), "{problems:?}");
        assert!(has("whenUnsatisfiable must be DoNotSchedule or ScheduleAnyway"), "{problems:?}");
    }

    #[test]
    fn label_keys_and_values_follow_kubernetes_syntax() {
        for good in ["team", "example.com/owner", "a.b-c_d"] {
            assert!(is_qualified_name(good), "{good}");
        }
        for bad in ["", "/x", "Example.com/x", "x/", "-x", &"a".repeat(64)] {
            assert!(!is_qualified_name(bad), "{bad}");
        }
        assert!(is_label_value("") && is_label_value("v1.2") && !is_label_value("a b"));
    }

    #[test]
    fn the_secrets_a_spec_names_are_its_member_kubeconfigs_and_its_password_secret() {
        let mut gc = geocache("cache", vec![region("eu"), region("us"), region("ap")]);
        gc.spec.regions[1].cluster = Some(crate::fixtures::cluster("us-kubeconfig"));
        gc.spec.regions[2].cluster = Some(crate::fixtures::cluster("ap-kubeconfig"));
        gc.spec.security.client_auth.password_secret_ref =
            Some(crate::crd::PasswordSecretRef { name: "app-passwords".into(), key: "passwords".into() });
        let names: Vec<String> = referenced_secrets(&gc.spec).into_iter().collect();
        assert_eq!(names, ["ap-kubeconfig", "app-passwords", "us-kubeconfig"]);
    }
}
