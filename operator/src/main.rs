//! `geocache-operator`: the Kubernetes operator for GeoCache.
//!
//! With no arguments it runs the controller against the cluster it finds (in-cluster
//! configuration, else `KUBECONFIG` / `~/.kube/config`), serves `/healthz`, `/readyz` and
//! `/metrics`, and stops cleanly on SIGTERM. `geocache-operator crdgen` prints the CRD.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use geocache_operator::controller::{self, Context, Settings, shutdown_signal};
use geocache_operator::leader::{EXIT_LOST_LEADERSHIP, Elector, LeaseConfig, Timing, Watchdog};
use geocache_operator::metrics::Metrics;
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client, Config};
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(name = "geocache-operator", version, about = "Kubernetes operator for GeoCache")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Namespaces to watch, comma separated (default: all namespaces).
    #[arg(long, env = "GEOCACHE_OPERATOR_NAMESPACES", value_delimiter = ',')]
    namespaces: Vec<String>,
    /// Address of the health and metrics endpoints.
    #[arg(long, env = "GEOCACHE_OPERATOR_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    /// Run only while holding a Lease, so that several replicas can run.
    #[arg(long, env = "GEOCACHE_OPERATOR_LEADER_ELECT", default_value = "false", action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Name of the leader-election Lease.
    #[arg(long, env = "GEOCACHE_OPERATOR_LEASE_NAME", default_value = "geocache-operator")]
    lease_name: String,
    /// Namespace of the Lease (default: the operator's own namespace).
    #[arg(long, env = "GEOCACHE_OPERATOR_LEASE_NAMESPACE")]
    lease_namespace: Option<String>,
    /// Seconds a standby replica waits, after it last saw the Lease change, before it takes
    /// the Lease over.
    #[arg(long, env = "GEOCACHE_OPERATOR_LEASE_DURATION_SECONDS", default_value_t = 15)]
    lease_duration_seconds: u64,
    /// Seconds after the start of its last successful renewal at which the leader stops
    /// reconciling and exits; below the lease duration, so that it has stopped before a
    /// standby may take over.
    #[arg(long, env = "GEOCACHE_OPERATOR_RENEW_DEADLINE_SECONDS", default_value_t = 10)]
    renew_deadline_seconds: u64,
    /// Seconds between two attempts to renew or take the Lease; below the renew deadline.
    #[arg(long, env = "GEOCACHE_OPERATOR_RETRY_PERIOD_SECONDS", default_value_t = 2)]
    retry_period_seconds: u64,
    /// Seconds between two looks at a GeoCache that is at its desired state (refreshes lag).
    #[arg(long, env = "GEOCACHE_OPERATOR_RESYNC_SECONDS", default_value_t = 60)]
    resync_seconds: u64,
    /// Log format.
    #[arg(long, env = "GEOCACHE_OPERATOR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the GeoCache CustomResourceDefinition as YAML.
    Crdgen,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).init(),
        LogFormat::Text => builder.init(),
    }
}

/// In-cluster configuration when running in a pod, else the kubeconfig.
async fn kube_config() -> anyhow::Result<Config> {
    match Config::incluster() {
        Ok(config) => Ok(config),
        Err(in_cluster) => {
            tracing::debug!(error = %in_cluster, "not in a cluster, reading the kubeconfig");
            Config::infer().await.context("no in-cluster configuration and no usable kubeconfig")
        }
    }
}

/// Resolves when SIGTERM or SIGINT arrives.
async fn termination() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutting down"),
                    _ = tokio::signal::ctrl_c() => tracing::info!(signal = "SIGINT", "shutting down"),
                }
            }
            Err(error) => {
                tracing::warn!(error = %error, "cannot watch SIGTERM, watching SIGINT only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Waits until the API server answers, or `stop` is set. Returns whether it answered.
async fn wait_for_api_server(client: &Client, stop: &mut watch::Receiver<bool>) -> bool {
    let mut delay = Duration::from_secs(1);
    loop {
        match client.apiserver_version().await {
            Ok(version) => {
                tracing::info!(version = %version.git_version, "connected to the api server");
                return true;
            }
            Err(error) => tracing::warn!(error = %error, retry_in_s = delay.as_secs(), "api server not reachable"),
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return false,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut cli = Cli::parse();
    // The chart passes an empty list as an empty variable: that means every namespace.
    cli.namespaces.retain(|ns| !ns.trim().is_empty());
    if let Some(Command::Crdgen) = cli.command {
        print!("{}", geocache_operator::crd::crd_yaml()?);
        return Ok(());
    }
    init_tracing(cli.log_format);
    let timing = Timing::new(
        Duration::from_secs(cli.lease_duration_seconds),
        Duration::from_secs(cli.renew_deadline_seconds),
        Duration::from_secs(cli.retry_period_seconds),
    )
    .context("invalid leader election timing")?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    {
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            termination().await;
            let _ = stop_tx.send(true);
        });
    }
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let shutdown = shutdown_signal(stopped(stop_rx.clone()));

    let metrics = Arc::new(Metrics::default());
    let listener = geocache_operator::http::bind(cli.http_addr)
        .await
        .with_context(|| format!("cannot listen on {}", cli.http_addr))?;
    tracing::info!(addr = %cli.http_addr, "serving /healthz, /readyz and /metrics");
    let server = tokio::spawn(geocache_operator::http::serve(listener, metrics.clone(), shutdown.clone()));

    let config = kube_config().await?;
    let default_namespace = config.default_namespace.clone();
    let client = Client::try_from(config).context("cannot create a kubernetes client")?;
    if !wait_for_api_server(&client, &mut stop_rx.clone()).await {
        let _ = server.await;
        return Ok(());
    }
    metrics.set_ready(true);

    let elector = if cli.leader_elect {
        let namespace = cli
            .lease_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok().filter(|s| !s.is_empty()))
            .unwrap_or(default_namespace);
        let identity = std::env::var("POD_NAME")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| format!("geocache-operator-{}", std::process::id()));
        let config = LeaseConfig { name: cli.lease_name.clone(), namespace: namespace.clone(), identity, timing };
        let elector = Elector::new(Api::<Lease>::namespaced(client.clone(), &namespace), config);
        let Some(leading_since) = elector.acquire(stopped(stop_rx.clone())).await else {
            let _ = server.await;
            return Ok(());
        };
        Some((elector, leading_since))
    } else {
        None
    };
    metrics.set_leader(true);

    let settings = Settings { requeue_stable: Duration::from_secs(cli.resync_seconds.max(5)), ..Settings::default() };
    let ctx = Arc::new(Context::new(client, metrics.clone(), settings));
    let mut run = Box::pin(controller::run(ctx, cli.namespaces.clone(), shutdown.clone()));
    match &elector {
        Some((elector, leading_since)) => {
            // The backstop: ends the process a little after the renew deadline should the
            // runtime be too blocked to stop the controller itself.
            let watchdog = Watchdog::start().context("cannot start the leader watchdog thread")?;
            let grace = timing.watchdog_delay();
            watchdog.arm(leading_since.into_std() + grace);
            // Renewals go on while the controller drains after SIGTERM: it acts until
            // `run` returns, so it must still lead until then.
            let renew = elector.keep_leading(*leading_since, |renewed| watchdog.arm(renewed.into_std() + grace));
            tokio::select! {
                () = &mut run => watchdog.disarm(),
                lost = renew => {
                    // Stop acting at once: the controller and its in-flight reconciles are
                    // dropped, not drained, since another replica may take over soon;
                    // then exit without touching the Lease (we cannot reach it in time).
                    drop(run);
                    metrics.set_leader(false);
                    tracing::error!(
                        lease = %elector.config().name,
                        reason = %lost,
                        "lost leadership; stopped reconciling, exiting so that this replica restarts as a candidate"
                    );
                    std::process::exit(EXIT_LOST_LEADERSHIP);
                }
            }
            elector.release().await;
        }
        None => run.await,
    }
    let _ = stop_tx.send(true);
    let _ = server.await;
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_arguments_run_the_controller_over_every_namespace() {
        let cli = Cli::try_parse_from(["geocache-operator"]).unwrap();
        assert!(cli.command.is_none());
        assert!(cli.namespaces.is_empty());
        assert!(!cli.leader_elect);
        assert_eq!(cli.http_addr, "0.0.0.0:8080".parse::<SocketAddr>().unwrap());
    }

    #[test]
    fn watched_namespaces_and_leader_election_are_flags() {
        let cli = Cli::try_parse_from(["geocache-operator", "--namespaces", "a,b", "--leader-elect", "true"]).unwrap();
        assert_eq!(cli.namespaces, vec!["a", "b"]);
        assert!(cli.leader_elect);
    }

    #[test]
    fn leader_election_timing_defaults_to_client_go_and_is_checked() {
        let cli = Cli::try_parse_from(["geocache-operator"]).unwrap();
        let (lease, deadline, retry) =
            (cli.lease_duration_seconds, cli.renew_deadline_seconds, cli.retry_period_seconds);
        assert_eq!((lease, deadline, retry), (15, 10, 2));
        assert_eq!(
            Timing::new(Duration::from_secs(lease), Duration::from_secs(deadline), Duration::from_secs(retry)),
            Ok(Timing::default())
        );
        let cli = Cli::try_parse_from([
            "geocache-operator",
            "--lease-duration-seconds",
            "8",
            "--renew-deadline-seconds",
            "8",
        ])
        .unwrap();
        let timing = Timing::new(
            Duration::from_secs(cli.lease_duration_seconds),
            Duration::from_secs(cli.renew_deadline_seconds),
            Duration::from_secs(cli.retry_period_seconds),
        );
        assert!(timing.is_err(), "a renew deadline equal to the lease duration was accepted");
    }

    #[test]
    fn crdgen_is_a_subcommand_too() {
        let cli = Cli::try_parse_from(["geocache-operator", "crdgen"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Crdgen)));
    }
}
