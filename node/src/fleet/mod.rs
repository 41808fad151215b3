//! `geocache-node fleet`: a multi-region fleet on one machine, for newcomers and demos.
//!
//! One command starts every node as a child process of the current executable, each on
//! its own loopback address, with a simulated WAN between regions: every ordered pair
//! of regions gets a [`wan_proxy`] that delays bytes by `--wan-delay` one way and can
//! be cut on command. It prints every endpoint, waits until every node is ready,
//! forwards the nodes' logs (or writes them under `--base-dir`), reads commands on
//! stdin (`cut eu us`, `heal`, `kill eu-0`, ...), and on Ctrl-C or SIGTERM stops every
//! node with SIGTERM (SIGKILL after a timeout). Children are in their own process
//! group (so a terminal's Ctrl-C reaches the fleet only, which stops them in order)
//! and die with the fleet even if it is killed (`PR_SET_PDEATHSIG`).
//!
//! Start it from the thread that drives the runtime (e.g. inside `block_on`), not
//! from a spawned task: the kernel ties the children's death signal to the thread
//! that started them.

pub mod plan;
pub mod tls;
pub mod wan_proxy;

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::{self, BufRead, Write as _};
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitCode, ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;
use tokio::time::Instant;

pub use plan::{FleetPlan, LinkPlan, NodePlan, Ports, plan};
use wan_proxy::{WanProxy, WanProxyHandle};

/// Prints a line for the person at the terminal; a closed stdout (`fleet | head`) is
/// no reason to fail, unlike with `println!`.
macro_rules! say {
    ($($arg:tt)*) => {{
        let mut out = io::stdout().lock();
        let _ = writeln!(out, $($arg)*);
        let _ = out.flush();
    }};
}

/// Most regions a fleet may have.
pub const MAX_REGIONS: usize = 50;
/// Most nodes per region.
pub const MAX_NODES_PER_REGION: u8 = 50;

/// Flags of `geocache-node fleet`.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "geocache-node fleet",
    about = "Start a multi-region fleet on loopback addresses, with simulated WAN delay between regions"
)]
pub struct FleetArgs {
    /// Regions, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "eu,us,ap")]
    pub regions: Vec<String>,
    /// Nodes in every region.
    #[arg(long, default_value_t = 2)]
    pub nodes_per_region: u8,
    /// One-way delay between regions, e.g. `40ms` (`0s`: none).
    #[arg(long, default_value = "40ms")]
    pub wan_delay: String,
    /// Directory for the nodes' logs (`<node>/node.log`) and, with --data, their data.
    /// Without it, logs are printed here with the node id in front of every line.
    #[arg(long)]
    pub base_dir: Option<PathBuf>,
    /// Give every node a --data-dir under --base-dir, so data survives restarts.
    #[arg(long, requires = "base_dir")]
    pub data: bool,
    /// Second byte of the loopback addresses: node i of the r-th region listens on
    /// 127.<net>.<r+1>.<i+1>. Pick another to run two fleets side by side.
    #[arg(long, default_value_t = 0)]
    pub net: u8,
    /// HTTP port of every node.
    #[arg(long, default_value_t = 8080)]
    pub http_port: u16,
    /// Redis-protocol port of every node.
    #[arg(long, default_value_t = 6379)]
    pub resp_port: u16,
    /// Replication port of every node (and of the WAN links).
    #[arg(long, default_value_t = 7946)]
    pub peer_port: u16,
    /// Mutual TLS between the nodes: a CA made for this fleet and one certificate per
    /// region, under `<base-dir>/tls` (or a temporary directory), as the operator does.
    #[arg(long)]
    pub tls: bool,
    /// How long to wait for every node's /readyz, e.g. `30s`.
    #[arg(long, default_value = "30s")]
    pub ready_timeout: String,
    /// Extra flags for every node, after `--`, e.g. `-- --max-memory 64mb`.
    #[arg(last = true)]
    pub node_args: Vec<String>,
}

/// Validated options of a fleet.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    pub regions: Vec<String>,
    pub nodes_per_region: u8,
    pub wan_delay: Duration,
    pub base_dir: Option<PathBuf>,
    pub data: bool,
    pub net: u8,
    pub ports: Ports,
    /// `--tls`: mutual TLS between the nodes.
    pub tls: bool,
    pub node_args: Vec<String>,
    /// The `geocache-node` executable (default: the current one).
    pub node_binary: PathBuf,
    pub ready_timeout: Duration,
    /// How long a node gets after SIGTERM before SIGKILL.
    pub stop_timeout: Duration,
}

/// Why a fleet could not start or did not end well.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("--{flag}: {message}")]
    InvalidFlag { flag: &'static str, message: String },
    #[error("after --: {0}")]
    NodeArgs(String),
    #[error("cannot find the geocache-node executable: {0}")]
    CurrentExe(#[source] io::Error),
    #[error("cannot create {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("cannot open the wan link {from} -> {to} on {addr}: {source}")]
    Link { from: String, to: String, addr: SocketAddr, source: io::Error },
    #[error("cannot start node {node}: {source}")]
    Spawn { node: String, source: io::Error },
    #[error("node {node} exited ({status}) before it was ready; its log: {log}")]
    ExitedEarly { node: String, status: String, log: String },
    #[error("not ready within {timeout:?}: {}", nodes.join(", "))]
    NotReady { nodes: Vec<String>, timeout: Duration },
    #[error("cannot listen for signals: {0}")]
    Signals(#[source] io::Error),
    #[error("interrupted before every node was ready")]
    Interrupted,
    #[error("cannot set up tls: {0}")]
    Tls(#[from] tls::FleetTlsError),
    #[error("nodes exited unexpectedly: {}", .0.join("; "))]
    NodesFailed(Vec<String>),
}

fn invalid(flag: &'static str, message: impl Into<String>) -> FleetError {
    FleetError::InvalidFlag { flag, message: message.into() }
}

/// Flags the fleet sets itself on every node.
const MANAGED_NODE_FLAGS: [&str; 8] =
    ["--node-id", "--region", "--http-addr", "--resp-addr", "--peer-addr", "--advertise-addr", "--peers", "--data-dir"];

fn parse_duration(flag: &'static str, value: &str) -> Result<Duration, FleetError> {
    humantime::parse_duration(value.trim())
        .map_err(|e| invalid(flag, format!("{value:?} is not a duration such as 40ms or 2s: {e}")))
}

impl FleetArgs {
    /// Validates the flags; the node binary is the current executable.
    pub fn validate(self) -> Result<FleetOptions, FleetError> {
        let mut regions: Vec<String> = Vec::new();
        for r in self.regions.iter().map(|r| r.trim()) {
            if r.is_empty() || r.len() > 32 {
                return Err(invalid("regions", format!("region {r:?} must be 1 to 32 characters")));
            }
            if !r.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
                return Err(invalid(
                    "regions",
                    format!("region {r:?} may only contain letters, digits, '-', '_' and '.'"),
                ));
            }
            if regions.iter().any(|seen| seen == r) {
                return Err(invalid("regions", format!("region {r:?} is listed twice")));
            }
            regions.push(r.to_string());
        }
        if regions.is_empty() || regions.len() > MAX_REGIONS {
            return Err(invalid("regions", format!("give 1 to {MAX_REGIONS} regions")));
        }
        if self.nodes_per_region == 0 || self.nodes_per_region > MAX_NODES_PER_REGION {
            return Err(invalid("nodes-per-region", format!("must be between 1 and {MAX_NODES_PER_REGION}")));
        }
        let wan_delay = parse_duration("wan-delay", &self.wan_delay)?;
        if wan_delay > Duration::from_secs(60) {
            return Err(invalid("wan-delay", "must be at most 60s"));
        }
        let ready_timeout = parse_duration("ready-timeout", &self.ready_timeout)?;
        let ports = Ports { http: self.http_port, resp: self.resp_port, peer: self.peer_port };
        if ports.http == 0 || ports.resp == 0 || ports.peer == 0 {
            return Err(invalid("http-port", "ports must not be 0 (the endpoints are printed before the nodes start)"));
        }
        if ports.http == ports.resp || ports.http == ports.peer || ports.resp == ports.peer {
            return Err(invalid("http-port", "the HTTP, Redis and peer ports must differ"));
        }
        for arg in &self.node_args {
            let name = arg.split('=').next().unwrap_or_default();
            if MANAGED_NODE_FLAGS.contains(&name) || (self.tls && tls::TLS_NODE_FLAGS.contains(&name)) {
                return Err(FleetError::NodeArgs(format!("{name} is set by the fleet for every node")));
            }
        }
        let node_binary = std::env::current_exe().map_err(FleetError::CurrentExe)?;
        Ok(FleetOptions {
            regions,
            nodes_per_region: self.nodes_per_region,
            wan_delay,
            base_dir: self.base_dir,
            data: self.data,
            net: self.net,
            ports,
            tls: self.tls,
            node_args: self.node_args,
            node_binary,
            ready_timeout,
            stop_timeout: Duration::from_secs(10),
        })
    }
}

/// Runs `geocache-node fleet` to the end: validates `args`, builds a runtime, runs
/// the fleet until Ctrl-C or SIGTERM. Exit code 2 for bad flags, 1 when the fleet
/// could not start or a node died on its own. Logging must be set up by the caller.
pub fn main(args: FleetArgs) -> ExitCode {
    let opts = match args.validate() {
        Ok(opts) => opts,
        Err(e) => {
            eprintln!("geocache-node fleet: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("geocache-node fleet: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run_fleet(opts));
    runtime.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("geocache-node fleet: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Starts the fleet, prints its endpoints, and runs until Ctrl-C, SIGTERM, SIGHUP
/// or `quit` on stdin; then stops every node and link. Returns an error when the
/// fleet could not start, or when a node exited on its own while it ran.
pub async fn run_fleet(opts: FleetOptions) -> Result<(), FleetError> {
    let mut signals = Signals::new()?;
    let mut fleet = Fleet::new(opts);
    let result = fleet.run(&mut signals).await;
    fleet.stop_all().await;
    fleet.links.clear();
    result?;
    if fleet.failures.is_empty() { Ok(()) } else { Err(FleetError::NodesFailed(fleet.failures)) }
}

struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn new() -> Result<Signals, FleetError> {
        let make = |kind| signal(kind).map_err(FleetError::Signals);
        Ok(Signals {
            term: make(SignalKind::terminate())?,
            int: make(SignalKind::interrupt())?,
            hup: make(SignalKind::hangup())?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "sigterm",
            _ = self.int.recv() => "sigint",
            _ = self.hup.recv() => "sighup",
        }
    }
}

/// One node: its plan and, while it runs, the channel to its supervisor task.
struct Slot {
    plan: NodePlan,
    /// Signals for the running process; `None` when it is not running.
    control: Option<mpsc::UnboundedSender<i32>>,
    /// Bumped at every start, so that a late exit of an old process is not taken for
    /// the new one's.
    generation: u64,
    /// Set when the fleet asked it to stop: its exit is then no failure.
    stopping: bool,
}

struct Exit {
    index: usize,
    generation: u64,
    status: io::Result<ExitStatus>,
}

struct Fleet {
    opts: FleetOptions,
    plan: FleetPlan,
    slots: Vec<Slot>,
    links: Vec<(LinkPlan, WanProxyHandle)>,
    exits_tx: mpsc::UnboundedSender<Exit>,
    exits_rx: mpsc::UnboundedReceiver<Exit>,
    /// Lines of the nodes' output, printed by one thread so that they never interleave.
    lines: std::sync::mpsc::Sender<String>,
    failures: Vec<String>,
    /// The certificates of `--tls`.
    pki: Option<tls::FleetPki>,
}

enum Flow {
    Continue,
    Quit,
}

fn describe(status: &io::Result<ExitStatus>) -> String {
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            _ => s.to_string(),
        },
        Err(e) => format!("cannot wait for it: {e}"),
    }
}

impl Fleet {
    fn new(opts: FleetOptions) -> Fleet {
        let plan = plan::plan(&opts);
        let slots = plan
            .nodes
            .iter()
            .map(|p| Slot { plan: p.clone(), control: None, generation: 0, stopping: false })
            .collect();
        let (exits_tx, exits_rx) = mpsc::unbounded_channel();
        let (lines, lines_rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in lines_rx {
                let mut err = io::stderr().lock();
                let _ = err.write_all(line.as_bytes());
            }
        });
        Fleet { opts, plan, slots, links: Vec::new(), exits_tx, exits_rx, lines, failures: Vec::new(), pki: None }
    }

    async fn run(&mut self, signals: &mut Signals) -> Result<(), FleetError> {
        if let Some(base) = &self.opts.base_dir {
            for node in &self.plan.nodes {
                for dir in [Some(base.join(&node.node_id)), node.data_dir.clone()].into_iter().flatten() {
                    std::fs::create_dir_all(&dir)
                        .map_err(|source| FleetError::CreateDir { path: dir.clone(), source })?;
                }
            }
        }
        if self.opts.tls {
            self.pki = Some(tls::FleetPki::create(self.opts.base_dir.as_deref(), &self.opts.regions)?);
        }
        for link in &self.plan.links {
            let proxy =
                WanProxy::spawn(link.listen, link.upstreams.clone(), self.opts.wan_delay).map_err(|source| {
                    FleetError::Link { from: link.from.clone(), to: link.to.clone(), addr: link.listen, source }
                })?;
            self.links.push((link.clone(), proxy));
        }
        tracing::info!(
            regions = self.opts.regions.len(),
            nodes = self.slots.len(),
            wan_delay = ?self.opts.wan_delay,
            "starting the fleet"
        );
        for index in 0..self.slots.len() {
            self.start_node(index)?;
        }
        self.wait_ready(signals).await?;
        say!("{}", endpoints_table(&self.opts, &self.plan));
        tracing::info!(nodes = self.slots.len(), "every node is ready");

        let (commands_tx, mut commands) = mpsc::unbounded_channel::<String>();
        // A thread of its own: a blocking read of stdin must never hold up the runtime.
        std::thread::spawn(move || {
            for line in io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if commands_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut commands_open = true;
        loop {
            tokio::select! {
                name = signals.recv() => {
                    tracing::info!(signal = name, "stopping the fleet");
                    return Ok(());
                }
                Some(exit) = self.exits_rx.recv() => self.on_exit(exit),
                line = commands.recv(), if commands_open => match line {
                    None => commands_open = false,
                    Some(line) => {
                        if let Flow::Quit = self.command(&line) {
                            tracing::info!("quit requested; stopping the fleet");
                            return Ok(());
                        }
                    }
                },
            }
        }
    }

    fn start_node(&mut self, index: usize) -> Result<(), FleetError> {
        let slot = &mut self.slots[index];
        let node = slot.plan.node_id.clone();
        let mut cmd = Command::new(&self.opts.node_binary);
        cmd.args(slot.plan.args(&self.opts.node_args)).stdin(Stdio::null()).kill_on_drop(true);
        if let Some(pki) = &self.pki {
            cmd.args(pki.node_args(&slot.plan.region));
        }
        // A group of its own: a terminal's Ctrl-C reaches the fleet, which then stops
        // the nodes in order, instead of every process at once.
        cmd.process_group(0);
        match &slot.plan.log_file {
            Some(path) => {
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| FleetError::Spawn { node: node.clone(), source })?;
                let err = file.try_clone().map_err(|source| FleetError::Spawn { node: node.clone(), source })?;
                cmd.stdout(Stdio::from(file)).stderr(Stdio::from(err));
            }
            None => {
                cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            }
        }
        let parent = std::process::id();
        // SAFETY: prctl and getppid are async-signal-safe. The node gets SIGKILL when
        // the thread that started it dies, so a killed fleet leaves no orphan; the
        // getppid check closes the race of a parent that died before prctl.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::getppid() as u32 != parent {
                    return Err(io::Error::other("the fleet exited while the node was starting"));
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|source| FleetError::Spawn { node: node.clone(), source })?;
        if let Some(out) = child.stdout.take() {
            tokio::spawn(forward_lines(out, node.clone(), self.lines.clone()));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(forward_lines(err, node.clone(), self.lines.clone()));
        }
        slot.generation += 1;
        slot.stopping = false;
        let (control, signals) = mpsc::unbounded_channel();
        slot.control = Some(control);
        tracing::debug!(node = %node, pid = ?child.id(), "node started");
        tokio::spawn(supervise(index, slot.generation, child, signals, self.exits_tx.clone()));
        Ok(())
    }

    /// Where the node's output went: its log file, or "above" (forwarded here).
    fn log_location(&self, index: usize) -> String {
        match &self.slots[index].plan.log_file {
            Some(path) => path.display().to_string(),
            None => "above".to_string(),
        }
    }

    async fn wait_ready(&mut self, signals: &mut Signals) -> Result<(), FleetError> {
        let deadline = Instant::now() + self.opts.ready_timeout;
        let mut pending: Vec<usize> = (0..self.slots.len()).collect();
        loop {
            let mut still = Vec::new();
            for &i in &pending {
                if !probe_ready(self.slots[i].plan.http).await {
                    still.push(i);
                }
            }
            pending = still;
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(FleetError::NotReady {
                    nodes: pending.iter().map(|&i| self.slots[i].plan.node_id.clone()).collect(),
                    timeout: self.opts.ready_timeout,
                });
            }
            tokio::select! {
                _ = signals.recv() => return Err(FleetError::Interrupted),
                Some(exit) = self.exits_rx.recv() => {
                    let index = exit.index;
                    if self.slots[index].generation == exit.generation {
                        self.slots[index].control = None;
                        // Give the output forwarders a moment to print the node's last lines.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        return Err(FleetError::ExitedEarly {
                            node: self.slots[index].plan.node_id.clone(),
                            status: describe(&exit.status),
                            log: self.log_location(index),
                        });
                    }
                }
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }

    fn on_exit(&mut self, exit: Exit) {
        let log = self.log_location(exit.index);
        let slot = &mut self.slots[exit.index];
        if slot.generation != exit.generation {
            return;
        }
        slot.control = None;
        let status = describe(&exit.status);
        if slot.stopping {
            tracing::info!(node = %slot.plan.node_id, %status, "node stopped");
        } else {
            tracing::error!(
                node = %slot.plan.node_id,
                %status,
                %log,
                "node exited unexpectedly; type `start <node>` to start it again"
            );
            self.failures.push(format!("{} ({status})", slot.plan.node_id));
        }
    }

    fn signal(&mut self, index: usize, sig: i32) -> bool {
        let slot = &mut self.slots[index];
        match &slot.control {
            Some(control) => {
                slot.stopping = true;
                control.send(sig).is_ok()
            }
            None => false,
        }
    }

    /// SIGTERM to every running node, SIGKILL to those still running after the stop
    /// timeout; returns once every node has exited (or could not be waited for).
    async fn stop_all(&mut self) {
        let running: Vec<usize> = (0..self.slots.len()).filter(|&i| self.slots[i].control.is_some()).collect();
        if running.is_empty() {
            return;
        }
        tracing::info!(nodes = running.len(), "stopping every node");
        for &i in &running {
            self.signal(i, libc::SIGTERM);
        }
        let term_deadline = Instant::now() + self.opts.stop_timeout;
        let mut killed = false;
        loop {
            let left: Vec<usize> = (0..self.slots.len()).filter(|&i| self.slots[i].control.is_some()).collect();
            if left.is_empty() {
                break;
            }
            let now = Instant::now();
            if now >= term_deadline && !killed {
                for &i in &left {
                    tracing::warn!(node = %self.slots[i].plan.node_id, timeout = ?self.opts.stop_timeout, "node ignored sigterm; sending sigkill");
                    self.signal(i, libc::SIGKILL);
                }
                killed = true;
            }
            let wait = if killed { Duration::from_secs(5) } else { term_deadline - now };
            match tokio::time::timeout(wait, self.exits_rx.recv()).await {
                Ok(Some(exit)) => self.on_exit(exit),
                Ok(None) => break,
                Err(_) if killed => {
                    for &i in &left {
                        tracing::error!(node = %self.slots[i].plan.node_id, "node did not exit after sigkill");
                    }
                    break;
                }
                Err(_) => {}
            }
        }
    }

    fn node_index(&self, node: &str) -> Option<usize> {
        self.slots.iter().position(|s| s.plan.node_id == node)
    }

    fn command(&mut self, line: &str) -> Flow {
        let command = match parse_command(line) {
            Ok(Some(c)) => c,
            Ok(None) => return Flow::Continue,
            Err(message) => {
                say!("{message}; type `help` for the commands");
                return Flow::Continue;
            }
        };
        match command {
            FleetCommand::Link(action, a, b) => {
                let regions = &self.opts.regions;
                for r in [Some(&a), b.as_ref()].into_iter().flatten() {
                    if !regions.contains(r) {
                        say!("no region {r:?} (regions: {})", regions.join(", "));
                        return Flow::Continue;
                    }
                }
                let mut touched = Vec::new();
                for (link, proxy) in &self.links {
                    if link_matches(link, a.as_str(), b.as_deref()) {
                        match action {
                            LinkAction::Cut => proxy.cut(),
                            LinkAction::Blackhole => proxy.blackhole(),
                            LinkAction::Heal => proxy.heal(),
                            LinkAction::Delay(d) => proxy.set_delay(d),
                        }
                        touched.push(format!("{} -> {}", link.from, link.to));
                    }
                }
                say!("{action}: {}", if touched.is_empty() { "no link".to_string() } else { touched.join(", ") });
            }
            FleetCommand::HealAll => {
                for (_, proxy) in &self.links {
                    proxy.heal();
                }
                say!("healed every link");
            }
            FleetCommand::DelayAll(d) => {
                for (_, proxy) in &self.links {
                    proxy.set_delay(d);
                }
                say!("one-way delay of every link: {d:?}");
            }
            FleetCommand::Node(action, node) => {
                let Some(index) = self.node_index(&node) else {
                    say!("no node {node:?}");
                    return Flow::Continue;
                };
                match action {
                    NodeAction::Kill | NodeAction::Stop => {
                        let sig = if let NodeAction::Kill = action { libc::SIGKILL } else { libc::SIGTERM };
                        if self.signal(index, sig) {
                            say!("sent {} to {node}", if sig == libc::SIGKILL { "sigkill" } else { "sigterm" });
                        } else {
                            say!("{node} is not running");
                        }
                    }
                    NodeAction::Start => {
                        if self.slots[index].control.is_some() {
                            say!("{node} is running already");
                        } else {
                            match self.start_node(index) {
                                Ok(()) => {
                                    let http = self.slots[index].plan.http;
                                    tokio::spawn(report_ready(node.clone(), http, self.opts.ready_timeout));
                                    say!("started {node}");
                                }
                                Err(e) => say!("{e}"),
                            }
                        }
                    }
                }
            }
            FleetCommand::Endpoints => {
                say!("{}", endpoints_table(&self.opts, &self.plan));
                for (link, proxy) in &self.links {
                    if let Some(state) = proxy.state() {
                        say!("link {} -> {}: {state}, one way {:?}", link.from, link.to, proxy.delay());
                    }
                }
                for slot in &self.slots {
                    let state = if slot.control.is_some() { "running" } else { "stopped" };
                    say!("node {}: {state}", slot.plan.node_id);
                }
            }
            FleetCommand::Help => say!("{COMMANDS_HELP}"),
            FleetCommand::Quit => return Flow::Quit,
        }
        Flow::Continue
    }
}

fn link_matches(link: &LinkPlan, a: &str, b: Option<&str>) -> bool {
    match b {
        Some(b) => (link.from == a && link.to == b) || (link.from == b && link.to == a),
        None => link.from == a || link.to == a,
    }
}

/// Owns one node process: forwards signals to it (by pid, race-free since only this
/// task reaps it) and reports its exit.
async fn supervise(
    index: usize,
    generation: u64,
    mut child: Child,
    mut signals: mpsc::UnboundedReceiver<i32>,
    exits: mpsc::UnboundedSender<Exit>,
) {
    loop {
        tokio::select! {
            status = child.wait() => {
                let _ = exits.send(Exit { index, generation, status });
                return;
            }
            sig = signals.recv() => match (sig, child.id()) {
                (Some(sig), Some(pid)) => {
                    if let Ok(pid) = libc::pid_t::try_from(pid) {
                        // SAFETY: kill(2) on our own child, which has not been reaped.
                        unsafe {
                            libc::kill(pid, sig);
                        }
                    }
                }
                (Some(_), None) => {}
                // The fleet is gone: take the node with it.
                (None, _) => {
                    let _ = child.start_kill();
                    let status = child.wait().await;
                    let _ = exits.send(Exit { index, generation, status });
                    return;
                }
            },
        }
    }
}

/// Copies `stream` to the fleet's stderr line by line, each line prefixed by `node`.
async fn forward_lines(stream: impl AsyncRead + Unpin, node: String, out: std::sync::mpsc::Sender<String>) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader).take(64 * 1024).read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                if out.send(format!("{node} | {}\n", text.trim_end_matches(['\n', '\r']))).is_err() {
                    return;
                }
            }
        }
    }
}

/// Whether `GET /readyz` on `addr` answers 200 (within 2 s).
async fn probe_ready(addr: SocketAddr) -> bool {
    let probe = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let request = format!("GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        Some(head.starts_with(b"HTTP/1.") && &head[8..] == b" 200")
    };
    matches!(tokio::time::timeout(Duration::from_secs(2), probe).await, Ok(Some(true)))
}

async fn report_ready(node: String, http: SocketAddr, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if probe_ready(http).await {
            tracing::info!(node = %node, "node is ready");
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tracing::warn!(node = %node, ?timeout, "node is not ready in time");
}

const COMMANDS_HELP: &str = "\
commands:
  cut A B          cut the links between regions A and B (connections are closed)
  cut A            cut region A off from every other region
  blackhole A [B]  like cut, but silent: connections hang instead of closing
  heal A [B]       heal those links again; `heal` alone heals every link
  delay D [A B]    one-way delay D (e.g. 100ms) on every link, or between A and B
  kill NODE        kill -9 a node;  stop NODE: SIGTERM;  start NODE: start it again
  endpoints        print the endpoints and the state of every link and node
  quit             stop every node and exit (so does Ctrl-C)";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkAction {
    Cut,
    Blackhole,
    Heal,
    Delay(Duration),
}

impl std::fmt::Display for LinkAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkAction::Cut => f.write_str("cut"),
            LinkAction::Blackhole => f.write_str("blackholed"),
            LinkAction::Heal => f.write_str("healed"),
            LinkAction::Delay(d) => write!(f, "one-way delay {d:?}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NodeAction {
    Kill,
    Stop,
    Start,
}

/// A command typed on the fleet's stdin.
#[derive(Debug, Clone, PartialEq, Eq)]
enum FleetCommand {
    Link(LinkAction, String, Option<String>),
    HealAll,
    DelayAll(Duration),
    Node(NodeAction, String),
    Endpoints,
    Help,
    Quit,
}

/// Parses one line of stdin; `Ok(None)` for an empty line.
fn parse_command(line: &str) -> Result<Option<FleetCommand>, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let Some((&verb, rest)) = words.split_first() else { return Ok(None) };
    let owned = |s: &&str| s.to_string();
    let command = match (verb.to_ascii_lowercase().as_str(), rest) {
        ("cut", [a]) => FleetCommand::Link(LinkAction::Cut, a.to_string(), None),
        ("cut", [a, b]) => FleetCommand::Link(LinkAction::Cut, a.to_string(), Some(owned(b))),
        ("blackhole", [a]) => FleetCommand::Link(LinkAction::Blackhole, a.to_string(), None),
        ("blackhole", [a, b]) => FleetCommand::Link(LinkAction::Blackhole, a.to_string(), Some(owned(b))),
        ("heal", []) => FleetCommand::HealAll,
        ("heal", [a]) => FleetCommand::Link(LinkAction::Heal, a.to_string(), None),
        ("heal", [a, b]) => FleetCommand::Link(LinkAction::Heal, a.to_string(), Some(owned(b))),
        ("delay", [d, ab @ ..]) if ab.is_empty() || ab.len() == 2 => {
            let d = humantime::parse_duration(d).map_err(|e| format!("{d:?} is not a duration: {e}"))?;
            match ab {
                [a, b] => FleetCommand::Link(LinkAction::Delay(d), a.to_string(), Some(owned(b))),
                _ => FleetCommand::DelayAll(d),
            }
        }
        ("kill", [n]) => FleetCommand::Node(NodeAction::Kill, n.to_string()),
        ("stop", [n]) => FleetCommand::Node(NodeAction::Stop, n.to_string()),
        ("start", [n]) => FleetCommand::Node(NodeAction::Start, n.to_string()),
        ("endpoints" | "status", []) => FleetCommand::Endpoints,
        ("help" | "?", _) => FleetCommand::Help,
        ("quit" | "exit", []) => FleetCommand::Quit,
        _ => return Err(format!("cannot read {:?}", line.trim())),
    };
    Ok(Some(command))
}

/// What the fleet prints once every node is ready: every endpoint and what to try.
pub fn endpoints_table(opts: &FleetOptions, plan: &FleetPlan) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "geocache fleet: {} region(s) x {} node(s), {:?} one-way delay between regions\n",
        opts.regions.len(),
        opts.nodes_per_region,
        opts.wan_delay
    );
    let rows: Vec<[String; 4]> =
        plan.nodes.iter().map(|n| [n.region.clone(), n.node_id.clone(), n.http_url(), n.redis_cli()]).collect();
    let header = ["REGION".to_string(), "NODE".to_string(), "HTTP".to_string(), "REDIS".to_string()];
    let widths: Vec<usize> =
        (0..4).map(|c| rows.iter().chain([&header]).map(|r| r[c].len()).max().unwrap_or(0)).collect();
    for row in [&header].into_iter().chain(rows.iter()) {
        let _ = writeln!(
            out,
            "  {:w0$}  {:w1$}  {:w2$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
    }
    if !plan.links.is_empty() {
        let _ = writeln!(out, "\nWAN links between regions ({:?} one way each):", opts.wan_delay);
        for link in &plan.links {
            let ups: Vec<String> = link.upstreams.iter().map(|u| u.to_string()).collect();
            let _ = writeln!(out, "  {} -> {}  {} -> {}", link.from, link.to, link.listen, ups.join(" "));
        }
    }
    if let Some(first) = plan.nodes.first() {
        let other = plan.nodes.iter().find(|n| n.region != first.region).unwrap_or(first);
        let third = plan.nodes.iter().find(|n| n.region != first.region && n.region != other.region).unwrap_or(other);
        let _ = writeln!(out, "\nTry it:");
        let _ = writeln!(
            out,
            "  curl -X PUT '{}/v1/keys/greeting' -H 'content-type: application/json' -d '{{\"hello\":\"from {}\"}}'",
            first.http_url(),
            first.region
        );
        let _ = writeln!(out, "  curl -i {}/v1/keys/greeting        # read it in {}", other.http_url(), other.region);
        let _ = writeln!(
            out,
            "  {} GET greeting           # in {}, over the Redis protocol",
            third.redis_cli(),
            third.region
        );
        let _ = writeln!(out, "  curl -s {}/v1/status               # peers, their state and lag", other.http_url());
    }
    if opts.tls {
        let (dir, _) = tls::tls_dir(opts.base_dir.as_deref());
        let _ = writeln!(
            out,
            "\nPeer links use mutual TLS: CA {}/ca.crt, one certificate per region beside it.",
            dir.display()
        );
    }
    match &opts.base_dir {
        Some(base) => {
            let _ = writeln!(out, "\nNode logs: {}/<node>/node.log", base.display());
        }
        None => {
            let _ = writeln!(out, "\nNode logs follow, each line prefixed with its node.");
        }
    }
    let _ = writeln!(
        out,
        "Type `cut eu us`, `heal`, `delay 100ms`, `kill eu-0`, `start eu-0` or `help` here; Ctrl-C stops every node."
    );
    out
}

/// Arguments of `geocache-node fleet` as a node-independent list (for tools and tests
/// that start a fleet as a process).
pub fn fleet_command_line(opts: &FleetArgs) -> Vec<OsString> {
    let mut v: Vec<OsString> = vec!["fleet".into()];
    let mut push = |k: &str, val: String| {
        v.push(k.into());
        v.push(val.into());
    };
    push("--regions", opts.regions.join(","));
    push("--nodes-per-region", opts.nodes_per_region.to_string());
    push("--wan-delay", opts.wan_delay.clone());
    push("--net", opts.net.to_string());
    push("--http-port", opts.http_port.to_string());
    push("--resp-port", opts.resp_port.to_string());
    push("--peer-port", opts.peer_port.to_string());
    push("--ready-timeout", opts.ready_timeout.clone());
    if let Some(base) = &opts.base_dir {
        v.push("--base-dir".into());
        v.push(base.clone().into_os_string());
    }
    if opts.data {
        v.push("--data".into());
    }
    if opts.tls {
        v.push("--tls".into());
    }
    if !opts.node_args.is_empty() {
        v.push("--".into());
        v.extend(opts.node_args.iter().map(OsString::from));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<FleetOptions, FleetError> {
        let mut all = vec!["fleet"];
        all.extend_from_slice(args);
        FleetArgs::try_parse_from(all).map_err(|e| invalid("parse", e.to_string()))?.validate()
    }

    #[test]
    fn defaults_are_three_regions_of_two_nodes_forty_ms_apart() {
        let o = parse(&[]).unwrap();
        assert_eq!(o.regions, ["eu", "us", "ap"]);
        assert_eq!(o.nodes_per_region, 2);
        assert_eq!(o.wan_delay, Duration::from_millis(40));
        assert_eq!(o.ports, Ports::default());
        assert!(!o.data && o.base_dir.is_none() && o.node_args.is_empty());
    }

    #[test]
    fn bad_flags_are_refused_with_the_flag_named() {
        for (args, flag) in [
            (&["--regions", "eu,eu"][..], "regions"),
            (&["--regions", "eu west"][..], "regions"),
            (&["--regions", ""][..], "regions"),
            (&["--nodes-per-region", "0"][..], "nodes-per-region"),
            (&["--wan-delay", "fast"][..], "wan-delay"),
            (&["--wan-delay", "2m"][..], "wan-delay"),
            (&["--http-port", "7946"][..], "http-port"),
        ] {
            match parse(args) {
                Err(FleetError::InvalidFlag { flag: f, message }) => assert_eq!(f, flag, "{args:?}: {message}"),
                other => panic!("{args:?}: {other:?}"),
            }
        }
        for args in [&["--", "--peers", "10.0.0.1:7946"][..], &["--", "--node-id=x"][..]] {
            assert!(matches!(parse(args), Err(FleetError::NodeArgs(_))), "{args:?}");
        }
        // --data without --base-dir is refused by the parser itself.
        assert!(FleetArgs::try_parse_from(["fleet", "--data"]).is_err());
    }

    #[test]
    fn commands_typed_on_stdin_are_understood() {
        let p = |s: &str| parse_command(s).unwrap();
        assert_eq!(p("  "), None);
        assert_eq!(p("cut eu us"), Some(FleetCommand::Link(LinkAction::Cut, "eu".into(), Some("us".into()))));
        assert_eq!(p("cut ap"), Some(FleetCommand::Link(LinkAction::Cut, "ap".into(), None)));
        assert_eq!(p("blackhole eu"), Some(FleetCommand::Link(LinkAction::Blackhole, "eu".into(), None)));
        assert_eq!(p("heal"), Some(FleetCommand::HealAll));
        assert_eq!(p("HEAL eu us"), Some(FleetCommand::Link(LinkAction::Heal, "eu".into(), Some("us".into()))));
        assert_eq!(p("delay 100ms"), Some(FleetCommand::DelayAll(Duration::from_millis(100))));
        assert_eq!(
            p("delay 5ms eu ap"),
            Some(FleetCommand::Link(LinkAction::Delay(Duration::from_millis(5)), "eu".into(), Some("ap".into())))
        );
        assert_eq!(p("kill eu-0"), Some(FleetCommand::Node(NodeAction::Kill, "eu-0".into())));
        assert_eq!(p("start eu-0"), Some(FleetCommand::Node(NodeAction::Start, "eu-0".into())));
        assert_eq!(p("quit"), Some(FleetCommand::Quit));
        for bad in ["cut", "delay soon", "delay 1s eu", "frobnicate", "kill"] {
            assert!(parse_command(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn links_are_chosen_per_pair_or_per_region() {
        let link = |from: &str, to: &str| LinkPlan {
            from: from.into(),
            to: to.into(),
            listen: "127.0.0.1:1".parse().unwrap(),
            upstreams: vec![],
        };
        assert!(link_matches(&link("eu", "us"), "eu", Some("us")));
        assert!(link_matches(&link("us", "eu"), "eu", Some("us")));
        assert!(!link_matches(&link("eu", "ap"), "eu", Some("us")));
        assert!(link_matches(&link("ap", "us"), "ap", None));
        assert!(link_matches(&link("us", "ap"), "ap", None));
        assert!(!link_matches(&link("eu", "us"), "ap", None));
    }

    #[test]
    fn the_endpoint_table_lists_every_node_and_example_commands() {
        let o = parse(&[]).unwrap();
        let text = endpoints_table(&o, &plan(&o));
        for needle in [
            "eu-0",
            "ap-1",
            "http://127.0.1.1:8080",
            "redis-cli -h 127.0.3.2 -p 6379",
            "eu -> us  127.0.1.102:7946 -> 127.0.2.1:7946 127.0.2.2:7946",
            "curl -X PUT 'http://127.0.1.1:8080/v1/keys/greeting'",
            "curl -i http://127.0.2.1:8080/v1/keys/greeting",
            "redis-cli -h 127.0.3.1 -p 6379 GET greeting",
            "/v1/status",
            "Ctrl-C",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
        }
    }

    #[test]
    fn the_command_line_round_trips_through_the_parser() {
        let args = FleetArgs::parse_from([
            "fleet",
            "--regions",
            "a,b",
            "--nodes-per-region",
            "3",
            "--wan-delay",
            "5ms",
            "--net",
            "42",
            "--base-dir",
            "/tmp/x",
            "--data",
            "--tls",
            "--",
            "--max-memory",
            "1mb",
        ]);
        let line = fleet_command_line(&args);
        assert_eq!(line[0], "fleet");
        let back = FleetArgs::parse_from(std::iter::once(OsString::from("fleet")).chain(line.into_iter().skip(1)));
        assert_eq!(format!("{back:?}"), format!("{args:?}"));
    }

    #[test]
    fn exit_statuses_are_described_for_people() {
        assert_eq!(describe(&Ok(ExitStatus::from_raw(0))), "exit code 0");
        assert_eq!(describe(&Ok(ExitStatus::from_raw(2 << 8))), "exit code 2");
        assert_eq!(describe(&Ok(ExitStatus::from_raw(9))), "killed by signal 9");
    }
}
