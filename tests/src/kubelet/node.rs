//! The Node object: registered at start with its capacity and addresses, kept Ready by a
//! status heartbeat and a Lease in `kube-node-lease`, as the node lifecycle controller expects.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeCondition, NodeStatus, NodeSystemInfo};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use tokio::sync::watch;

/// How often the Node's status and Lease are renewed.
pub const HEARTBEAT: Duration = Duration::from_secs(10);
const LEASE_SECONDS: i32 = 40;
const MANAGER: &str = "test-kubelet";

/// Where the node is and what it offers.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub name: String,
    pub address: Ipv4Addr,
    pub pod_cidr: String,
}

fn conditions(now: &Time) -> Vec<NodeCondition> {
    let condition = |type_: &str, status: &str, reason: &str, message: &str| NodeCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(now.clone()),
        last_transition_time: Some(now.clone()),
    };
    vec![
        condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
        condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
        condition("Ready", "True", "KubeletReady", "test kubelet is posting ready status"),
    ]
}

fn status(info: &NodeInfo, now: &Time) -> NodeStatus {
    let resources: BTreeMap<String, Quantity> =
        [("cpu", "32"), ("memory", "128Gi"), ("pods", "110"), ("ephemeral-storage", "100Gi")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
            .collect();
    NodeStatus {
        capacity: Some(resources.clone()),
        allocatable: Some(resources),
        conditions: Some(conditions(now)),
        addresses: Some(vec![
            NodeAddress { type_: "InternalIP".into(), address: info.address.to_string() },
            NodeAddress { type_: "Hostname".into(), address: info.name.clone() },
        ]),
        node_info: Some(NodeSystemInfo {
            architecture: std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
            boot_id: info.name.clone(),
            container_runtime_version: "geocache-test-runtime://0.1.0".into(),
            kernel_version: "test".into(),
            kube_proxy_version: String::new(),
            kubelet_version: "v1.37.2".into(),
            machine_id: info.name.clone(),
            operating_system: "linux".into(),
            os_image: "geocache test kubelet".into(),
            system_uuid: info.name.clone(),
            ..NodeSystemInfo::default()
        }),
        ..NodeStatus::default()
    }
}

/// Registers the node (or takes over the one of that name) and reports it Ready.
pub async fn register(client: &Client, info: &NodeInfo) -> anyhow::Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    let labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), info.name.clone()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        ("kubernetes.io/arch".to_string(), std::env::consts::ARCH.replace("x86_64", "amd64")),
    ]);
    if api.get_opt(&info.name).await?.is_none() {
        let node = Node {
            metadata: ObjectMeta { name: Some(info.name.clone()), labels: Some(labels), ..ObjectMeta::default() },
            spec: Some(k8s_openapi::api::core::v1::NodeSpec {
                pod_cidr: Some(info.pod_cidr.clone()),
                pod_cidrs: Some(vec![info.pod_cidr.clone()]),
                ..Default::default()
            }),
            status: None,
        };
        api.create(&PostParams::default(), &node).await?;
        tracing::info!(node = %info.name, "registered node");
    }
    heartbeat(client, info).await
}

/// Posts the node's status and renews its Lease once.
pub async fn heartbeat(client: &Client, info: &NodeInfo) -> anyhow::Result<()> {
    let now = Time(Timestamp::now());
    let api: Api<Node> = Api::all(client.clone());
    let patch = serde_json::json!({ "status": status(info, &now) });
    api.patch_status(&info.name, &PatchParams::default(), &Patch::Merge(&patch)).await?;

    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let lease = Lease {
        metadata: ObjectMeta { name: Some(info.name.clone()), ..ObjectMeta::default() },
        spec: Some(LeaseSpec {
            holder_identity: Some(info.name.clone()),
            lease_duration_seconds: Some(LEASE_SECONDS),
            renew_time: Some(MicroTime(Timestamp::now())),
            ..LeaseSpec::default()
        }),
    };
    leases.patch(&info.name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&lease)).await?;
    Ok(())
}

/// Keeps the node Ready until `shutdown` turns true.
pub async fn keep_ready(client: Client, info: NodeInfo, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(HEARTBEAT) => {}
            _ = shutdown.changed() => return,
        }
        if let Err(error) = heartbeat(&client, &info).await {
            tracing::warn!(node = %info.name, error = %format!("{error:#}"), "node heartbeat failed");
        }
    }
}
