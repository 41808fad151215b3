//! The `GeoCache` custom resource (`geocache.dev/v1alpha1`).
//!
//! The API server enforces most rules itself: OpenAPI constraints (types, enums, bounds that
//! CEL cost estimation needs) plus CEL `x-kubernetes-validations` with messages written for
//! people. [`crate::validate`] checks the same rules again in Rust, so that an object that
//! slipped past an older CRD is reported in status instead of being half applied.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, LocalObjectReference, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, ValidationRule,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of the resource.
pub const GROUP: &str = "geocache.dev";
/// Finalizer that guards the cleanup of children in member clusters.
pub const FINALIZER: &str = "geocaches.geocache.dev/cleanup";
/// Field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "geocache-operator";
/// Annotation that lets a GeoCache be deleted without cleaning up member clusters.
pub const ORPHAN_ANNOTATION: &str = "geocache.dev/orphan-remote-resources";

/// Longest GeoCache name plus region name: object names such as
/// `<name>-<region>-replication` must stay DNS labels (63 characters), and a StatefulSet's
/// pods carry a `controller-revision-hash` label of `<name>-<region>-<hash>`.
pub const MAX_COMBINED_NAME_LEN: usize = 50;
/// Most regions one GeoCache may have (keeps CEL cost estimates bounded).
pub const MAX_REGIONS: usize = 32;
/// Longest region name.
pub const MAX_REGION_NAME_LEN: usize = 40;

/// A geo-distributed cache: one fleet of cache nodes per region, replicating to each other.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "geocache.dev",
    version = "v1alpha1",
    kind = "GeoCache",
    plural = "geocaches",
    shortname = "gc",
    namespaced,
    status = "GeoCacheStatus",
    derive = "PartialEq",
    doc = "A geo-distributed JSON cache: one StatefulSet of cache nodes per region, wired to replicate to each other.",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.ready","description":"Regions ready / regions"}"#,
    printcolumn = r#"{"name":"Regions","type":"string","jsonPath":".status.regionNames","description":"Region names"}"#,
    printcolumn = r#"{"name":"Max-Lag","type":"string","jsonPath":".status.maxLag","description":"Highest replication lag any node reports"}"#,
    printcolumn = r#"{"name":"Degraded","type":"string","jsonPath":".status.conditions[?(@.type==\"Degraded\")].status","description":"Whether something that should work does not"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Degraded\")].reason","description":"Why the GeoCache is degraded"}"#,
    printcolumn = r#"{"name":"Detail","type":"string","priority":1,"jsonPath":".status.regionSummary","description":"Each region's state and ready nodes"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct GeoCacheSpec {
    /// Container image of the cache nodes (default: `ghcr.io/geocache/geocache-node` at the
    /// operator's version).
    #[serde(default = "default_image")]
    #[schemars(length(max = 512), extend("x-kubernetes-validations" = [
        {"rule": "self.trim().size() > 0", "message": "image must not be empty (the cache node container image)"}
    ]))]
    pub image: String,

    /// Image pull policy of the node container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,

    /// The regions, each a fleet of nodes in one cluster. Names are unique.
    #[schemars(length(min = 1, max = 32), extend(
        "x-kubernetes-list-type" = "map",
        "x-kubernetes-list-map-keys" = ["name"],
        "x-kubernetes-validations" = [
            {"rule": "self.all(r, self.exists_one(o, o.name == r.name))", "message": "region names must be unique"}
        ]
    ))]
    pub regions: Vec<RegionSpec>,

    /// TTL of writes that do not give one, e.g. `1h` or `1h30m` (absent: keys do not expire
    /// unless the client says so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), extend("x-kubernetes-validations" = [
        {"rule": "self.matches('^([0-9]+(ms|s|m|h|d))+$') || self.matches('^[0-9]+$')",
         "message": "defaultTtl must be a duration such as 30s, 1h or 1h30m (units ms, s, m, h, d)"}
    ]))]
    pub default_ttl: Option<String>,

    /// How long a delete (or an expiry) is remembered, e.g. `1h` or `2d` (absent: the node's
    /// default, 1h); 10 times longer while a peer is unreachable, so that a region cut off
    /// for less than that still gets the deletes it missed when it returns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), extend("x-kubernetes-validations" = [
        {"rule": "self.matches('^([0-9]+(ms|s|m|h|d))+$') || self.matches('^[0-9]+$')",
         "message": "tombstoneRetention must be a duration such as 1h or 2d (units ms, s, m, h, d)"}
    ]))]
    pub tombstone_retention: Option<String>,

    /// Memory a node may use for entries before it evicts cold ones, e.g. `512mb`. Keep it
    /// well below the container's memory limit.
    #[serde(default = "default_max_memory")]
    #[schemars(length(max = 32), extend("x-kubernetes-validations" = [
        {"rule": "self.matches('^[0-9]+([kKmMgGtT][iI]?[bB]?|[bB])?$')",
         "message": "maxMemory must be a size such as 512mb or 2gb"}
    ]))]
    pub max_memory: String,

    /// On-disk persistence of the nodes (an append-only log on a volume per node).
    #[serde(default)]
    pub persistence: Persistence,

    /// Compute resources of every node, unless a region sets its own
    /// (default: requests 100m CPU and 640Mi memory, limit 768Mi memory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,

    /// Encryption and authentication (default: mutual TLS between nodes and regions with
    /// a CA the operator makes for this GeoCache, and a client password it generates).
    #[serde(default)]
    pub security: SecuritySpec,

    /// Where and how every region's pods are placed (a region's own settings win).
    #[serde(flatten)]
    pub placement: Placement,
}

/// Placement and registry settings of the node pods, GeoCache-wide or per region.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    /// Affinity of the pods (default: prefer one node of a region per host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// How the pods spread over the topology (default: a region's nodes as evenly as
    /// possible across zones, then hosts; `ScheduleAnyway`, so that a small cluster still runs
    /// them). An empty list turns the default off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxItems" = 8, "x-kubernetes-validations" = [
        {"rule": "self.all(c, c.maxSkew >= 1)", "message": "topologySpreadConstraints maxSkew must be 1 or more"}
    ]))]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
    /// Secrets with the credentials of a private registry, in each region's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxItems" = 16))]
    pub image_pull_secrets: Option<Vec<LocalObjectReference>>,
    /// PriorityClass of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253), extend("x-kubernetes-validations" = [
        {"rule": "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')",
         "message": "priorityClassName must be the name of a PriorityClass"}
    ]))]
    pub priority_class_name: Option<String>,
    /// Labels added to the pods (the operator's own labels cannot be overridden).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 32, "x-kubernetes-validations" = [
        {"rule": "!('app.kubernetes.io/name' in self) && !('app.kubernetes.io/instance' in self) && !('app.kubernetes.io/managed-by' in self) && !('geocache.dev/region' in self)",
         "message": "podLabels must not set app.kubernetes.io/name, app.kubernetes.io/instance, app.kubernetes.io/managed-by or geocache.dev/region: the operator selects its pods by them"}
    ], "additionalProperties" = {
        "type": "string",
        "maxLength": 63,
        "x-kubernetes-validations": [
            {"rule": "self.matches('^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$')",
             "message": "podLabels values must be label values: at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"}
        ]
    }))]
    pub pod_labels: Option<BTreeMap<String, String>>,
    /// Annotations added to the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 64))]
    pub pod_annotations: Option<BTreeMap<String, String>>,
}

/// Encryption and authentication.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.clientTls) || !self.clientTls.enabled || !has(self.peerTls) || self.peerTls.enabled",
     "message": "security.clientTls needs security.peerTls: its certificates come from the same CA or issuer"}
]))]
pub struct SecuritySpec {
    /// Mutual TLS on the replication links between nodes and regions.
    #[serde(default)]
    pub peer_tls: PeerTlsSpec,
    /// Passwords that clients must give (Redis `AUTH`, HTTP `Authorization: Bearer`).
    #[serde(default)]
    pub client_auth: ClientAuthSpec,
    /// TLS on the client ports (HTTP and Redis protocol).
    #[serde(default)]
    pub client_tls: ClientTlsSpec,
}

/// TLS on the nodes' client ports: each region's nodes serve a certificate for the
/// region's client Service (`<name>-<region>`, `<name>-<region>.<namespace>`,
/// `….svc`, `….svc.<cluster domain>`) and their own stable pod names, from the CA or issuer
/// of `peerTls`. Clients trust the CA published in the ConfigMap `<name>-<region>-ca`
/// (key `ca.crt`) of the region's namespace. Probes, and the operator reading the nodes'
/// status, then use HTTPS.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientTlsSpec {
    /// Off by default (clients in the cluster reach the nodes in clear text).
    #[serde(default)]
    pub enabled: bool,
}

/// Mutual TLS between nodes: each region's nodes present a certificate for the identity
/// `geocache://<region>/*`, and accept only peers whose certificate chains to the same CA.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeerTlsSpec {
    /// On by default. Off only on a network you trust: replication then travels in clear text.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Request the certificates from cert-manager through this issuer (a CA issuer: the
    /// Secrets it writes must carry `ca.crt`, the same CA in every region's cluster).
    /// Absent: the operator keeps a CA of its own for this GeoCache and issues the
    /// certificates itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_ref: Option<IssuerRef>,
}

impl Default for PeerTlsSpec {
    fn default() -> Self {
        PeerTlsSpec { enabled: true, issuer_ref: None }
    }
}

/// A cert-manager issuer.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    /// Name of the Issuer (in the namespace of the GeoCache's objects) or ClusterIssuer.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// `Issuer` (default) or `ClusterIssuer`.
    #[serde(default = "default_issuer_kind")]
    #[schemars(length(max = 64), extend("x-kubernetes-validations" = [
        {"rule": "self == 'Issuer' || self == 'ClusterIssuer'", "message": "issuerRef.kind must be Issuer or ClusterIssuer"}
    ]))]
    pub kind: String,
    /// API group of the issuer.
    #[serde(default = "default_issuer_group")]
    #[schemars(length(max = 253))]
    pub group: String,
}

/// Client authentication.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientAuthSpec {
    /// On by default: clients give a password (Redis `AUTH <password>`, HTTP
    /// `Authorization: Bearer <password>`); `/healthz`, `/readyz` and `/metrics` stay open.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// A Secret of the GeoCache's namespace whose key holds the accepted passwords, one per
    /// line (several during a rotation). Absent: the operator creates `<name>-client-auth`
    /// with a random password under the key `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<PasswordSecretRef>,
}

impl Default for ClientAuthSpec {
    fn default() -> Self {
        ClientAuthSpec { enabled: true, password_secret_ref: None }
    }
}

/// A key of a Secret in the GeoCache's namespace that holds passwords.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PasswordSecretRef {
    /// Name of the Secret.
    #[schemars(length(max = 253), extend("x-kubernetes-validations" = [
        {"rule": "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')",
         "message": "passwordSecretRef.name must be the name of a Secret"}
    ]))]
    pub name: String,
    /// Key of the passwords in the Secret.
    #[serde(default = "default_password_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Image pull policy.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// One region: a StatefulSet of nodes with its Services, in the operator's cluster or in a
/// member cluster.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegionSpec {
    /// Region name: a DNS label (lowercase letters, digits and `-`), used in object names.
    #[schemars(length(max = 40), extend("x-kubernetes-validations" = [
        {"rule": "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",
         "message": "region name must be a DNS label: lowercase letters, digits and '-', starting and ending with a letter or digit"}
    ]))]
    pub name: String,

    /// Number of cache nodes in this region (0 stops the region but keeps its Services).
    #[serde(default = "default_replicas")]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self >= 0", "message": "replicas must be 0 or more"},
        {"rule": "self <= 1000", "message": "replicas must be at most 1000"}
    ]))]
    pub replicas: i32,

    /// The member cluster of this region (absent: the operator's own cluster). Its children
    /// are created in the namespace of the same name as the GeoCache's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterRef>,

    /// Replication endpoint (`host:port`) the other regions use to reach this one, for setups
    /// that bring their own networking (Multi-Cluster Services, a mesh). Absent: taken from
    /// this region's replication Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 260), extend("x-kubernetes-validations" = [
        {"rule": "self.matches('^([A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?|\\\\[[0-9A-Fa-f:.]+\\\\]):[0-9]{1,5}$')",
         "message": "endpoint must be host:port, e.g. geocache-us.example.com:7946"}
    ]))]
    pub endpoint: Option<String>,

    /// The Service that exposes this region's replication port to the other regions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ReplicationService>,

    /// The region's client Service `<name>-<region>` (HTTP and the Redis protocol): its type
    /// (default `ClusterIP`: applications in the cluster) and annotations, e.g. an internal
    /// load balancer for applications outside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_service: Option<ClientService>,

    /// Compute resources of this region's nodes (overrides `spec.resources`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,

    /// Volume of this region's nodes when persistence is on (overrides `spec.persistence`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<Storage>,

    /// Node selector of this region's pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,

    /// Tolerations of this region's pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,

    /// Where and how this region's pods are placed: each setting given here replaces the
    /// GeoCache-wide one (pod labels and annotations are merged, this region's winning).
    #[serde(flatten)]
    pub placement: Placement,

    /// DNS domain of the region's cluster, used in the nodes' stable names.
    #[serde(default = "default_cluster_domain")]
    #[schemars(length(max = 253), extend("x-kubernetes-validations" = [
        {"rule": "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')",
         "message": "clusterDomain must be a DNS name such as cluster.local"}
    ]))]
    pub cluster_domain: String,
}

/// Where a member cluster is: a kubeconfig held in a Secret of the GeoCache's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRef {
    pub kubeconfig_secret_ref: SecretKeyRef,
}

/// A key of a Secret in the GeoCache's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(max = 253), extend("x-kubernetes-validations" = [
        {"rule": "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')",
         "message": "kubeconfigSecretRef.name must be the name of a Secret"}
    ]))]
    pub name: String,
    /// Key of the kubeconfig in the Secret.
    #[serde(default = "default_kubeconfig_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// The replication Service of a region.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicationService {
    /// Service type: `LoadBalancer` (default), `NodePort`, or `ClusterIP` when every region
    /// is in one cluster or `endpoint` is set.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// Annotations of the Service (for example a cloud's load-balancer settings).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The client Service of a region.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientService {
    /// Service type: `ClusterIP` (default), `LoadBalancer` or `NodePort`.
    #[serde(default = "default_client_service_type", rename = "type")]
    pub type_: ServiceType,
    /// Annotations of the Service (for example a cloud's internal load-balancer settings).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Default for ClientService {
    fn default() -> Self {
        ClientService { type_: ServiceType::ClusterIP, annotations: BTreeMap::new() }
    }
}

fn default_client_service_type() -> ServiceType {
    ServiceType::ClusterIP
}

/// Type of a Service the operator makes.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum ServiceType {
    #[default]
    LoadBalancer,
    NodePort,
    ClusterIP,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::LoadBalancer => "LoadBalancer",
            ServiceType::NodePort => "NodePort",
            ServiceType::ClusterIP => "ClusterIP",
        }
    }
}

/// Compute resources of a node: quantities by resource name. Quantities are strings
/// (`cpu: "1"`, not `cpu: 1`), so that the API server can check each one.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    /// What the scheduler reserves for a node, e.g. `cpu: 100m`, `memory: 640Mi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 8, "additionalProperties" = {
        "type": "string",
        "maxLength": 64,
        "x-kubernetes-validations": [
            {"rule": "isQuantity(self)", "message": "each resources.requests value must be a quantity such as 100m, 640Mi or 2Gi"}
        ]
    }))]
    pub requests: Option<BTreeMap<String, String>>,
    /// The most a node may use, e.g. `memory: 768Mi` (a node above it is killed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 8, "additionalProperties" = {
        "type": "string",
        "maxLength": 64,
        "x-kubernetes-validations": [
            {"rule": "isQuantity(self)", "message": "each resources.limits value must be a quantity such as 100m, 768Mi or 2Gi"}
        ]
    }))]
    pub limits: Option<BTreeMap<String, String>>,
}

impl Resources {
    /// As the container's resource requirements.
    pub fn to_requirements(&self) -> ResourceRequirements {
        let quantities = |m: &Option<BTreeMap<String, String>>| {
            m.as_ref().map(|m| m.iter().map(|(k, v)| (k.clone(), Quantity(v.clone()))).collect())
        };
        ResourceRequirements {
            requests: quantities(&self.requests),
            limits: quantities(&self.limits),
            ..ResourceRequirements::default()
        }
    }
}

/// On-disk persistence.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Persistence {
    /// Keep an append-only log on a volume per node, so a restarted node recovers its data.
    #[serde(default)]
    pub enabled: bool,
    /// When to fsync the log.
    #[serde(default)]
    pub fsync: Fsync,
    /// Size of each node's volume, a quantity such as `1Gi`.
    #[serde(default = "default_storage_size")]
    #[schemars(length(max = 64), extend("x-kubernetes-validations" = [
        {"rule": "isQuantity(self)", "message": "persistence.size must be a quantity such as 1Gi or 500Mi"}
    ]))]
    pub size: String,
    /// Storage class of the volumes (absent: the cluster's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

impl Default for Persistence {
    fn default() -> Self {
        Persistence { enabled: false, fsync: Fsync::default(), size: default_storage_size(), storage_class_name: None }
    }
}

/// When the node fsyncs its log.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Fsync {
    /// Once a second (a crash loses at most the last second of writes).
    #[default]
    EverySecond,
    /// Before every acknowledgement.
    Always,
}

impl Fsync {
    pub fn as_str(self) -> &'static str {
        match self {
            Fsync::EverySecond => "every-second",
            Fsync::Always => "always",
        }
    }
}

/// A region's volume settings.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Storage {
    /// Size of each node's volume, a quantity such as `1Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), extend("x-kubernetes-validations" = [
        {"rule": "isQuantity(self)", "message": "storage.size must be a quantity such as 1Gi or 500Mi"}
    ]))]
    pub size: Option<String>,
    /// Storage class of the volumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

/// What the operator observed.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GeoCacheStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (every region serves), `Reconciling` and `Stalled` (kstatus), `Degraded`,
    /// `Progressing` (as `Reconciling`) and `ClockSkew`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Regions ready out of regions, e.g. `2/3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<String>,
    /// Region names, comma separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region_names: Option<String>,
    /// Highest replication lag any node reports, e.g. `35ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lag: Option<String>,
    /// Each region's state and ready nodes, e.g. `eu Ready 3/3, us Degraded 1/2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region_summary: Option<String>,
    /// Per region.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub regions: Vec<RegionStatus>,
    /// Member clusters the operator has created children in (cleaned up on deletion).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub member_clusters: Vec<ClusterRef>,
}

/// What the operator observed of one region.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegionStatus {
    pub name: String,
    /// `Ready` (every node ready and up to date), `Progressing`, `Degraded` (serving, but
    /// nodes crashed or peers are down), `Unavailable` (no node ready), `Failed` (the
    /// operator cannot reconcile it), `Pending` (not created yet) or `Stopped` (0 replicas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Nodes wanted.
    pub replicas: i32,
    /// Nodes ready.
    pub ready_replicas: i32,
    /// Replication endpoint of the region as the other regions reach it (absent while a
    /// load balancer is being provisioned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The fewest peers any node of the region sees up (absent when no node answered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peers_up: Option<i64>,
    /// The peers each node should see up: every other node of the GeoCache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peers_expected: Option<i64>,
    /// Highest replication lag, in milliseconds, any node of the region reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lag_ms: Option<i64>,
    /// Why the region is not fully observed, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

fn default_replicas() -> i32 {
    3
}

/// The node image of this operator's release.
pub fn default_image() -> String {
    format!("ghcr.io/geocache/geocache-node:{}", env!("CARGO_PKG_VERSION"))
}

fn default_max_memory() -> String {
    "512mb".to_string()
}

fn default_storage_size() -> String {
    "1Gi".to_string()
}

fn default_kubeconfig_key() -> String {
    "kubeconfig".to_string()
}

fn default_true() -> bool {
    true
}

fn default_issuer_kind() -> String {
    "Issuer".to_string()
}

fn default_issuer_group() -> String {
    "cert-manager.io".to_string()
}

fn default_password_key() -> String {
    "password".to_string()
}

fn default_cluster_domain() -> String {
    "cluster.local".to_string()
}

/// The rule on the whole object: it sees `metadata.name`, which field rules cannot.
const NAME_LENGTH_RULE: &str = "self.spec.regions.all(r, size(self.metadata.name) + size(r.name) <= 50)";
const NAME_LENGTH_MESSAGE: &str = "the GeoCache name and each region name together must be at most 50 characters \
     (object names such as <name>-<region>-replication must stay DNS labels)";

/// The CustomResourceDefinition, as written to `crds/geocache.yaml`.
pub fn crd() -> CustomResourceDefinition {
    let mut crd = GeoCache::crd();
    for version in &mut crd.spec.versions {
        if let Some(schema) = version.schema.as_mut().and_then(|s| s.open_api_v3_schema.as_mut()) {
            add_root_rules(schema);
            if let Some(status) = schema.properties.as_mut().and_then(|p| p.get_mut("status")) {
                relax_status(status);
            }
        }
    }
    crd
}

/// The status is written by the operator alone: the rules its types carry for the spec
/// (a secret reference's name, ...) only cost CEL budget there, and a real API server
/// refuses a CRD whose estimated rule cost exceeds the budget. Drop them, and bound the
/// status lists (which also bounds the estimate).
fn relax_status(schema: &mut JSONSchemaProps) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray;
    schema.x_kubernetes_validations = None;
    if let Some(props) = schema.properties.as_mut() {
        for p in props.values_mut() {
            relax_status(p);
        }
    }
    if let Some(items) = schema.items.as_mut() {
        if schema.max_items.is_none() {
            schema.max_items = Some(STATUS_MAX_ITEMS);
        }
        match items {
            JSONSchemaPropsOrArray::Schema(s) => relax_status(s),
            JSONSchemaPropsOrArray::Schemas(list) => list.iter_mut().for_each(relax_status),
        }
    }
}

/// Bound of every list in the status (regions, conditions, member clusters).
const STATUS_MAX_ITEMS: i64 = 64;

fn add_root_rules(schema: &mut JSONSchemaProps) {
    let rules = schema.x_kubernetes_validations.get_or_insert_with(Vec::new);
    rules.push(ValidationRule {
        rule: NAME_LENGTH_RULE.to_string(),
        message: Some(NAME_LENGTH_MESSAGE.to_string()),
        ..ValidationRule::default()
    });
}

/// The CRD as YAML, with a header saying how it was made.
pub fn crd_yaml() -> Result<String, serde_saphyr::ser::Error> {
    let body = serde_saphyr::to_string(&crd())?;
    Ok(format!(
        "# Generated by `cargo run -p geocache-operator --bin crdgen > crds/geocache.yaml`; do not edit.\n---\n{body}"
    ))
}
