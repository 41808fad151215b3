//! `geocache-node fleet` as a newcomer runs it: it starts every node, prints every
//! endpoint, replicates across its simulated WAN, obeys link commands on stdin,
//! reports a node that dies, and leaves no process behind — whether it is stopped
//! with SIGTERM or killed.

use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use geocache_node::fleet::{FleetArgs, FleetPlan, fleet_command_line, plan};
use geocache_tests::{http, key_path, metric_value, node_binary, random_u64, wait_until};

/// A `geocache-node fleet` process with its output captured.
struct FleetProcess {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    plan: FleetPlan,
}

fn capture(mut pipe: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let out = Arc::new(Mutex::new(String::new()));
    let sink = out.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    out
}

/// Pids of the live (not zombie) processes whose parent is `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
            // Fields after the command name, which is in parentheses: state, ppid, ...
            let Some(after) = stat.rsplit_once(')').map(|(_, rest)| rest) else { return false };
            let mut fields = after.split_whitespace();
            let state = fields.next().unwrap_or("Z");
            let ppid = fields.next().and_then(|p| p.parse::<u32>().ok());
            state != "Z" && ppid == Some(parent)
        })
        .collect()
}

/// Whether `pid` is gone (or a zombie nobody reaped yet).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a process this test started (or its child, whose pid we
    // read a moment ago and check for liveness around the call).
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

impl FleetProcess {
    /// Starts `geocache-node fleet` with `args` (after `fleet`) on a random
    /// `127.<net>.x.y` block and random ports, and waits until it printed its endpoints.
    fn start(args: &[&str]) -> FleetProcess {
        // The ports are fixed per fleet, so another process may hold one: retry elsewhere.
        for _ in 0..3 {
            match FleetProcess::try_start(args) {
                Ok(fleet) => return fleet,
                Err(stderr) => eprintln!("an address of the fleet was busy; trying others:\n{stderr}"),
            }
        }
        panic!("geocache-node fleet found busy addresses three times in a row");
    }

    /// `Err(stderr)` when the fleet could not bind an address (worth a retry).
    fn try_start(args: &[&str]) -> Result<FleetProcess, String> {
        let r = random_u64();
        let net = (r % 250 + 2) as u8;
        let base = 20_000 + (r >> 8) % 30_000;
        let ports = [base.to_string(), (base + 1).to_string(), (base + 2).to_string()];
        let mut all: Vec<String> = ["fleet", "--net", &net.to_string()].iter().map(|s| s.to_string()).collect();
        for (flag, port) in ["--http-port", "--resp-port", "--peer-port"].iter().zip(&ports) {
            all.push(flag.to_string());
            all.push(port.clone());
        }
        all.extend(args.iter().map(|s| s.to_string()));
        let fleet_args = FleetArgs::parse_from(&all);
        let opts = fleet_args.clone().validate().expect("valid fleet flags");
        let plan = plan(&opts);
        let mut cmd = Command::new(node_binary());
        cmd.args(fleet_command_line(&fleet_args))
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: prctl is async-signal-safe: the fleet dies with the test's thread.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("start geocache-node fleet");
        let stdin = child.stdin.take();
        let stdout = capture(child.stdout.take().expect("stdout is piped"));
        let stderr = capture(child.stderr.take().expect("stderr is piped"));
        let mut fleet = FleetProcess { child: Some(child), stdin, stdout, stderr, plan };
        let started = Instant::now();
        let ready = wait_until(Duration::from_secs(60), || {
            fleet.stdout().contains("Try it:")
                || fleet.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_some())
        });
        let exited = fleet.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
        if let Some(status) = exited {
            let err = fleet.stderr();
            if err.contains("unexpected argument 'fleet'") || err.contains("unrecognized subcommand") {
                panic!("geocache-node has no `fleet` subcommand yet: wire geocache_node::fleet into main.rs\n{err}");
            }
            if err.contains("Address already in use") || err.contains("address already in use") {
                fleet.child = None;
                return Err(err);
            }
            panic!("geocache-node fleet exited ({status}) before it was ready; stderr:\n{err}");
        }
        assert!(ready, "geocache-node fleet printed no endpoints within 60 s; stderr:\n{}", fleet.stderr());
        eprintln!("fleet ready in {:?}", started.elapsed());
        Ok(fleet)
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("the fleet is running")
    }
    fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }
    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Types a command on the fleet's stdin.
    fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        stdin.write_all(format!("{line}\n").as_bytes()).and_then(|_| stdin.flush()).expect("write to the fleet");
    }

    /// Waits for the fleet to exit, at most `timeout`.
    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url_of(&self, node: &str) -> std::net::SocketAddr {
        self.plan.nodes.iter().find(|n| n.node_id == node).map(|n| n.http).expect("a node of the plan")
    }
}

impl Drop for FleetProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let nodes = children_of(child.id());
            let _ = child.kill();
            let _ = child.wait();
            for pid in nodes {
                if !gone(pid) {
                    signal(pid, libc::SIGKILL);
                }
            }
            if std::thread::panicking() {
                eprintln!("----- fleet stdout -----\n{}\n----- fleet stderr -----\n{}", self.stdout(), self.stderr());
            }
        }
    }
}

#[test]
fn the_fleet_starts_every_region_prints_its_endpoints_replicates_and_stops_cleanly_on_sigterm() {
    let mut fleet = FleetProcess::start(&["--regions", "eu,us,ap", "--nodes-per-region", "2", "--wan-delay", "20ms"]);
    let out = fleet.stdout();
    for node in &fleet.plan.nodes {
        assert!(out.contains(&node.node_id) && out.contains(&node.http_url()), "{} missing from:\n{out}", node.node_id);
        assert!(out.contains(&node.redis_cli()), "{} missing from:\n{out}", node.redis_cli());
    }
    assert!(out.contains("/v1/status"), "no status example in:\n{out}");
    let nodes = children_of(fleet.pid());
    assert_eq!(nodes.len(), 6, "the fleet runs {} child processes: {nodes:?}", nodes.len());

    // A write in eu is readable in us and ap, through the fleet's wan links.
    let put = http::request(
        fleet.url_of("eu-0"),
        "PUT",
        &key_path("greeting"),
        &[("Content-Type", "application/json")],
        br#"{"hello":"from eu"}"#,
        Duration::from_secs(10),
    )
    .expect("PUT on eu-0");
    assert!(matches!(put.status, 200 | 201), "{} {}", put.status, put.text());
    for reader in ["us-1", "ap-0"] {
        let addr = fleet.url_of(reader);
        let seen = wait_until(Duration::from_secs(15), || {
            http::request(addr, "GET", &key_path("greeting"), &[], b"", Duration::from_secs(5))
                .is_ok_and(|r| r.status == 200 && r.text() == r#"{"hello":"from eu"}"#)
        });
        assert!(seen, "the write in eu is not readable on {reader}");
    }

    // Link commands on stdin.
    fleet.type_line("cut eu us");
    assert!(
        wait_until(Duration::from_secs(5), || fleet.stdout().contains("cut: eu -> us, us -> eu")),
        "{}",
        fleet.stdout()
    );
    fleet.type_line("heal");
    assert!(wait_until(Duration::from_secs(5), || fleet.stdout().contains("healed every link")), "{}", fleet.stdout());

    // SIGTERM: every node stops, then the fleet exits 0.
    signal(fleet.pid(), libc::SIGTERM);
    let status = fleet.wait_exit(Duration::from_secs(30)).expect("the fleet exits within 30 s of SIGTERM");
    assert!(status.success(), "the fleet exited with {status}; stderr:\n{}", fleet.stderr());
    assert!(nodes.iter().all(|&p| gone(p)), "nodes outlived the fleet: {nodes:?}");
    let err = fleet.stderr();
    assert_eq!(err.matches("node stopped").count(), 6, "not every node was reported stopped:\n{err}");
}

#[test]
fn a_node_that_dies_is_reported_and_the_fleet_then_exits_with_failure() {
    let mut fleet = FleetProcess::start(&["--regions", "eu,us", "--nodes-per-region", "1", "--wan-delay", "5ms"]);
    let nodes = children_of(fleet.pid());
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    signal(nodes[0], libc::SIGKILL);
    assert!(
        wait_until(Duration::from_secs(10), || fleet.stderr().contains("node exited unexpectedly")),
        "the dead node was not reported:\n{}",
        fleet.stderr()
    );
    signal(fleet.pid(), libc::SIGTERM);
    let status = fleet.wait_exit(Duration::from_secs(30)).expect("the fleet exits within 30 s of SIGTERM");
    assert_eq!(status.code(), Some(1), "a fleet that lost a node must not exit 0: {status}");
    assert!(fleet.stderr().contains("nodes exited unexpectedly"), "{}", fleet.stderr());
    assert!(nodes.iter().all(|&p| gone(p)), "nodes outlived the fleet: {nodes:?}");
}

#[test]
fn a_fleet_killed_with_sigkill_leaves_no_orphan_node() {
    let mut fleet = FleetProcess::start(&["--regions", "eu,us", "--nodes-per-region", "1", "--wan-delay", "5ms"]);
    let nodes = children_of(fleet.pid());
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    signal(fleet.pid(), libc::SIGKILL);
    let status = fleet.wait_exit(Duration::from_secs(10)).expect("the fleet dies at once on SIGKILL");
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert!(wait_until(Duration::from_secs(10), || nodes.iter().all(|&p| gone(p))), "orphans left: {nodes:?}");
}

#[test]
fn the_fleet_runs_with_mutual_tls_between_its_nodes() {
    let base = tempfile::tempdir().expect("a base dir");
    let base_dir = base.path().to_str().expect("a utf-8 temp path").to_string();
    let mut fleet = FleetProcess::start(&[
        "--regions",
        "eu,us",
        "--nodes-per-region",
        "1",
        "--wan-delay",
        "5ms",
        "--tls",
        "--base-dir",
        &base_dir,
    ]);
    assert!(fleet.stdout().contains("Peer links use mutual TLS"), "{}", fleet.stdout());
    for file in ["ca.crt", "eu.crt", "eu.key", "us.crt", "us.key"] {
        assert!(base.path().join("tls").join(file).is_file(), "{file} missing");
    }
    let put = http::request(fleet.url_of("eu-0"), "PUT", &key_path("tls"), &[], b"1", Duration::from_secs(10))
        .expect("PUT on eu-0");
    assert!(matches!(put.status, 200 | 201), "{} {}", put.status, put.text());
    let us = fleet.url_of("us-0");
    let seen = wait_until(Duration::from_secs(15), || {
        http::request(us, "GET", &key_path("tls"), &[], b"", Duration::from_secs(5)).is_ok_and(|r| r.status == 200)
    });
    assert!(seen, "the write in eu did not reach us over mutual tls");
    let metrics = http::request(us, "GET", "/metrics", &[], b"", Duration::from_secs(5)).expect("metrics").text();
    assert!(metrics.contains("files=\"peer\""), "us-0 does not run with peer tls:\n{metrics}");
    // Once the links are up no handshake fails. (While the nodes start, a link dialled
    // through a WAN proxy whose node is not listening yet is closed mid-handshake and
    // counted, so the count need not be 0 from the start.)
    let failures = |text: &str| metric_value(text, "geocache_peer_tls_failures_total");
    let before = failures(&metrics);
    assert!(before.is_some(), "no geocache_peer_tls_failures_total:\n{metrics}");
    let put = http::request(fleet.url_of("eu-0"), "PUT", &key_path("tls2"), &[], b"2", Duration::from_secs(10))
        .expect("PUT on eu-0");
    assert!(matches!(put.status, 200 | 201), "{} {}", put.status, put.text());
    let seen = wait_until(Duration::from_secs(15), || {
        http::request(us, "GET", &key_path("tls2"), &[], b"", Duration::from_secs(5)).is_ok_and(|r| r.status == 200)
    });
    assert!(seen, "the second write in eu did not reach us over mutual tls");
    let after = http::request(us, "GET", "/metrics", &[], b"", Duration::from_secs(5)).expect("metrics").text();
    assert_eq!(failures(&after), before, "a tls handshake failed between linked nodes:\n{after}");
    signal(fleet.pid(), libc::SIGTERM);
    let status = fleet.wait_exit(Duration::from_secs(30)).expect("the fleet exits within 30 s of SIGTERM");
    assert!(status.success(), "{status}: {}", fleet.stderr());
}
