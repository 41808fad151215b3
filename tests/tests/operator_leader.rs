//! Leader election of the operator when the leader's connection to the API server stalls
//! (issue 11, defect 4: "two operator leaders at once").
//!
//! Two `geocache-operator --leader-elect` processes run against a real kube-apiserver
//! (etcd + kube-apiserver v1.37.2, [`geocache_tests::apiserver`]): the first one through a
//! TCP proxy, the second one directly. Once the first leads and has reconciled a GeoCache,
//! the proxy stops forwarding (connections stay open, nothing passes: what a silent network
//! partition or a wedged connection looks like). The test then samples, every few tens of
//! milliseconds, whether each replica acts:
//! - the first acts while its process runs and its `/metrics` (served directly, not
//!   through the proxy) do not say `geocache_operator_leader 0` (an unanswered scrape of a
//!   running process counts as acting);
//! - the second acts once the Lease names it or its `/metrics` say it leads.
//!
//! and fails if one sample finds both acting (the second's state is read first, so a
//! sample that finds both acting proves an overlap). It passes when the second has taken
//! over, the first has stopped (it exits, saying why), and the second reconciles a change.
//! Timings are never asserted beyond generous bounds: only the order of events.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use geocache_node::fleet::wan_proxy::WanProxy;
use geocache_operator::GeoCache;
use geocache_tests::apiserver::{ApiServer, Process, operator_binary, pick_loopback_ports};
use geocache_tests::{http, metric_value};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};

const NAMESPACE: &str = "default";
const LEASE: &str = "geocache-operator-leader-test";
const FIRST: &str = "operator-a";
const SECOND: &str = "operator-b";
/// Leader-election timing given to both operators: short, so that the test is quick,
/// with a wide margin between the renew deadline and the lease duration.
const LEASE_DURATION_S: u64 = 8;
const RENEW_DEADLINE_S: u64 = 4;
const RETRY_PERIOD_S: u64 = 1;
/// Hard bound of the whole scenario once the API server is up.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(180);
/// How long after the stall the second replica must have taken over (generous: the
/// lease duration plus a retry period would do).
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(60);

/// One `geocache-operator` process with its metrics address.
struct Operator {
    identity: &'static str,
    metrics: SocketAddr,
    process: Process,
}

impl Operator {
    fn start(dir: &Path, identity: &'static str, kubeconfig: &Path) -> Operator {
        let (_, ports) = pick_loopback_ports(1);
        let metrics = ports[0];
        let mut cmd = Command::new(operator_binary());
        // Hermetic: no GEOCACHE_* setting or in-cluster configuration leaks in.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy().into_owned();
            if k.starts_with("GEOCACHE_") || k.starts_with("KUBERNETES_") {
                cmd.env_remove(&k);
            }
        }
        // Settings as environment variables: an operator that does not know one of them
        // still runs (with its own defaults), so this test also runs against old builds.
        cmd.env("KUBECONFIG", kubeconfig)
            .env("POD_NAME", identity)
            .env("POD_NAMESPACE", NAMESPACE)
            .env("RUST_LOG", "info,geocache_operator::leader=debug")
            .env("NO_COLOR", "1")
            .env("GEOCACHE_OPERATOR_HTTP_ADDR", metrics.to_string())
            .env("GEOCACHE_OPERATOR_NAMESPACES", NAMESPACE)
            .env("GEOCACHE_OPERATOR_LEADER_ELECT", "true")
            .env("GEOCACHE_OPERATOR_LEASE_NAME", LEASE)
            .env("GEOCACHE_OPERATOR_LEASE_NAMESPACE", NAMESPACE)
            .env("GEOCACHE_OPERATOR_LEASE_DURATION_SECONDS", LEASE_DURATION_S.to_string())
            .env("GEOCACHE_OPERATOR_RENEW_DEADLINE_SECONDS", RENEW_DEADLINE_S.to_string())
            .env("GEOCACHE_OPERATOR_RETRY_PERIOD_SECONDS", RETRY_PERIOD_S.to_string())
            .env("GEOCACHE_OPERATOR_LOG_FORMAT", "text");
        let process = Process::spawn(identity, cmd, &dir.join(format!("{identity}.log")));
        Operator { identity, metrics, process }
    }

    /// `Some(true)` when its metrics say it leads, `Some(false)` when they say it stands
    /// by, `None` when they cannot be read (not serving yet, or gone).
    fn says_leader(&self) -> Option<bool> {
        let response = http::request(self.metrics, "GET", "/metrics", &[], b"", Duration::from_secs(2)).ok()?;
        if response.status != 200 {
            return None;
        }
        metric_value(&response.text(), "geocache_operator_leader").map(|v| v == 1.0)
    }

    /// Whether `/readyz` answers 200: it reached the API server.
    fn is_ready(&self) -> bool {
        http::request(self.metrics, "GET", "/readyz", &[], b"", Duration::from_secs(2)).is_ok_and(|r| r.status == 200)
    }

    fn reconciles(&self) -> f64 {
        http::request(self.metrics, "GET", "/metrics", &[], b"", Duration::from_secs(2))
            .ok()
            .and_then(|r| metric_value(&r.text(), "geocache_operator_reconciles_total"))
            .unwrap_or(0.0)
    }
}

/// What one sample saw.
#[derive(Debug)]
struct Sample {
    after_stall: Duration,
    holder: Option<String>,
    second_says_leader: Option<bool>,
    first_running: bool,
    first_says_leader: Option<bool>,
}

impl Sample {
    fn second_acts(&self) -> bool {
        self.holder.as_deref() == Some(SECOND) || self.second_says_leader == Some(true)
    }

    fn first_acts(&self) -> bool {
        self.first_running && self.first_says_leader != Some(false)
    }
}

fn timeline(samples: &[Sample]) -> String {
    // Only the samples where something changed, so that the timeline stays short.
    let mut out = String::new();
    let mut last = None;
    for s in samples {
        let now = (s.holder.clone(), s.second_says_leader, s.first_running, s.first_says_leader);
        if last.as_ref() != Some(&now) {
            out.push_str(&format!(
                "  +{:>6} ms  lease holder {:?}; {SECOND} metrics leader {:?}; {FIRST} running {} metrics leader {:?}\n",
                s.after_stall.as_millis(),
                s.holder,
                s.second_says_leader,
                s.first_running,
                s.first_says_leader
            ));
            last = Some(now);
        }
    }
    out
}

async fn holder(leases: &Api<Lease>) -> Option<String> {
    let lease = tokio::time::timeout(Duration::from_secs(5), leases.get_opt(LEASE)).await.ok()?.ok()??;
    lease.spec?.holder_identity.filter(|h| !h.is_empty())
}

/// Polls `check` every 100 ms until it is true; panics with `what` after `timeout`.
async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < timeout, "gave up after {timeout:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("ok after {} ms: {what}", start.elapsed().as_millis());
}

async fn statefulset_replicas(statefulsets: &Api<StatefulSet>, name: &str) -> Option<i32> {
    let sts = tokio::time::timeout(Duration::from_secs(5), statefulsets.get_opt(name)).await.ok()?.ok()??;
    sts.spec.replicas
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_leader_stops_acting_before_the_standby_takes_over() {
    let booting = Instant::now();
    let server = ApiServer::start();
    eprintln!("the API server is ready after {} ms", booting.elapsed().as_millis());
    let started = Instant::now();
    let client = server.client().await;
    let dir = server.work_dir().to_path_buf();

    // The CRD and one GeoCache for the operators to reconcile.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &geocache_operator::crd::crd()).await.expect("create the GeoCache CRD");
    wait_for("the GeoCache CRD is established", Duration::from_secs(60), || async {
        crds.get_opt("geocaches.geocache.dev").await.ok().flatten().and_then(|crd| crd.status).is_some_and(|s| {
            s.conditions.unwrap_or_default().iter().any(|c| c.type_ == "Established" && c.status == "True")
        })
    })
    .await;
    let geocaches: Api<GeoCache> = Api::namespaced(client.clone(), NAMESPACE);
    let geocache: GeoCache = serde_json::from_value(serde_json::json!({
        "apiVersion": "geocache.dev/v1alpha1",
        "kind": "GeoCache",
        "metadata": { "name": "leader", "namespace": NAMESPACE },
        "spec": { "regions": [ { "name": "eu", "replicas": 1 } ] }
    }))
    .expect("a GeoCache object");
    geocaches.create(&PostParams::default(), &geocache).await.expect("create the GeoCache");
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), NAMESPACE);
    let leases: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);

    // The first operator reaches the API server through a proxy on the API server's IP
    // (so that the server's certificate matches), the second one directly.
    let proxy = WanProxy::spawn(SocketAddr::new(server.addr().ip(), 0), vec![server.addr()], Duration::ZERO)
        .expect("start the proxy");
    let through_proxy = server.write_kubeconfig("first.kubeconfig", proxy.addr(), NAMESPACE);
    let direct = server.write_kubeconfig("second.kubeconfig", server.addr(), NAMESPACE);

    let mut first = Operator::start(&dir, FIRST, &through_proxy);
    wait_for(&format!("{FIRST} holds the lease and says it leads"), Duration::from_secs(60), || async {
        holder(&leases).await.as_deref() == Some(FIRST) && first.says_leader() == Some(true)
    })
    .await;
    wait_for(&format!("{FIRST} reconciles the GeoCache (StatefulSet leader-eu)"), Duration::from_secs(60), || async {
        statefulset_replicas(&statefulsets, "leader-eu").await == Some(1)
    })
    .await;

    let second = Operator::start(&dir, SECOND, &direct);
    wait_for(&format!("{SECOND} reached the API server and stands by"), Duration::from_secs(60), || async {
        second.is_ready() && second.says_leader() == Some(false)
    })
    .await;
    // A healthy leader keeps the lease: the standby does not take it over.
    tokio::time::sleep(Duration::from_secs(2 * RETRY_PERIOD_S + 1)).await;
    assert_eq!(holder(&leases).await.as_deref(), Some(FIRST), "{SECOND} took the lease of a healthy leader");
    assert_eq!(second.says_leader(), Some(false), "{SECOND} leads while {FIRST} renews the lease");
    assert!(first.process.is_running(), "{FIRST} exited while its API connection was healthy");

    // Stall the first operator's connection: open connections stay open, new ones are
    // accepted, nothing is forwarded either way.
    proxy.blackhole();
    let stalled = Instant::now();
    let mut samples = Vec::new();
    let mut settled = 0;
    loop {
        assert!(started.elapsed() < SCENARIO_TIMEOUT, "the scenario took longer than {SCENARIO_TIMEOUT:?}");
        // The second's state first: a sample that then finds the first still acting
        // proves that both acted at once.
        let holder = holder(&leases).await;
        let second_says_leader = second.says_leader();
        let first_running = first.process.is_running();
        let first_says_leader = if first_running { first.says_leader() } else { None };
        let sample =
            Sample { after_stall: stalled.elapsed(), holder, second_says_leader, first_running, first_says_leader };
        let both = sample.first_acts() && sample.second_acts();
        samples.push(sample);
        assert!(
            !both,
            "both operators acted at once: {SECOND} took over while {FIRST} still ran as the leader.\ntimeline after the stall:\n{}",
            timeline(&samples)
        );
        let last = samples.last().expect("a sample");
        if last.second_acts() && last.second_says_leader == Some(true) && !last.first_running {
            settled += 1;
            if settled >= 3 {
                break;
            }
        }
        assert!(
            stalled.elapsed() < TAKEOVER_TIMEOUT,
            "{SECOND} did not take over within {TAKEOVER_TIMEOUT:?} of the stall (or {FIRST} never stopped).\ntimeline:\n{}",
            timeline(&samples)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first_stopped = samples.iter().find(|s| !s.first_acts()).map(|s| s.after_stall).expect("the first stopped");
    let second_started = samples.iter().find(|s| s.second_acts()).map(|s| s.after_stall).expect("the second started");
    assert!(first_stopped < second_started, "order of events:\n{}", timeline(&samples));
    eprintln!(
        "{FIRST} stopped acting {} ms after the stall, {SECOND} took over {} ms after it\n{}",
        first_stopped.as_millis(),
        second_started.as_millis(),
        timeline(&samples)
    );

    // The first stopped because it could not renew in time, and said so; it exited with
    // a failure so that its pod restarts as a candidate.
    let status = first.process.exit_status().expect("the first operator exited");
    assert!(!status.success(), "{FIRST} exited with {status} after losing the lease");
    let log = first.process.log();
    assert!(
        log.contains("renew deadline passed"),
        "{FIRST}'s log does not say that it stopped at the renew deadline:\n{}",
        first.process.log_tail()
    );

    // The second reconciles: a change of the GeoCache reaches its StatefulSet.
    let patch = serde_json::json!({ "spec": { "regions": [ { "name": "eu", "replicas": 2 } ] } });
    geocaches.patch("leader", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("patch the GeoCache");
    wait_for(
        &format!("{SECOND} reconciles the change (StatefulSet leader-eu scaled to 2)"),
        Duration::from_secs(60),
        || async { statefulset_replicas(&statefulsets, "leader-eu").await == Some(2) },
    )
    .await;
    assert!(second.reconciles() >= 1.0, "{SECOND} counted no reconcile");

    let mut second = second;
    let stopping = Instant::now();
    let status = second.process.stop();
    eprintln!("{SECOND} stopped in {} ms", stopping.elapsed().as_millis());
    assert!(status.success(), "{SECOND} did not stop cleanly on SIGTERM: {status}");
    proxy.shutdown();
    drop(first);
    eprintln!("{} and {} stopped; logs were in {}", FIRST, second.identity, dir.display());
}
