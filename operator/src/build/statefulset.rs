//! The StatefulSet of a region's cache nodes.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, HTTPGetAction, ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PodAffinityTerm, PodAntiAffinity, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile,
    SecretVolumeSource, SecurityContext, TopologySpreadConstraint, Volume, VolumeMount, VolumeResourceRequirements,
    WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::ObjectMeta;

use super::metadata;
use crate::names::{
    CLIENT_AUTH_DIR, CLIENT_TLS_DIR, DATA_DIR, HTTP_PORT, PASSWORDS_KEY, PEER_PORT, PEER_TLS_DIR, PEERS_DIR,
    PEERS_FILE_KEY, RESP_PORT, labels, selector_labels,
};
use crate::validate::{Plan, RegionPlan};

/// User and group the node runs as (the node image's non-root user).
pub const NODE_UID: i64 = 65532;

const PEERS_VOLUME: &str = "peers";
const DATA_VOLUME: &str = "data";
const TMP_VOLUME: &str = "tmp";
const PEER_TLS_VOLUME: &str = "peer-tls";
const CLIENT_AUTH_VOLUME: &str = "client-auth";
const CLIENT_TLS_VOLUME: &str = "client-tls";
/// Secret files readable by the node's group only.
const SECRET_MODE: i32 = 0o440;

/// Builds the StatefulSet of `region`'s nodes.
///
/// The nodes are configured through `GEOCACHE_*` environment variables; each node's id is
/// its pod name and it advertises its stable DNS name under the headless peers Service.
/// The peers file is mounted as a directory (not with `subPath`) so that the kubelet's
/// updates reach the node, which reloads the file without a restart.
pub fn build_statefulset(plan: &Plan, region: &RegionPlan, owner: Option<&OwnerReference>) -> StatefulSet {
    let names = &region.names;
    // The spec's pod labels, under the operator's own (which select the pods).
    let mut pod_labels = region.pod.labels.clone();
    pod_labels.extend(labels(&plan.instance, &region.name));

    let volumes = vec![
        Volume {
            name: PEERS_VOLUME.into(),
            config_map: Some(ConfigMapVolumeSource { name: names.peers.clone(), ..ConfigMapVolumeSource::default() }),
            ..Volume::default()
        },
        Volume { name: TMP_VOLUME.into(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Volume::default() },
    ];
    let mut mounts = vec![
        VolumeMount {
            name: PEERS_VOLUME.into(),
            mount_path: PEERS_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        VolumeMount { name: TMP_VOLUME.into(), mount_path: "/tmp".into(), ..VolumeMount::default() },
    ];
    let mut volumes = volumes;
    // Secrets are mounted as directories (not with `subPath`) so that renewed
    // certificates and rotated passwords reach the node, which reloads them.
    let mut secret = |volume: &str, secret: &str, dir: &str| {
        volumes.push(Volume {
            name: volume.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.into()),
                default_mode: Some(SECRET_MODE),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: volume.into(),
            mount_path: dir.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    };
    if plan.security.peer_tls.is_some() {
        secret(PEER_TLS_VOLUME, &names.peer_tls, PEER_TLS_DIR);
    }
    if plan.security.client_auth.is_some() {
        secret(CLIENT_AUTH_VOLUME, &names.client_auth, CLIENT_AUTH_DIR);
    }
    if plan.security.client_tls {
        secret(CLIENT_TLS_VOLUME, &names.client_tls, CLIENT_TLS_DIR);
    }
    let claim_templates = region.storage.as_ref().map(|storage| {
        mounts.push(VolumeMount { name: DATA_VOLUME.into(), mount_path: DATA_DIR.into(), ..VolumeMount::default() });
        vec![PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(DATA_VOLUME.into()),
                labels: Some(labels(&plan.instance, &region.name)),
                ..ObjectMeta::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([("storage".to_string(), storage.size.clone())])),
                    ..VolumeResourceRequirements::default()
                }),
                storage_class_name: storage.storage_class_name.clone(),
                ..PersistentVolumeClaimSpec::default()
            }),
            ..PersistentVolumeClaim::default()
        }]
    });

    let container = Container {
        name: "geocache".into(),
        image: Some(plan.image.clone()),
        image_pull_policy: plan.image_pull_policy.map(|p| p.as_str().to_string()),
        env: Some(node_env(plan, region)),
        ports: Some(vec![
            container_port("http", HTTP_PORT),
            container_port("resp", RESP_PORT),
            container_port("peer", PEER_PORT),
        ]),
        resources: Some(region.resources.clone()),
        liveness_probe: Some(http_probe(plan, "/healthz", 10, 6)),
        readiness_probe: Some(http_probe(plan, "/readyz", 5, 3)),
        startup_probe: Some(Probe { initial_delay_seconds: Some(1), ..http_probe(plan, "/healthz", 2, 60) }),
        volume_mounts: Some(mounts),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Capabilities::default() }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };

    let pod_spec = PodSpec {
        containers: vec![container],
        volumes: Some(volumes),
        node_selector: (!region.node_selector.is_empty()).then(|| region.node_selector.clone()),
        tolerations: (!region.tolerations.is_empty()).then(|| region.tolerations.clone()),
        affinity: Some(region.pod.affinity.clone().unwrap_or_else(|| spread_over_hosts(plan, region))),
        topology_spread_constraints: {
            let constraints =
                region.pod.topology_spread_constraints.clone().unwrap_or_else(|| default_spread(plan, region));
            (!constraints.is_empty()).then_some(constraints)
        },
        image_pull_secrets: (!region.pod.image_pull_secrets.is_empty()).then(|| region.pod.image_pull_secrets.clone()),
        priority_class_name: region.pod.priority_class_name.clone(),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(NODE_UID),
            run_as_group: Some(NODE_UID),
            fs_group: Some(NODE_UID),
            seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..SeccompProfile::default() }),
            ..PodSecurityContext::default()
        }),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        termination_grace_period_seconds: Some(30),
        ..PodSpec::default()
    };

    StatefulSet {
        metadata: metadata(plan, region, &names.base, owner),
        spec: StatefulSetSpec {
            replicas: Some(region.replicas),
            service_name: Some(names.peers.clone()),
            selector: LabelSelector {
                match_labels: Some(selector_labels(&plan.instance, &region.name)),
                ..LabelSelector::default()
            },
            // Nodes find each other through the peers file; none waits for another to start.
            pod_management_policy: Some("Parallel".into()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                ..Default::default()
            }),
            persistent_volume_claim_retention_policy: claim_templates.as_ref().map(|_| {
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some("Delete".into()),
                    when_scaled: Some("Retain".into()),
                }
            }),
            volume_claim_templates: claim_templates,
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: (!region.pod.annotations.is_empty()).then(|| region.pod.annotations.clone()),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec),
            },
            ..StatefulSetSpec::default()
        },
        status: None,
    }
}

/// The node's configuration: every flag through its `GEOCACHE_<FLAG>` variable.
fn node_env(plan: &Plan, region: &RegionPlan) -> Vec<EnvVar> {
    let names = &region.names;
    let mut env = vec![
        EnvVar {
            name: "POD_NAME".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector { field_path: "metadata.name".into(), ..Default::default() }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        },
        env_var("GEOCACHE_NODE_ID", "$(POD_NAME)"),
        env_var("GEOCACHE_REGION", &region.name),
        env_var("GEOCACHE_HTTP_ADDR", &format!("0.0.0.0:{HTTP_PORT}")),
        env_var("GEOCACHE_RESP_ADDR", &format!("0.0.0.0:{RESP_PORT}")),
        env_var("GEOCACHE_PEER_ADDR", &format!("0.0.0.0:{PEER_PORT}")),
        env_var(
            "GEOCACHE_ADVERTISE_ADDR",
            &format!("$(POD_NAME).{}.{}.svc.{}:{PEER_PORT}", names.peers, plan.namespace, region.cluster_domain),
        ),
        env_var("GEOCACHE_PEERS_FILE", &format!("{PEERS_DIR}/{PEERS_FILE_KEY}")),
        env_var("GEOCACHE_MAX_MEMORY", &plan.max_memory),
        env_var("GEOCACHE_LOG_FORMAT", "json"),
    ];
    if let Some(ttl) = &plan.default_ttl {
        env.push(env_var("GEOCACHE_DEFAULT_TTL", ttl));
    }
    if let Some(retention) = &plan.tombstone_retention {
        env.push(env_var("GEOCACHE_TOMBSTONE_RETENTION", retention));
    }
    if region.storage.is_some() {
        env.push(env_var("GEOCACHE_DATA_DIR", DATA_DIR));
        env.push(env_var("GEOCACHE_FSYNC", plan.fsync.as_str()));
    }
    if plan.security.peer_tls.is_some() {
        env.push(env_var("GEOCACHE_PEER_TLS_CERT", &format!("{PEER_TLS_DIR}/tls.crt")));
        env.push(env_var("GEOCACHE_PEER_TLS_KEY", &format!("{PEER_TLS_DIR}/tls.key")));
        env.push(env_var("GEOCACHE_PEER_TLS_CA", &format!("{PEER_TLS_DIR}/ca.crt")));
    }
    if plan.security.client_auth.is_some() {
        env.push(env_var("GEOCACHE_AUTH_FILE", &format!("{CLIENT_AUTH_DIR}/{PASSWORDS_KEY}")));
    }
    if plan.security.client_tls {
        env.push(env_var("GEOCACHE_TLS_CERT", &format!("{CLIENT_TLS_DIR}/tls.crt")));
        env.push(env_var("GEOCACHE_TLS_KEY", &format!("{CLIENT_TLS_DIR}/tls.key")));
    }
    env
}

fn env_var(name: &str, value: &str) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), ..EnvVar::default() }
}

fn container_port(name: &str, port: i32) -> ContainerPort {
    ContainerPort { name: Some(name.into()), container_port: port, protocol: Some("TCP".into()), ..Default::default() }
}

/// A probe of the HTTP port (over TLS when the client ports use it; the kubelet does not
/// verify the certificate of a probe).
fn http_probe(plan: &Plan, path: &str, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            scheme: plan.security.client_tls.then(|| "HTTPS".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        timeout_seconds: Some(2),
        failure_threshold: Some(failure_threshold),
        ..Probe::default()
    }
}

/// Spread a region's nodes as evenly as possible across zones, then hosts, so that losing
/// a zone or a host loses as few of them as can be; `ScheduleAnyway`, so that a cluster
/// with one zone or few hosts still runs them all.
fn default_spread(plan: &Plan, region: &RegionPlan) -> Vec<TopologySpreadConstraint> {
    ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
        .into_iter()
        .map(|key| TopologySpreadConstraint {
            max_skew: 1,
            topology_key: key.into(),
            when_unsatisfiable: "ScheduleAnyway".into(),
            label_selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&plan.instance, &region.name)),
                ..LabelSelector::default()
            }),
            ..TopologySpreadConstraint::default()
        })
        .collect()
}

/// Prefer one node of a region per host, so that losing a host loses one replica.
fn spread_over_hosts(plan: &Plan, region: &RegionPlan) -> Affinity {
    Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![WeightedPodAffinityTerm {
                weight: 100,
                pod_affinity_term: PodAffinityTerm {
                    label_selector: Some(LabelSelector {
                        match_labels: Some(selector_labels(&plan.instance, &region.name)),
                        ..LabelSelector::default()
                    }),
                    topology_key: "kubernetes.io/hostname".into(),
                    ..PodAffinityTerm::default()
                },
            }]),
            ..PodAntiAffinity::default()
        }),
        ..Affinity::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::test_support::{owner, plan_of, two_region_plan};
    use crate::fixtures::{geocache, region};

    fn eu_statefulset(plan: &Plan) -> StatefulSet {
        build_statefulset(plan, &plan.regions[0], None)
    }

    fn env_of(sts: &StatefulSet) -> BTreeMap<String, String> {
        let pod = sts.spec.template.spec.as_ref().expect("pod spec");
        pod.containers[0].env.iter().flatten().filter_map(|e| e.value.clone().map(|v| (e.name.clone(), v))).collect()
    }

    #[test]
    fn the_statefulset_runs_the_wanted_number_of_nodes_behind_the_headless_service() {
        let plan = two_region_plan();
        let sts = eu_statefulset(&plan);
        let spec = &sts.spec;
        assert_eq!(sts.metadata.name.as_deref(), Some("cache-eu"));
        assert_eq!(sts.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(spec.service_name.as_deref(), Some("cache-eu-peers"));
        assert_eq!(spec.selector.match_labels, Some(selector_labels("cache", "eu")));
    }

    #[test]
    fn nodes_listen_on_all_interfaces_and_advertise_their_stable_dns_name() {
        let env = env_of(&eu_statefulset(&two_region_plan()));
        assert_eq!(env["GEOCACHE_HTTP_ADDR"], "0.0.0.0:8080");
        assert_eq!(env["GEOCACHE_RESP_ADDR"], "0.0.0.0:6379");
        assert_eq!(env["GEOCACHE_PEER_ADDR"], "0.0.0.0:7946");
        assert_eq!(env["GEOCACHE_NODE_ID"], "$(POD_NAME)");
        assert_eq!(env["GEOCACHE_REGION"], "eu");
        assert_eq!(env["GEOCACHE_ADVERTISE_ADDR"], "$(POD_NAME).cache-eu-peers.default.svc.cluster.local:7946");
        assert_eq!(env["GEOCACHE_PEERS_FILE"], "/etc/geocache/peers.json");
        assert_eq!(env["GEOCACHE_MAX_MEMORY"], "512mb");
        assert!(!env.contains_key("GEOCACHE_DATA_DIR"), "no data dir without persistence");
        assert!(!env.contains_key("GEOCACHE_DEFAULT_TTL"));
    }

    #[test]
    fn the_pod_name_is_defined_before_the_variables_that_expand_it() {
        let sts = eu_statefulset(&two_region_plan());
        let env = &sts.spec.template.spec.unwrap().containers[0].env.clone().unwrap();
        let pos = |n: &str| env.iter().position(|e| e.name == n).unwrap();
        assert!(pos("POD_NAME") < pos("GEOCACHE_NODE_ID"));
        assert!(pos("POD_NAME") < pos("GEOCACHE_ADVERTISE_ADDR"));
    }

    #[test]
    fn the_node_container_exposes_http_resp_and_peer_ports_and_probes_health() {
        let sts = eu_statefulset(&two_region_plan());
        let c = &sts.spec.template.spec.unwrap().containers[0];
        let ports: Vec<(String, i32)> =
            c.ports.iter().flatten().map(|p| (p.name.clone().unwrap(), p.container_port)).collect();
        assert_eq!(ports, vec![("http".into(), 8080), ("resp".into(), 6379), ("peer".into(), 7946)]);
        let path = |p: &Option<Probe>| p.as_ref().and_then(|p| p.http_get.as_ref()).and_then(|h| h.path.clone());
        assert_eq!(path(&c.liveness_probe).as_deref(), Some("/healthz"));
        assert_eq!(path(&c.readiness_probe).as_deref(), Some("/readyz"));
    }

    #[test]
    fn the_pod_meets_the_restricted_pod_security_standard() {
        let sts = eu_statefulset(&two_region_plan());
        let pod = sts.spec.template.spec.unwrap();
        let psc = pod.security_context.unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(psc.seccomp_profile.unwrap().type_, "RuntimeDefault");
        let sc = pod.containers[0].security_context.clone().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.capabilities.unwrap().drop, Some(vec!["ALL".to_string()]));
    }

    #[test]
    fn the_peers_file_is_mounted_as_a_directory_so_updates_reach_the_node() {
        let sts = eu_statefulset(&two_region_plan());
        let pod = sts.spec.template.spec.unwrap();
        let volume = pod.volumes.unwrap().into_iter().find(|v| v.name == "peers").unwrap();
        assert_eq!(volume.config_map.unwrap().name, "cache-eu-peers");
        let mount = pod.containers[0].volume_mounts.clone().unwrap().into_iter().find(|m| m.name == "peers").unwrap();
        assert_eq!(mount.mount_path, "/etc/geocache");
        assert_eq!(mount.sub_path, None);
    }

    #[test]
    fn by_default_the_nodes_get_their_region_certificate_and_the_client_passwords_from_secrets() {
        let sts = eu_statefulset(&two_region_plan());
        let env = env_of(&sts);
        assert_eq!(env["GEOCACHE_PEER_TLS_CERT"], "/etc/geocache-tls/tls.crt");
        assert_eq!(env["GEOCACHE_PEER_TLS_KEY"], "/etc/geocache-tls/tls.key");
        assert_eq!(env["GEOCACHE_PEER_TLS_CA"], "/etc/geocache-tls/ca.crt");
        assert_eq!(env["GEOCACHE_AUTH_FILE"], "/etc/geocache-auth/passwords");
        let pod = sts.spec.template.spec.unwrap();
        let secret_of = |name: &str| {
            let v = pod.volumes.clone().unwrap().into_iter().find(|v| v.name == name).unwrap().secret.unwrap();
            (v.secret_name.unwrap(), v.default_mode)
        };
        assert_eq!(secret_of("peer-tls"), ("cache-eu-peer-tls".to_string(), Some(0o440)));
        assert_eq!(secret_of("client-auth"), ("cache-eu-client-auth".to_string(), Some(0o440)));
        let mounts = pod.containers[0].volume_mounts.clone().unwrap();
        assert!(
            mounts.iter().filter(|m| m.name.contains('-')).all(|m| m.read_only == Some(true) && m.sub_path.is_none())
        );
    }

    #[test]
    fn with_client_tls_the_nodes_serve_their_certificate_and_are_probed_over_https() {
        let mut gc = geocache("cache", vec![region("eu")]);
        let plain = eu_statefulset(&plan_of(&gc));
        let probe = |sts: &StatefulSet| {
            let c = &sts.spec.template.spec.as_ref().unwrap().containers[0];
            c.readiness_probe.as_ref().unwrap().http_get.as_ref().unwrap().scheme.clone()
        };
        assert_eq!(probe(&plain), None, "plain HTTP by default");
        assert!(!env_of(&plain).contains_key("GEOCACHE_TLS_CERT"));
        gc.spec.security.client_tls.enabled = true;
        let sts = eu_statefulset(&plan_of(&gc));
        let env = env_of(&sts);
        assert_eq!(env["GEOCACHE_TLS_CERT"], "/etc/geocache-client-tls/tls.crt");
        assert_eq!(env["GEOCACHE_TLS_KEY"], "/etc/geocache-client-tls/tls.key");
        assert_eq!(probe(&sts).as_deref(), Some("HTTPS"));
        let pod = sts.spec.template.spec.unwrap();
        let volume = pod.volumes.unwrap().into_iter().find(|v| v.name == "client-tls").unwrap();
        assert_eq!(volume.secret.unwrap().secret_name.as_deref(), Some("cache-eu-client-tls"));
    }

    #[test]
    fn without_tls_and_auth_nothing_secret_is_mounted() {
        let mut gc = geocache("cache", vec![region("eu")]);
        gc.spec.security.peer_tls.enabled = false;
        gc.spec.security.client_auth.enabled = false;
        let sts = eu_statefulset(&plan_of(&gc));
        let env = env_of(&sts);
        assert!(!env.keys().any(|k| k.starts_with("GEOCACHE_PEER_TLS") || k == "GEOCACHE_AUTH_FILE"));
        assert!(sts.spec.template.spec.unwrap().volumes.unwrap().iter().all(|v| v.secret.is_none()));
    }

    #[test]
    fn persistence_adds_a_volume_claim_and_a_data_dir() {
        let mut gc = geocache("cache", vec![region("eu")]);
        gc.spec.persistence.enabled = true;
        gc.spec.persistence.storage_class_name = Some("ssd".into());
        let plan = plan_of(&gc);
        let sts = eu_statefulset(&plan);
        let env = env_of(&sts);
        assert_eq!(env["GEOCACHE_DATA_DIR"], "/var/lib/geocache");
        assert_eq!(env["GEOCACHE_FSYNC"], "every-second");
        let spec = sts.spec;
        let claim = &spec.volume_claim_templates.unwrap()[0];
        let claim_spec = claim.spec.clone().unwrap();
        assert_eq!(claim_spec.storage_class_name.as_deref(), Some("ssd"));
        assert_eq!(claim_spec.resources.unwrap().requests.unwrap()["storage"].0, "1Gi");
        let mounts = spec.template.spec.unwrap().containers[0].volume_mounts.clone().unwrap();
        assert!(mounts.iter().any(|m| m.name == "data" && m.mount_path == "/var/lib/geocache"));
    }

    #[test]
    fn pods_prefer_to_spread_over_hosts() {
        let sts = eu_statefulset(&two_region_plan());
        let affinity = sts.spec.template.spec.unwrap().affinity.unwrap();
        let terms = affinity.pod_anti_affinity.unwrap().preferred_during_scheduling_ignored_during_execution.unwrap();
        assert_eq!(terms[0].pod_affinity_term.topology_key, "kubernetes.io/hostname");
    }

    #[test]
    fn pods_carry_the_design_labels_and_the_statefulset_its_owner() {
        let plan = two_region_plan();
        let sts = build_statefulset(&plan, &plan.regions[1], Some(&owner()));
        assert_eq!(sts.metadata.labels, Some(labels("cache", "us")));
        assert_eq!(sts.metadata.owner_references.as_ref().map(Vec::len), Some(1));
        let pod_labels = sts.spec.template.metadata.unwrap().labels.unwrap();
        assert_eq!(pod_labels, labels("cache", "us"));
    }

    #[test]
    fn region_placement_settings_reach_the_pods() {
        let mut gc = geocache("cache", vec![region("eu")]);
        gc.spec.default_ttl = Some("1h".into());
        gc.spec.tombstone_retention = Some("2d".into());
        gc.spec.regions[0].node_selector = Some(BTreeMap::from([("zone".to_string(), "a".to_string())]));
        let plan = plan_of(&gc);
        let sts = eu_statefulset(&plan);
        assert_eq!(env_of(&sts)["GEOCACHE_DEFAULT_TTL"], "1h");
        assert_eq!(env_of(&sts)["GEOCACHE_TOMBSTONE_RETENTION"], "2d");
        let pod = sts.spec.template.spec.unwrap();
        assert_eq!(pod.node_selector.unwrap()["zone"], "a");
        assert_eq!(pod.tolerations, None);
    }

    #[test]
    fn by_default_a_regions_nodes_spread_across_zones_then_hosts_without_blocking_scheduling() {
        let sts = eu_statefulset(&two_region_plan());
        let pod = sts.spec.template.spec.unwrap();
        let spread = pod.topology_spread_constraints.unwrap();
        let keys: Vec<&str> = spread.iter().map(|c| c.topology_key.as_str()).collect();
        assert_eq!(keys, ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]);
        assert!(spread.iter().all(|c| c.max_skew == 1 && c.when_unsatisfiable == "ScheduleAnyway"));
        assert_eq!(
            spread[0].label_selector.as_ref().and_then(|s| s.match_labels.clone()),
            Some(selector_labels("cache", "eu"))
        );
        assert!(pod.image_pull_secrets.is_none() && pod.priority_class_name.is_none());
    }

    #[test]
    fn placement_settings_of_the_region_win_over_the_geocache_wide_ones_and_reach_the_pods() {
        use k8s_openapi::api::core::v1::{LocalObjectReference, NodeAffinity, NodeSelector};
        let mut gc = geocache("cache", vec![region("eu"), region("us")]);
        gc.spec.placement.image_pull_secrets = Some(vec![LocalObjectReference { name: "registry".into() }]);
        gc.spec.placement.priority_class_name = Some("cache-high".into());
        gc.spec.placement.pod_labels = Some(BTreeMap::from([("team".into(), "platform".into())]));
        gc.spec.placement.pod_annotations = Some(BTreeMap::from([("example.com/owner".into(), "platform".into())]));
        let affinity = Affinity {
            node_affinity: Some(NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector::default()),
                ..NodeAffinity::default()
            }),
            ..Affinity::default()
        };
        gc.spec.regions[1].placement.affinity = Some(affinity.clone());
        gc.spec.regions[1].placement.topology_spread_constraints = Some(vec![]);
        gc.spec.regions[1].placement.pod_labels = Some(BTreeMap::from([("team".into(), "sessions".into())]));
        let plan = plan_of(&gc);
        let eu = build_statefulset(&plan, &plan.regions[0], None).spec.template;
        let us = build_statefulset(&plan, &plan.regions[1], None).spec.template;
        let (eu_pod, us_pod) = (eu.spec.unwrap(), us.spec.unwrap());
        assert_eq!(eu_pod.image_pull_secrets.unwrap()[0].name, "registry");
        assert_eq!(us_pod.priority_class_name.as_deref(), Some("cache-high"));
        assert_eq!(us_pod.affinity, Some(affinity));
        assert!(eu_pod.affinity.unwrap().pod_anti_affinity.is_some(), "the default");
        assert!(us_pod.topology_spread_constraints.is_none(), "an empty list turns the default off");
        let (eu_meta, us_meta) = (eu.metadata.unwrap(), us.metadata.unwrap());
        assert_eq!(eu_meta.labels.as_ref().unwrap()["team"], "platform");
        assert_eq!(us_meta.labels.as_ref().unwrap()["team"], "sessions");
        assert_eq!(us_meta.labels.as_ref().unwrap()["app.kubernetes.io/instance"], "cache");
        assert_eq!(us_meta.annotations.unwrap()["example.com/owner"], "platform");
    }
}
