//! The test kubelet: makes one cluster of the test control plane run GeoCache pods as
//! local processes (see `geocache_tests::kubelet`). Runs as root inside the network
//! namespace of `tests/controlplane/netns.sh`; `tests/controlplane/up.sh` starts one per
//! cluster.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use geocache_tests::kubelet::dns::{DnsRecords, DnsServer};
use geocache_tests::kubelet::node::{self, NodeInfo};
use geocache_tests::kubelet::pods::{self, Image, PodsConfig};
use geocache_tests::kubelet::{network, service_proxy};
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::sync::watch;

#[derive(Parser, Debug)]
#[command(about = "a kubelet for tests: runs GeoCache pods as local processes")]
struct Args {
    /// Kubeconfig of the cluster's API server.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Name of the Node to register.
    #[arg(long)]
    node_name: String,
    /// The Node's address (reported as its InternalIP and as the pods' hostIP).
    #[arg(long)]
    node_ip: Ipv4Addr,
    /// Pod addresses: a /16 such as 10.11.0.0/16.
    #[arg(long)]
    pod_cidr: String,
    /// Address of the cluster DNS (port 53 UDP), which the pods' resolv.conf names.
    #[arg(long)]
    dns_ip: Ipv4Addr,
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// Load-balancer ingress addresses: a /24 such as 172.30.1.0/24.
    #[arg(long)]
    lb_cidr: String,
    /// One-way delay of load-balancer traffic (the WAN between clusters).
    #[arg(long, default_value = "20ms", value_parser = humantime_duration)]
    lb_delay: Duration,
    /// Images this kubelet runs: REPOSITORY=BINARY (repeatable), e.g. geocache-node=target/debug/geocache-node.
    #[arg(long = "image", required = true)]
    images: Vec<String>,
    /// Where pods' files and volumes live.
    #[arg(long)]
    state_dir: PathBuf,
}

fn humantime_duration(text: &str) -> Result<Duration, String> {
    geocache_node::duration::parse_ttl_ms(text).map(Duration::from_millis)
}

fn prefix16(cidr: &str) -> anyhow::Result<[u8; 2]> {
    let (addr, len) = cidr.split_once('/').context("a CIDR is ADDRESS/LENGTH")?;
    let addr: Ipv4Addr = addr.parse().context("pod CIDR address")?;
    if len != "16" {
        bail!("the pod CIDR must be a /16, got /{len}");
    }
    let [a, b, _, _] = addr.octets();
    Ok([a, b])
}

fn pool24(cidr: &str) -> anyhow::Result<Vec<Ipv4Addr>> {
    let (addr, len) = cidr.split_once('/').context("a CIDR is ADDRESS/LENGTH")?;
    let addr: Ipv4Addr = addr.parse().context("load-balancer CIDR address")?;
    if len != "24" {
        bail!("the load-balancer CIDR must be a /24, got /{len}");
    }
    let [a, b, c, _] = addr.octets();
    Ok((1..=254).map(|d| Ipv4Addr::new(a, b, c, d)).collect())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn,hyper=warn,tower=warn".into()),
        )
        .init();
    let args = Args::parse();
    let pod_prefix = prefix16(&args.pod_cidr)?;
    let lb_pool = pool24(&args.lb_cidr)?;
    let images = args.images.iter().map(|i| Image::parse(i)).collect::<anyhow::Result<Vec<_>>>()?;
    std::fs::create_dir_all(args.state_dir.join("volumes"))?;
    let state_dir = std::fs::canonicalize(&args.state_dir)?;

    let text =
        std::fs::read_to_string(&args.kubeconfig).with_context(|| format!("reading {}", args.kubeconfig.display()))?;
    let kubeconfig = Kubeconfig::from_yaml(&text)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    let client = kube::Client::try_from(config)?;

    network::prepare_host().context("preparing the host network (root, in a private network namespace?)")?;
    network::ensure_local_address(args.dns_ip)?;
    let records = DnsRecords::new();
    let dns = DnsServer::spawn(SocketAddr::from((args.dns_ip, 53)), records.clone()).await?;
    tracing::info!(addr = %dns.addr(), "cluster dns listening");

    let info = NodeInfo { name: args.node_name.clone(), address: args.node_ip, pod_cidr: args.pod_cidr.clone() };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while let Err(error) = node::register(&client, &info).await {
        if tokio::time::Instant::now() >= deadline {
            return Err(error.context("registering the node"));
        }
        tracing::warn!(error = %format!("{error:#}"), "node not registered yet; retrying");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    let (stop, shutdown) = watch::channel(false);
    let heartbeat = tokio::spawn(node::keep_ready(client.clone(), info, shutdown.clone()));
    let proxy_config = service_proxy::ServiceProxyConfig {
        cluster_domain: args.cluster_domain.clone(),
        lb_pool,
        lb_delay: args.lb_delay,
        poll_interval: Duration::from_millis(500),
    };
    let proxy = tokio::spawn(service_proxy::run(client.clone(), proxy_config, records, shutdown.clone()));
    let pods_config = PodsConfig {
        node: args.node_name.clone(),
        node_address: args.node_ip,
        state_dir,
        pod_prefix,
        dns: args.dns_ip,
        cluster_domain: args.cluster_domain,
        images,
    };
    let runner = tokio::spawn(pods::run(client, pods_config, shutdown));
    tracing::info!(node = %args.node_name, "test kubelet running");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("stopping every pod");
    let _ = stop.send(true);
    let _ = runner.await;
    let _ = heartbeat.await;
    match proxy.await {
        Ok(Err(error)) => tracing::warn!(error = %format!("{error:#}"), "service proxy stopped with an error"),
        Err(error) => tracing::warn!(%error, "service proxy task failed"),
        Ok(Ok(())) => {}
    }
    dns.shutdown();
    Ok(())
}
