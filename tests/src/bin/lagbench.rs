//! `lagbench`: replication lag through the userspace WAN proxy, GeoCache next to a
//! Redis replica behind the same proxy, measured the same way.
//!
//! For each system: a writer and a reader on the two sides of a proxy that delays every
//! byte by the one-way delay. A background client keeps writing at `--load` writes/s;
//! a probe writes a key on one side and polls the other side until it appears. The lag
//! of a sample is the time from sending the write to seeing it on the other side (the
//! poll adds at most one loopback round trip). Prints a Markdown table and a JSON line.
//!
//! It also measures write throughput (`redis-benchmark -t set -P 16`) of a node with
//! two remote peers attached through the proxy, next to a standalone node.
//!
//! Usage: lagbench --node-bin PATH [--delay-ms 20] [--samples 300] [--load 2000]
//!                 [--redis-server redis-server] [--skip-redis] [--writes 500000]

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use geocache_node::fleet::wan_proxy::{WanProxy, WanProxyHandle};
use geocache_tests::resp::{Frame, RespConn};
use geocache_tests::{NodeAddrs, NodeOptions, NodeProcess, wait_until};

struct Args {
    node_bin: String,
    delay: Duration,
    samples: usize,
    load: u64,
    redis_server: String,
    skip_redis: bool,
    writes: u64,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        node_bin: String::new(),
        delay: Duration::from_millis(20),
        samples: 300,
        load: 2000,
        redis_server: "redis-server".into(),
        skip_redis: false,
        writes: 500_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--node-bin" => a.node_bin = value()?,
            "--delay-ms" => a.delay = Duration::from_millis(value()?.parse()?),
            "--samples" => a.samples = value()?.parse()?,
            "--load" => a.load = value()?.parse()?,
            "--redis-server" => a.redis_server = value()?,
            "--skip-redis" => a.skip_redis = true,
            "--writes" => a.writes = value()?.parse()?,
            other => bail!("unknown flag {other}"),
        }
    }
    if a.node_bin.is_empty() {
        bail!("--node-bin is required");
    }
    Ok(a)
}

fn free_addr(ip: std::net::Ipv4Addr) -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind((ip, 0))?.local_addr()?)
}

/// Lag statistics in milliseconds.
struct Stats {
    p50: f64,
    p99: f64,
    max: f64,
    n: usize,
}

fn stats(mut lags: Vec<Duration>) -> Stats {
    lags.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let at = |q: f64| ms(lags[((lags.len() as f64 * q).ceil() as usize).saturating_sub(1).min(lags.len() - 1)]);
    Stats { p50: at(0.50), p99: at(0.99), max: ms(*lags.last().unwrap_or(&Duration::ZERO)), n: lags.len() }
}

fn is_null(f: &Frame) -> bool {
    matches!(f, Frame::Null | Frame::NullBulk | Frame::NullArray)
}

/// Runs the probe (and the background load) from `write` to `read`.
fn measure(write: SocketAddr, read: SocketAddr, samples: usize, load: u64, tag: &str) -> anyhow::Result<Stats> {
    let stop = Arc::new(AtomicBool::new(false));
    let loader = {
        let stop = stop.clone();
        std::thread::spawn(move || -> anyhow::Result<()> {
            let mut c = RespConn::connect(write, Duration::from_secs(5))?;
            let value = "v".repeat(200);
            let started = Instant::now();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                c.cmd(&["SET", &format!("load:{}", i % 100_000), &value])?;
                i += 1;
                // Pace to `load` writes per second.
                let due = Duration::from_secs_f64(i as f64 / load.max(1) as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            Ok(())
        })
    };
    let mut w = RespConn::connect(write, Duration::from_secs(5))?;
    let mut r = RespConn::connect(read, Duration::from_secs(5))?;
    let mut lags = Vec::with_capacity(samples);
    let deadline = Instant::now() + Duration::from_secs(120);
    for i in 0..samples {
        let key = format!("probe:{tag}:{i}");
        let t0 = Instant::now();
        w.cmd(&["SET", &key, "1"])?;
        loop {
            if !is_null(&r.cmd(&["GET", &key])?) {
                break;
            }
            if Instant::now() > deadline {
                bail!("{tag}: sample {i} never arrived");
            }
        }
        lags.push(t0.elapsed());
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Relaxed);
    loader.join().map_err(|_| anyhow::anyhow!("load thread panicked"))??;
    Ok(stats(lags))
}

fn geocache(args: &Args) -> anyhow::Result<Stats> {
    let bin = std::path::PathBuf::from(&args.node_bin);
    let (a, b) = (NodeAddrs::pick(), NodeAddrs::pick());
    // Each side reaches the other only through a proxy that delays every byte.
    let to_a: WanProxyHandle = WanProxy::spawn(free_addr(b.ip)?, vec![a.peer], args.delay)?;
    let to_b: WanProxyHandle = WanProxy::spawn(free_addr(a.ip)?, vec![b.peer], args.delay)?;
    let opts = |id: &str, region: &str, addrs: NodeAddrs, peer: SocketAddr| {
        NodeOptions::new().node_id(id).region(region).addrs(addrs).args(["--peers".to_string(), peer.to_string()])
    };
    let na = NodeProcess::start(&bin, opts("eu-0", "eu", a, to_b.addr()));
    let nb = NodeProcess::start(&bin, opts("us-0", "us", b, to_a.addr()));
    let linked = wait_until(Duration::from_secs(20), || {
        let ups =
            |n: &NodeProcess| n.status_doc()["peers"].as_array().is_some_and(|p| p.iter().any(|p| p["state"] == "up"));
        ups(&na) && ups(&nb)
    });
    if !linked {
        bail!("the two geocache nodes did not link up");
    }
    measure(na.resp_addr(), nb.resp_addr(), args.samples, args.load, "geocache")
}

/// SET throughput of `redis-benchmark -P 16` against `addr`, in requests per second.
fn set_throughput(addr: SocketAddr, writes: u64) -> anyhow::Result<f64> {
    let out = Command::new("redis-benchmark")
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(["-t", "set", "-P", "16", "-c", "50", "-d", "200", "-r", "100000", "-q", "-n", &writes.to_string()])
        .output()
        .context("cannot run redis-benchmark")?;
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "\n");
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("SET: "))
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|n| n.parse::<f64>().ok())
        .next_back()
        .with_context(|| format!("no throughput in redis-benchmark's output: {text}"))
}

/// CPU seconds (user + system) a process used so far, from /proc.
fn cpu_seconds(pid: Option<u32>) -> f64 {
    let Some(pid) = pid else { return 0.0 };
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // Fields after the command name (which is in parentheses and may hold spaces).
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return 0.0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// Throughput and the writer's CPU per write.
struct Throughput {
    per_s: f64,
    cpu_us_per_write: f64,
}

fn measured(node: &NodeProcess, writes: u64) -> anyhow::Result<Throughput> {
    let before = cpu_seconds(node.pid());
    let per_s = set_throughput(node.resp_addr(), writes)?;
    let cpu = cpu_seconds(node.pid()) - before;
    Ok(Throughput { per_s, cpu_us_per_write: cpu * 1e6 / writes as f64 })
}

/// Write throughput of a standalone node, and of a node pushing to two remote peers.
fn throughput(args: &Args) -> anyhow::Result<(Throughput, Throughput)> {
    let bin = std::path::PathBuf::from(&args.node_bin);
    let alone = NodeProcess::start(&bin, NodeOptions::new().node_id("alone-0").region("eu"));
    let standalone = measured(&alone, args.writes)?;
    drop(alone);
    let (a, b, c) = (NodeAddrs::pick(), NodeAddrs::pick(), NodeAddrs::pick());
    let a_to_b = WanProxy::spawn(free_addr(a.ip)?, vec![b.peer], args.delay)?;
    let a_to_c = WanProxy::spawn(free_addr(a.ip)?, vec![c.peer], args.delay)?;
    let to_a = WanProxy::spawn(free_addr(b.ip)?, vec![a.peer], args.delay)?;
    let peers = |list: &[SocketAddr]| list.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",");
    let start = |id: &str, region: &str, addrs: NodeAddrs, seeds: String| {
        NodeProcess::start(
            &bin,
            NodeOptions::new().node_id(id).region(region).addrs(addrs).args(["--peers".to_string(), seeds]),
        )
    };
    let na = start("eu-0", "eu", a, peers(&[a_to_b.addr(), a_to_c.addr()]));
    let _nb = start("us-0", "us", b, peers(&[to_a.addr()]));
    let _nc = start("ap-0", "ap", c, peers(&[to_a.addr()]));
    let linked = wait_until(Duration::from_secs(20), || {
        na.status_doc()["peers"].as_array().is_some_and(|p| p.iter().filter(|p| p["state"] == "up").count() == 2)
    });
    if !linked {
        bail!("the writer did not link up with its two remote peers");
    }
    let replicated = measured(&na, args.writes)?;
    Ok((standalone, replicated))
}

struct Redis(Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis(args: &Args) -> anyhow::Result<Stats> {
    let (a, b) = (NodeAddrs::pick(), NodeAddrs::pick());
    let primary_addr = a.resp;
    let replica_addr = b.resp;
    let start = |addr: SocketAddr, extra: &[String]| -> anyhow::Result<Redis> {
        let mut cmd = Command::new(&args.redis_server);
        cmd.args([
            "--bind",
            &addr.ip().to_string(),
            "--port",
            &addr.port().to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        Ok(Redis(cmd.spawn().with_context(|| format!("cannot start {}", args.redis_server))?))
    };
    let _primary = start(primary_addr, &[])?;
    let to_primary = WanProxy::spawn(free_addr(b.ip)?, vec![primary_addr], args.delay)?;
    let proxy = to_primary.addr();
    let _replica = start(replica_addr, &["--replicaof".into(), proxy.ip().to_string(), proxy.port().to_string()])?;
    let synced = wait_until(Duration::from_secs(20), || {
        RespConn::connect(replica_addr, Duration::from_secs(1))
            .and_then(|mut c| c.cmd(&["INFO", "replication"]))
            .ok()
            .and_then(|f| f.as_text())
            .is_some_and(|t| t.contains("master_link_status:up"))
    });
    if !synced {
        bail!("the redis replica did not sync with its primary through the proxy");
    }
    measure(primary_addr, replica_addr, args.samples, args.load, "redis")
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let _guard = runtime.enter();
    let d = args.delay.as_millis();
    let g = geocache(&args)?;
    let r = if args.skip_redis { None } else { Some(redis(&args)?) };
    let (standalone, replicated) = throughput(&args)?;
    println!("| system | one-way delay | samples | lag p50 | lag p99 | max |");
    println!("|---|---|---|---|---|---|");
    println!("| GeoCache | {d} ms | {} | {:.1} ms | {:.1} ms | {:.1} ms |", g.n, g.p50, g.p99, g.max);
    if let Some(r) = &r {
        println!("| Redis replica | {d} ms | {} | {:.1} ms | {:.1} ms | {:.1} ms |", r.n, r.p50, r.p99, r.max);
    }
    println!();
    println!(
        "| write throughput (`redis-benchmark -t set -P 16 -c 50 -d 200`) | SET/s | vs standalone | writer CPU µs/write |"
    );
    println!("|---|---:|---:|---:|");
    println!("| standalone node | {:.0} | 1.00x | {:.2} |", standalone.per_s, standalone.cpu_us_per_write);
    println!(
        "| node with 2 remote peers ({d} ms away; peers on the same machine) | {:.0} | {:.2}x | {:.2} |",
        replicated.per_s,
        replicated.per_s / standalone.per_s,
        replicated.cpu_us_per_write
    );
    let json = serde_json::json!({
        "throughput": {
            "standalone_set_per_s": standalone.per_s, "standalone_cpu_us_per_write": standalone.cpu_us_per_write,
            "with_two_peers_set_per_s": replicated.per_s, "with_two_peers_cpu_us_per_write": replicated.cpu_us_per_write,
        },
        "delay_ms": d, "load_per_s": args.load,
        "geocache": {"p50_ms": g.p50, "p99_ms": g.p99, "max_ms": g.max, "samples": g.n},
        "redis": r.as_ref().map(|r| serde_json::json!({"p50_ms": r.p50, "p99_ms": r.p99, "max_ms": r.max, "samples": r.n})),
    });
    println!("{json}");
    Ok(())
}
