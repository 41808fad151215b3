//! The project's own Jepsen: a fault-injection harness for a [`Fleet`].
//!
//! [`run`] starts a fleet (by default 3 regions × 2 nodes; node `*-0` of each region
//! has a data dir, `*-1` is memory-only; nodes of some regions may run with their
//! clock offset through libfaketime), then, for a bounded time:
//! - one client per region ([`generator`]) sends seeded random PUT / PATCH / DELETE /
//!   EXPIRE requests with TTLs and every ack level to the nodes of its region, plain
//!   reads anywhere, read-your-writes reads (with the token of its last write) on any
//!   node, and, right after an `ack=region|global` acknowledgement, reads of the key on
//!   the nodes that must have confirmed it — recording every request and its answer;
//! - the [`nemesis`] injects seeded random faults: partitions, a region isolated,
//!   one-way cuts, `kill -9` with and without a data dir (restarted later, possibly
//!   with another clock offset), SIGSTOP past the peer timeout then SIGCONT, WAN delay
//!   changes.
//!
//! Then it heals everything, waits for every node to see its peers and for the data to
//! converge, reads every key on every node, and runs the [`checker`]. [`Report::assert_ok`]
//! panics with the seed, the violations, the faults' timeline and the operations on
//! the keys involved; the whole history is written to a file.

pub mod checker;
pub mod generator;
pub mod history;
pub mod nemesis;
pub mod rng;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use checker::{CheckSettings, Checker, Observed, State, Violation};
use generator::{Client, ClientSettings, Shared, Target};
use history::{History, Outcome, Version};
use nemesis::{FaultKind, Nemesis, NemesisSettings};
use rng::Rng;

use crate::fleet::Fleet;
use crate::{faketime_env, http, key_path, libfaketime, now_unix_ms, parse_rfc3339_ms};

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Shown in messages and used for the history file's name.
    pub name: String,
    pub seed: u64,
    pub regions: Vec<String>,
    pub nodes_per_region: usize,
    /// How long clients and faults run.
    pub duration: Duration,
    /// At most this many client operations (probes included).
    pub max_ops: usize,
    /// Number of distinct keys (small: conflicts are the point).
    pub keys: usize,
    /// Clock offset (ms) of every node of a region, through libfaketime.
    pub clock_offsets: BTreeMap<String, i64>,
    /// Offsets a killed node may come back with (empty: it keeps its own).
    pub restart_offsets: Vec<i64>,
    pub faults: Vec<FaultKind>,
    /// Time between two new faults, ms.
    pub fault_interval_ms: (u64, u64),
    /// How long a fault lasts, ms.
    pub fault_duration_ms: (u64, u64),
    pub max_active_faults: usize,
    pub wan_delay: Duration,
    /// Node flags.
    pub peer_timeout: Duration,
    pub ack_timeout: Duration,
    pub max_clock_skew: Duration,
    /// How long the fleet may take to converge after healing.
    pub converge_timeout: Duration,
    /// Pause between two operations of one client, ms.
    pub think_ms: (u64, u64),
}

impl Config {
    /// Defaults for a CI run: ~45 s of operations and every kind of fault.
    pub fn new(name: &str, seed: u64) -> Config {
        Config {
            name: name.to_string(),
            seed,
            regions: ["eu", "us", "ap"].iter().map(|s| s.to_string()).collect(),
            nodes_per_region: 2,
            duration: Duration::from_secs(45),
            max_ops: usize::MAX,
            keys: 24,
            clock_offsets: BTreeMap::new(),
            restart_offsets: Vec::new(),
            faults: FaultKind::ALL.to_vec(),
            fault_interval_ms: (800, 2500),
            fault_duration_ms: (1500, 5000),
            max_active_faults: 2,
            wan_delay: Duration::from_millis(20),
            peer_timeout: Duration::from_secs(2),
            ack_timeout: Duration::from_secs(2),
            max_clock_skew: Duration::from_millis(500),
            converge_timeout: Duration::from_secs(40),
            think_ms: (5, 30),
        }
    }

    fn uses_faketime(&self) -> bool {
        !self.clock_offsets.is_empty() || !self.restart_offsets.is_empty()
    }
}

/// What a run found.
pub struct Report {
    pub config: Config,
    pub history: History,
    /// What every node answered for every key at the end.
    pub observed: Vec<Observed>,
    pub violations: Vec<Violation>,
    /// How long convergence took after healing (None: it did not happen).
    pub converged_in: Option<Duration>,
    /// How many times each check applied.
    pub check_counts: BTreeMap<&'static str, usize>,
    pub history_file: Option<std::path::PathBuf>,
    /// The nodes' logs, kept when a check failed.
    pub logs: Vec<std::path::PathBuf>,
}

impl Report {
    /// Counts of operations by kind and outcome, and of faults.
    pub fn summary(&self) -> String {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for op in &self.history.ops {
            let outcome = match &op.outcome {
                Outcome::Done { status, .. } => status.to_string(),
                Outcome::Timeout { code } => format!("504 {code}"),
                Outcome::Refused { .. } => "refused".into(),
                Outcome::Unknown { .. } => "no answer".into(),
            };
            let ack = if op.kind.is_write() { format!(" ack={}", op.ack.as_str()) } else { String::new() };
            *counts.entry(format!("{:?}{ack} {outcome}", op.kind)).or_default() += 1;
        }
        let mut faults: BTreeMap<String, usize> = BTreeMap::new();
        for e in &self.history.faults {
            let name = format!("{}", e.fault);
            let kind = name.split(' ').next().unwrap_or("").to_string();
            *faults.entry(kind).or_default() += 1;
        }
        let mut s = format!(
            "seed {} ({}): {} operations, {} fault events, converged {}\n",
            self.config.seed,
            self.config.name,
            self.history.ops.len(),
            self.history.faults.len(),
            match self.converged_in {
                Some(d) => format!("in {d:.1?} after healing"),
                None => "NOT".into(),
            }
        );
        for (k, n) in counts {
            let _ = writeln!(s, "  {n:6}  {k}");
        }
        let _ = writeln!(s, "  faults: {faults:?}");
        if !self.history.stalls.is_empty() {
            let _ = writeln!(s, "  machine stalls (a harness thread overslept by > 500 ms): {:?}", self.history.stalls);
        }
        for (check, n) in &self.check_counts {
            let _ = writeln!(s, "  checked: {n:6}  {check}");
        }
        s
    }

    /// The violations with the timeline around them.
    pub fn explain(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "fault-injection run {:?} with seed {} found {} violation(s) (replay: GEOCACHE_FAULTS_SEED={} and the same settings; see tests/tests/faults.rs)",
            self.config.name,
            self.config.seed,
            self.violations.len(),
            self.config.seed
        );
        let _ = writeln!(s, "settings: {:?}", self.config);
        for v in self.violations.iter().take(25) {
            let _ = writeln!(s, "- {v}");
        }
        if self.violations.len() > 25 {
            let _ = writeln!(s, "- ... and {} more", self.violations.len() - 25);
        }
        let _ = writeln!(s, "\nfaults (ms since the start):\n{}", self.history.fault_timeline());
        let mut keys: Vec<&str> = self.violations.iter().filter_map(|v| v.key.as_deref()).collect();
        keys.sort();
        keys.dedup();
        for key in keys.iter().take(3) {
            let ops: Vec<String> =
                self.history.ops.iter().filter(|o| o.key == *key).map(|o| format!("  {o}")).collect();
            let shown = ops.len().min(150);
            let _ = writeln!(s, "operations on {key} (last {shown} of {}):", ops.len());
            for line in &ops[ops.len() - shown..] {
                let _ = writeln!(s, "{line}");
            }
            for o in self.observed.iter().filter(|o| o.key == *key) {
                let _ = writeln!(s, "  at the end, {}: {}", o.node, o.state);
            }
        }
        if let Some(p) = &self.history_file {
            let _ = writeln!(s, "\nthe whole history: {}", p.display());
        }
        for p in &self.logs {
            let _ = writeln!(s, "node log: {}", p.display());
        }
        s
    }

    /// Panics with [`explain`](Self::explain) when a check failed.
    pub fn assert_ok(&self) {
        eprintln!("{}", self.summary());
        assert!(self.violations.is_empty(), "{}", self.explain());
    }

    fn write_history(&mut self) {
        let dir =
            std::env::var_os("GEOCACHE_FAULTS_DIR").map(std::path::PathBuf::from).unwrap_or_else(std::env::temp_dir);
        let path = dir.join(format!(
            "geocache-faults-{}-seed{}-{}.txt",
            self.config.name,
            self.config.seed,
            std::process::id()
        ));
        let mut s = String::new();
        let _ = writeln!(s, "{}", self.summary());
        let _ = writeln!(s, "settings: {:?}\n", self.config);
        for v in &self.violations {
            let _ = writeln!(s, "violation: {v}");
        }
        let _ = writeln!(s, "\nfaults:\n{}", self.history.fault_timeline());
        let _ = writeln!(s, "operations:");
        for o in &self.history.ops {
            let _ = writeln!(s, "  {o}");
        }
        let _ = writeln!(s, "\nat the end:");
        for o in &self.observed {
            let _ = writeln!(s, "  {} {}: {}", o.key, o.node, o.state);
        }
        if std::fs::write(&path, s).is_ok() {
            self.history_file = Some(path);
        }
    }
}

/// Runs the scenario and checks it; see the [module documentation](self).
pub fn run(config: Config) -> Report {
    if config.uses_faketime() {
        // Fails clearly here when the faketime package is missing.
        let lib = libfaketime();
        eprintln!("[{}] clock offsets through {}", config.name, lib.display());
    }
    // Rebuilds a stale node binary now, outside the fleet's time limit.
    crate::node_binary();
    let root = Rng::new(config.seed);
    eprintln!("[{}] fault-injection run, seed {}", config.name, config.seed);
    let mut builder = Fleet::builder(&config.name)
        .regions(&config.regions.iter().map(String::as_str).collect::<Vec<_>>())
        .nodes_per_region(config.nodes_per_region)
        .wan_delay(config.wan_delay)
        .time_limit(config.duration + config.converge_timeout + Duration::from_secs(90))
        .args([
            "--peer-timeout".to_string(),
            format!("{}ms", config.peer_timeout.as_millis()),
            "--ack-timeout".to_string(),
            format!("{}ms", config.ack_timeout.as_millis()),
            "--max-clock-skew".to_string(),
            format!("{}ms", config.max_clock_skew.as_millis()),
        ]);
    let mut offsets = BTreeMap::new();
    let mut nodes = BTreeMap::new();
    let mut persistent = Vec::new();
    for region in &config.regions {
        for i in 0..config.nodes_per_region {
            let id = format!("{region}-{i}");
            let offset = config.clock_offsets.get(region).copied().unwrap_or(0);
            if config.uses_faketime() {
                builder = builder.node_env(&id, faketime_env(offset));
            }
            if i == 0 {
                builder = builder.persistent(&id);
                persistent.push(id.clone());
            }
            offsets.insert(id.clone(), offset);
            nodes.insert(id, region.clone());
        }
    }
    let mut fleet = builder.start();
    fleet.wait_all_peers_up(Duration::from_secs(30));

    let shared = Arc::new(Shared::new(config.max_ops));
    let mut history = History {
        nodes,
        persistent,
        initial_offsets: offsets.clone(),
        start_unix: shared.start_unix,
        ..History::default()
    };
    let targets: Vec<Target> = fleet
        .nodes()
        .iter()
        .map(|n| Target { id: n.node_id().to_string(), region: n.region().to_string(), http: n.http_addr() })
        .collect();
    let client_settings =
        ClientSettings { keys: config.keys, ack_timeout: config.ack_timeout, think_ms: config.think_ms };
    let clients: Vec<_> = config
        .regions
        .iter()
        .enumerate()
        .map(|(i, region)| {
            let client = Client {
                index: i,
                region: region.clone(),
                targets: targets.clone(),
                rng: root.fork(100 + i as u64),
                settings: client_settings.clone(),
                shared: shared.clone(),
            };
            std::thread::Builder::new()
                .name(format!("faults-client-{region}"))
                .spawn(move || client.run())
                .expect("start a client thread")
        })
        .collect();

    fleet.step(&format!("clients and nemesis run for {:?}", config.duration));
    let mut nemesis = Nemesis::new(
        NemesisSettings {
            kinds: config.faults.clone(),
            interval_ms: config.fault_interval_ms,
            duration_ms: config.fault_duration_ms,
            max_active: config.max_active_faults,
            peer_timeout: config.peer_timeout,
            restart_offsets: config.restart_offsets.clone(),
            base_delay_ms: config.wan_delay.as_millis() as u64,
        },
        root.fork(1),
        offsets,
    );
    let until = shared.now() + config.duration.as_millis() as u64;
    // The nemesis stops early once the clients spent the operation budget.
    let watcher = {
        let shared = shared.clone();
        let max = config.max_ops;
        std::thread::spawn(move || {
            while !shared.stop.load(Ordering::Relaxed) {
                if shared.next_id.load(Ordering::Relaxed) > max {
                    shared.stop.store(true, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let stall_watcher = {
        let shared = shared.clone();
        std::thread::spawn(move || shared.watch_stalls())
    };
    nemesis.run(&mut fleet, &shared, until);
    shared.stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.join();
    }
    let _ = watcher.join();
    let _ = stall_watcher.join();

    fleet.step("healing: every fault undone");
    nemesis.undo_all(&mut fleet, &shared);
    let healed_at = Instant::now();
    history.faults = std::mem::take(&mut nemesis.events);
    history.ops = shared.ops.lock().map(|mut o| std::mem::take(&mut *o)).unwrap_or_default();
    history.ops.sort_by_key(|o| o.id);
    history.stalls = shared.stalls.lock().map(|mut s| std::mem::take(&mut *s)).unwrap_or_default();

    let keys: Vec<String> = (0..config.keys).map(|i| format!("k{i:02}")).collect();
    let settings = CheckSettings {
        settle_ms: (config.peer_timeout.as_millis() as u64) * 2 + 2500,
        max_skew_ms: config.max_clock_skew.as_millis() as u64,
    };
    let mut violations = Vec::new();
    let mut observed: Vec<Observed>;
    let mut converged_in = None;
    let check_counts;
    {
        let checker = Checker::new(&history, settings);
        let deadline = healed_at + config.converge_timeout;
        let peers = loop {
            let missing: Vec<String> = fleet.ids().iter().filter_map(|id| fleet.peers_up(id).err()).collect();
            if missing.is_empty() {
                break Ok(());
            }
            if Instant::now() >= deadline {
                break Err(missing);
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        if let Err(missing) = peers {
            violations.push(Violation {
                check: "peers-not-up-after-healing",
                key: None,
                ops: vec![],
                message: format!("{:?} after healing: {}", config.converge_timeout, missing.join("; ")),
            });
        }
        let mut last_diffs: Vec<String>;
        loop {
            observed = read_everything(&fleet, &keys, &shared);
            match checker.converged(&observed) {
                Ok(()) => {
                    converged_in = Some(healed_at.elapsed());
                    break;
                }
                Err(d) => last_diffs = d,
            }
            if Instant::now() >= deadline {
                let shown: Vec<String> = last_diffs.iter().take(10).cloned().collect();
                violations.push(Violation {
                    check: "diverged",
                    key: last_diffs.first().and_then(|d| d.split(':').next()).map(str::to_string),
                    ops: vec![],
                    message: format!(
                        "{} of {} keys still differ {:?} after healing:\n    {}",
                        last_diffs.len(),
                        keys.len(),
                        config.converge_timeout,
                        shown.join("\n    ")
                    ),
                });
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        violations.extend(checker.check_final(&observed));
        violations.extend(checker.check_ops());
        check_counts = checker.counts();
    }
    fleet.step(&format!("checked: {} violation(s)", violations.len()));
    let logs = if violations.is_empty() { Vec::new() } else { save_logs(&fleet, &config) };
    fleet.finish();
    let mut report =
        Report { config, history, observed, violations, converged_in, check_counts, history_file: None, logs };
    report.write_history();
    report
}

/// Copies every node's log (all its starts) next to the history file.
fn save_logs(fleet: &Fleet, config: &Config) -> Vec<std::path::PathBuf> {
    let dir = output_dir();
    fleet
        .nodes()
        .iter()
        .filter_map(|n| {
            let path = dir.join(format!(
                "geocache-faults-{}-seed{}-{}-{}.log",
                config.name,
                config.seed,
                std::process::id(),
                n.node_id()
            ));
            std::fs::write(&path, n.log_contents()).ok().map(|_| path)
        })
        .collect()
}

/// Where history files and logs go: `$GEOCACHE_FAULTS_DIR`, else the temporary directory.
fn output_dir() -> std::path::PathBuf {
    std::env::var_os("GEOCACHE_FAULTS_DIR").map(std::path::PathBuf::from).unwrap_or_else(std::env::temp_dir)
}

/// Reads every key on every node.
fn read_everything(fleet: &Fleet, keys: &[String], shared: &Shared) -> Vec<Observed> {
    let mut out = Vec::with_capacity(keys.len() * fleet.nodes().len());
    for node in fleet.nodes() {
        for key in keys {
            let at = shared.now();
            let at_unix = now_unix_ms();
            let state = match http::request(node.http_addr(), "GET", &key_path(key), &[], b"", Duration::from_secs(5)) {
                Ok(r) if r.status == 200 => match r.header("etag").and_then(Version::parse) {
                    Some(version) => State::Present {
                        version,
                        body: r.text(),
                        expires_at: r.header("x-geocache-expires-at").and_then(parse_rfc3339_ms),
                    },
                    None => State::Error(format!("200 without a version: {:?}", r.headers)),
                },
                Ok(r) if r.status == 404 => State::Absent,
                Ok(r) => State::Error(format!("{} {}", r.status, r.text())),
                Err(e) => State::Error(e.to_string()),
            };
            let end_unix = now_unix_ms();
            out.push(Observed { node: node.node_id().to_string(), key: key.clone(), at, at_unix, end_unix, state });
        }
    }
    out
}
