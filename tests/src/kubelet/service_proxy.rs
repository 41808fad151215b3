//! kube-proxy and a cloud's load balancers, in userspace. Every poll lists the Services and
//! EndpointSlices of all namespaces and makes this network namespace match them:
//!
//! - every ClusterIP (also of NodePort and LoadBalancer Services) is a local address, with a
//!   [`WanProxy`] without delay on each TCP port, forwarding round-robin to the ready endpoints;
//! - every LoadBalancer Service also gets an ingress IP from a pool (stable per Service uid for
//!   the life of the process, freed when the Service goes), written to its
//!   `status.loadBalancer.ingress`, with a proxy on each TCP port that delays bytes one way by
//!   the configured WAN delay — the path between clusters;
//! - the cluster DNS table ([`DnsRecords`]): `<svc>.<ns>.svc.<domain>` is the ClusterIP, or for
//!   a headless Service its endpoints' addresses, and `<hostname>.<svc>.<ns>.svc.<domain>` the
//!   addresses of an endpoint with a hostname (StatefulSet pods); for headless Services, ready
//!   endpoints only unless the Service publishes not-ready addresses (as CoreDNS does).
//!
//! What the state should be is computed by a pure function, [`desired_state`]; [`run`] only
//! lists, applies the difference and cleans up when told to stop. A failed list or update is
//! logged and retried at the next poll; nothing here is fatal.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use geocache_node::fleet::wan_proxy::{WanProxy, WanProxyHandle};
use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, ListParams, Patch, PatchParams};
use tokio::sync::watch;

use super::dns::DnsRecords;
use super::network::{ensure_local_address, remove_local_address};

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// What [`run`] needs to know besides the API server.
#[derive(Debug, Clone)]
pub struct ServiceProxyConfig {
    /// The cluster's DNS domain, e.g. `cluster.local`.
    pub cluster_domain: String,
    /// Addresses handed out as LoadBalancer ingress IPs, in order. Must not overlap another
    /// cluster's pool or any cluster's Service range when clusters share a network namespace.
    pub lb_pool: Vec<Ipv4Addr>,
    /// One-way delay of load-balancer traffic (a WAN between clusters).
    pub lb_delay: Duration,
    /// Time between two polls of the API server, e.g. 500 ms.
    pub poll_interval: Duration,
}

/// A Service by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One proxy that should run, keyed by its listen address in [`Desired::proxies`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxySpec {
    pub service: ServiceKey,
    /// Sorted, without duplicates; may be empty (connections are then closed at once).
    pub upstreams: Vec<SocketAddr>,
    pub delay: Duration,
}

/// A LoadBalancer Service whose `status.loadBalancer.ingress` must become `[{ip}]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LbStatusUpdate {
    pub service: ServiceKey,
    pub ip: Ipv4Addr,
}

/// What this network namespace and the cluster should look like, from one list of Services
/// and EndpointSlices.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// Local addresses: every ClusterIP and every assigned ingress IP.
    pub addresses: BTreeSet<Ipv4Addr>,
    /// Proxies by listen address.
    pub proxies: BTreeMap<SocketAddr, ProxySpec>,
    /// The whole DNS table: lowercase names without the trailing dot; no empty entries.
    pub dns: HashMap<String, Vec<Ipv4Addr>>,
    /// Ingress IPs by Service uid, to pass back to the next call.
    pub lb_assigned: BTreeMap<String, Ipv4Addr>,
    /// Load-balancer statuses that differ from what they should be.
    pub lb_status: Vec<LbStatusUpdate>,
    /// LoadBalancer Services left without an ingress IP: the pool is used up.
    pub lb_pending: Vec<ServiceKey>,
}

/// How a Service is reached inside the cluster.
enum ClusterIp {
    Ip(Ipv4Addr),
    Headless,
    /// ExternalName, not allocated yet, or not IPv4: nothing to do.
    Unusable,
}

fn cluster_ip(service: &Service) -> ClusterIp {
    match service.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) {
        Some("None") => ClusterIp::Headless,
        Some(ip) => ip.parse().map_or(ClusterIp::Unusable, ClusterIp::Ip),
        None => ClusterIp::Unusable,
    }
}

fn is_load_balancer(service: &Service) -> bool {
    service.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer")
}

fn service_key(service: &Service) -> Option<ServiceKey> {
    Some(ServiceKey { namespace: service.metadata.namespace.clone()?, name: service.metadata.name.clone()? })
}

/// The TCP ports of a Service, as (port number, port).
fn tcp_ports(service: &Service) -> impl Iterator<Item = (u16, &ServicePort)> {
    service.spec.iter().flat_map(|s| s.ports.iter().flatten()).filter_map(|p| {
        let tcp = p.protocol.as_deref().is_none_or(|proto| proto.eq_ignore_ascii_case("TCP"));
        let port = u16::try_from(p.port).ok().filter(|&n| n != 0)?;
        tcp.then_some((port, p))
    })
}

/// The IPs of the Service's current load-balancer status.
fn status_ingress_ips(service: &Service) -> Vec<Option<Ipv4Addr>> {
    let ingress = service.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|lb| lb.ingress.as_ref());
    ingress.into_iter().flatten().map(|i| i.ip.as_deref().and_then(|ip| ip.parse().ok())).collect()
}

/// An endpoint counts as ready unless its ready condition is false.
fn is_ready(endpoint: &Endpoint) -> bool {
    endpoint.conditions.as_ref().and_then(|c| c.ready) != Some(false)
}

fn ipv4_addresses(endpoint: &Endpoint) -> impl Iterator<Item = Ipv4Addr> + '_ {
    endpoint.addresses.iter().filter_map(|a| a.parse().ok())
}

/// The IPv4 endpoints of some slices, ready ones only unless `include_not_ready`.
fn endpoints<'a>(
    slices: &'a [&'a EndpointSlice],
    include_not_ready: bool,
) -> impl Iterator<Item = (&'a EndpointSlice, &'a Endpoint)> + 'a {
    slices
        .iter()
        .filter(|s| s.address_type == "IPv4")
        .flat_map(|s| s.endpoints.iter().flatten().map(move |e| (*s, e)))
        .filter(move |(_, e)| include_not_ready || is_ready(e))
}

/// The port the endpoints of `slice` serve `port` on: the slice port of the same name, else
/// the slice's only port, else the Service's numeric target port.
fn endpoint_port(slice: &EndpointSlice, port: &ServicePort) -> Option<u16> {
    let wanted = port.name.as_deref().unwrap_or("");
    let ports = slice.ports.as_deref().unwrap_or_default();
    let by_name = ports.iter().find(|p| p.name.as_deref().unwrap_or("") == wanted);
    let chosen = by_name.or(match ports {
        [only] => Some(only),
        _ => None,
    });
    let number = chosen.and_then(|p| p.port).or(match &port.target_port {
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(_)) => None,
        None => Some(port.port),
    })?;
    u16::try_from(number).ok().filter(|&n| n != 0)
}

/// Ready endpoints of `port`, sorted and without duplicates.
fn upstreams(slices: &[&EndpointSlice], port: &ServicePort) -> Vec<SocketAddr> {
    let found: BTreeSet<SocketAddr> = endpoints(slices, false)
        .filter_map(|(slice, e)| Some((endpoint_port(slice, port)?, e)))
        .flat_map(|(n, e)| ipv4_addresses(e).map(move |ip| SocketAddr::from((ip, n))))
        .collect();
    found.into_iter().collect()
}

fn dns_name(labels: &[&str], domain: &str) -> String {
    let mut name = labels.join(".");
    name.push_str(".svc.");
    name.push_str(domain);
    name.to_ascii_lowercase()
}

/// Ingress IPs for the LoadBalancer Services (uid, key, IPs in their status), in order: an IP
/// already assigned stays; then a Service gets the IP its status already shows if that is in
/// the pool and free (a restarted kubelet keeps the addresses); then the first free one.
fn assign_lb_ips(
    lb_services: &[(&str, &ServiceKey, Vec<Option<Ipv4Addr>>)],
    pool: &[Ipv4Addr],
    previous: &BTreeMap<String, Ipv4Addr>,
) -> (BTreeMap<String, Ipv4Addr>, Vec<ServiceKey>) {
    let mut assigned = BTreeMap::new();
    let mut used = BTreeSet::new();
    for (uid, _, _) in lb_services {
        if let Some(&ip) = previous.get(*uid)
            && pool.contains(&ip)
            && used.insert(ip)
        {
            assigned.insert(uid.to_string(), ip);
        }
    }
    for (uid, _, in_status) in lb_services {
        if assigned.contains_key(*uid) {
            continue;
        }
        if let Some(ip) = in_status.iter().flatten().find(|ip| pool.contains(ip) && !used.contains(*ip)) {
            used.insert(*ip);
            assigned.insert(uid.to_string(), *ip);
        }
    }
    let mut pending = Vec::new();
    for (uid, key, _) in lb_services {
        if assigned.contains_key(*uid) {
            continue;
        }
        match pool.iter().find(|ip| !used.contains(*ip)) {
            Some(&ip) => {
                used.insert(ip);
                assigned.insert(uid.to_string(), ip);
            }
            None => pending.push((*key).clone()),
        }
    }
    (assigned, pending)
}

/// Computes what should run from the current Services and EndpointSlices. `lb_assigned` is
/// the previous call's [`Desired::lb_assigned`] (empty at first).
pub fn desired_state(
    services: &[Service],
    slices: &[EndpointSlice],
    config: &ServiceProxyConfig,
    lb_assigned: &BTreeMap<String, Ipv4Addr>,
) -> Desired {
    let domain = config.cluster_domain.trim_end_matches('.').to_ascii_lowercase();
    let mut slices_of: HashMap<ServiceKey, Vec<&EndpointSlice>> = HashMap::new();
    for slice in slices {
        let namespace = slice.metadata.namespace.as_ref();
        let service = slice.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL));
        if let (Some(namespace), Some(name)) = (namespace, service) {
            let key = ServiceKey { namespace: namespace.clone(), name: name.clone() };
            slices_of.entry(key).or_default().push(slice);
        }
    }
    let mut services: Vec<(ServiceKey, &Service)> =
        services.iter().filter_map(|s| Some((service_key(s)?, s))).collect();
    services.sort_by(|a, b| a.0.cmp(&b.0));

    let lb_services: Vec<(&str, &ServiceKey, Vec<Option<Ipv4Addr>>)> = services
        .iter()
        .filter(|(_, s)| is_load_balancer(s) && matches!(cluster_ip(s), ClusterIp::Ip(_)))
        .filter_map(|(key, s)| Some((s.metadata.uid.as_deref()?, key, status_ingress_ips(s))))
        .collect();
    let (assigned, lb_pending) = assign_lb_ips(&lb_services, &config.lb_pool, lb_assigned);

    let mut desired = Desired { lb_pending, ..Desired::default() };
    let mut dns: BTreeMap<String, BTreeSet<Ipv4Addr>> = BTreeMap::new();
    for (key, service) in &services {
        let slices = slices_of.get(key).map(Vec::as_slice).unwrap_or_default();
        match cluster_ip(service) {
            ClusterIp::Unusable => {}
            ClusterIp::Headless => {
                let publish_not_ready =
                    service.spec.as_ref().and_then(|s| s.publish_not_ready_addresses).unwrap_or(false);
                for (_, endpoint) in endpoints(slices, publish_not_ready) {
                    let addresses: Vec<Ipv4Addr> = ipv4_addresses(endpoint).collect();
                    dns.entry(dns_name(&[&key.name, &key.namespace], &domain)).or_default().extend(&addresses);
                    if let Some(hostname) = endpoint.hostname.as_deref().filter(|h| !h.is_empty()) {
                        let name = dns_name(&[hostname, &key.name, &key.namespace], &domain);
                        dns.entry(name).or_default().extend(&addresses);
                    }
                }
            }
            ClusterIp::Ip(ip) => {
                desired.addresses.insert(ip);
                dns.entry(dns_name(&[&key.name, &key.namespace], &domain)).or_default().insert(ip);
                let ingress = service.metadata.uid.as_ref().and_then(|uid| assigned.get(uid)).copied();
                if let Some(ingress) = ingress {
                    desired.addresses.insert(ingress);
                    if status_ingress_ips(service) != [Some(ingress)] {
                        desired.lb_status.push(LbStatusUpdate { service: key.clone(), ip: ingress });
                    }
                }
                for (number, port) in tcp_ports(service) {
                    let upstreams = upstreams(slices, port);
                    let mut listen = vec![(ip, Duration::ZERO)];
                    listen.extend(ingress.map(|ingress| (ingress, config.lb_delay)));
                    for (ip, delay) in listen {
                        desired.proxies.entry(SocketAddr::from((ip, number))).or_insert_with(|| ProxySpec {
                            service: key.clone(),
                            upstreams: upstreams.clone(),
                            delay,
                        });
                    }
                }
            }
        }
    }
    desired.dns = dns
        .into_iter()
        .filter(|(_, addresses)| !addresses.is_empty())
        .map(|(name, addresses)| (name, addresses.into_iter().collect()))
        .collect();
    desired.lb_assigned = assigned;
    desired
}

/// Runs until `shutdown` turns true (or its sender is dropped); then stops every proxy and
/// removes the addresses it added. Must run within a Tokio runtime, as root, in the network
/// namespace the pods are routed from.
pub async fn run(
    client: kube::Client,
    config: ServiceProxyConfig,
    dns: DnsRecords,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    tracing::info!(
        domain = %config.cluster_domain,
        lb_pool = config.lb_pool.len(),
        lb_delay = ?config.lb_delay,
        "service proxy starting"
    );
    let poll_interval = config.poll_interval;
    let mut proxy = ServiceProxy::new(client, config, dns);
    loop {
        // A poll cut short by the shutdown leaves nothing behind: see `ensure_addresses`.
        tokio::select! {
            () = proxy.poll() => {}
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
        tokio::select! {
            () = tokio::time::sleep(poll_interval) => {}
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
    }
    proxy.stop().await;
    Ok(())
}

struct RunningProxy {
    handle: WanProxyHandle,
    spec: ProxySpec,
}

/// The side-effecting part: what runs now, and how to make it what [`desired_state`] says.
struct ServiceProxy {
    client: kube::Client,
    config: ServiceProxyConfig,
    dns: DnsRecords,
    proxies: BTreeMap<SocketAddr, RunningProxy>,
    /// Addresses this proxy added (or may have added), to remove when no longer needed.
    addresses: BTreeSet<Ipv4Addr>,
    lb_assigned: BTreeMap<String, Ipv4Addr>,
    /// The table last given to `dns`; `None` before the first successful poll.
    dns_table: Option<HashMap<String, Vec<Ipv4Addr>>>,
    /// Listen addresses whose proxy failed to start, so that a persistent failure is a
    /// warning once rather than at every poll.
    failing: HashSet<SocketAddr>,
    pending: Vec<ServiceKey>,
}

impl ServiceProxy {
    fn new(client: kube::Client, config: ServiceProxyConfig, dns: DnsRecords) -> ServiceProxy {
        ServiceProxy {
            client,
            config,
            dns,
            proxies: BTreeMap::new(),
            addresses: BTreeSet::new(),
            lb_assigned: BTreeMap::new(),
            dns_table: None,
            failing: HashSet::new(),
            pending: Vec::new(),
        }
    }

    async fn poll(&mut self) {
        let services = Api::<Service>::all(self.client.clone());
        let slices = Api::<EndpointSlice>::all(self.client.clone());
        let params = ListParams::default();
        let (services, slices) = match tokio::join!(services.list(&params), slices.list(&params)) {
            (Ok(services), Ok(slices)) => (services.items, slices.items),
            (Err(error), _) | (_, Err(error)) => {
                tracing::warn!(%error, "cannot list services and endpoint slices; retrying at the next poll");
                return;
            }
        };
        let desired = desired_state(&services, &slices, &self.config, &self.lb_assigned);
        self.apply(desired).await;
    }

    async fn apply(&mut self, desired: Desired) {
        self.note_lb_changes(&desired);
        self.lb_assigned = desired.lb_assigned;

        let gone: Vec<SocketAddr> = self.proxies.keys().filter(|a| !desired.proxies.contains_key(a)).copied().collect();
        for listen in gone {
            if let Some(old) = self.proxies.remove(&listen) {
                tracing::info!(service = %old.spec.service, %listen, "service proxy stopped");
                old.handle.shutdown();
            }
        }
        self.failing.retain(|listen| desired.proxies.contains_key(listen));

        let new_addresses: Vec<Ipv4Addr> = desired.addresses.difference(&self.addresses).copied().collect();
        let usable = self.ensure_addresses(new_addresses).await;
        for (listen, spec) in desired.proxies {
            self.run_proxy(listen, spec, &usable);
        }
        let old_addresses: Vec<Ipv4Addr> = self.addresses.difference(&desired.addresses).copied().collect();
        self.remove_addresses(old_addresses).await;

        if self.dns_table.as_ref() != Some(&desired.dns) {
            tracing::debug!(names = desired.dns.len(), "cluster dns table updated");
            self.dns.replace_all(desired.dns.clone());
            self.dns_table = Some(desired.dns);
        }

        for update in desired.lb_status {
            self.write_lb_status(update).await;
        }
    }

    fn note_lb_changes(&mut self, desired: &Desired) {
        for (uid, ip) in &desired.lb_assigned {
            if self.lb_assigned.get(uid) != Some(ip) {
                tracing::info!(%uid, %ip, "load balancer ip assigned");
            }
        }
        for (uid, ip) in &self.lb_assigned {
            if !desired.lb_assigned.contains_key(uid) {
                tracing::info!(%uid, %ip, "load balancer ip freed");
            }
        }
        for service in &desired.lb_pending {
            if !self.pending.contains(service) {
                tracing::warn!(%service, pool = self.config.lb_pool.len(), "load balancer pool used up; service waits");
            }
        }
        self.pending.clone_from(&desired.lb_pending);
    }

    /// Starts the proxy on `listen` or brings its upstreams and delay up to date. Addresses
    /// that are neither `usable` (just added) nor added before are skipped until they are.
    fn run_proxy(&mut self, listen: SocketAddr, spec: ProxySpec, usable: &BTreeSet<Ipv4Addr>) {
        if let Some(running) = self.proxies.get_mut(&listen) {
            if running.spec.upstreams != spec.upstreams {
                tracing::info!(service = %spec.service, %listen, upstreams = ?spec.upstreams, "service endpoints changed");
                running.handle.set_upstreams(spec.upstreams.clone());
            }
            if running.spec.delay != spec.delay {
                running.handle.set_delay(spec.delay);
            }
            running.spec = spec;
            return;
        }
        let local = match listen {
            SocketAddr::V4(v4) => self.addresses.contains(v4.ip()) || usable.contains(v4.ip()),
            SocketAddr::V6(_) => false,
        };
        if !local {
            return;
        }
        match WanProxy::spawn(listen, spec.upstreams.clone(), spec.delay) {
            Ok(handle) => {
                tracing::info!(
                    service = %spec.service,
                    %listen,
                    upstreams = ?spec.upstreams,
                    delay = ?spec.delay,
                    "service proxy started"
                );
                self.failing.remove(&listen);
                self.proxies.insert(listen, RunningProxy { handle, spec });
            }
            Err(error) if self.failing.insert(listen) => {
                tracing::warn!(service = %spec.service, %listen, %error, "cannot start service proxy; retrying");
            }
            Err(error) => tracing::debug!(service = %spec.service, %listen, %error, "cannot start service proxy"),
        }
    }

    /// Adds local addresses; returns the ones that are there now. They are recorded before
    /// being added, so that a poll cancelled half-way still removes them at the end; the ones
    /// that failed are forgotten, so that the next poll adds them again.
    async fn ensure_addresses(&mut self, addresses: Vec<Ipv4Addr>) -> BTreeSet<Ipv4Addr> {
        if addresses.is_empty() {
            return BTreeSet::new();
        }
        self.addresses.extend(&addresses);
        let to_add = addresses.clone();
        let added = tokio::task::spawn_blocking(move || {
            to_add.into_iter().map(|a| (a, ensure_local_address(a))).collect::<Vec<_>>()
        })
        .await;
        let added = match added {
            Ok(added) => added,
            Err(error) => {
                tracing::warn!(%error, "adding local addresses failed; retrying at the next poll");
                for addr in &addresses {
                    self.addresses.remove(addr);
                }
                return BTreeSet::new();
            }
        };
        let mut usable = BTreeSet::new();
        for (addr, result) in added {
            match result {
                Ok(()) => {
                    tracing::debug!(%addr, "service address added");
                    usable.insert(addr);
                }
                Err(error) => {
                    tracing::warn!(%addr, error = %format!("{error:#}"), "cannot add service address; retrying");
                    self.addresses.remove(&addr);
                }
            }
        }
        usable
    }

    async fn remove_addresses(&mut self, addresses: Vec<Ipv4Addr>) {
        if addresses.is_empty() {
            return;
        }
        for addr in &addresses {
            self.addresses.remove(addr);
            tracing::debug!(%addr, "service address removed");
        }
        let removed = tokio::task::spawn_blocking(move || addresses.into_iter().for_each(remove_local_address)).await;
        if let Err(error) = removed {
            tracing::warn!(%error, "removing local addresses failed");
        }
    }

    async fn write_lb_status(&self, update: LbStatusUpdate) {
        let api = Api::<Service>::namespaced(self.client.clone(), &update.service.namespace);
        let patch =
            serde_json::json!({ "status": { "loadBalancer": { "ingress": [ { "ip": update.ip.to_string() } ] } } });
        match api.patch_status(&update.service.name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => tracing::info!(service = %update.service, ip = %update.ip, "load balancer status written"),
            Err(error) => tracing::warn!(
                service = %update.service,
                ip = %update.ip,
                %error,
                "cannot write load balancer status; retrying at the next poll"
            ),
        }
    }

    /// Stops every proxy and removes every address this proxy added.
    async fn stop(mut self) {
        for (_, running) in std::mem::take(&mut self.proxies) {
            running.handle.shutdown();
        }
        let addresses: Vec<Ipv4Addr> = self.addresses.iter().copied().collect();
        self.remove_addresses(addresses).await;
        tracing::info!("service proxy stopped every proxy and removed its addresses");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn config() -> ServiceProxyConfig {
        ServiceProxyConfig {
            cluster_domain: "cluster.local".into(),
            lb_pool: vec![Ipv4Addr::new(10, 200, 0, 1), Ipv4Addr::new(10, 200, 0, 2)],
            lb_delay: Duration::from_millis(40),
            poll_interval: Duration::from_millis(500),
        }
    }

    fn service(name: &str, spec: Value) -> Service {
        serde_json::from_value(json!({
            "metadata": { "name": name, "namespace": "ns", "uid": format!("uid-{name}") },
            "spec": spec,
        }))
        .unwrap()
    }

    fn with_status_ip(mut service: Service, ip: &str) -> Service {
        service.status =
            Some(serde_json::from_value(json!({ "loadBalancer": { "ingress": [ { "ip": ip } ] } })).unwrap());
        service
    }

    fn slice(service: &str, ports: Value, endpoints: Value) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {
                "name": format!("{service}-abcde"),
                "namespace": "ns",
                "labels": { SERVICE_NAME_LABEL: service },
            },
            "addressType": "IPv4",
            "ports": ports,
            "endpoints": endpoints,
        }))
        .unwrap()
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn desired(services: &[Service], slices: &[EndpointSlice]) -> Desired {
        desired_state(services, slices, &config(), &BTreeMap::new())
    }

    fn upstreams_of(d: &Desired, listen: &str) -> Vec<SocketAddr> {
        d.proxies.get(&sa(listen)).unwrap_or_else(|| panic!("no proxy on {listen}: {:?}", d.proxies)).upstreams.clone()
    }

    fn client_service() -> Service {
        service(
            "client",
            json!({ "clusterIP": "10.96.0.10", "ports": [
                { "name": "http", "port": 8080, "targetPort": 8080 },
                { "name": "redis", "port": 6379, "targetPort": "redis" },
            ]}),
        )
    }

    fn client_slice() -> EndpointSlice {
        slice(
            "client",
            json!([{ "name": "redis", "port": 6380 }, { "name": "http", "port": 18080 }]),
            json!([
                { "addresses": ["10.244.0.2"], "conditions": { "ready": true } },
                { "addresses": ["10.244.0.3"] },
                { "addresses": ["10.244.0.4"], "conditions": { "ready": false } },
            ]),
        )
    }

    #[test]
    fn a_cluster_ip_service_gets_its_address_and_a_proxy_per_port_to_the_ready_endpoints_by_port_name() {
        let d = desired(&[client_service()], &[client_slice()]);
        assert_eq!(d.addresses, BTreeSet::from([ip("10.96.0.10")]));
        assert_eq!(d.proxies.len(), 2);
        assert_eq!(upstreams_of(&d, "10.96.0.10:8080"), [sa("10.244.0.2:18080"), sa("10.244.0.3:18080")]);
        assert_eq!(upstreams_of(&d, "10.96.0.10:6379"), [sa("10.244.0.2:6380"), sa("10.244.0.3:6380")]);
        let spec = &d.proxies[&sa("10.96.0.10:8080")];
        assert_eq!(spec.delay, Duration::ZERO);
        assert_eq!(spec.service, ServiceKey { namespace: "ns".into(), name: "client".into() });
        assert!(d.lb_status.is_empty() && d.lb_assigned.is_empty());
    }

    #[test]
    fn the_endpoints_of_every_slice_of_the_service_are_upstreams_and_other_slices_are_ignored() {
        let second =
            slice("client", json!([{ "name": "http", "port": 18081 }]), json!([{ "addresses": ["10.244.1.2"] }]));
        let other_service =
            slice("other", json!([{ "name": "http", "port": 1 }]), json!([{ "addresses": ["10.9.9.9"] }]));
        let mut other_namespace = client_slice();
        other_namespace.metadata.namespace = Some("elsewhere".into());
        other_namespace.endpoints = Some(vec![Endpoint { addresses: vec!["10.8.8.8".into()], ..Default::default() }]);
        let d = desired(&[client_service()], &[client_slice(), second, other_service, other_namespace]);
        assert_eq!(
            upstreams_of(&d, "10.96.0.10:8080"),
            [sa("10.244.0.2:18080"), sa("10.244.0.3:18080"), sa("10.244.1.2:18081")]
        );
    }

    #[test]
    fn an_unnamed_port_falls_back_to_the_only_endpoint_port_then_to_the_target_port_number() {
        let one = service("one", json!({ "clusterIP": "10.96.0.11", "ports": [{ "port": 80, "targetPort": 8080 }] }));
        let one_slice =
            slice("one", json!([{ "name": "web", "port": 9090 }]), json!([{ "addresses": ["10.244.0.2"] }]));
        let bare = service("bare", json!({ "clusterIP": "10.96.0.12", "ports": [{ "port": 80, "targetPort": 8080 }] }));
        let bare_slice = slice("bare", json!(null), json!([{ "addresses": ["10.244.0.3"] }]));
        let d = desired(&[one, bare], &[one_slice, bare_slice]);
        assert_eq!(upstreams_of(&d, "10.96.0.11:80"), [sa("10.244.0.2:9090")]);
        assert_eq!(upstreams_of(&d, "10.96.0.12:80"), [sa("10.244.0.3:8080")]);
    }

    #[test]
    fn a_service_without_endpoints_gets_a_proxy_without_upstreams() {
        let d = desired(&[client_service()], &[]);
        assert_eq!(upstreams_of(&d, "10.96.0.10:8080"), []);
        assert_eq!(d.dns["client.ns.svc.cluster.local"], [ip("10.96.0.10")]);
    }

    #[test]
    fn udp_ports_ipv6_slices_and_external_name_services_get_no_proxy() {
        let dns = service(
            "dns",
            json!({ "clusterIP": "10.96.0.53", "ports": [
                { "name": "udp", "port": 53, "protocol": "UDP" },
                { "name": "tcp", "port": 53, "protocol": "TCP" },
            ]}),
        );
        let mut v6 = slice("dns", json!([{ "name": "tcp", "port": 53 }]), json!([{ "addresses": ["fd00::1"] }]));
        v6.address_type = "IPv6".into();
        let external = service("external", json!({ "type": "ExternalName", "externalName": "example.com" }));
        let d = desired(&[dns, external], &[v6]);
        assert_eq!(d.proxies.keys().copied().collect::<Vec<_>>(), [sa("10.96.0.53:53")]);
        assert_eq!(upstreams_of(&d, "10.96.0.53:53"), []);
        assert_eq!(d.addresses.len(), 1);
        assert!(!d.dns.contains_key("external.ns.svc.cluster.local"));
    }

    #[test]
    fn a_load_balancer_service_gets_an_ingress_ip_with_delayed_proxies_to_the_same_endpoints() {
        let mut lb = client_service();
        lb.spec.as_mut().unwrap().type_ = Some("LoadBalancer".into());
        let d = desired(&[lb], &[client_slice()]);
        let ingress = ip("10.200.0.1");
        assert_eq!(d.lb_assigned, BTreeMap::from([("uid-client".to_string(), ingress)]));
        assert_eq!(d.addresses, BTreeSet::from([ip("10.96.0.10"), ingress]));
        assert_eq!(d.proxies.len(), 4);
        let lb_proxy = &d.proxies[&sa("10.200.0.1:8080")];
        assert_eq!(lb_proxy.delay, Duration::from_millis(40));
        assert_eq!(lb_proxy.upstreams, upstreams_of(&d, "10.96.0.10:8080"));
        assert_eq!(d.proxies[&sa("10.96.0.10:8080")].delay, Duration::ZERO);
        assert_eq!(upstreams_of(&d, "10.200.0.1:6379"), [sa("10.244.0.2:6380"), sa("10.244.0.3:6380")]);
        assert_eq!(
            d.lb_status,
            [LbStatusUpdate { service: ServiceKey { namespace: "ns".into(), name: "client".into() }, ip: ingress }]
        );
        assert_eq!(d.dns["client.ns.svc.cluster.local"], [ip("10.96.0.10")]);
    }

    #[test]
    fn the_load_balancer_status_is_written_only_when_it_differs() {
        let lb = service("a", json!({ "type": "LoadBalancer", "clusterIP": "10.96.0.1", "ports": [{ "port": 80 }] }));
        assert_eq!(desired(&[with_status_ip(lb.clone(), "10.200.0.1")], &[]).lb_status, []);
        let stale = desired(&[with_status_ip(lb.clone(), "192.0.2.1")], &[]);
        assert_eq!(stale.lb_status.len(), 1);
        assert_eq!(stale.lb_status[0].ip, ip("10.200.0.1"));
    }

    #[test]
    fn load_balancer_ips_stay_with_their_service_and_are_freed_when_it_goes() {
        let lb = |name: &str, cluster_ip: &str| {
            service(name, json!({ "type": "LoadBalancer", "clusterIP": cluster_ip, "ports": [{ "port": 80 }] }))
        };
        let (a, b, c) = (lb("a", "10.96.0.1"), lb("b", "10.96.0.2"), lb("c", "10.96.0.3"));
        let first = desired(std::slice::from_ref(&b), &[]);
        assert_eq!(first.lb_assigned["uid-b"], ip("10.200.0.1"));
        // `a` sorts before `b` but does not take its address.
        let second = desired_state(&[a.clone(), b.clone()], &[], &config(), &first.lb_assigned);
        assert_eq!(second.lb_assigned["uid-b"], ip("10.200.0.1"));
        assert_eq!(second.lb_assigned["uid-a"], ip("10.200.0.2"));
        // `b` goes: its address is free again, for `c`.
        let third = desired_state(&[a.clone(), c.clone()], &[], &config(), &second.lb_assigned);
        assert_eq!(third.lb_assigned.len(), 2);
        assert_eq!(third.lb_assigned["uid-a"], ip("10.200.0.2"));
        assert_eq!(third.lb_assigned["uid-c"], ip("10.200.0.1"));
        assert!(!third.proxies.contains_key(&sa("10.96.0.2:80")));
        assert_eq!(third.addresses.len(), 4);
    }

    #[test]
    fn a_restarted_proxy_keeps_the_ingress_ip_a_service_already_has_when_it_is_in_the_pool() {
        let lb = |name: &str, cluster_ip: &str| {
            service(name, json!({ "type": "LoadBalancer", "clusterIP": cluster_ip, "ports": [{ "port": 80 }] }))
        };
        let a = lb("a", "10.96.0.1");
        let b = with_status_ip(lb("b", "10.96.0.2"), "10.200.0.1");
        let d = desired(&[a, b], &[]);
        assert_eq!(d.lb_assigned["uid-b"], ip("10.200.0.1"));
        assert_eq!(d.lb_assigned["uid-a"], ip("10.200.0.2"));
        assert_eq!(d.lb_status.len(), 1, "only a's status changes: {:?}", d.lb_status);
    }

    #[test]
    fn when_the_pool_is_used_up_a_load_balancer_waits_with_only_its_cluster_ip() {
        let lb = |name: &str, cluster_ip: &str| {
            service(name, json!({ "type": "LoadBalancer", "clusterIP": cluster_ip, "ports": [{ "port": 80 }] }))
        };
        let d = desired(&[lb("a", "10.96.0.1"), lb("b", "10.96.0.2"), lb("c", "10.96.0.3")], &[]);
        assert_eq!(d.lb_assigned.len(), 2);
        assert_eq!(d.lb_pending, [ServiceKey { namespace: "ns".into(), name: "c".into() }]);
        assert!(d.proxies.contains_key(&sa("10.96.0.3:80")));
        assert_eq!(d.proxies.len(), 5);
        assert_eq!(d.lb_status.len(), 2);
    }

    #[test]
    fn node_port_services_get_only_the_cluster_ip_part() {
        let np = service(
            "np",
            json!({ "type": "NodePort", "clusterIP": "10.96.0.7", "ports": [{ "port": 80, "nodePort": 30080 }] }),
        );
        let d = desired(&[np], &[]);
        assert_eq!(d.proxies.keys().copied().collect::<Vec<_>>(), [sa("10.96.0.7:80")]);
        assert!(d.lb_assigned.is_empty() && d.lb_status.is_empty());
    }

    #[test]
    fn a_headless_service_resolves_to_its_ready_endpoints_and_each_hostname_to_its_own() {
        let peers = service("peers", json!({ "clusterIP": "None", "ports": [{ "name": "repl", "port": 7000 }] }));
        let endpoints = json!([
            { "addresses": ["10.244.0.3"], "hostname": "eu-1", "conditions": { "ready": true } },
            { "addresses": ["10.244.0.2"], "hostname": "eu-0" },
            { "addresses": ["10.244.0.4"], "hostname": "eu-2", "conditions": { "ready": false } },
        ]);
        let d = desired(&[peers], &[slice("peers", json!([{ "name": "repl", "port": 7000 }]), endpoints)]);
        assert!(d.proxies.is_empty() && d.addresses.is_empty());
        let expected: HashMap<String, Vec<Ipv4Addr>> = HashMap::from([
            ("peers.ns.svc.cluster.local".into(), vec![ip("10.244.0.2"), ip("10.244.0.3")]),
            ("eu-0.peers.ns.svc.cluster.local".into(), vec![ip("10.244.0.2")]),
            ("eu-1.peers.ns.svc.cluster.local".into(), vec![ip("10.244.0.3")]),
        ]);
        assert_eq!(d.dns, expected);
    }

    #[test]
    fn a_headless_service_that_publishes_not_ready_addresses_resolves_to_those_too() {
        let peers = service("peers", json!({ "clusterIP": "None", "publishNotReadyAddresses": true }));
        let endpoints = json!([{ "addresses": ["10.244.0.4"], "hostname": "eu-2", "conditions": { "ready": false } }]);
        let d = desired(&[peers], &[slice("peers", json!([]), endpoints)]);
        assert_eq!(d.dns["peers.ns.svc.cluster.local"], [ip("10.244.0.4")]);
        assert_eq!(d.dns["eu-2.peers.ns.svc.cluster.local"], [ip("10.244.0.4")]);
    }

    #[test]
    fn a_headless_service_without_endpoints_has_no_name_and_names_are_lowercase_under_the_domain() {
        let peers = service("peers", json!({ "clusterIP": "None" }));
        let a = service("a", json!({ "clusterIP": "10.96.0.1" }));
        let config = ServiceProxyConfig { cluster_domain: "Cluster.Example.".into(), ..config() };
        let d = desired_state(&[peers, a], &[], &config, &BTreeMap::new());
        assert_eq!(d.dns, HashMap::from([("a.ns.svc.cluster.example".to_string(), vec![ip("10.96.0.1")])]));
        assert_eq!(d.addresses, BTreeSet::from([ip("10.96.0.1")]));
    }
}
