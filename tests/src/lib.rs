//! Test harness for GeoCache: the node as a real process on ephemeral loopback
//! addresses, plus small blocking clients (HTTP/1.1, RESP) that have no dependencies
//! beyond `std`, so that the harness costs little to compile.
//!
//! ```no_run
//! use geocache_tests::{NodeOptions, NodeProcess};
//! // In an integration test of the node crate: env!("CARGO_BIN_EXE_geocache-node").
//! let bin = std::path::Path::new("target/debug/geocache-node");
//! let node = NodeProcess::start(bin, NodeOptions::new().persistent());
//! assert_eq!(node.get("/healthz").status, 200);
//! ```
//!
//! Every operation has a hard time bound. A node is killed (SIGKILL) when its
//! [`NodeProcess`] is dropped, and, through `PR_SET_PDEATHSIG`, when the thread that
//! started it dies — so a crashed or killed test run never leaks node processes. (Start
//! nodes from the test's own thread or a runtime worker, not from a short-lived
//! `spawn_blocking` thread.) When a test panics, the node's log (stdout + stderr) is
//! printed; set `GEOCACHE_TESTS_KEEP=1` to keep the node's temporary directory too.

use std::collections::hash_map::RandomState;
use std::ffi::OsString;
use std::fs::OpenOptions;
use std::hash::{BuildHasher, Hasher};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long [`NodeProcess::start`] waits for `/readyz` by default.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`NodeProcess::stop`] waits after SIGTERM before it sends SIGKILL.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Time bound of one request of the harness's HTTP client.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(20);
/// Time bound of one `redis-cli` run.
pub const REDIS_CLI_TIMEOUT: Duration = Duration::from_secs(30);
/// How much of a node's log is printed when a test fails.
const LOG_TAIL_BYTES: usize = 64 * 1024;

pub mod apiserver;
pub mod faults;
pub mod fleet;
pub mod kubelet;

// ---------------------------------------------------------------------------------
// Small utilities
// ---------------------------------------------------------------------------------

/// A random number, good enough for addresses and test data (not for cryptography).
pub fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    h.write_u32(std::process::id());
    h.finish()
}

/// Milliseconds since the Unix epoch, by this machine's clock (the node's clock too).
pub fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Polls `condition` (about every 20 ms) until it is true or `timeout` has passed;
/// returns whether it became true. The condition is checked once more at the deadline.
#[must_use = "assert on the result: false means the condition never became true"]
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20).min(deadline - now));
    }
}

/// Percent-encodes `key` as one path segment: everything but ASCII letters, digits,
/// `-`, `_` and `~` is encoded (also `.`, so that `.` and `..` stay keys).
pub fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len() * 3);
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The request target of a key: `/v1/keys/{percent-encoded key}`.
pub fn key_path(key: &str) -> String {
    format!("/v1/keys/{}", encode_key(key))
}

/// Parses an RFC 3339 UTC timestamp such as `2026-11-26T04:30:00.123Z` (or with an
/// offset such as `+00:00`) into Unix milliseconds. `None` when it is not RFC 3339.
pub fn parse_rfc3339_ms(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        if t.bytes().all(|c| c.is_ascii_digit()) { t.parse().ok() } else { None }
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut i = 19;
    let mut millis = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
        let frac = &s[start..i];
        let padded: String = frac.chars().chain(std::iter::repeat('0')).take(3).collect();
        millis = padded.parse().ok()?;
    }
    let offset_min = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        c @ (b'+' | b'-') if b.len() == i + 6 && b[i + 3] == b':' => {
            let h = num(i + 1..i + 3)?;
            let m = num(i + 4..i + 6)?;
            let sign = if *c == b'+' { 1 } else { -1 };
            sign * (h * 60 + m)
        }
        _ => return None,
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_min * 60;
    u64::try_from(secs * 1000 + millis).ok()
}

/// Runs `cmd` with a hard time bound, feeding it `stdin`; on timeout the process is
/// killed and an error of kind `TimedOut` is returned.
pub fn run_with_timeout(cmd: &mut Command, stdin: Option<&[u8]>, timeout: Duration) -> io::Result<Output> {
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let writer = match (stdin, child.stdin.take()) {
        (Some(input), Some(mut pipe)) => {
            let input = input.to_vec();
            Some(std::thread::spawn(move || {
                let _ = pipe.write_all(&input);
            }))
        }
        _ => None,
    };
    let mut out_pipe = child.stdout.take().expect("stdout is piped");
    let mut err_pipe = child.stderr.take().expect("stderr is piped");
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out_pipe.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err_pipe.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(io::ErrorKind::TimedOut, format!("{cmd:?} did not finish within {timeout:?}")));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    Ok(Output { status, stdout, stderr })
}

// ---------------------------------------------------------------------------------
// Node options and process
// ---------------------------------------------------------------------------------

/// Where a node keeps its data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum DataDir {
    /// No `--data-dir`: memory only.
    #[default]
    None,
    /// A fresh directory inside the node's temporary directory (kept across restarts).
    Temp,
    /// This directory.
    At(PathBuf),
}

/// How to start a node. Build with [`NodeOptions::new`] and the builder methods.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub node_id: String,
    pub region: String,
    pub data_dir: DataDir,
    pub max_memory: Option<String>,
    pub default_ttl: Option<String>,
    pub fsync: Option<String>,
    /// Whether the Redis-protocol listener is on (`--resp-addr off` when false).
    pub resp: bool,
    /// Extra command-line arguments, appended after the harness's own.
    pub args: Vec<OsString>,
    /// Extra environment variables (applied after the harness's defaults).
    pub env: Vec<(OsString, OsString)>,
    pub ready_timeout: Duration,
    pub stop_timeout: Duration,
    /// The node's addresses; `None`: a random loopback IP with free ports, chosen at
    /// start. Choose them beforehand ([`NodeAddrs::pick`]) when other nodes need to
    /// know them first, e.g. as `--peers`.
    pub addrs: Option<NodeAddrs>,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            node_id: format!("node-{:08x}", random_u64() as u32),
            region: "test-region".to_string(),
            data_dir: DataDir::None,
            max_memory: None,
            default_ttl: None,
            fsync: None,
            resp: true,
            args: Vec::new(),
            env: Vec::new(),
            ready_timeout: DEFAULT_READY_TIMEOUT,
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            addrs: None,
        }
    }
}

impl NodeOptions {
    /// A memory-only node with a random node id in region `test-region`.
    pub fn new() -> Self {
        Self::default()
    }
    pub fn node_id(mut self, id: impl Into<String>) -> Self {
        self.node_id = id.into();
        self
    }
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = region.into();
        self
    }
    /// `--data-dir` in a fresh temporary directory owned by the node (kept across
    /// [`NodeProcess::restart`]).
    pub fn persistent(mut self) -> Self {
        self.data_dir = DataDir::Temp;
        self
    }
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = DataDir::At(dir.into());
        self
    }
    pub fn max_memory(mut self, size: impl Into<String>) -> Self {
        self.max_memory = Some(size.into());
        self
    }
    pub fn default_ttl(mut self, ttl: impl Into<String>) -> Self {
        self.default_ttl = Some(ttl.into());
        self
    }
    /// `--fsync` (`every-second` or `always`).
    pub fn fsync(mut self, policy: impl Into<String>) -> Self {
        self.fsync = Some(policy.into());
        self
    }
    /// `--resp-addr off` when `false`.
    pub fn resp(mut self, on: bool) -> Self {
        self.resp = on;
        self
    }
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }
    pub fn stop_timeout(mut self, timeout: Duration) -> Self {
        self.stop_timeout = timeout;
        self
    }
    /// Listen on these addresses (see [`NodeAddrs::pick`]).
    pub fn addrs(mut self, addrs: NodeAddrs) -> Self {
        self.addrs = Some(addrs);
        self
    }
}

/// The addresses of one node: one loopback IP, three ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeAddrs {
    pub ip: Ipv4Addr,
    pub http: SocketAddr,
    pub resp: SocketAddr,
    pub peer: SocketAddr,
}

impl NodeAddrs {
    /// A random loopback IP `127.x.y.z` (never `127.0.x.x`) with three ports that were
    /// free a moment ago (bound to port 0, then released).
    pub fn pick() -> NodeAddrs {
        let (ip, [http, resp, peer]) = pick_addresses();
        NodeAddrs { ip, http, resp, peer }
    }
}

/// The running test executable's profile directory (`target/<profile>/deps/x-hash` →
/// `target/<profile>`), where `cargo test --workspace` puts the workspace's binaries.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the path of the running test executable");
    exe.parent()
        .filter(|d| d.file_name().is_some_and(|n| n == "deps"))
        .and_then(Path::parent)
        .or_else(|| exe.parent())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| panic!("cannot find the target directory from {}", exe.display()))
}

/// The `geocache-node` binary for tests outside the node crate, which cannot use
/// `CARGO_BIN_EXE_geocache-node`: `$GEOCACHE_NODE_BIN` when set, else the binary next
/// to the running test executable's directory (`target/<profile>/deps/x-hash` →
/// `target/<profile>/geocache-node`), which `cargo test --workspace` builds before it
/// runs any test (and which is rebuilt here when the node's sources are newer). Panics
/// with what to do when it is missing.
pub fn node_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("GEOCACHE_NODE_BIN") {
        let bin = PathBuf::from(bin);
        assert!(bin.is_file(), "GEOCACHE_NODE_BIN={} is not a file", bin.display());
        return bin;
    }
    let profile_dir = profile_dir();
    let bin = profile_dir.join("geocache-node");
    assert!(
        bin.is_file(),
        "the geocache-node binary is missing at {}: build it first (`cargo build -p geocache-node`; \
         `cargo test --workspace` builds it too), or set GEOCACHE_NODE_BIN",
        bin.display()
    );
    rebuild_if_stale(&bin);
    bin
}

/// Rebuilds `bin` (once per test executable) when a source file of the node crate is
/// newer than it: `cargo test -p geocache-tests` alone does not build the binary, and a
/// test must never pass or fail on old code.
fn rebuild_if_stale(bin: &Path) {
    static CHECKED: std::sync::Once = std::sync::Once::new();
    CHECKED.call_once(|| {
        let Ok(built) = std::fs::metadata(bin).and_then(|m| m.modified()) else { return };
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../node/src");
        let mut dirs = vec![src];
        let mut stale = None;
        while let Some(dir) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    dirs.push(path);
                } else if entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| t > built) {
                    stale = Some(path);
                }
            }
        }
        let Some(newer) = stale else { return };
        let profile = match bin.parent().and_then(Path::file_name).and_then(|n| n.to_str()) {
            Some("debug") | None => "dev",
            Some(other) => other,
        };
        eprintln!(
            "geocache-tests: {} is newer than {}: rebuilding it (cargo build -p geocache-node --profile {profile})",
            newer.display(),
            bin.display()
        );
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-q", "-p", "geocache-node", "--bin", "geocache-node", "--profile", profile])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status();
        assert!(
            status.as_ref().is_ok_and(|s| s.success()),
            "rebuilding geocache-node failed ({status:?}); run `cargo build -p geocache-node`"
        );
    });
}

/// A `geocache-node` process on a random loopback address `127.x.y.z`.
///
/// The addresses and the data directory stay the same across [`kill`](Self::kill),
/// [`stop`](Self::stop) and [`restart`](Self::restart). Dropping it kills the process.
pub struct NodeProcess {
    bin: PathBuf,
    opts: NodeOptions,
    ip: Ipv4Addr,
    http_addr: SocketAddr,
    resp_addr: SocketAddr,
    peer_addr: SocketAddr,
    data_dir: Option<PathBuf>,
    log_path: PathBuf,
    child: Option<Child>,
    last_exit: Option<ExitStatus>,
    starts: u32,
    log_printed: bool,
    paused: bool,
    tmp: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for NodeProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeProcess")
            .field("node_id", &self.opts.node_id)
            .field("http_addr", &self.http_addr)
            .field("resp_addr", &self.resp_addr)
            .field("peer_addr", &self.peer_addr)
            .field("data_dir", &self.data_dir)
            .field("pid", &self.pid())
            .finish()
    }
}

fn random_loopback_ip() -> Ipv4Addr {
    loop {
        let r = random_u64();
        let (x, y, z) = ((r & 0xff) as u8, ((r >> 8) & 0xff) as u8, ((r >> 16) & 0xff) as u8);
        // Avoid 127.0.x.x (127.0.0.1 and friends are busy), and .0/.255 host bytes.
        if x == 0 || x == 255 || z == 0 || z == 255 {
            continue;
        }
        return Ipv4Addr::new(127, x, y, z);
    }
}

/// A random loopback IP with three free ports on it (found by binding port 0 and
/// releasing, all three held at once so that they differ).
fn pick_addresses() -> (Ipv4Addr, [SocketAddr; 3]) {
    let mut last_err = None;
    for _ in 0..20 {
        let ip = random_loopback_ip();
        let bound: io::Result<Vec<TcpListener>> = (0..3).map(|_| TcpListener::bind((ip, 0))).collect();
        match bound.and_then(|ls| ls.iter().map(|l| l.local_addr()).collect::<io::Result<Vec<_>>>()) {
            Ok(addrs) => return (ip, [addrs[0], addrs[1], addrs[2]]),
            Err(e) => last_err = Some(e),
        }
    }
    panic!("cannot bind any port on a random 127.x.y.z address: {last_err:?}");
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) with a pid of a child we have not reaped yet.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Waits for `child` to exit, at most `timeout`.
fn wait_child(child: &mut Child, timeout: Duration) -> io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

impl NodeProcess {
    /// Starts the node binary `bin` (integration tests pass
    /// `env!("CARGO_BIN_EXE_geocache-node")`) and waits until `GET /readyz` answers 200
    /// and the Redis port (when on) accepts connections. Panics, printing the node's
    /// log, when the node exits or is not ready within `opts.ready_timeout`.
    pub fn start(bin: &Path, opts: NodeOptions) -> NodeProcess {
        let mut node = NodeProcess::spawn(bin, opts);
        node.wait_ready();
        node
    }

    /// Like [`start`](Self::start) but returns as soon as the process is started; call
    /// [`wait_ready`](Self::wait_ready) later, e.g. to start a whole fleet at once.
    pub fn spawn(bin: &Path, opts: NodeOptions) -> NodeProcess {
        let tmp = tempfile::Builder::new()
            .prefix("geocache-node-")
            .tempdir()
            .expect("create a temporary directory for the node");
        let NodeAddrs { ip, http: http_addr, resp: resp_addr, peer: peer_addr } =
            opts.addrs.unwrap_or_else(NodeAddrs::pick);
        let data_dir = match &opts.data_dir {
            DataDir::None => None,
            DataDir::Temp => {
                let d = tmp.path().join("data");
                std::fs::create_dir_all(&d).expect("create the data dir");
                Some(d)
            }
            DataDir::At(d) => Some(d.clone()),
        };
        let log_path = tmp.path().join("node.log");
        let mut node = NodeProcess {
            bin: bin.to_path_buf(),
            opts,
            ip,
            http_addr,
            resp_addr,
            peer_addr,
            data_dir,
            log_path,
            child: None,
            last_exit: None,
            starts: 0,
            log_printed: false,
            paused: false,
            tmp: Some(tmp),
        };
        node.spawn_process();
        node
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--node-id").arg(&self.opts.node_id);
        cmd.arg("--region").arg(&self.opts.region);
        cmd.arg("--http-addr").arg(self.http_addr.to_string());
        cmd.arg("--resp-addr").arg(if self.opts.resp { self.resp_addr.to_string() } else { "off".to_string() });
        cmd.arg("--peer-addr").arg(self.peer_addr.to_string());
        if let Some(d) = &self.data_dir {
            cmd.arg("--data-dir").arg(d);
        }
        if let Some(m) = &self.opts.max_memory {
            cmd.arg("--max-memory").arg(m);
        }
        if let Some(t) = &self.opts.default_ttl {
            cmd.arg("--default-ttl").arg(t);
        }
        if let Some(f) = &self.opts.fsync {
            cmd.arg("--fsync").arg(f);
        }
        cmd.args(&self.opts.args);
        // Hermetic: no GEOCACHE_* settings leak in from the environment of the test run.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("GEOCACHE_") {
                cmd.env_remove(&k);
            }
        }
        cmd.env("RUST_LOG", "info").env("RUST_BACKTRACE", "1").env("NO_COLOR", "1");
        for (k, v) in &self.opts.env {
            cmd.env(k, v);
        }
        cmd
    }

    fn spawn_and_wait_ready(&mut self) {
        self.spawn_process();
        self.wait_ready();
    }

    fn spawn_process(&mut self) {
        assert!(self.child.is_none(), "the node is already running");
        self.starts += 1;
        let mut cmd = self.command();
        let mut log = OpenOptions::new().create(true).append(true).open(&self.log_path).expect("open the node log");
        let _ =
            writeln!(log, "===== geocache-tests: start #{} at unix ms {}: {:?} =====", self.starts, now_unix_ms(), cmd);
        let out = log.try_clone().expect("clone the log file handle");
        cmd.stdin(Stdio::null()).stdout(Stdio::from(out)).stderr(Stdio::from(log));
        // SAFETY: prctl is async-signal-safe; it makes the kernel SIGKILL the node when
        // the thread that started it dies, so even a killed test run leaks no process.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        self.child = Some(child);
        self.last_exit = None;
        self.paused = false;
    }

    /// Waits until `GET /readyz` answers 200 and the Redis port (when on) accepts
    /// connections, at most the ready timeout; panics (printing the log) otherwise.
    pub fn wait_ready(&mut self) {
        let started = Instant::now();
        let deadline = started + self.opts.ready_timeout;
        let mut last: String;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                self.last_exit = Some(status);
                let log = self.log_tail();
                self.log_printed = true;
                panic!(
                    "geocache-node exited with {status} before it was ready (start #{}, {:?} after spawn); its log:\n{log}",
                    self.starts,
                    started.elapsed()
                );
            }
            match http::request(self.http_addr, "GET", "/readyz", &[], b"", Duration::from_secs(2)) {
                Ok(r) if r.status == 200 => break,
                Ok(r) => last = format!("/readyz answered {} {}", r.status, r.text()),
                Err(e) => last = format!("/readyz: {e}"),
            }
            if Instant::now() >= deadline {
                self.kill_quietly();
                let log = self.log_tail();
                self.log_printed = true;
                panic!(
                    "geocache-node was not ready within {:?} (start #{}; last: {last}); its log:\n{log}",
                    self.opts.ready_timeout, self.starts
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.opts.resp {
            let ok = wait_until(deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1)), || {
                TcpStream::connect_timeout(&self.resp_addr, Duration::from_secs(1)).is_ok()
            });
            if !ok {
                self.kill_quietly();
                let log = self.log_tail();
                self.log_printed = true;
                panic!(
                    "/readyz said ready but the Redis port {} does not accept connections; node log:\n{log}",
                    self.resp_addr
                );
            }
        }
    }

    fn kill_quietly(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), libc::SIGKILL);
            self.last_exit = wait_child(&mut child, Duration::from_secs(10)).ok().flatten();
        }
    }

    /// Whether the process is running (reaps it when it has exited).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => true,
            Some(Ok(Some(status))) => {
                self.last_exit = Some(status);
                self.child = None;
                false
            }
            Some(Err(_)) | None => false,
        }
    }

    /// The exit status of the last process, once it has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.is_running();
        self.last_exit
    }

    /// `kill -9` and wait. Returns the exit status (also when it had already exited).
    pub fn kill(&mut self) -> ExitStatus {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), libc::SIGKILL);
            let status = wait_child(&mut child, Duration::from_secs(10))
                .expect("wait for the node")
                .expect("the node did not exit within 10 s of SIGKILL");
            self.last_exit = Some(status);
            self.paused = false;
            self.append_to_log(&format!("===== geocache-tests: SIGKILL sent; exit status {status} ====="));
        }
        self.last_exit.expect("the node was never started")
    }

    /// `SIGSTOP`: the process is frozen (its sockets stay open, the kernel still
    /// accepts connections and buffers bytes, nothing is answered) until
    /// [`resume`](Self::resume). No-op when it is not running or already paused.
    pub fn pause(&mut self) {
        if let Some(pid) = self.pid()
            && !self.paused
        {
            signal(pid, libc::SIGSTOP);
            self.paused = true;
            self.append_to_log(&format!("===== geocache-tests: SIGSTOP at unix ms {} =====", now_unix_ms()));
        }
    }

    /// `SIGCONT` after [`pause`](Self::pause). No-op when it is not paused.
    pub fn resume(&mut self) {
        if let Some(pid) = self.pid()
            && self.paused
        {
            signal(pid, libc::SIGCONT);
            self.paused = false;
            self.append_to_log(&format!("===== geocache-tests: SIGCONT at unix ms {} =====", now_unix_ms()));
        }
    }

    /// Whether the process was paused with [`pause`](Self::pause) and not resumed.
    pub fn is_paused(&self) -> bool {
        self.paused && self.child.is_some()
    }

    /// Sets (or replaces) an environment variable for the next start, e.g. to start
    /// the node again with another clock offset ([`faketime_env`]).
    pub fn set_env(&mut self, key: impl Into<OsString>, value: impl Into<OsString>) {
        let key = key.into();
        self.opts.env.retain(|(k, _)| *k != key);
        self.opts.env.push((key, value.into()));
    }

    /// Removes an environment variable for the next start.
    pub fn remove_env(&mut self, key: impl AsRef<std::ffi::OsStr>) {
        self.opts.env.retain(|(k, _)| k.as_os_str() != key.as_ref());
    }

    /// SIGTERM, then wait up to the stop timeout (default 10 s); SIGKILL after that.
    /// Returns the exit status: `success()` when the node shut down by itself.
    pub fn stop(&mut self) -> ExitStatus {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), libc::SIGTERM);
            if self.paused {
                // A stopped process handles SIGTERM only once it runs again.
                signal(child.id(), libc::SIGCONT);
                self.paused = false;
            }
            let status = match wait_child(&mut child, self.opts.stop_timeout).expect("wait for the node") {
                Some(s) => s,
                None => {
                    self.append_to_log(&format!(
                        "===== geocache-tests: no exit within {:?} of SIGTERM; sending SIGKILL =====",
                        self.opts.stop_timeout
                    ));
                    eprintln!(
                        "geocache-tests: node {} ignored SIGTERM for {:?}; killed",
                        self.opts.node_id, self.opts.stop_timeout
                    );
                    signal(child.id(), libc::SIGKILL);
                    wait_child(&mut child, Duration::from_secs(10))
                        .expect("wait for the node")
                        .expect("the node did not exit within 10 s of SIGKILL")
                }
            };
            self.last_exit = Some(status);
            self.append_to_log(&format!("===== geocache-tests: stopped; exit status {status} ====="));
        }
        self.last_exit.expect("the node was never started")
    }

    /// Starts the node again with the same flags, addresses and data dir (stopping it
    /// first with [`stop`](Self::stop) if it is still running), and waits until ready.
    pub fn restart(&mut self) {
        if self.is_running() {
            self.stop();
        }
        self.spawn_and_wait_ready();
    }

    fn append_to_log(&self, line: &str) {
        if let Ok(mut f) = OpenOptions::new().append(true).open(&self.log_path) {
            let _ = writeln!(f, "{line}");
        }
    }

    /// Everything the node wrote to stdout and stderr, over all its starts.
    pub fn log_contents(&self) -> String {
        std::fs::read(&self.log_path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    /// The log of the current (or last) start only.
    pub fn log_of_last_start(&self) -> String {
        let all = self.log_contents();
        let marker = format!("===== geocache-tests: start #{} ", self.starts);
        match all.rfind(&marker) {
            Some(i) => all[i..].to_string(),
            None => all,
        }
    }

    fn log_tail(&self) -> String {
        let all = self.log_contents();
        if all.len() <= LOG_TAIL_BYTES {
            return all;
        }
        let mut start = all.len() - LOG_TAIL_BYTES;
        while !all.is_char_boundary(start) {
            start += 1;
        }
        format!("[... {} bytes before ...]\n{}", start, &all[start..])
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }
    pub fn bin(&self) -> &Path {
        &self.bin
    }
    pub fn options(&self) -> &NodeOptions {
        &self.opts
    }
    pub fn node_id(&self) -> &str {
        &self.opts.node_id
    }
    pub fn region(&self) -> &str {
        &self.opts.region
    }
    pub fn ip(&self) -> IpAddr {
        IpAddr::V4(self.ip)
    }
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }
    /// The Redis-protocol address (meaningless when the node runs with `resp(false)`).
    pub fn resp_addr(&self) -> SocketAddr {
        self.resp_addr
    }
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }
    pub fn data_dir(&self) -> Option<&Path> {
        self.data_dir.as_deref()
    }
    /// The process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
    /// How often the node has been started.
    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// `http://IP:PORT{path}`.
    pub fn http_url(&self, path: &str) -> String {
        if path.starts_with('/') {
            format!("http://{}{}", self.http_addr, path)
        } else {
            format!("http://{}/{}", self.http_addr, path)
        }
    }

    /// `redis://IP:PORT/`.
    pub fn redis_url(&self) -> String {
        format!("redis://{}/", self.resp_addr)
    }

    /// One HTTP/1.1 request with the harness's blocking client; panics on I/O errors.
    pub fn http(&self, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> http::HttpResponse {
        http::request(self.http_addr, method, target, headers, body, HTTP_TIMEOUT)
            .unwrap_or_else(|e| panic!("{method} {target} on {}: {e}", self.http_addr))
    }

    /// `GET target` with the harness's blocking client.
    pub fn get(&self, target: &str) -> http::HttpResponse {
        self.http("GET", target, &[], b"")
    }

    /// `GET /v1/status` parsed as JSON (panics unless 200 with a JSON body).
    pub fn status_doc(&self) -> serde_json::Value {
        let r = self.get("/v1/status");
        assert_eq!(r.status, 200, "GET /v1/status: {} {}", r.status, r.text());
        r.json()
    }

    /// `GET /metrics` as text (panics unless 200).
    pub fn metrics_text(&self) -> String {
        let r = self.get("/metrics");
        assert_eq!(r.status, 200, "GET /metrics: {} {}", r.status, r.text());
        r.text()
    }

    /// The value of one sample in `/metrics`, e.g. `geocache_keys` or
    /// `geocache_resp_commands_total{command="get"}` (labels as rendered, in order).
    pub fn metric(&self, sample: &str) -> Option<f64> {
        metric_value(&self.metrics_text(), sample)
    }

    /// Runs the real `redis-cli -h IP -p PORT args...` (30 s bound).
    pub fn redis_cli<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.run_redis_cli(args, None)
    }

    /// Like [`redis_cli`](Self::redis_cli), feeding `input` on stdin (e.g. with `-x`).
    pub fn redis_cli_with_input<I, S>(&self, args: I, input: &[u8]) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.run_redis_cli(args, Some(input))
    }

    fn run_redis_cli<I, S>(&self, args: I, input: Option<&[u8]>) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = Command::new("redis-cli");
        cmd.arg("-h").arg(self.resp_addr.ip().to_string()).arg("-p").arg(self.resp_addr.port().to_string());
        cmd.args(args);
        cmd.env_remove("REDISCLI_AUTH");
        match run_with_timeout(&mut cmd, input, REDIS_CLI_TIMEOUT) {
            Ok(out) => out,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                panic!("redis-cli not found: run the README's test command, which installs redis-tools")
            }
            Err(e) => panic!("{cmd:?}: {e}"),
        }
    }

    /// A raw RESP connection to the node (10 s read/write timeouts).
    pub fn resp_conn(&self) -> resp::RespConn {
        resp::RespConn::connect(self.resp_addr, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("connect to the Redis port {}: {e}", self.resp_addr))
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill_quietly();
        if std::thread::panicking() {
            if !self.log_printed {
                eprintln!(
                    "----- log of geocache-node {} (http {}, resp {}) -----\n{}\n----- end of log -----",
                    self.opts.node_id,
                    self.http_addr,
                    self.resp_addr,
                    self.log_tail()
                );
            }
            if std::env::var_os("GEOCACHE_TESTS_KEEP").is_some()
                && let Some(tmp) = self.tmp.take()
            {
                eprintln!("geocache-tests: kept {}", tmp.keep().display());
            }
        }
    }
}

/// The value of `sample` (a metric name with its label set as rendered, e.g.
/// `geocache_resp_commands_total{command="get"}`) in Prometheus text.
pub fn metric_value(text: &str, sample: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let rest = line.strip_prefix(sample)?;
        // `geocache_keys` must not match `geocache_keys_total`.
        if !rest.starts_with(' ') {
            return None;
        }
        rest.split_whitespace().next()?.parse().ok()
    })
}

// ---------------------------------------------------------------------------------
// A tiny blocking HTTP/1.1 client
// ---------------------------------------------------------------------------------

pub mod http {
    use super::*;

    /// A response, body fully read.
    #[derive(Debug, Clone)]
    pub struct HttpResponse {
        pub status: u16,
        pub reason: String,
        pub headers: Vec<(String, String)>,
        pub body: Vec<u8>,
    }

    impl HttpResponse {
        /// The first header called `name` (case-insensitive).
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
        }
        pub fn text(&self) -> String {
            String::from_utf8_lossy(&self.body).into_owned()
        }
        /// The body as JSON; panics (showing the body) when it is not.
        pub fn json(&self) -> serde_json::Value {
            serde_json::from_slice(&self.body)
                .unwrap_or_else(|e| panic!("response {} is not JSON ({e}): {:?}", self.status, self.text()))
        }
    }

    struct Deadline<'a> {
        stream: &'a TcpStream,
        deadline: Instant,
    }

    impl Read for Deadline<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "HTTP response not complete in time"));
            }
            self.stream.set_read_timeout(Some(left))?;
            (&*self.stream).read(buf)
        }
    }

    /// Sends one request (`Connection: close`) and reads the whole response, within
    /// `timeout` in total. `target` is sent verbatim (percent-encode it yourself).
    /// A `Content-Length` is sent for a non-empty body and for PUT/POST/PATCH.
    pub fn request(
        addr: SocketAddr,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout: Duration,
    ) -> io::Result<HttpResponse> {
        let deadline = Instant::now() + timeout;
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(timeout))?;
        let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        let has_length = headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-length"));
        if !has_length && (!body.is_empty() || matches!(method, "PUT" | "POST" | "PATCH")) {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let mut msg = head.into_bytes();
        msg.extend_from_slice(body);
        (&stream).write_all(&msg)?;
        let mut reader = BufReader::new(Deadline { stream: &stream, deadline });
        let resp = read_response(&mut reader, method == "HEAD")?;
        let _ = stream.shutdown(Shutdown::Both);
        Ok(resp)
    }

    fn read_line(r: &mut impl BufRead) -> io::Result<String> {
        let mut line = Vec::new();
        r.take(64 * 1024).read_until(b'\n', &mut line)?;
        if !line.ends_with(b"\n") {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed in the middle of a line"));
        }
        while matches!(line.last(), Some(b'\n' | b'\r')) {
            line.pop();
        }
        String::from_utf8(line).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "non-UTF-8 header line"))
    }

    /// Reads one response from `r`.
    pub fn read_response(r: &mut impl BufRead, head_only: bool) -> io::Result<HttpResponse> {
        let status_line = read_line(r)?;
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        if !version.starts_with("HTTP/1.") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("not an HTTP/1 status line: {status_line:?}"),
            ));
        }
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("bad status line {status_line:?}")))?;
        let reason = parts.next().unwrap_or_default().to_string();
        let mut headers = Vec::new();
        loop {
            let line = read_line(r)?;
            if line.is_empty() {
                break;
            }
            let (k, v) = line
                .split_once(':')
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("bad header line {line:?}")))?;
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        let find = |name: &str| {
            headers.iter().find(|(k, _): &&(String, String)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone())
        };
        let mut body = Vec::new();
        if head_only || status == 204 || status == 304 || (100..200).contains(&status) {
            // no body
        } else if find("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
            loop {
                let line = read_line(r)?;
                let size_hex = line.split(';').next().unwrap_or_default().trim();
                let size = usize::from_str_radix(size_hex, 16)
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("bad chunk size {line:?}")))?;
                if size == 0 {
                    while !read_line(r)?.is_empty() {}
                    break;
                }
                let start = body.len();
                body.resize(start + size, 0);
                r.read_exact(&mut body[start..])?;
                read_line(r)?;
            }
        } else if let Some(len) = find("content-length") {
            let len: usize = len
                .parse()
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("bad content-length {len:?}")))?;
            body.resize(len, 0);
            r.read_exact(&mut body)?;
        } else {
            r.read_to_end(&mut body)?;
        }
        Ok(HttpResponse { status, reason, headers, body })
    }
}

// ---------------------------------------------------------------------------------
// A tiny RESP2/RESP3 client for raw protocol tests
// ---------------------------------------------------------------------------------

pub mod resp {
    use super::*;

    /// One RESP2/RESP3 reply.
    #[derive(Debug, Clone, PartialEq)]
    pub enum Frame {
        Simple(String),
        Error(String),
        Integer(i64),
        /// `$-1` in RESP2.
        NullBulk,
        Bulk(Vec<u8>),
        /// `*-1` in RESP2.
        NullArray,
        Array(Vec<Frame>),
        /// RESP3 `_`.
        Null,
        Double(String),
        Boolean(bool),
        BigNumber(String),
        BulkError(Vec<u8>),
        Verbatim(String, Vec<u8>),
        Map(Vec<(Frame, Frame)>),
        Set(Vec<Frame>),
        Push(Vec<Frame>),
    }

    impl Frame {
        /// Simple/bulk/verbatim strings as text.
        pub fn as_text(&self) -> Option<String> {
            match self {
                Frame::Simple(s) => Some(s.clone()),
                Frame::Bulk(b) | Frame::Verbatim(_, b) => Some(String::from_utf8_lossy(b).into_owned()),
                _ => None,
            }
        }
        /// A map's value for a string key (RESP3 map, or a RESP2 flat key/value array).
        pub fn get(&self, key: &str) -> Option<&Frame> {
            match self {
                Frame::Map(pairs) => pairs.iter().find(|(k, _)| k.as_text().as_deref() == Some(key)).map(|(_, v)| v),
                Frame::Array(items) => {
                    items.chunks(2).find(|kv| kv.len() == 2 && kv[0].as_text().as_deref() == Some(key)).map(|kv| &kv[1])
                }
                _ => None,
            }
        }
    }

    /// Encodes a command as a RESP array of bulk strings.
    pub fn encode_command<A: AsRef<[u8]>>(args: &[A]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            let a = a.as_ref();
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    /// A raw connection: write any bytes, read replies one frame at a time.
    pub struct RespConn {
        reader: BufReader<TcpStream>,
        timeout: Duration,
    }

    fn bad(msg: impl Into<String>) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, msg.into())
    }

    impl RespConn {
        pub fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<RespConn> {
            let s = TcpStream::connect_timeout(&addr, timeout)?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(timeout))?;
            s.set_write_timeout(Some(timeout))?;
            Ok(RespConn { reader: BufReader::new(s), timeout })
        }

        pub fn stream(&self) -> &TcpStream {
            self.reader.get_ref()
        }

        /// Writes `bytes` as they are.
        pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
            let mut s = self.reader.get_ref();
            s.write_all(bytes)?;
            s.flush()
        }

        /// Sends a command and reads one reply.
        pub fn cmd<A: AsRef<[u8]>>(&mut self, args: &[A]) -> io::Result<Frame> {
            self.send_raw(&encode_command(args))?;
            self.read_frame()
        }

        fn line(&mut self) -> io::Result<Vec<u8>> {
            let mut line = Vec::new();
            (&mut self.reader).take(1 << 20).read_until(b'\n', &mut line)?;
            if line.is_empty() {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"));
            }
            if !line.ends_with(b"\r\n") {
                return Err(bad(format!("reply line not ended by CRLF: {:?}", String::from_utf8_lossy(&line))));
            }
            line.truncate(line.len() - 2);
            Ok(line)
        }

        fn count(s: &str) -> io::Result<i64> {
            s.parse().map_err(|_| bad(format!("bad length {s:?}")))
        }

        fn blob(&mut self, len: i64) -> io::Result<Vec<u8>> {
            let len = usize::try_from(len).map_err(|_| bad("negative length"))?;
            let mut buf = vec![0; len + 2];
            self.reader.read_exact(&mut buf)?;
            if !buf.ends_with(b"\r\n") {
                return Err(bad("bulk string not followed by CRLF"));
            }
            buf.truncate(len);
            Ok(buf)
        }

        fn frames(&mut self, n: i64) -> io::Result<Vec<Frame>> {
            (0..n).map(|_| self.read_frame()).collect()
        }

        /// Reads one reply (RESP2 or RESP3; attributes `|` are skipped).
        pub fn read_frame(&mut self) -> io::Result<Frame> {
            let line = self.line()?;
            let (&kind, rest) = line.split_first().ok_or_else(|| bad("empty reply line"))?;
            let rest = String::from_utf8_lossy(rest).into_owned();
            Ok(match kind {
                b'+' => Frame::Simple(rest),
                b'-' => Frame::Error(rest),
                b':' => Frame::Integer(Self::count(&rest)?),
                b'$' => match Self::count(&rest)? {
                    -1 => Frame::NullBulk,
                    n => Frame::Bulk(self.blob(n)?),
                },
                b'*' => match Self::count(&rest)? {
                    -1 => Frame::NullArray,
                    n => Frame::Array(self.frames(n)?),
                },
                b'_' => Frame::Null,
                b',' => Frame::Double(rest),
                b'#' => Frame::Boolean(rest == "t"),
                b'(' => Frame::BigNumber(rest),
                b'!' => {
                    let n = Self::count(&rest)?;
                    Frame::BulkError(self.blob(n)?)
                }
                b'=' => {
                    let n = Self::count(&rest)?;
                    let mut b = self.blob(n)?;
                    let body = if b.len() >= 4 { b.split_off(4) } else { Vec::new() };
                    Frame::Verbatim(String::from_utf8_lossy(&b[..b.len().min(3)]).into_owned(), body)
                }
                b'%' => {
                    let n = Self::count(&rest)?;
                    let mut pairs = Vec::new();
                    for _ in 0..n {
                        let k = self.read_frame()?;
                        let v = self.read_frame()?;
                        pairs.push((k, v));
                    }
                    Frame::Map(pairs)
                }
                b'~' => {
                    let n = Self::count(&rest)?;
                    Frame::Set(self.frames(n)?)
                }
                b'>' => {
                    let n = Self::count(&rest)?;
                    Frame::Push(self.frames(n)?)
                }
                b'|' => {
                    let n = Self::count(&rest)?;
                    self.frames(n * 2)?;
                    return self.read_frame();
                }
                other => {
                    return Err(bad(format!(
                        "unknown reply type {:?} in {:?}",
                        other as char,
                        String::from_utf8_lossy(&line)
                    )));
                }
            })
        }

        /// Reads raw bytes until the peer closes the connection or `timeout` passes.
        /// Returns the bytes and whether the connection was closed (EOF or reset).
        pub fn read_until_closed(&mut self, timeout: Duration) -> (Vec<u8>, bool) {
            let deadline = Instant::now() + timeout;
            let mut out = self.reader.buffer().to_vec();
            self.reader.consume(out.len());
            let mut buf = [0u8; 8192];
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    let _ = self.reader.get_ref().set_read_timeout(Some(self.timeout));
                    return (out, false);
                }
                let _ = self.reader.get_ref().set_read_timeout(Some(left));
                match self.reader.get_mut().read(&mut buf) {
                    Ok(0) => return (out, true),
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                        ) => {}
                    Err(_) => return (out, true),
                }
            }
        }
    }
}

/// Runs the node binary with `args` until it exits (bounded by `timeout`), for tests
/// of start-up failures such as bad flags. `GEOCACHE_*` variables are not inherited.
pub fn run_node_to_exit(bin: &Path, args: &[&str], timeout: Duration) -> Output {
    let mut cmd = Command::new(bin);
    cmd.args(args);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("GEOCACHE_") {
            cmd.env_remove(&k);
        }
    }
    run_with_timeout(&mut cmd, None, timeout).unwrap_or_else(|e| panic!("{}: {e}", bin.display()))
}

/// Where Debian's `faketime` package (`libfaketime`) puts the preload library.
pub const LIBFAKETIME_PATHS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
    "/usr/local/lib/faketime/libfaketime.so.1",
];

/// The libfaketime preload library: `$GEOCACHE_LIBFAKETIME` when set, else the first
/// of [`LIBFAKETIME_PATHS`] that exists. `None` when there is none.
pub fn find_libfaketime() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("GEOCACHE_LIBFAKETIME") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    LIBFAKETIME_PATHS.iter().map(PathBuf::from).find(|p| p.is_file())
}

/// The libfaketime preload library; panics with what to install when it is missing
/// (tests that offset clocks need it: `apt-get install faketime`).
pub fn libfaketime() -> PathBuf {
    find_libfaketime().unwrap_or_else(|| {
        panic!(
            "libfaketime is missing (looked at $GEOCACHE_LIBFAKETIME and {LIBFAKETIME_PATHS:?}): \
             install Debian's `faketime` package (apt-get install faketime), which tests/run.sh installs"
        )
    })
}

/// A relative `FAKETIME` value: signed seconds with milliseconds, e.g. `+10.000`.
pub fn faketime_offset(offset_ms: i64) -> String {
    let sign = if offset_ms < 0 { '-' } else { '+' };
    let abs = offset_ms.unsigned_abs();
    format!("{sign}{}.{:03}", abs / 1000, abs % 1000)
}

/// The environment that makes a process's wall clock run `offset_ms` ahead of this
/// machine's (behind when negative), through libfaketime: `LD_PRELOAD` and a relative
/// `FAKETIME` such as `+10.000` (seconds; the clock keeps running at normal speed).
/// Panics when libfaketime is missing (see [`libfaketime`]).
pub fn faketime_env(offset_ms: i64) -> Vec<(OsString, OsString)> {
    let lib = libfaketime();
    vec![
        ("LD_PRELOAD".into(), lib.into_os_string()),
        ("FAKETIME".into(), faketime_offset(offset_ms).into()),
        // Read FAKETIME once: the offset of a process never changes while it runs.
        ("FAKETIME_NO_CACHE".into(), "0".into()),
    ]
}

/// Whether `status` means "killed by `sig`".
pub fn killed_by(status: ExitStatus, sig: i32) -> bool {
    status.signal() == Some(sig)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_timestamps_parse_to_unix_milliseconds() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:01.5Z"), Some(1500));
        assert_eq!(parse_rfc3339_ms("2026-11-26T04:30:00.123Z"), Some(1_795_667_400_123));
        assert_eq!(parse_rfc3339_ms("2026-11-26T05:30:00.123+01:00"), Some(1_795_667_400_123));
        assert_eq!(parse_rfc3339_ms("2026-11-26 04:30:00Z"), None);
        assert_eq!(parse_rfc3339_ms("soon"), None);
    }

    #[test]
    fn keys_are_encoded_as_one_path_segment() {
        assert_eq!(encode_key("a/b c.d"), "a%2Fb%20c%2Ed");
        assert_eq!(encode_key("ü"), "%C3%BC");
        assert_eq!(key_path("k-1_~"), "/v1/keys/k-1_~");
    }

    #[test]
    fn metric_values_are_found_by_exact_sample_name() {
        let text = "# TYPE geocache_keys gauge\ngeocache_keys 3\ngeocache_keys_total 9\ngeocache_resp_commands_total{command=\"get\"} 4\n";
        assert_eq!(metric_value(text, "geocache_keys"), Some(3.0));
        assert_eq!(metric_value(text, "geocache_resp_commands_total{command=\"get\"}"), Some(4.0));
        assert_eq!(metric_value(text, "geocache_nope"), None);
    }

    #[test]
    fn random_loopback_addresses_avoid_127_0_0_1() {
        for _ in 0..100 {
            let (ip, addrs) = pick_addresses();
            assert_ne!(ip.octets()[1], 0);
            assert!(addrs.iter().all(|a| a.ip() == IpAddr::V4(ip) && a.port() != 0));
        }
    }

    #[test]
    fn the_http_client_reads_chunked_and_sized_bodies() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let r = http::read_response(&mut &raw[..], false).unwrap();
        assert_eq!(r.body, b"abcde");
        let raw = b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\nX-A: b\r\n\r\n{}";
        let r = http::read_response(&mut &raw[..], false).unwrap();
        assert_eq!((r.status, r.header("x-a"), &r.body[..]), (404, Some("b"), &b"{}"[..]));
    }

    #[test]
    fn faketime_offsets_are_written_as_signed_seconds() {
        assert_eq!(faketime_offset(10_000), "+10.000");
        assert_eq!(faketime_offset(-250), "-0.250");
        assert_eq!(faketime_offset(0), "+0.000");
    }

    #[test]
    fn timed_out_commands_are_killed() {
        let mut cmd = Command::new("sleep");
        cmd.arg("5");
        let e = run_with_timeout(&mut cmd, None, Duration::from_millis(100)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }
}
