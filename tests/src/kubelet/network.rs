//! Pod networking, CNI-style: each pod gets a network namespace, a veth pair whose host end
//! is routed to the pod's own address, and a default route to the host. Everything here runs
//! in the network namespace the test made for itself; nothing touches the machine's own.

use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{Context, bail};

/// Runs `ip` with `args`; fails with its stderr when it fails.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output().with_context(|| format!("running ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Makes `addr` a local address of this network namespace (on `lo`), so that a listener
/// can bind it and pods can reach it through their default route. Idempotent.
pub fn ensure_local_address(addr: Ipv4Addr) -> anyhow::Result<()> {
    ip(&["addr", "replace", &format!("{addr}/32"), "dev", "lo"])
}

/// Removes a local address added by [`ensure_local_address`]; absent is fine.
pub fn remove_local_address(addr: Ipv4Addr) {
    if let Err(error) = ip(&["addr", "del", &format!("{addr}/32"), "dev", "lo"]) {
        tracing::debug!(%addr, %error, "local address not removed");
    }
}

/// The address every pod's default route points at; it lives on the host's `lo`, so the
/// host answers the pods' ARP requests for it on every veth.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// Prepares the host side once: the gateway address and forwarding between pods.
pub fn prepare_host() -> anyhow::Result<()> {
    ip(&["link", "set", "lo", "up"])?;
    ensure_local_address(GATEWAY)?;
    for (path, value) in [
        ("/proc/sys/net/ipv4/ip_forward", "1"),
        ("/proc/sys/net/ipv4/conf/all/rp_filter", "0"),
        ("/proc/sys/net/ipv4/conf/default/rp_filter", "0"),
    ] {
        std::fs::write(path, value).with_context(|| format!("writing {path}"))?;
    }
    Ok(())
}

/// Names of pods' network namespaces: `gcpod<kubelet pid>-<address in hex>`. The files in
/// `/run/netns` are shared with every other network namespace of the machine, hence the pid.
pub const NETNS_PREFIX: &str = "gcpod";

/// Deletes the pod namespaces left behind by test kubelets that are gone (killed before
/// they could clean up).
pub fn delete_orphaned_namespaces() {
    for entry in std::fs::read_dir("/run/netns").into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(NETNS_PREFIX).and_then(|rest| rest.split_once('-')).map(|(pid, _)| pid)
        else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !std::path::Path::new("/proc").join(pid).exists() {
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

/// The network of one pod: its namespace, the host end of its veth pair, its address.
#[derive(Debug, Clone)]
pub struct PodNetwork {
    pub netns: String,
    pub host_veth: String,
    pub address: Ipv4Addr,
}

impl PodNetwork {
    /// `/run/netns/<name>`, what a process joins.
    pub fn netns_path(&self) -> std::path::PathBuf {
        std::path::Path::new("/run/netns").join(&self.netns)
    }

    /// Creates the namespace and the veth pair, gives the pod `address` and a default
    /// route to [`GATEWAY`], and routes `address` to the pod on the host.
    pub fn create(index: u32, address: Ipv4Addr) -> anyhow::Result<PodNetwork> {
        let network = PodNetwork {
            netns: format!("{NETNS_PREFIX}{}-{index:08x}", std::process::id()),
            host_veth: format!("gch{index:08x}"),
            address,
        };
        let peer = format!("gcp{index}");
        let ns = network.netns.as_str();
        let addr = format!("{address}/32");
        let gateway = GATEWAY.to_string();
        let result = (|| {
            ip(&["netns", "add", ns])?;
            ip(&["link", "add", &network.host_veth, "type", "veth", "peer", "name", &peer])?;
            ip(&["link", "set", &peer, "netns", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "link", "set", &peer, "name", "eth0"])?;
            ip(&["-n", ns, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", ns, "route", "add", &gateway, "dev", "eth0"])?;
            ip(&["-n", ns, "route", "add", "default", "via", &gateway, "dev", "eth0"])?;
            ip(&["link", "set", &network.host_veth, "up"])?;
            ip(&["route", "replace", &addr, "dev", &network.host_veth, "src", &gateway])
        })();
        if let Err(error) = result {
            network.delete();
            return Err(error);
        }
        Ok(network)
    }

    /// Deletes the namespace (which takes the veth pair and the route along).
    pub fn delete(&self) {
        let _ = ip(&["link", "del", &self.host_veth]);
        if let Err(error) = ip(&["netns", "del", &self.netns]) {
            tracing::debug!(netns = %self.netns, %error, "network namespace not deleted");
        }
    }
}
