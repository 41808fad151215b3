//! A real Kubernetes API server for process tests of the operator: etcd and
//! kube-apiserver v1.37.2 (built once by `tests/controlplane/build.sh`, cached under
//! `$HOME`) on a random loopback address `127.x.y.z` with ephemeral ports, with its own CA
//! and a static admin token. No controller manager, scheduler or kubelet: the tests that
//! use it are about what the operator does with the API, not about pods running.
//!
//! Unlike the end-to-end tier (`tests/controlplane/e2e.sh`), it needs neither root nor a
//! network namespace, so it runs in `cargo test --workspace`. When the binaries are not
//! built yet, [`ApiServer::start`] runs `build.sh` (a few minutes the first time; it needs
//! Go and the Go module proxy) and fails with what to do when that fails.
//!
//! Every process started here ([`Process`]) is killed when its handle is dropped and,
//! through `PR_SET_PDEATHSIG`, when the thread that started it dies: start them from the
//! test's own thread. On a panic their logs' last lines are printed.

use std::fs::OpenOptions;
use std::io::{self, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::{random_u64, run_with_timeout};

/// How long the API server may take to answer `/readyz` after it starts.
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Hard bound of `build.sh` (a cold build of etcd and kube-apiserver takes minutes).
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(45 * 60);
/// How long [`Process::stop`] waits after SIGTERM before it sends SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of a process's log is printed when a test fails.
const LOG_TAIL_BYTES: usize = 16 * 1024;

/// The directory of the control-plane binaries (`etcd`, `kube-apiserver`, ...), built by
/// `tests/controlplane/build.sh` when missing (once per test executable). Panics with what
/// to do when the build fails.
pub fn controlplane_binaries() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("controlplane/build.sh");
        let mut cmd = Command::new(&script);
        let out = run_with_timeout(&mut cmd, None, BUILD_TIMEOUT)
            .unwrap_or_else(|e| panic!("{} did not run: {e}", script.display()));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{} failed ({}): the API-server tests need etcd and kube-apiserver v1.37.2 built with Go \
             (`go` on the PATH and the Go module proxy reachable once; then they are cached under \
             ~/.cache/geocache). Its output:\n{stderr}",
            script.display(),
            out.status
        );
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        for bin in ["etcd", "kube-apiserver"] {
            assert!(
                dir.join(bin).is_file(),
                "{} did not build {bin} into {}:\n{stderr}",
                script.display(),
                dir.display()
            );
        }
        dir
    })
    .clone()
}

/// The `geocache-operator` binary next to the running test executable
/// (`target/<profile>/geocache-operator`, which `cargo test --workspace` builds), or
/// `$GEOCACHE_OPERATOR_BIN`. When the operator's sources are newer than the binary it is
/// rebuilt first, so that a test never runs old code.
pub fn operator_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("GEOCACHE_OPERATOR_BIN") {
            let bin = PathBuf::from(bin);
            assert!(bin.is_file(), "GEOCACHE_OPERATOR_BIN={} is not a file", bin.display());
            return bin;
        }
        let profile_dir = crate::profile_dir();
        let bin = profile_dir.join("geocache-operator");
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
        let stale = built.is_none_or(|built| {
            newest_mtime(&[root.join("operator/src"), root.join("operator/Cargo.toml"), root.join("node/src")])
                .is_some_and(|newest| newest > built)
        });
        if stale {
            let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
                Some("debug") | None => "dev",
                Some(other) => other,
            };
            eprintln!(
                "geocache-tests: {} is missing or older than its sources: building it (cargo build -p geocache-operator --profile {profile})",
                bin.display()
            );
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "-q", "-p", "geocache-operator", "--bin", "geocache-operator", "--profile", profile])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status();
            assert!(
                status.as_ref().is_ok_and(|s| s.success()) && bin.is_file(),
                "building geocache-operator failed ({status:?}); run `cargo build -p geocache-operator`"
            );
        }
        bin
    })
    .clone()
}

/// The newest modification time of the files under `paths`.
fn newest_mtime(paths: &[PathBuf]) -> Option<std::time::SystemTime> {
    let mut newest = None;
    let mut todo: Vec<PathBuf> = paths.to_vec();
    while let Some(path) = todo.pop() {
        let Ok(meta) = std::fs::metadata(&path) else { continue };
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                todo.extend(entries.flatten().map(|e| e.path()));
            }
        } else if let Ok(modified) = meta.modified() {
            newest = newest.max(Some(modified));
        }
    }
    newest
}

/// A random loopback IP `127.x.y.z` (never `127.0.x.x`) on which `n` ports were free a
/// moment ago (bound to port 0 together, then released).
pub fn pick_loopback_ports(n: usize) -> (Ipv4Addr, Vec<SocketAddr>) {
    let mut last_err = None;
    for _ in 0..20 {
        let r = random_u64();
        let (x, y, z) = ((r & 0xff) as u8, ((r >> 8) & 0xff) as u8, ((r >> 16) & 0xff) as u8);
        if x == 0 || x == 255 || z == 0 || z == 255 {
            continue;
        }
        let ip = Ipv4Addr::new(127, x, y, z);
        let bound: io::Result<Vec<TcpListener>> = (0..n).map(|_| TcpListener::bind((ip, 0))).collect();
        match bound.and_then(|ls| ls.iter().map(|l| l.local_addr()).collect::<io::Result<Vec<_>>>()) {
            Ok(addrs) => return (ip, addrs),
            Err(e) => last_err = Some(e),
        }
    }
    panic!("cannot bind any port on a random 127.x.y.z address: {last_err:?}");
}

/// A child process whose stdout and stderr go to a log file; killed when dropped.
pub struct Process {
    name: String,
    child: Child,
    log_path: PathBuf,
    exit: Option<ExitStatus>,
}

impl Process {
    /// Starts `cmd` with its output appended to `log_path`. Panics when it cannot start.
    pub fn spawn(name: &str, mut cmd: Command, log_path: &Path) -> Process {
        let log = OpenOptions::new().create(true).append(true).open(log_path).expect("open the process log");
        let out = log.try_clone().expect("clone the log file handle");
        cmd.stdin(Stdio::null()).stdout(Stdio::from(out)).stderr(Stdio::from(log));
        // SAFETY: prctl is async-signal-safe; it makes the kernel SIGKILL the child when
        // the thread that started it dies, so even a killed test run leaks no process.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        Process { name: name.to_string(), child, log_path: log_path.to_path_buf(), exit: None }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    /// The last [`LOG_TAIL_BYTES`] of the log.
    pub fn log_tail(&self) -> String {
        let log = self.log();
        let mut start = log.len().saturating_sub(LOG_TAIL_BYTES);
        while !log.is_char_boundary(start) {
            start += 1;
        }
        log[start..].to_string()
    }

    /// The exit status, once it exited (without waiting).
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    pub fn is_running(&mut self) -> bool {
        self.exit_status().is_none()
    }

    /// SIGTERM, then SIGKILL after [`STOP_TIMEOUT`]; returns how it ended.
    pub fn stop(&mut self) -> ExitStatus {
        if let Some(status) = self.exit_status() {
            return status;
        }
        // SAFETY: kill(2) on our own child, which has not been reaped yet.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = self.exit_status() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill()
    }

    /// SIGKILL; returns how it ended.
    pub fn kill(&mut self) -> ExitStatus {
        if let Some(status) = self.exit_status() {
            return status;
        }
        let _ = self.child.kill();
        let status = self.child.wait().unwrap_or_else(|e| panic!("wait for {}: {e}", self.name));
        self.exit = Some(status);
        status
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let running = self.is_running();
        if running {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "----- log of {} ({}; {}) -----\n{}\n----- end of log -----",
                self.name,
                self.log_path.display(),
                if running { "killed by the test".to_string() } else { format!("{:?}", self.exit) },
                self.log_tail()
            );
        }
    }
}

/// etcd and kube-apiserver on a random loopback IP, with a CA of their own and an admin
/// token. Dropping it stops both and removes their directory (kept with
/// `GEOCACHE_TESTS_KEEP=1`).
pub struct ApiServer {
    addr: SocketAddr,
    token: String,
    ca_pem: String,
    apiserver: Process,
    etcd: Process,
    dir: Option<tempfile::TempDir>,
}

impl ApiServer {
    /// Starts etcd and kube-apiserver and waits until `/readyz` answers 200 (at most
    /// [`READY_TIMEOUT`]). Panics with their logs when they do not come up.
    pub fn start() -> ApiServer {
        let bin = controlplane_binaries();
        let dir =
            tempfile::Builder::new().prefix("geocache-apiserver-").tempdir().expect("create a temporary directory");
        let d = dir.path();
        let (ip, ports) = pick_loopback_ports(3);
        let (etcd_client, etcd_peer, addr) = (ports[0], ports[1], ports[2]);
        make_pki(d, ip);
        let token = format!("{:016x}{:016x}", random_u64(), random_u64());
        std::fs::write(d.join("tokens.csv"), format!("{token},admin,admin,system:masters\n"))
            .expect("write tokens.csv");
        let ca_pem = std::fs::read_to_string(d.join("ca.crt")).expect("read ca.crt");
        std::fs::create_dir(d.join("etcd")).expect("create the etcd directory");
        std::fs::set_permissions(d.join("etcd"), std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .expect("make the etcd directory private");

        let mut cmd = Command::new(bin.join("etcd"));
        cmd.args(["--name", "test", "--log-level", "warn", "--data-dir"])
            .arg(d.join("etcd"))
            .args(["--listen-client-urls", &format!("http://{etcd_client}")])
            .args(["--advertise-client-urls", &format!("http://{etcd_client}")])
            .args(["--listen-peer-urls", &format!("http://{etcd_peer}")])
            .args(["--initial-advertise-peer-urls", &format!("http://{etcd_peer}")])
            .args(["--initial-cluster", &format!("test=http://{etcd_peer}")]);
        let etcd = Process::spawn("etcd", cmd, &d.join("etcd.log"));

        let mut cmd = Command::new(bin.join("kube-apiserver"));
        cmd.args(["--etcd-servers", &format!("http://{etcd_client}")])
            .args(["--bind-address", &ip.to_string(), "--advertise-address", &ip.to_string()])
            .args(["--secure-port", &addr.port().to_string()])
            .arg("--tls-cert-file")
            .arg(d.join("apiserver.crt"))
            .arg("--tls-private-key-file")
            .arg(d.join("apiserver.key"))
            .arg("--token-auth-file")
            .arg(d.join("tokens.csv"))
            .args(["--authorization-mode", "RBAC"])
            .args(["--service-account-issuer", "https://kubernetes.default.svc"])
            .arg("--service-account-key-file")
            .arg(d.join("sa.pub"))
            .arg("--service-account-signing-key-file")
            .arg(d.join("sa.key"))
            .args(["--service-cluster-ip-range", "10.96.0.0/16"])
            // A loopback advertise address is refused by the endpoint reconciler, which
            // publishes the `kubernetes` Service's endpoints: nothing here needs them.
            .args(["--endpoint-reconciler-type", "none"]);
        let apiserver = Process::spawn("kube-apiserver", cmd, &d.join("kube-apiserver.log"));

        let mut server = ApiServer { addr, token, ca_pem, apiserver, etcd, dir: Some(dir) };
        server.wait_ready();
        server
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last = String::new();
        while Instant::now() < deadline {
            assert!(self.etcd.is_running(), "etcd exited before the API server was ready:\n{}", self.etcd.log_tail());
            assert!(
                self.apiserver.is_running(),
                "kube-apiserver exited before it was ready:\n{}",
                self.apiserver.log_tail()
            );
            match self.curl("/readyz") {
                Ok(body) if body.trim() == "ok" => return,
                Ok(body) => last = body,
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!(
            "the API server at {} was not ready within {READY_TIMEOUT:?} (last: {last}); its log:\n{}",
            self.addr,
            self.apiserver.log_tail()
        );
    }

    /// `GET path` with curl (the harness's own HTTP client speaks no TLS).
    fn curl(&self, path: &str) -> Result<String, String> {
        let ca = self.dir().join("ca.crt");
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-m", "5", "--cacert"])
            .arg(ca)
            .args(["-H", &format!("Authorization: Bearer {}", self.token)])
            .arg(format!("https://{}{path}", self.addr));
        let out = run_with_timeout(&mut cmd, None, Duration::from_secs(10)).map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn dir(&self) -> &Path {
        self.dir.as_ref().map(|d| d.path()).expect("the API server's directory")
    }

    /// Where the API server listens (`127.x.y.z:port`; its certificate is for `127.x.y.z`,
    /// so a proxy on the same IP is trusted as the API server).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A kubeconfig for the admin, with the server at `server` (the API server itself,
    /// or a proxy in front of it on the same IP) and `namespace` as its default.
    pub fn kubeconfig(&self, server: SocketAddr, namespace: &str) -> String {
        use std::fmt::Write as _;
        let ca = base64(self.ca_pem.as_bytes());
        let mut out = String::new();
        let _ = write!(
            out,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: https://{server}\n    \
             certificate-authority-data: {ca}\nusers:\n- name: admin\n  user:\n    token: {}\ncontexts:\n- name: test\n  \
             context:\n    cluster: test\n    user: admin\n    namespace: {namespace}\ncurrent-context: test\n",
            self.token
        );
        out
    }

    /// Writes [`kubeconfig`](Self::kubeconfig) into the API server's directory as `name`.
    pub fn write_kubeconfig(&self, name: &str, server: SocketAddr, namespace: &str) -> PathBuf {
        let path = self.dir().join(name);
        std::fs::write(&path, self.kubeconfig(server, namespace)).expect("write a kubeconfig");
        path
    }

    /// A client of the API server itself (not through any proxy).
    pub async fn client(&self) -> kube::Client {
        let kubeconfig = kube::config::Kubeconfig::from_yaml(&self.kubeconfig(self.addr, "default"))
            .expect("parse the test kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
            .await
            .expect("a client configuration from the test kubeconfig");
        kube::Client::try_from(config).expect("a kubernetes client")
    }

    /// A directory for the test's own files (operator logs, kubeconfigs), removed with
    /// the API server.
    pub fn work_dir(&self) -> &Path {
        self.dir()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.apiserver.stop();
        self.etcd.stop();
        if std::thread::panicking()
            && std::env::var_os("GEOCACHE_TESTS_KEEP").is_some()
            && let Some(dir) = self.dir.take()
        {
            eprintln!("geocache-tests: kept {}", dir.keep().display());
        }
    }
}

/// A CA, the API server's certificate for `ip` signed by it, and the service-account key
/// pair, made with the openssl command (as `tests/controlplane/up.sh` does).
fn make_pki(d: &Path, ip: Ipv4Addr) {
    let run = |args: &[&str]| {
        let mut cmd = Command::new("openssl");
        cmd.args(args).current_dir(d);
        match run_with_timeout(&mut cmd, None, Duration::from_secs(60)) {
            Ok(out) if out.status.success() => {}
            Ok(out) => panic!("openssl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr)),
            Err(e) => panic!("openssl {args:?} did not run (tests/run.sh installs it): {e}"),
        }
    };
    run(&["genrsa", "-out", "sa.key", "2048"]);
    run(&["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"]);
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=geocache-test-ca",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "apiserver.key",
        "-out",
        "apiserver.csr",
        "-subj",
        "/CN=kube-apiserver",
    ]);
    let mut ext = std::fs::File::create(d.join("apiserver.ext")).expect("create apiserver.ext");
    writeln!(ext, "subjectAltName=IP:{ip},DNS:localhost,DNS:kubernetes,DNS:kubernetes.default")
        .and_then(|()| writeln!(ext, "keyUsage=critical,digitalSignature,keyEncipherment"))
        .and_then(|()| writeln!(ext, "extendedKeyUsage=serverAuth"))
        .expect("write apiserver.ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "apiserver.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "apiserver.crt",
        "-days",
        "2",
        "-extfile",
        "apiserver.ext",
    ]);
}

/// Standard base64 with padding (kubeconfig `*-data` fields).
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet_with_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
    }
}
