//! A small kubelet for tests: it makes a real Kubernetes control plane (see
//! `tests/controlplane/`) run GeoCache pods as local processes, so that the data path is as
//! real as the control plane. One runs per cluster, as root, inside a network namespace
//! the test made for itself (`tests/controlplane/netns.sh`).
//!
//! What it does, by the part of Kubernetes it stands in for:
//! - node ([`node`]): registers a Node with capacity and keeps it Ready (status and Lease);
//! - container runtime ([`runtime`], [`volumes`]): runs each pod bound to the node whose
//!   image is mapped to a local binary, in its own mount, UTS and network namespaces, in a
//!   root filesystem made of bind mounts, with the pod's command, args, env, user and
//!   volumes (ConfigMaps, Secrets, projected ServiceAccount tokens, emptyDirs, claims) at
//!   their mount paths, and `KUBERNETES_SERVICE_HOST`/`_PORT` for in-cluster clients;
//! - CNI ([`network`]): a veth pair per pod, the pod's own address routed to it;
//! - probes ([`probes`]): readiness, liveness and startup probes over HTTP;
//! - kube-proxy and a cloud's load balancers ([`service_proxy`]): every ClusterIP and
//!   LoadBalancer Service gets a userspace proxy; load balancers delay bytes like a WAN;
//! - cluster DNS ([`dns`]): `*.svc.<cluster domain>` names for Services and StatefulSet pods;
//! - a storage provisioner ([`storage`]): a local volume for every claim.

pub mod dns;
pub mod network;
pub mod node;
pub mod pods;
pub mod probes;
pub mod runtime;
pub mod service_proxy;
pub mod storage;
pub mod volumes;
