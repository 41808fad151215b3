//! The pod lifecycle: admit the pods bound to this node, start their container, restart it
//! when it exits (with back-off) or fails its liveness probe, report status and readiness,
//! keep mounted ConfigMaps and Secrets current, and stop and force-delete terminating pods.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use futures_util::future::join_all;
use k8s_openapi::api::core::v1::{ConfigMap, Container, EnvVar, Pod, Secret, Service};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::{Api, Client};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::network::PodNetwork;
use super::probes::{self, ProbeState};
use super::runtime::{self, Bind, ContainerSpec};
use super::{storage, volumes};

/// How often the pods are synced.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(500);
/// How often mounted ConfigMaps and Secrets are re-read.
const REFRESH_INTERVAL: Duration = Duration::from_secs(2);
/// Longest wait between a container's exit and its restart.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Longest grace period honoured on termination (tests must not wait 30 s per pod).
const MAX_GRACE: Duration = Duration::from_secs(15);
/// The user of an image that names none (the GeoCache image runs as 65532).
const IMAGE_USER: u32 = 65532;

/// An image this kubelet can run: its repository (the part before `:tag`/`@digest`, or
/// its last path component), the local binary, and where the image has it.
#[derive(Debug, Clone)]
pub struct Image {
    pub repository: String,
    pub binary: PathBuf,
    pub entrypoint: String,
}

impl Image {
    /// Parses `REPOSITORY=BINARY` (the entrypoint is `/<file name of BINARY>`).
    pub fn parse(text: &str) -> anyhow::Result<Image> {
        let (repository, binary) =
            text.split_once('=').ok_or_else(|| anyhow!("an image is REPOSITORY=BINARY, got {text:?}"))?;
        let binary = PathBuf::from(binary);
        let file = binary.file_name().ok_or_else(|| anyhow!("{} names no file", binary.display()))?;
        Ok(Image {
            repository: repository.to_string(),
            entrypoint: format!("/{}", file.to_string_lossy()),
            binary: fs::canonicalize(&binary).with_context(|| format!("binary {}", binary.display()))?,
        })
    }

    fn matches(&self, image: &str) -> bool {
        let without_digest = image.split('@').next().unwrap_or(image);
        let repository = match without_digest.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => repo,
            _ => without_digest,
        };
        repository == self.repository || repository.rsplit('/').next() == Some(self.repository.as_str())
    }
}

/// What the pod runner needs to know.
#[derive(Debug, Clone)]
pub struct PodsConfig {
    pub node: String,
    pub node_address: Ipv4Addr,
    pub state_dir: PathBuf,
    /// First two octets of the pod addresses (a /16).
    pub pod_prefix: [u8; 2],
    pub dns: Ipv4Addr,
    pub cluster_domain: String,
    pub images: Vec<Image>,
}

impl PodsConfig {
    fn volumes_dir(&self) -> PathBuf {
        self.state_dir.join("volumes")
    }
}

fn now_time() -> String {
    Timestamp::from_second(Timestamp::now().as_second()).unwrap_or(Timestamp::UNIX_EPOCH).to_string()
}

/// One pod this kubelet runs.
struct PodRuntime {
    pod: Pod,
    dir: PathBuf,
    container: Container,
    network: Option<PodNetwork>,
    spec: Option<ContainerSpec>,
    child: Option<Child>,
    started_at: Option<String>,
    started: Instant,
    restart_count: i32,
    last_termination: Option<Value>,
    next_start: Option<Instant>,
    backoff: Duration,
    readiness: Option<ProbeState>,
    liveness: Option<ProbeState>,
    startup: Option<ProbeState>,
    ready: bool,
    waiting: Option<(String, String)>,
    transitions: HashMap<&'static str, (bool, String)>,
    last_status: Option<Value>,
    last_refresh: Instant,
    start_time: String,
    fs_group: Option<u32>,
}

/// Runs the pods bound to this node until `shutdown`; then stops them all.
pub async fn run(client: Client, config: PodsConfig, mut shutdown: watch::Receiver<bool>) {
    let mut kubelet = Kubelet { client, config, pods: HashMap::new(), next_address: 2, terminating: HashMap::new() };
    super::network::delete_orphaned_namespaces();
    let mut last_storage = Instant::now() - Duration::from_secs(60);
    loop {
        if last_storage.elapsed() >= Duration::from_secs(1) {
            last_storage = Instant::now();
            if let Err(error) =
                storage::sync(&kubelet.client, &kubelet.config.node, &kubelet.config.volumes_dir()).await
            {
                tracing::warn!(error = %format!("{error:#}"), "volume provisioning failed");
            }
        }
        if let Err(error) = kubelet.sync().await {
            tracing::warn!(error = %format!("{error:#}"), "pod sync failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(SYNC_INTERVAL) => {}
            _ = shutdown.changed() => break,
        }
    }
    let uids: Vec<String> = kubelet.pods.keys().cloned().collect();
    for uid in uids {
        if let Some(pod) = kubelet.pods.remove(&uid) {
            stop_and_clean(pod, Duration::from_secs(5)).await;
        }
    }
    for (_, task) in kubelet.terminating.drain() {
        let _ = task.await;
    }
}

struct Kubelet {
    client: Client,
    config: PodsConfig,
    pods: HashMap<String, PodRuntime>,
    next_address: u32,
    /// Pods being stopped and deleted, by uid.
    terminating: HashMap<String, tokio::task::JoinHandle<()>>,
}

impl Kubelet {
    async fn sync(&mut self) -> anyhow::Result<()> {
        let api: Api<Pod> = Api::all(self.client.clone());
        let list = api.list(&ListParams::default().fields(&format!("spec.nodeName={}", self.config.node))).await?;
        self.terminating.retain(|_, t| !t.is_finished());
        let mut seen = Vec::new();
        for pod in list.items {
            let Some(uid) = pod.metadata.uid.clone() else { continue };
            seen.push(uid.clone());
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("");
            if pod.metadata.deletion_timestamp.is_some() {
                self.terminate(&uid, pod);
                continue;
            }
            if phase == "Succeeded" || phase == "Failed" {
                continue;
            }
            match self.pods.get_mut(&uid) {
                Some(runtime) => runtime.pod = pod,
                None => self.admit(uid, pod),
            }
        }
        let gone: Vec<String> = self.pods.keys().filter(|uid| !seen.contains(uid)).cloned().collect();
        for uid in gone {
            if let Some(runtime) = self.pods.remove(&uid) {
                tracing::info!(pod = %pod_name(&runtime.pod), "pod gone from the API; stopping it");
                self.terminating.insert(uid, tokio::spawn(stop_and_clean(runtime, Duration::ZERO)));
            }
        }

        let uids: Vec<String> = self.pods.keys().cloned().collect();
        for uid in &uids {
            if let Err(error) = self.step(uid).await {
                let Some(runtime) = self.pods.get_mut(uid) else { continue };
                let message = format!("{error:#}");
                if runtime.waiting.as_ref().map(|w| &w.1) != Some(&message) {
                    tracing::warn!(pod = %pod_name(&runtime.pod), error = %message, "pod cannot start yet");
                }
                runtime.waiting = Some(("CreateContainerConfigError".into(), message));
            }
        }
        self.probe_all().await;
        for uid in &uids {
            self.report(uid).await;
        }
        Ok(())
    }

    fn admit(&mut self, uid: String, pod: Pod) {
        let name = pod_name(&pod);
        let dir = self.config.state_dir.join("pods").join(format!(
            "{}_{}_{}",
            pod.metadata.namespace.as_deref().unwrap_or("default"),
            pod.metadata.name.as_deref().unwrap_or("pod"),
            uid.get(..8).unwrap_or(&uid)
        ));
        let spec = pod.spec.clone().unwrap_or_default();
        let container = spec.containers.first().cloned().unwrap_or_default();
        let fs_group = spec.security_context.as_ref().and_then(|s| s.fs_group).and_then(|g| u32::try_from(g).ok());
        let mut runtime = PodRuntime {
            pod,
            dir,
            container,
            network: None,
            spec: None,
            child: None,
            started_at: None,
            started: Instant::now(),
            restart_count: 0,
            last_termination: None,
            next_start: Some(Instant::now()),
            backoff: Duration::from_secs(1),
            readiness: None,
            liveness: None,
            startup: None,
            ready: false,
            waiting: Some(("ContainerCreating".into(), String::new())),
            transitions: HashMap::new(),
            last_status: None,
            last_refresh: Instant::now(),
            start_time: now_time(),
            fs_group,
        };
        if spec.containers.len() != 1 || spec.init_containers.as_ref().is_some_and(|c| !c.is_empty()) {
            runtime.waiting = Some((
                "CreateContainerError".into(),
                "this test kubelet runs pods of exactly one container and no init containers".into(),
            ));
            runtime.next_start = None;
        }
        tracing::info!(pod = %name, "admitted pod");
        self.pods.insert(uid, runtime);
    }

    /// Advances one pod: prepare, start, notice an exit, restart.
    async fn step(&mut self, uid: &str) -> anyhow::Result<()> {
        let Some(runtime) = self.pods.get_mut(uid) else { return Ok(()) };
        if let Some(child) = runtime.child.as_mut()
            && let Some(status) = child.try_wait()?
        {
            use std::os::unix::process::ExitStatusExt;
            let code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
            tracing::info!(pod = %pod_name(&runtime.pod), exit_code = code, "container exited");
            runtime.last_termination = Some(json!({"terminated": {
                "exitCode": code,
                "reason": if code == 0 { "Completed" } else { "Error" },
                "startedAt": runtime.started_at,
                "finishedAt": now_time(),
            }}));
            runtime.child = None;
            runtime.ready = false;
            runtime.backoff = if runtime.started.elapsed() > Duration::from_secs(30) {
                Duration::from_secs(1)
            } else {
                runtime.backoff
            };
            runtime.next_start = Some(Instant::now() + runtime.backoff);
            runtime.backoff = (runtime.backoff * 2).min(MAX_BACKOFF);
            runtime.waiting = Some(("CrashLoopBackOff".into(), format!("back-off restarting after exit {code}")));
        }
        if runtime.child.is_some() {
            if runtime.last_refresh.elapsed() >= REFRESH_INTERVAL {
                runtime.last_refresh = Instant::now();
                let changed = volumes::refresh(&self.client, &runtime.pod, &runtime.dir, runtime.fs_group).await?;
                if changed > 0 {
                    tracing::info!(pod = %pod_name(&runtime.pod), files = changed, "updated mounted files");
                }
            }
            return Ok(());
        }
        let Some(at) = runtime.next_start else { return Ok(()) };
        if Instant::now() < at {
            return Ok(());
        }
        if runtime.spec.is_none() {
            let Some(image) = runtime.container.image.clone() else { bail!("the container names no image") };
            let Some(mapped) = self.config.images.iter().find(|i| i.matches(&image)).cloned() else {
                runtime.waiting =
                    Some(("ErrImagePull".into(), format!("image {image} is not one this test kubelet can run")));
                return Ok(());
            };
            let mounts = runtime.container.volume_mounts.clone().unwrap_or_default();
            let mut binds = volumes::materialize(
                &self.client,
                &runtime.pod,
                &runtime.dir,
                &mounts,
                runtime.fs_group,
                &self.config.volumes_dir(),
            )
            .await?;
            binds.push(Bind {
                source: mapped.binary.clone(),
                target: mapped.entrypoint.clone().into(),
                read_only: true,
            });
            let network = match runtime.network.clone() {
                Some(network) => network,
                None => {
                    let n = self.next_address;
                    self.next_address += 1;
                    let [a, b] = self.config.pod_prefix;
                    let address = Ipv4Addr::new(a, b, (n / 250) as u8, (n % 250 + 1) as u8);
                    let runtime = self.pods.get_mut(uid).ok_or_else(|| anyhow!("pod vanished"))?;
                    let network = PodNetwork::create(u32::from(address), address)?;
                    runtime.network = Some(network.clone());
                    network
                }
            };
            let runtime = self.pods.get_mut(uid).ok_or_else(|| anyhow!("pod vanished"))?;
            let addresses = (network.address, self.config.node_address);
            let env = resolve_env(&self.client, &runtime.pod, &runtime.container, addresses).await?;
            let spec = container_spec(runtime, &mapped, &network, binds, env)?;
            let etc = etc_files(&self.config, &runtime.pod, network.address);
            let etc: Vec<(&str, String)> = etc.iter().map(|(k, v)| (*k, v.clone())).collect();
            runtime::prepare_rootfs(&spec.rootfs, &spec.binds, &etc)?;
            runtime.spec = Some(spec);
        }
        let runtime = self.pods.get_mut(uid).ok_or_else(|| anyhow!("pod vanished"))?;
        let Some(spec) = runtime.spec.as_ref() else { return Ok(()) };
        volumes::refresh(&self.client, &runtime.pod, &runtime.dir, runtime.fs_group).await?;
        let child = runtime::spawn(spec)?;
        tracing::info!(pod = %pod_name(&runtime.pod), pid = child.id(), ip = %spec_ip(runtime), "container started");
        if runtime.started_at.is_some() {
            runtime.restart_count += 1;
        }
        runtime.child = Some(child);
        runtime.started = Instant::now();
        runtime.started_at = Some(now_time());
        runtime.next_start = None;
        runtime.waiting = None;
        runtime.ready = false;
        let now = Instant::now();
        runtime.readiness = runtime.container.readiness_probe.clone().map(|p| ProbeState::new(p, now));
        runtime.liveness = runtime.container.liveness_probe.clone().map(|p| ProbeState::new(p, now));
        runtime.startup = runtime.container.startup_probe.clone().map(|p| ProbeState::new(p, now));
        Ok(())
    }

    /// Runs the probes that are due, concurrently.
    async fn probe_all(&mut self) {
        let now = Instant::now();
        let mut asks = Vec::new();
        for (uid, runtime) in &self.pods {
            if runtime.child.is_none() {
                continue;
            }
            let Some(ip) = runtime.network.as_ref().map(|n| n.address) else { continue };
            let startup_done = runtime.startup.as_ref().is_none_or(|s| s.passing);
            let which: Vec<(&'static str, &ProbeState)> = if startup_done {
                [("readiness", runtime.readiness.as_ref()), ("liveness", runtime.liveness.as_ref())]
                    .into_iter()
                    .filter_map(|(k, p)| p.map(|p| (k, p)))
                    .collect()
            } else {
                runtime.startup.iter().map(|p| ("startup", p)).collect()
            };
            for (kind, state) in which {
                if state.due(now) {
                    let container = runtime.container.clone();
                    let probe = state.probe.clone();
                    let uid = uid.clone();
                    asks.push(async move { (uid, kind, probes::run(&container, &probe, ip).await) });
                }
            }
        }
        for (uid, kind, ok) in join_all(asks).await {
            let Some(runtime) = self.pods.get_mut(&uid) else { continue };
            let now = Instant::now();
            match kind {
                "startup" => {
                    if let Some(state) = runtime.startup.as_mut() {
                        state.record(ok, now);
                        if state.failed() {
                            kill_for(runtime, "startup probe failed");
                        }
                    }
                }
                "liveness" => {
                    if let Some(state) = runtime.liveness.as_mut() {
                        state.record(ok, now);
                        if state.failed() {
                            kill_for(runtime, "liveness probe failed");
                        }
                    }
                }
                _ => {
                    if let Some(state) = runtime.readiness.as_mut() {
                        runtime.ready = state.record(ok, now);
                    }
                }
            }
        }
        for runtime in self.pods.values_mut() {
            if runtime.child.is_some() && runtime.readiness.is_none() {
                runtime.ready = runtime.startup.as_ref().is_none_or(|s| s.passing);
            }
        }
    }

    /// Writes the pod's status when it changed.
    async fn report(&mut self, uid: &str) {
        let Some(runtime) = self.pods.get_mut(uid) else { return };
        let status = pod_status(&self.config, runtime);
        if runtime.last_status.as_ref() == Some(&status) {
            return;
        }
        let (Some(name), Some(namespace)) = (runtime.pod.metadata.name.clone(), runtime.pod.metadata.namespace.clone())
        else {
            return;
        };
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        match api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&json!({ "status": status }))).await {
            Ok(_) => runtime.last_status = Some(status),
            Err(error) => tracing::warn!(pod = %name, %error, "pod status not written"),
        }
    }

    /// Starts stopping a terminating pod (once), then force-deletes it.
    fn terminate(&mut self, uid: &str, pod: Pod) {
        let grace = pod
            .metadata
            .deletion_grace_period_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map(Duration::from_secs)
            .unwrap_or(MAX_GRACE)
            .min(MAX_GRACE);
        if self.terminating.contains_key(uid) {
            return;
        }
        let client = self.client.clone();
        let runtime = self.pods.remove(uid);
        let key = (pod.metadata.namespace.clone(), pod.metadata.name.clone(), pod.metadata.uid.clone());
        let task = tokio::spawn(async move {
            if let Some(runtime) = runtime {
                tracing::info!(pod = %pod_name(&runtime.pod), "stopping terminating pod");
                stop_and_clean(runtime, grace).await;
            }
            let (Some(namespace), Some(name), uid) = key else { return };
            let api: Api<Pod> = Api::namespaced(client, &namespace);
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions { uid, resource_version: None }),
                ..DeleteParams::default()
            };
            match api.delete(&name, &params).await {
                Ok(_) => tracing::info!(pod = %format!("{namespace}/{name}"), "pod deleted"),
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(error) => tracing::warn!(pod = %name, %error, "pod not deleted"),
            }
        });
        self.terminating.insert(uid.to_string(), task);
    }
}

fn kill_for(runtime: &mut PodRuntime, why: &str) {
    if let Some(child) = runtime.child.as_ref() {
        tracing::info!(pod = %pod_name(&runtime.pod), reason = why, "killing container");
        signal_group(child, libc::SIGKILL);
    }
}

fn signal_group(child: &Child, signal: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: plain kill(2) on the child's process group (it called setsid).
        unsafe {
            libc::kill(-pid, signal);
        }
    }
}

/// Stops the container (TERM, then KILL after `grace`), then frees the network and files.
async fn stop_and_clean(mut runtime: PodRuntime, grace: Duration) {
    if let Some(mut child) = runtime.child.take() {
        signal_group(&child, libc::SIGTERM);
        let deadline = Instant::now() + grace;
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    signal_group(&child, libc::SIGKILL);
                    let _ = child.wait();
                    break;
                }
                Ok(None) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
    if let Some(network) = runtime.network.take() {
        network.delete();
    }
    if !runtime::has_mounts_under(&runtime.dir) {
        let _ = fs::remove_dir_all(&runtime.dir);
    }
}

fn pod_name(pod: &Pod) -> String {
    format!("{}/{}", pod.metadata.namespace.as_deref().unwrap_or("default"), pod.metadata.name.as_deref().unwrap_or(""))
}

fn spec_ip(runtime: &PodRuntime) -> String {
    runtime.network.as_ref().map(|n| n.address.to_string()).unwrap_or_default()
}

/// Expands `$(VAR)` references to the variables in `env` (`$$` escapes a `$`).
pub fn expand(text: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
            && let Some(value) = env.get(&inner[..end])
        {
            out.push_str(value);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The container's environment, in order, with `valueFrom` resolved (`status.podIP` and
/// `status.hostIP` from `addresses`: the pod's and the node's) and `$(VAR)` expanded.
async fn resolve_env(
    client: &Client,
    pod: &Pod,
    container: &Container,
    addresses: (Ipv4Addr, Ipv4Addr),
) -> anyhow::Result<Vec<(String, String)>> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut env: Vec<(String, String)> = Vec::new();
    let mut defined: BTreeMap<String, String> = BTreeMap::new();
    // Where in-cluster clients find the API server, as every kubelet tells its containers.
    let kubernetes = Api::<Service>::namespaced(client.clone(), "default").get_opt("kubernetes").await?;
    let spec = kubernetes.and_then(|s| s.spec);
    let host = spec.as_ref().and_then(|s| s.cluster_ip.clone()).filter(|ip| ip != "None");
    let port = spec.as_ref().and_then(|s| s.ports.as_ref()?.first().map(|p| p.port));
    if let (Some(host), Some(port)) = (host, port) {
        for (name, value) in [("KUBERNETES_SERVICE_HOST", host), ("KUBERNETES_SERVICE_PORT", port.to_string())] {
            defined.insert(name.into(), value.clone());
            env.push((name.into(), value));
        }
    }
    for source in container.env_from.iter().flatten() {
        let prefix = source.prefix.clone().unwrap_or_default();
        if let Some(cm) = &source.config_map_ref {
            let found = Api::<ConfigMap>::namespaced(client.clone(), namespace).get_opt(&cm.name).await?;
            for (k, v) in found.and_then(|c| c.data).unwrap_or_default() {
                defined.insert(format!("{prefix}{k}"), v.clone());
                env.push((format!("{prefix}{k}"), v));
            }
        }
        if let Some(secret) = &source.secret_ref {
            let found = Api::<Secret>::namespaced(client.clone(), namespace).get_opt(&secret.name).await?;
            for (k, v) in found.and_then(|s| s.data).unwrap_or_default() {
                let v = String::from_utf8_lossy(&v.0).into_owned();
                defined.insert(format!("{prefix}{k}"), v.clone());
                env.push((format!("{prefix}{k}"), v));
            }
        }
    }
    for EnvVar { name, value, value_from } in container.env.iter().flatten() {
        let value = match (value, value_from) {
            (Some(value), _) => expand(value, &defined),
            (None, Some(from)) => {
                if let Some(field) = &from.field_ref {
                    field_value(pod, &field.field_path, addresses)
                        .ok_or_else(|| anyhow!("env {name}: field {} is not known here", field.field_path))?
                } else if let Some(key) = &from.secret_key_ref {
                    let secret = Api::<Secret>::namespaced(client.clone(), namespace).get(&key.name).await?;
                    let bytes = secret.data.and_then(|mut d| d.remove(&key.key));
                    match bytes {
                        Some(b) => String::from_utf8_lossy(&b.0).into_owned(),
                        None => bail!("env {name}: key {} not in secret {}", key.key, key.name),
                    }
                } else if let Some(key) = &from.config_map_key_ref {
                    let cm = Api::<ConfigMap>::namespaced(client.clone(), namespace).get(&key.name).await?;
                    cm.data
                        .and_then(|mut d| d.remove(&key.key))
                        .ok_or_else(|| anyhow!("env {name}: key {} not in configmap {}", key.key, key.name))?
                } else {
                    bail!("env {name}: this test kubelet does not support that valueFrom")
                }
            }
            (None, None) => String::new(),
        };
        defined.insert(name.clone(), value.clone());
        env.push((name.clone(), value));
    }
    Ok(env)
}

fn field_value(pod: &Pod, path: &str, (pod_ip, host_ip): (Ipv4Addr, Ipv4Addr)) -> Option<String> {
    match path {
        "status.podIP" | "status.podIPs" => Some(pod_ip.to_string()),
        "status.hostIP" | "status.hostIPs" => Some(host_ip.to_string()),
        _ => volumes::pod_field(pod, path),
    }
}

fn container_spec(
    runtime: &PodRuntime,
    image: &Image,
    network: &PodNetwork,
    binds: Vec<Bind>,
    mut env: Vec<(String, String)>,
) -> anyhow::Result<ContainerSpec> {
    let defined: BTreeMap<String, String> = env.iter().cloned().collect();
    let container = &runtime.container;
    let command: Vec<String> = container.command.iter().flatten().map(|c| expand(c, &defined)).collect();
    let args: Vec<String> = container.args.iter().flatten().map(|c| expand(c, &defined)).collect();
    let (program, args) = match command.split_first() {
        Some((program, rest)) => (program.clone(), rest.iter().cloned().chain(args).collect()),
        None => (image.entrypoint.clone(), args),
    };
    let pod_spec = runtime.pod.spec.clone().unwrap_or_default();
    let pod_security = pod_spec.security_context.unwrap_or_default();
    let security = container.security_context.clone().unwrap_or_default();
    let id = |v: Option<i64>| v.and_then(|v| u32::try_from(v).ok());
    let uid = id(security.run_as_user).or(id(pod_security.run_as_user)).unwrap_or(IMAGE_USER);
    let gid = id(security.run_as_group).or(id(pod_security.run_as_group)).unwrap_or(uid);
    let mut groups: Vec<u32> = pod_security.supplemental_groups.iter().flatten().filter_map(|g| id(Some(*g))).collect();
    groups.extend(runtime.fs_group);
    groups.push(gid);
    fs::create_dir_all(&runtime.dir)?;
    env.push(("HOSTNAME".into(), runtime.pod.metadata.name.clone().unwrap_or_default()));
    Ok(ContainerSpec {
        program,
        args,
        env,
        rootfs: runtime.dir.join("rootfs"),
        netns: network.netns_path(),
        hostname: runtime.pod.metadata.name.clone().unwrap_or_default(),
        binds,
        read_only_root: security.read_only_root_filesystem.unwrap_or(false),
        uid,
        gid,
        supplementary_groups: groups,
        log: runtime.dir.join("container.log"),
    })
}

/// `/etc` of the container: hosts (with the pod's own name), resolv.conf pointing at the
/// cluster DNS with the usual search path, nsswitch.conf, passwd and group.
fn etc_files(config: &PodsConfig, pod: &Pod, address: Ipv4Addr) -> Vec<(&'static str, String)> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let namespace = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let domain = &config.cluster_domain;
    let spec = pod.spec.clone().unwrap_or_default();
    let hostname = spec.hostname.clone().unwrap_or_else(|| name.clone());
    let fqdn = match &spec.subdomain {
        Some(sub) => format!("{hostname}.{sub}.{namespace}.svc.{domain} "),
        None => String::new(),
    };
    vec![
        ("hosts", format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n{address}\t{fqdn}{hostname}\n")),
        (
            "resolv.conf",
            format!(
                "nameserver {}\nsearch {namespace}.svc.{domain} svc.{domain} {domain}\noptions ndots:5\n",
                config.dns
            ),
        ),
        ("hostname", format!("{hostname}\n")),
        ("nsswitch.conf", "hosts: files dns\npasswd: files\ngroup: files\n".into()),
        (
            "passwd",
            format!(
                "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:{IMAGE_USER}:{IMAGE_USER}::/home/nonroot:/sbin/nologin\n"
            ),
        ),
        ("group", format!("root:x:0:\nnonroot:x:{IMAGE_USER}:\n")),
    ]
}

fn condition(runtime: &mut PodRuntime, type_: &'static str, status: bool) -> Value {
    let now = now_time();
    let entry = runtime.transitions.entry(type_).or_insert((status, now.clone()));
    if entry.0 != status {
        *entry = (status, now);
    }
    json!({
        "type": type_,
        "status": if status { "True" } else { "False" },
        "lastTransitionTime": entry.1,
        "lastProbeTime": null,
    })
}

/// The pod's status as this kubelet sees it.
fn pod_status(config: &PodsConfig, runtime: &mut PodRuntime) -> Value {
    let running = runtime.child.is_some();
    let ready = running && runtime.ready;
    let ever_started = runtime.started_at.is_some();
    let mut conditions: Vec<Value> = runtime
        .pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .filter(|c| c.type_ == "PodScheduled")
        .filter_map(|c| serde_json::to_value(c).ok())
        .collect();
    let has_network = runtime.network.is_some();
    conditions.push(condition(runtime, "PodReadyToStartContainers", has_network));
    conditions.push(condition(runtime, "Initialized", true));
    conditions.push(condition(runtime, "ContainersReady", ready));
    conditions.push(condition(runtime, "Ready", ready));
    let state = if running {
        json!({"running": {"startedAt": runtime.started_at}})
    } else {
        let (reason, message) = runtime.waiting.clone().unwrap_or_else(|| ("ContainerCreating".into(), String::new()));
        json!({"waiting": {"reason": reason, "message": message}})
    };
    let image = runtime.container.image.clone().unwrap_or_default();
    let mut container = json!({
        "name": runtime.container.name,
        "image": image,
        "imageID": format!("test-kubelet://{image}"),
        "containerID": runtime.child.as_ref().map(|c| format!("test-kubelet://{}", c.id())),
        "ready": ready,
        "started": running,
        "restartCount": runtime.restart_count,
        "state": state,
    });
    if let Some(last) = &runtime.last_termination {
        container["lastState"] = last.clone();
    }
    let ip = runtime.network.as_ref().map(|n| n.address.to_string());
    json!({
        "phase": if ever_started { "Running" } else { "Pending" },
        "conditions": conditions,
        "hostIP": config.node_address.to_string(),
        "hostIPs": [{"ip": config.node_address.to_string()}],
        "podIP": ip,
        "podIPs": ip.as_ref().map(|ip| vec![json!({"ip": ip})]),
        "startTime": runtime.start_time,
        "containerStatuses": [container],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_expand_like_kubernetes_does() {
        let env = BTreeMap::from([("POD_NAME".to_string(), "demo-eu-0".to_string())]);
        assert_eq!(expand("$(POD_NAME).peers:7946", &env), "demo-eu-0.peers:7946");
        assert_eq!(expand("$$(POD_NAME)", &env), "$(POD_NAME)");
        assert_eq!(expand("$(UNKNOWN) $", &env), "$(UNKNOWN) $");
    }

    #[test]
    fn downward_api_fields_resolve_from_the_pod_and_its_addresses() {
        let pod = Pod {
            metadata: kube::api::ObjectMeta {
                name: Some("demo-eu-0".into()),
                namespace: Some("prod".into()),
                labels: Some([("geocache.dev/region".to_string(), "eu".to_string())].into()),
                ..Default::default()
            },
            ..Pod::default()
        };
        let addresses = (Ipv4Addr::new(10, 11, 0, 5), Ipv4Addr::new(127, 60, 1, 1));
        assert_eq!(field_value(&pod, "metadata.name", addresses).as_deref(), Some("demo-eu-0"));
        assert_eq!(field_value(&pod, "metadata.namespace", addresses).as_deref(), Some("prod"));
        assert_eq!(field_value(&pod, "status.podIP", addresses).as_deref(), Some("10.11.0.5"));
        assert_eq!(field_value(&pod, "status.hostIP", addresses).as_deref(), Some("127.60.1.1"));
        assert_eq!(field_value(&pod, "metadata.labels['geocache.dev/region']", addresses).as_deref(), Some("eu"));
        assert_eq!(field_value(&pod, "spec.unknown", addresses), None);
    }

    #[test]
    fn an_image_matches_by_repository_whatever_its_tag_or_registry() {
        let image = Image { repository: "geocache-node".into(), binary: "/bin/x".into(), entrypoint: "/x".into() };
        assert!(image.matches("ghcr.io/geocache/geocache-node:0.1.0"));
        assert!(image.matches("geocache-node"));
        assert!(image.matches("localhost:5000/geocache-node@sha256:abc"));
        assert!(!image.matches("ghcr.io/geocache/geocache-operator:0.1.0"));
        assert!(!image.matches("busybox"));
    }
}
