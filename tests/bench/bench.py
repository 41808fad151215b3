#!/usr/bin/env python3
"""GeoCache next to redis-server, on one machine, in one run (driven by tests/bench/run.sh).

Standard library only. Every process this script starts is recorded (pid per line) in
$BENCH_WORKDIR/pids, so that run.sh's trap can end them even if this script is killed;
this script also ends them itself on exit, SIGINT and SIGTERM. Every wait has a deadline.

Phases (each can be skipped with BENCH_SKIP=resp,pinned,http,memory,recovery,replication,profile):
  resp      redis-benchmark SET/GET (and SET of a 200-byte JSON document) at -P 1 and
            -P 16 against redis-server and geocache-node's Redis port, alternating the
            systems, BENCH_ROUNDS rounds; optionally again with server and client pinned
            to one core each (BENCH_PIN=1).
  http      wrk PUT/GET through the HTTP JSON API of geocache-node.
  memory    RSS after loading BENCH_MEM_KEYS keys of 200-byte JSON with a TTL.
  recovery  restart time with BENCH_RECOVERY_KEYS keys on disk: geocache log replay and
            snapshot, redis-server AOF and RDB.
  profile   perf (or callgrind) of geocache-node under redis-benchmark.
Outputs: RESULTS.md, results.svg, results.json, and the generated part of PROFILE.md.
"""

import datetime
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


# ---------------------------------------------------------------------------
# Configuration (environment knobs)
# ---------------------------------------------------------------------------


def env_int(name, default):
    v = os.environ.get(name, "").strip()
    return int(v) if v else default


def env_str(name, default):
    v = os.environ.get(name, "").strip()
    return v if v else default


QUICK = env_str("BENCH_QUICK", "0") not in ("0", "", "false", "no")
CFG = {
    "quick": QUICK,
    "rounds": env_int("BENCH_ROUNDS", 2 if QUICK else 5),
    # Extra rounds, only for tests that lacked undisturbed runs (shared machine).
    "extra_rounds": env_int("BENCH_EXTRA_ROUNDS", 1 if QUICK else 3),
    "clean_threshold": float(env_str("BENCH_CLEAN_THRESHOLD", "0.2")),
    "clients": env_int("BENCH_CLIENTS", 50),
    "value_bytes": env_int("BENCH_VALUE_BYTES", 200),
    "keyspace": env_int("BENCH_KEYSPACE", 100_000),
    "n_p1": env_int("BENCH_N_P1", 50_000 if QUICK else 200_000),
    "n_p16": env_int("BENCH_N_P16", 200_000 if QUICK else 1_000_000),
    "pin": env_str("BENCH_PIN", "1") not in ("0", "no", "false"),
    "wrk_duration": env_int("BENCH_WRK_DURATION", 3 if QUICK else 10),
    "wrk_threads": env_int("BENCH_WRK_THREADS", 2),
    "wrk_rounds": env_int("BENCH_WRK_ROUNDS", 2),
    "mem_keys": env_int("BENCH_MEM_KEYS", 200_000 if QUICK else 1_000_000),
    "recovery_keys": env_int("BENCH_RECOVERY_KEYS", 300_000 if QUICK else 4_000_000),
    "recovery_restarts": env_int("BENCH_RECOVERY_RESTARTS", 1 if QUICK else 2),
    "profile_seconds": env_int("BENCH_PROFILE_SECONDS", 3 if QUICK else 6),
    "profiler": env_str("BENCH_PROFILER", "auto"),  # auto | perf | callgrind | none
    "skip": set(s for s in env_str("BENCH_SKIP", "").split(",") if s),
}
WORK = os.environ.get("BENCH_WORKDIR") or "/tmp/geocache-bench"
OUT = env_str("BENCH_OUT", HERE)
NODE_BIN = env_str("GEOCACHE_NODE_BIN", os.path.join(REPO, "target", "release", "geocache-node"))
TTL_S = 3600
CPUS = os.cpu_count() or 1


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class BenchError(Exception):
    pass


# ---------------------------------------------------------------------------
# Processes: everything started is registered and ended by pid
# ---------------------------------------------------------------------------

PIDFILE = os.path.join(WORK, "pids")
_procs = []


def start(argv, logname, env=None, cpus=None):
    """Starts a long-running process with its output in WORK/logs/<logname>."""
    if cpus is not None:
        argv = ["taskset", "-c", cpus] + argv
    path = os.path.join(WORK, "logs", logname)
    f = open(path, "ab")
    p = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    f.close()
    p.logpath = path
    _procs.append(p)
    record_pid(p.pid)
    return p


def record_pid(pid):
    """Notes `pid start-time` for run.sh's trap, which ends only processes whose start time still
    matches (so a pid reused by someone else's process is left alone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            start_time = f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        start_time = "?"
    with open(PIDFILE, "a") as pf:
        pf.write(f"{pid} {start_time}\n")


def stop(p, sig=signal.SIGTERM, timeout=60):
    if p is None or p.poll() is not None:
        return
    try:
        p.send_signal(sig)
        p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        log(f"pid {p.pid} did not stop within {timeout}s; killing it")
        p.kill()
        p.wait(timeout=10)
    except ProcessLookupError:
        pass


def stop_all():
    for p in _procs:
        if p.poll() is None:
            try:
                p.kill()
                p.wait(timeout=5)
            except Exception:
                pass


def _on_signal(signum, _frame):
    stop_all()
    raise SystemExit(128 + signum)


def run(argv, timeout, input_path=None, check=True, cpus=None):
    """Runs a client to completion with a hard timeout; returns (stdout, stderr)."""
    if cpus is not None:
        argv = ["taskset", "-c", cpus] + argv
    stdin = open(input_path, "rb") if input_path else subprocess.DEVNULL
    try:
        r = subprocess.run(argv, stdin=stdin, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"timed out after {timeout}s: {' '.join(argv[:6])} ...")
    finally:
        if input_path:
            stdin.close()
    out, err = r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")
    if check and r.returncode != 0:
        raise BenchError(f"{' '.join(argv[:6])} ... exited {r.returncode}: {err.strip()[-500:]}")
    return out, err


# ---------------------------------------------------------------------------
# Addresses, readiness, process metrics
# ---------------------------------------------------------------------------

_used_ports = set()


def free_addr():
    """A random 127.x.y.z address and a random port that is free there right now."""
    for _ in range(200):
        ip = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"
        port = random.randint(20000, 60999)
        if port in _used_ports:
            continue
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind((ip, port))
        except OSError:
            continue
        finally:
            s.close()
        _used_ports.add(port)
        return ip, port
    raise BenchError("no free loopback address found")


def http_get(host, port, path, timeout=5.0):
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def resp_command(host, port, *args, timeout=10.0):
    """One command over a fresh connection; returns the raw reply text."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(encode_command(*args))
        return read_reply(s)


def encode_command(*args):
    parts = [f"*{len(args)}\r\n".encode()]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(parts)


def read_reply(s):
    buf = b""
    while b"\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    if buf[:1] == b"$":
        n = int(buf[1:buf.index(b"\r\n")])
        need = buf.index(b"\r\n") + 2 + max(n, 0) + (2 if n >= 0 else 0)
        while len(buf) < need:
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
    return buf.decode(errors="replace")


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise BenchError(f"no VmRSS for pid {pid}")


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """User + system CPU time of a process (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def machine_busy_seconds():
    """CPU seconds spent busy by the whole machine (all CPUs) since boot."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return (sum(v[:8]) - idle) / CLK_TCK


def children_cpu_seconds():
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


_quiet_budget = [float(env_int("BENCH_QUIET_BUDGET", 1200))]


def wait_quiet(threshold=None, max_wait=60):
    """The machine is shared: before a measurement, wait (within a total budget) until the
    rest of the machine uses less than `threshold` cores. Returns the load seen (cores)."""
    threshold = CFG["clean_threshold"] if threshold is None else threshold
    deadline = time.monotonic() + min(max_wait, max(_quiet_budget[0], 0))
    t_start = time.monotonic()
    while True:
        b0, t0 = machine_busy_seconds(), time.monotonic()
        time.sleep(0.5)
        load = (machine_busy_seconds() - b0) / (time.monotonic() - t0)
        if load < threshold or time.monotonic() >= deadline:
            waited = time.monotonic() - t_start - 0.5
            _quiet_budget[0] -= max(waited, 0)
            if waited > 1:
                log(f"waited {waited:.0f}s for other work on the machine to calm down (now {load:.2f} cores busy)")
            return load


class Foreign:
    """Measures the CPU used by everything else on the machine during a measurement:
    machine busy time minus the server's and our client's CPU time, in cores."""

    def __init__(self, server_pids):
        self.pids = server_pids
        self.m0, self.c0, self.t0 = machine_busy_seconds(), children_cpu_seconds(), time.monotonic()
        self.s0 = sum(cpu_seconds(p) for p in self.pids)

    def cores(self):
        wall = time.monotonic() - self.t0
        other = (machine_busy_seconds() - self.m0) - (children_cpu_seconds() - self.c0) \
            - (sum(cpu_seconds(p) for p in self.pids) - self.s0)
        return max(other, 0.0) / max(wall, 1e-6)


def median(xs):
    return statistics.median(xs) if xs else None


# ---------------------------------------------------------------------------
# The two systems
# ---------------------------------------------------------------------------


class Redis:
    name = "redis"
    label = "redis-server"

    def __init__(self, tag, dir=None, extra=(), cpus=None):
        self.host, self.port = free_addr()
        self.dir = dir or os.path.join(WORK, f"redis-{tag}")
        os.makedirs(self.dir, exist_ok=True)
        self.tag, self.extra, self.cpus = tag, list(extra), cpus
        self.p = None

    def argv(self, extra=()):
        return ["redis-server", "--bind", self.host, "--port", str(self.port), "--dir", self.dir,
                "--save", "", "--appendonly", "no", "--protected-mode", "no", "--daemonize", "no",
                "--logfile", ""] + self.extra + list(extra)

    def start(self, extra=(), wait=True, timeout=600):
        self.p = start(self.argv(extra), f"redis-{self.tag}.log", cpus=self.cpus)
        self.t0 = time.monotonic()
        if wait:
            return self.wait_ready(timeout)

    def wait_ready(self, timeout):
        """Seconds from start until PING answers and INFO persistence says loading:0."""
        deadline = self.t0 + timeout
        while time.monotonic() < deadline:
            if self.p.poll() is not None:
                raise BenchError(f"redis-server exited ({self.p.returncode}); see {self.p.logpath}")
            try:
                with socket.create_connection((self.host, self.port), timeout=2) as s:
                    while time.monotonic() < deadline:
                        s.sendall(b"PING\r\n")
                        if read_reply(s).startswith("+PONG"):
                            s.sendall(encode_command("INFO", "persistence"))
                            if "loading:0" in read_reply(s):
                                return time.monotonic() - self.t0
                        time.sleep(0.005)
            except (OSError, ConnectionError):
                time.sleep(0.005)
        raise BenchError(f"redis-server not ready after {timeout}s")

    def stop(self, save=False):
        if self.p and self.p.poll() is None:
            try:
                resp_command(self.host, self.port, "SHUTDOWN", "SAVE" if save else "NOSAVE", timeout=600)
            except (OSError, ConnectionError):
                pass
            try:
                self.p.wait(timeout=600)
            except subprocess.TimeoutExpired:
                stop(self.p, signal.SIGKILL)

    def pid(self):
        return self.p.pid

    def memory_reported(self):
        info = resp_command(self.host, self.port, "INFO", "memory")
        m = re.search(r"used_memory:(\d+)", info)
        return int(m.group(1)) if m else None

    def version(self):
        out, _ = run(["redis-server", "--version"], 10)
        m = re.search(r"v=(\S+)", out)
        return m.group(1) if m else out.strip()


class Geo:
    name = "geocache"
    label = "geocache-node"

    def __init__(self, tag, data_dir=None, extra=(), cpus=None):
        self.host, self.port = free_addr()
        self.http_host, self.http_port = free_addr()
        self.peer = free_addr()
        self.data_dir, self.tag, self.extra, self.cpus = data_dir, tag, list(extra), cpus
        self.p = None

    def argv(self, extra=()):
        a = [NODE_BIN, "--node-id", f"bench-{self.tag}", "--region", "bench",
             "--http-addr", f"{self.http_host}:{self.http_port}", "--resp-addr", f"{self.host}:{self.port}",
             "--peer-addr", f"{self.peer[0]}:{self.peer[1]}"]
        if self.data_dir:
            a += ["--data-dir", self.data_dir]
        return a + self.extra + list(extra)

    def start(self, extra=(), wait=True, timeout=600, wrapper=()):
        env = dict(os.environ, RUST_LOG=os.environ.get("BENCH_RUST_LOG", "info"))
        if self.cpus is not None and "," not in self.cpus and "-" not in self.cpus:
            # Pinned to one core: one Tokio worker (what the runtime would pick from the
            # affinity mask anyway; explicit for the record).
            env["TOKIO_WORKER_THREADS"] = "1"
        self.log_offset = os.path.getsize(self.logpath()) if os.path.exists(self.logpath()) else 0
        self.p = start(list(wrapper) + self.argv(extra), f"geocache-{self.tag}.log", env=env, cpus=self.cpus)
        self.t0 = time.monotonic()
        if wait:
            return self.wait_ready(timeout)

    def logpath(self):
        return os.path.join(WORK, "logs", f"geocache-{self.tag}.log")

    def wait_ready(self, timeout):
        """Seconds from start until GET /readyz answers 200."""
        deadline = self.t0 + timeout
        while time.monotonic() < deadline:
            if self.p.poll() is not None:
                raise BenchError(f"geocache-node exited ({self.p.returncode}); see {self.p.logpath}")
            try:
                status, _ = http_get(self.http_host, self.http_port, "/readyz", timeout=2)
                if status == 200:
                    return time.monotonic() - self.t0
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.005)
        raise BenchError(f"geocache-node not ready after {timeout}s")

    def log_text(self):
        with open(self.logpath(), "rb") as f:
            f.seek(self.log_offset)
            return f.read().decode(errors="replace")

    def stop(self, save=False):
        stop(self.p, signal.SIGTERM, timeout=120)

    def pid(self):
        return self.p.pid

    def status(self):
        status, body = http_get(self.http_host, self.http_port, "/v1/status")
        return json.loads(body)

    def memory_reported(self):
        return self.status().get("memory_bytes")

    def version(self):
        out, _ = run([NODE_BIN, "--version"], 10)
        return out.strip().split()[-1]


def dbsize(sys_):
    r = resp_command(sys_.host, sys_.port, "DBSIZE")
    return int(r.strip().lstrip(":"))


# ---------------------------------------------------------------------------
# Data sets
# ---------------------------------------------------------------------------


def json_doc(i, size):
    """A JSON document of exactly `size` bytes for key number i."""
    head = '{"id":%d,"name":"user-%d","email":"user-%d@example.com","region":"eu-west","score":%d,' \
           '"tags":["cache","geo","bench"],"bio":"' % (i, i, i, i % 1000)
    tail = '"}'
    pad = size - len(head) - len(tail)
    if pad < 0:
        raise BenchError(f"value size {size} too small for the document")
    return head + ("lorem ipsum dolor sit amet " * (pad // 27 + 1))[:pad] + tail


def key_name(prefix, i):
    return "%s:%012d" % (prefix, i)


def gen_pipe(path, n, prefix, size, ttl_s, first=0):
    """Writes n `SET key <json> EX ttl` commands (keys first..first+n) in RESP, for redis-cli --pipe."""
    if os.path.exists(path) and os.path.exists(path + ".ok"):
        return
    t = time.monotonic()
    ttl = str(ttl_s).encode()
    with open(path, "wb", buffering=1 << 20) as f:
        chunk = []
        for i in range(first, first + n):
            k = key_name(prefix, i).encode()
            v = json_doc(i, size).encode()
            chunk.append(b"*5\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$2\r\nEX\r\n$%d\r\n%s\r\n"
                         % (len(k), k, len(v), v, len(ttl), ttl))
            if len(chunk) >= 10000:
                f.write(b"".join(chunk))
                chunk = []
        f.write(b"".join(chunk))
    open(path + ".ok", "w").close()
    log(f"generated {n} commands in {path} ({os.path.getsize(path) / 1e6:.0f} MB) in {time.monotonic() - t:.1f}s")


def pipe_load(sys_, path, n, timeout):
    t = time.monotonic()
    out, err = run(["redis-cli", "-h", sys_.host, "-p", str(sys_.port), "--pipe", "--pipe-timeout", "120"],
                   timeout, input_path=path)
    elapsed = time.monotonic() - t
    m = re.search(r"errors:\s*(\d+),\s*replies:\s*(\d+)", out + err)
    if not m:
        raise BenchError(f"redis-cli --pipe into {sys_.label}: unexpected output {out[-300:]} {err[-300:]}")
    errors, replies = int(m.group(1)), int(m.group(2))
    if errors or replies < n:
        raise BenchError(f"redis-cli --pipe into {sys_.label}: {errors} errors, {replies} replies of {n}")
    return elapsed


def dir_bytes(path):
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


# ---------------------------------------------------------------------------
# Phase 1: redis-benchmark
# ---------------------------------------------------------------------------

JSON_VALUE = None  # set in main


def redis_benchmark(sys_, test, pipeline, n, cpus=None):
    c = CFG
    argv = ["redis-benchmark", "-h", sys_.host, "-p", str(sys_.port), "-c", str(c["clients"]), "-n", str(n),
            "-r", str(c["keyspace"]), "-P", str(pipeline), "--csv"]
    if test == "SET-JSON":
        argv += ["SET", "key:__rand_int__", JSON_VALUE]
    else:
        argv += ["-d", str(c["value_bytes"]), "-t", test.lower()]
    cpu0 = cpu_seconds(sys_.pid())
    foreign = Foreign([sys_.pid()])
    out, err = run(argv, timeout=max(120, n // 2000), cpus=cpus)
    cpu = cpu_seconds(sys_.pid()) - cpu0
    other = foreign.cores()
    rows = [l for l in out.splitlines() if l.startswith('"') and not l.startswith('"test"')]
    if len(rows) != 1:
        raise BenchError(f"redis-benchmark {test} against {sys_.label}: no result in {out[-300:]!r} {err[-300:]!r}")
    # The test name may contain quotes and commas (custom commands): take the last 7 fields.
    f = [x.strip('"') for x in rows[0].rsplit(",", 7)[1:]]
    rps, avg, mn, p50, p95, p99, mx = map(float, f)
    errors = [l for l in err.splitlines() if "ERR" in l or "Error" in l]
    if errors:
        raise BenchError(f"redis-benchmark {test} against {sys_.label} got errors: {errors[:3]}")
    return {"system": sys_.name, "test": test, "pipeline": pipeline, "n": n, "rps": rps, "avg_ms": avg,
            "p50_ms": p50, "p95_ms": p95, "p99_ms": p99, "max_ms": mx, "cpu_s": cpu,
            "cpu_us_per_op": cpu * 1e6 / n, "other_cores": other}


def is_clean(r):
    """Whether other work on the machine left this run alone (under the threshold in cores)."""
    return r.get("other_cores") is None or r["other_cores"] < CFG["clean_threshold"]


def phase_resp(results, pinned):
    c = CFG
    server_cpus, client_cpus = ("1", "0") if pinned else (None, None)
    tag = "pinned" if pinned else "resp"
    systems = [Redis(tag, cpus=server_cpus), Geo(tag, cpus=server_cpus)]
    for s in systems:
        s.start()
    try:
        # Warm-up (not reported): fills the key space so GETs hit, grows the tables.
        for s in systems:
            redis_benchmark(s, "SET", 16, max(c["keyspace"] * 10, 100_000), cpus=client_cpus)
            log(f"{s.label} warmed up: {dbsize(s)} keys")
        tests = [("SET", 1), ("GET", 1), ("SET", 16), ("GET", 16), ("SET-JSON", 1), ("SET-JSON", 16)]
        need = (c["rounds"] + 1) // 2  # clean runs wanted per system and test

        def clean_runs(test, pl, sysname):
            return sum(1 for r in results["resp"] if r["pinned"] == pinned and r["test"] == test
                       and r["pipeline"] == pl and r["system"] == sysname and is_clean(r))

        k = 0
        for rnd in range(c["rounds"] + c["extra_rounds"]):
            todo = tests if rnd < c["rounds"] else [
                (t, p) for t, p in tests if min(clean_runs(t, p, "redis"), clean_runs(t, p, "geocache")) < need]
            if not todo:
                break
            if rnd >= c["rounds"]:
                log(f"extra round {rnd + 1 - c['rounds']}: {len(todo)} tests had too few undisturbed runs")
            for test, pl in todo:
                n = c["n_p16"] if pl > 1 else c["n_p1"]
                order = systems if k % 2 == 0 else systems[::-1]
                k += 1
                for s in order:
                    wait_quiet()
                    r = redis_benchmark(s, test, pl, n, cpus=client_cpus)
                    r.update(round=rnd, pinned=pinned, loadavg=loadavg())
                    results["resp"].append(r)
                    log(f"{'pinned ' if pinned else ''}round {rnd + 1} {test:8} -P {pl:<2} {s.label:14} "
                        f"{r['rps']:>11,.0f} rps  p50 {r['p50_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms  "
                        f"server CPU {r['cpu_us_per_op']:.2f} us/op  other load {r['other_cores']:.2f} cores")
        # Sanity: a GET answers the value redis-benchmark wrote.
        for s in systems:
            reply = resp_command(s.host, s.port, "GET", key_name("key", 1))
            if not reply.startswith("$"):
                raise BenchError(f"{s.label}: GET after the benchmark answered {reply[:80]!r}")
    finally:
        for s in systems:
            s.stop()


# ---------------------------------------------------------------------------
# Phase 2: HTTP with wrk
# ---------------------------------------------------------------------------


def phase_http(results):
    c = CFG
    geo = Geo("http")
    geo.start()
    try:
        path = os.path.join(WORK, "http-preload.resp")
        gen_pipe(path, c["keyspace"], "key", c["value_bytes"], TTL_S * 24)
        pipe_load(geo, path, c["keyspace"], 600)
        for rnd in range(c["wrk_rounds"] + c["extra_rounds"]):
            modes = [m for m in ("put", "get") if rnd < c["wrk_rounds"] or not any(
                is_clean(r) for r in results["http"] if r["test"] == m.upper())]
            if not modes:
                break
            for mode in modes:
                argv = ["wrk", "-t", str(c["wrk_threads"]), "-c", str(c["clients"]), "-d", f"{c['wrk_duration']}s",
                        "--timeout", "5s", "-s", os.path.join(HERE, "wrk.lua"),
                        f"http://{geo.http_host}:{geo.http_port}", "--", mode, str(c["keyspace"]),
                        str(c["value_bytes"])]
                wait_quiet()
                cpu0 = cpu_seconds(geo.pid())
                foreign = Foreign([geo.pid()])
                out, err = run(argv, timeout=c["wrk_duration"] + 60)
                cpu = cpu_seconds(geo.pid()) - cpu0
                other = foreign.cores()
                line = [l for l in out.splitlines() if l.startswith("BENCH_JSON ")]
                if not line:
                    raise BenchError(f"wrk {mode}: no result in {out[-300:]!r} {err[-300:]!r}")
                w = json.loads(line[0][len("BENCH_JSON "):])
                errs = sum(w[k] for k in w if k.startswith("err_"))
                if errs:
                    raise BenchError(f"wrk {mode}: {errs} errors ({w})")
                r = {"system": "geocache", "test": mode.upper(), "round": rnd, "requests": w["requests"],
                     "rps": w["requests"] / (w["duration_us"] / 1e6), "p50_ms": w["lat_p50_us"] / 1000,
                     "p90_ms": w["lat_p90_us"] / 1000, "p99_ms": w["lat_p99_us"] / 1000,
                     "max_ms": w["lat_max_us"] / 1000, "cpu_us_per_op": cpu * 1e6 / max(w["requests"], 1),
                     "loadavg": loadavg(), "other_cores": other}
                results["http"].append(r)
                log(f"http round {rnd + 1} {mode.upper():3} {r['rps']:>10,.0f} rps  p50 {r['p50_ms']:.3f} ms  "
                    f"p99 {r['p99_ms']:.3f} ms  server CPU {r['cpu_us_per_op']:.2f} us/op  "
                    f"other load {other:.2f} cores")
    finally:
        geo.stop()


# ---------------------------------------------------------------------------
# Phase 3: memory
# ---------------------------------------------------------------------------


def phase_memory(results):
    c = CFG
    n = c["mem_keys"]
    half = n // 2
    # Two halves, so that the marginal cost of a key (second half) shows apart from fixed costs.
    path_a, path_b = os.path.join(WORK, f"mem-{n}-a.resp"), os.path.join(WORK, f"mem-{n}-b.resp")
    gen_pipe(path_a, half, "doc", c["value_bytes"], TTL_S)
    gen_pipe(path_b, n - half, "doc", c["value_bytes"], TTL_S, first=half)
    payload = len(key_name("doc", 0)) + c["value_bytes"]
    for s in [Redis("mem"), Geo("mem")]:
        s.start()
        try:
            time.sleep(1.0)
            rss0 = rss_bytes(s.pid())
            load_s = pipe_load(s, path_a, half, 1800)
            time.sleep(1.0)
            rss_half = rss_bytes(s.pid())
            load_s += pipe_load(s, path_b, n - half, 1800)
            time.sleep(2.0)
            rss1 = rss_bytes(s.pid())
            keys = dbsize(s)
            if keys != n:
                raise BenchError(f"{s.label} holds {keys} keys after loading {n}")
            reported = s.memory_reported()
            r = {"system": s.name, "keys": n, "payload_bytes_per_key": payload, "rss_empty": rss0, "rss_loaded": rss1,
                 "bytes_per_key": (rss1 - rss0) / n, "rss_half": rss_half,
                 "marginal_bytes_per_key": (rss1 - rss_half) / (n - half), "reported_memory": reported,
                 "reported_per_key": (reported / n) if reported else None, "load_s": load_s,
                 "load_rate": n / load_s}
            results["memory"].append(r)
            log(f"memory {s.label:14} RSS {rss0 / 1e6:.1f} -> {rss1 / 1e6:.1f} MB, "
                f"{r['bytes_per_key']:.0f} B/key (marginal {r['marginal_bytes_per_key']:.0f}; payload {payload} B), "
                f"reported {reported} B, "
                f"load {n / load_s:,.0f} keys/s")
        finally:
            s.stop()


# ---------------------------------------------------------------------------
# Phase 4: recovery
# ---------------------------------------------------------------------------

RECOVERED_RE = re.compile(r"recovered (\d+) entries in (\d+) ms")


def geo_restart_measure(geo, label, results, extra=()):
    wait_quiet()
    foreign = Foreign([])
    wall = geo.start(extra=extra, timeout=1800)
    other = max(foreign.cores() - cpu_seconds(geo.pid()) / max(wall, 1e-6), 0.0)
    text = geo.log_text()
    m = RECOVERED_RE.findall(text)
    if not m:
        raise BenchError(f"no 'recovered N entries' line in {geo.logpath()}")
    entries, ms = int(m[-1][0]), int(m[-1][1])
    keys = dbsize(geo)
    r = {"system": "geocache", "mode": label, "ready_s": wall, "logged_ms": ms, "entries": entries, "keys": keys,
         "rss": rss_bytes(geo.pid()), "other_cores": other}
    log(f"recovery geocache {label:8}: ready in {wall:.2f}s (log: recovered {entries} entries in {ms} ms), "
        f"{keys} keys")
    return r


# Redis 7 logs per AOF part ("base file", "incr file") and then the total ("append only file").
REDIS_LOADED_RE = re.compile(r"DB loaded from (append only file|disk): ([0-9.]+) seconds")


def redis_restart_measure(red, label, extra):
    off = os.path.getsize(red_log(red)) if os.path.exists(red_log(red)) else 0
    wait_quiet()
    foreign = Foreign([])
    wall = red.start(extra=extra, timeout=1800)
    other = max(foreign.cores() - cpu_seconds(red.pid()) / max(wall, 1e-6), 0.0)
    with open(red_log(red), "rb") as f:
        f.seek(off)
        text = f.read().decode(errors="replace")
    found = REDIS_LOADED_RE.findall(text)
    logged = float(found[-1][1]) if found else None
    keys = dbsize(red)
    log(f"recovery redis    {label:8}: ready in {wall:.2f}s (log: loaded in {logged} s), {keys} keys")
    return {"system": "redis", "mode": label, "ready_s": wall, "logged_ms": logged * 1000 if logged else None,
            "keys": keys, "rss": rss_bytes(red.pid()), "other_cores": other}


def red_log(red):
    return os.path.join(WORK, "logs", f"redis-{red.tag}.log")


def phase_recovery(results):
    c = CFG
    n = c["recovery_keys"]
    path = os.path.join(WORK, f"rec-{n}.resp")
    gen_pipe(path, n, "doc", c["value_bytes"], TTL_S * 24)
    out = results["recovery"]

    # GeoCache, log only: compaction off so the data dir is the append-only log.
    gdir = os.path.join(WORK, "geo-data")
    shutil.rmtree(gdir, ignore_errors=True)
    geo = Geo("rec", data_dir=gdir)
    no_compact = ["--compact-min", "100tb"]
    geo.start(extra=no_compact)
    try:
        load_s = pipe_load(geo, path, n, 3600)
        log(f"loaded {n} keys into geocache-node (--data-dir) at {n / load_s:,.0f} keys/s")
        geo.stop()
        log_bytes = dir_bytes(gdir)
        for _ in range(c["recovery_restarts"]):
            r = geo_restart_measure(geo, "log", results, extra=no_compact)
            r.update(disk_bytes=log_bytes, load_rate=n / load_s)
            out.append(r)
            geo.stop()
        # Default compaction: the node turns the log into a snapshot shortly after start.
        geo.start(timeout=1800)
        deadline = time.monotonic() + 1800
        while "log compacted into a snapshot" not in geo.log_text():
            if time.monotonic() > deadline:
                raise BenchError("geocache-node did not compact its log")
            time.sleep(0.5)
        geo.stop()
        snap_bytes = dir_bytes(gdir)
        for _ in range(c["recovery_restarts"]):
            r = geo_restart_measure(geo, "snapshot", results)
            r.update(disk_bytes=snap_bytes)
            out.append(r)
            geo.stop()
    finally:
        geo.stop()
    shutil.rmtree(gdir, ignore_errors=True)

    # redis-server, AOF only (no RDB preamble, no rewrite: the file is the command log), then RDB.
    rdir = os.path.join(WORK, "redis-data")
    shutil.rmtree(rdir, ignore_errors=True)
    red = Redis("rec", dir=rdir)
    aof = ["--appendonly", "yes", "--appendfsync", "everysec", "--aof-use-rdb-preamble", "no",
           "--auto-aof-rewrite-percentage", "0"]
    red.start(extra=aof)
    try:
        load_s = pipe_load(red, path, n, 3600)
        log(f"loaded {n} keys into redis-server (appendonly) at {n / load_s:,.0f} keys/s")
        red.stop()
        aof_bytes = dir_bytes(os.path.join(rdir, "appendonlydir"))
        for _ in range(c["recovery_restarts"]):
            r = redis_restart_measure(red, "aof", aof)
            r.update(disk_bytes=aof_bytes, load_rate=n / load_s)
            out.append(r)
            red.stop()
        red.start(extra=aof, timeout=1800)
        reply = resp_command(red.host, red.port, "SAVE", timeout=1800)
        if not reply.startswith("+OK"):
            raise BenchError(f"redis SAVE answered {reply!r}")
        red.stop()
        shutil.rmtree(os.path.join(rdir, "appendonlydir"), ignore_errors=True)
        rdb_bytes = os.path.getsize(os.path.join(rdir, "dump.rdb"))
        for _ in range(c["recovery_restarts"]):
            r = redis_restart_measure(red, "rdb", [])
            r.update(disk_bytes=rdb_bytes)
            out.append(r)
            red.stop()
    finally:
        red.stop()
    shutil.rmtree(rdir, ignore_errors=True)


# ---------------------------------------------------------------------------
# Phase 5: profile
# ---------------------------------------------------------------------------

# Buckets for the summary of GeoCache profiles (matched against the attribution label).
BUCKETS = [
    ("kernel: TCP send (sendto/write)", r"^kernel: syscall (sendto|write|writev|sendmsg)$"),
    ("kernel: TCP receive (recvfrom/read)", r"^kernel: syscall (recvfrom|read|readv|recvmsg)$"),
    ("kernel: epoll, futex, scheduling, interrupts", r"^kernel: "),
    ("store: index lookup (Shard::find, key compare)", r"Shard::find|Store::locate"),
    ("store: read/update/insert (Store::*, Slot)", r"geocache_node::store::(Store|Shard|Slot)"),
    ("values: copy, JSON check (store::value)", r"geocache_node::store::value"),
    ("journal + replication backlog (encode, CRC, push)", r"journal|replication|persist"),
    ("RESP: parse, commands, replies, connection", r"geocache_node::api::resp"),
    ("db: versions, clock, limits", r"geocache_node::(db|clock)"),
    ("tokio runtime", r"^tokio"),
]
FRAME_RE = re.compile(r"^\s+([0-9a-f]+)\s+(.*?)\s+\((.*)\)\s*$")
SYSCALL_RE = re.compile(r"^__(?:x64|do)_sys_(\w+)")
IRQ_RE = re.compile(r"asm_sysvec|asm_common_interrupt|softirq|irq_exit|irqentry")
SYSCALL_ALIASES = {"send": "sendto", "recv": "recvfrom", "epoll_pwait": "epoll_wait", "syscall": "futex"}


def perf_stacks(data):
    """Yields each sample's call stack, leaf first, as [(symbol, dso)], from `perf script`."""
    p = subprocess.Popen(["perf", "script", "-i", data, "-F", "comm,tid,ip,sym,dso"], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True, errors="replace")
    _procs.append(p)
    record_pid(p.pid)
    stack = []
    try:
        for line in p.stdout:
            if line[:1] in ("\t", " "):
                m = FRAME_RE.match(line)
                if m:
                    stack.append((m.group(2), m.group(3)))
                continue
            if stack:
                yield stack
            stack = []
        if stack:
            yield stack
    finally:
        p.stdout.close()
        stop(p, timeout=30)


def attribute(stack, project):
    """Who a sample's time belongs to: the syscall for kernel samples; for user samples the
    innermost (non-inlined) function of the project (`geocache_node::`), so that libc work it
    calls (memcmp, malloc, memcpy) counts for it; for other processes the leaf function."""
    sym, dso = stack[0]
    if dso.startswith("[kernel"):
        for s, _ in stack:
            m = SYSCALL_RE.match(s)
            if m:
                return "kernel: syscall " + SYSCALL_ALIASES.get(m.group(1), m.group(1))
        # Preempted on the way out of a syscall (exit_to_user_mode): the syscall frame is gone,
        # but the C library wrapper on the user side of the stack still names it.
        user = [(s, d) for s, d in stack if not d.startswith("[kernel")]
        in_syscall = any(s.startswith(("do_syscall_64", "entry_SYSCALL")) for s, _ in stack)
        if in_syscall and user and "libc" in user[0][1]:
            name = re.sub(r"^(__GI_)?_*(libc_)?", "", user[0][0])
            return "kernel: syscall " + SYSCALL_ALIASES.get(name, name)
        if any(IRQ_RE.search(s) for s, _ in stack):
            return "kernel: interrupts, softirq, preemption"
        if "finish_task_switch" in sym:
            return "kernel: context switch (finish_task_switch)"
        return "kernel: " + sym
    if project:
        for s, d in stack:
            if d != "inlined" and (s.startswith(project + "::") or s.startswith("<" + project + "::")):
                return re.sub(r"::h[0-9a-f]{16}$", "", s)
        for s, d in stack:
            if d != "inlined" and s.startswith(("tokio::", "<tokio::")):
                return "tokio: " + re.sub(r"::h[0-9a-f]{16}$", "", s)
    return sym


def analyze_perf(data, project):
    owners, leaves, n = {}, {}, 0
    for stack in perf_stacks(data):
        n += 1
        o = attribute(stack, project)
        owners[o] = owners.get(o, 0) + 1
        lv = leaves.setdefault(o, {})
        leaf = re.sub(r"::h[0-9a-f]{16}$", "", stack[0][0])
        lv[leaf] = lv.get(leaf, 0) + 1
    rows = []
    for o, c in sorted(owners.items(), key=lambda x: -x[1]):
        top = sorted(leaves[o].items(), key=lambda x: -x[1])[:3]
        rows.append({"owner": o, "pct": 100.0 * c / n,
                     "leaves": [(shorten(s, 40), 100.0 * k / c) for s, k in top]})
    buckets = {}
    if project:
        for r in rows:
            name = "other"
            for bname, pat in BUCKETS:
                if re.search(pat, r["owner"]):
                    name = bname
                    break
            buckets[name] = buckets.get(name, 0.0) + r["pct"]
    return n, rows, sorted(buckets.items(), key=lambda x: -x[1])


def perf_available():
    if not shutil.which("perf"):
        return False
    probe = os.path.join(WORK, "perf-probe.data")
    try:
        run(["perf", "record", "-o", probe, "-F", "99", "--", "true"], 30, check=False)
        return os.path.exists(probe) and os.path.getsize(probe) > 0
    except BenchError:
        return False


def perf_report(data, limit=0.4):
    """Flat self time per function (`perf report --no-children`)."""
    out, _ = run(["perf", "report", "-i", data, "--stdio", "-g", "none", "--sort", "dso,sym", "--percent-limit",
                  str(limit), "--no-children"], 600, check=False)
    rows = []
    for line in out.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[[.k]\]\s+(.*)$", line)
        if m:
            rows.append((float(m.group(1)), m.group(2), m.group(3).strip()))
    return rows


def shorten(sym, width=110):
    sym = re.sub(r"::h[0-9a-f]{16}$", "", sym)
    sym = re.sub(r"<([^<>]*)>", lambda m: "<…>" if len(m.group(0)) > 40 else m.group(0), sym)
    return sym if len(sym) <= width else sym[: width - 1] + "…"


def bench_for(s, test, pl, seconds, rps_guess):
    """Runs redis-benchmark for about `seconds`."""
    n = max(20_000, int(rps_guess * seconds))
    return redis_benchmark(s, test, pl, n)


def phase_profile(results):
    c = CFG
    prof = results["profile"]
    profiler = c["profiler"]
    if profiler == "auto":
        profiler = "perf" if perf_available() else ("callgrind" if shutil.which("valgrind") else "none")
    prof["tool"] = profiler
    if profiler == "none":
        log("no profiler (perf or valgrind) available; skipping the profile")
        return
    geo_scenarios = [("SET", 16), ("GET", 16), ("SET", 1), ("GET", 1)]
    red_scenarios = [("SET", 16), ("GET", 16), ("SET", 1)]
    if profiler == "perf":
        for sysname in ("geocache", "redis"):
            s = Geo("prof") if sysname == "geocache" else Redis("prof")
            s.start()
            try:
                redis_benchmark(s, "SET", 16, max(c["keyspace"] * 10, 100_000))
                for test, pl in geo_scenarios if sysname == "geocache" else red_scenarios:
                    # Calibrate so that the profiled run lasts about profile_seconds.
                    guess = redis_benchmark(s, test, pl, 20_000 if pl == 1 else 100_000)["rps"]
                    data = os.path.join(WORK, f"perf-{sysname}-{test}-P{pl}.data")
                    wait_quiet()
                    perf = start(["perf", "record", "-F", "999", "-g", "--call-graph", "dwarf,16384", "-p",
                                  str(s.pid()), "-o", data], f"perf-{sysname}-{test}-{pl}.log")
                    time.sleep(0.5)
                    r = bench_for(s, test, pl, c["profile_seconds"], guess)
                    stop(perf, signal.SIGINT, timeout=300)
                    key = f"{sysname} {test} -P {pl}"
                    n, owners, buckets = analyze_perf(data, "geocache_node" if sysname == "geocache" else None)
                    prof.setdefault("runs", {})[key] = {
                        "system": sysname, "rps": r["rps"], "cpu_us_per_op": r["cpu_us_per_op"], "samples": n,
                        "owners": owners[:40], "buckets": buckets, "self": perf_report(data)[:30]}
                    log(f"profiled {key}: {n} samples; top {[(o['owner'][:50], round(o['pct'], 1)) for o in owners[:3]]}")
                    try:
                        os.remove(data)
                    except OSError:
                        pass
            finally:
                s.stop()
    else:
        # callgrind: the node runs ~50x slower, so few requests; instruction counts, not time.
        for test, pl in geo_scenarios[:2]:
            geo = Geo(f"callgrind-{test}")
            out_file = os.path.join(WORK, f"callgrind-{test}.out")
            geo.start(wrapper=["valgrind", "--tool=callgrind", "--collect-atstart=no",
                               f"--callgrind-out-file={out_file}"], timeout=300)
            try:
                redis_benchmark(geo, "SET", 16, 20_000)
                run(["callgrind_control", "--instr=on", str(geo.pid())], 60, check=False)
                r = redis_benchmark(geo, test, pl, 20_000)
                run(["callgrind_control", "--instr=off", str(geo.pid())], 60, check=False)
            finally:
                geo.stop()
            out, _ = run(["callgrind_annotate", "--inclusive=no", out_file], 600, check=False)
            rows = []
            for line in out.splitlines():
                m = re.match(r"\s*([\d,]+)\s+\(\s*([\d.]+)%\)\s+(?:\S+:)?(.*)$", line)
                if m and "PROGRAM TOTALS" not in line:
                    rows.append((float(m.group(2)), "", m.group(3).strip()))
            prof.setdefault("runs", {})[f"geocache {test} -P {pl}"] = {
                "system": "geocache", "rps": r["rps"], "cpu_us_per_op": None, "samples": None, "owners": [],
                "buckets": [], "self": rows[:30]}


# ---------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------


def machine_info():
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gb = None
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_gb = int(line.split()[1]) / 1024 / 1024
    try:
        rev = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
                             timeout=10).stdout.decode().strip()
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--", "node"], capture_output=True,
                               timeout=10).stdout.decode().strip()
        rev = rev + ("+local changes in node/" if dirty else "")
    except Exception:
        rev = "unknown"
    wrk = "not installed"
    if shutil.which("wrk"):
        out = subprocess.run(["wrk", "--version"], capture_output=True, timeout=10)
        wrk = (out.stdout + out.stderr).decode().split("\n")[0].split(" [")[0].replace("wrk ", "")
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": CPUS, "cpu": cpu, "mem_gb": mem_gb, "kernel": os.uname().release,
        "redis": Redis.version(None), "geocache": f"{Geo.version(None)} (git {rev})", "wrk": wrk,
        "loadavg_start": loadavg(),
    }


def fmt_rps(x):
    return "—" if x is None else f"{x / 1000:,.0f}k"


def fmt_ms(x):
    return "—" if x is None else f"{x:.3f}"


def fmt_ratio(x):
    return "—" if x is None else f"**{x:.2f}x**"


def summarize_resp(results, pinned):
    rows = []
    runs = [r for r in results["resp"] if r["pinned"] == pinned]
    keys = []
    for r in runs:
        k = (r["test"], r["pipeline"])
        if k not in keys:
            keys.append(k)
    for test, pl in keys:
        agg = {}
        for sysname in ("redis", "geocache"):
            rs = [r for r in runs if r["test"] == test and r["pipeline"] == pl and r["system"] == sysname]
            # The median of the undisturbed runs; of all runs when none was undisturbed (flagged).
            used = [r for r in rs if is_clean(r)] or rs
            agg[sysname] = {m: median([r[m] for r in used]) for m in ("rps", "p50_ms", "p99_ms", "cpu_us_per_op")}
            agg[sysname]["all_rps"] = [r["rps"] for r in rs]
            agg[sysname]["all_other"] = [r.get("other_cores") for r in rs]
            agg[sysname]["clean"] = sum(1 for r in rs if is_clean(r))
            agg[sysname]["runs"] = len(rs)
        red, geo = agg["redis"], agg["geocache"]
        rows.append({"test": test, "pipeline": pl, "redis": red, "geocache": geo,
                     "ratio": geo["rps"] / red["rps"] if red["rps"] else None,
                     "p99_ratio": geo["p99_ms"] / red["p99_ms"] if red["p99_ms"] else None})
    return rows


def test_label(test, pl):
    name = {"SET-JSON": "SET 200 B JSON doc", "SET": "SET", "GET": "GET"}[test]
    return f"{name}, `-P {pl}`"


def write_results_md(results, info):
    c = CFG
    L = []
    w = L.append
    w("# GeoCache vs redis-server: benchmark results")
    w("")
    w("Produced by `tests/bench/run.sh` (do not edit by hand: rerun the script). Method, knobs and caveats "
      "at the end; the profile is in [PROFILE.md](PROFILE.md); the chart is [results.svg](results.svg).")
    w("")
    w("| | |")
    w("|---|---|")
    w(f"| date | {info['date']} |")
    w(f"| machine | `nproc` = {info['nproc']}, {info['cpu']}, {info['mem_gb']:.0f} GB RAM, kernel {info['kernel']} |")
    w(f"| versions | redis-server {info['redis']} (Debian), geocache-node {info['geocache']}, wrk {info['wrk']} |")
    w(f"| load average (1/5/15 min) | {info['loadavg_start']} at start, {info.get('loadavg_end', '?')} at end "
      "(the machine is shared: other builds may have run at the same time) |")
    w(f"| mode | {'QUICK (small counts, indicative only)' if c['quick'] else 'full'}; {c['rounds']} rounds per RESP test "
      f"(median reported), systems alternated |")
    w("")
    w("![chart](results.svg)")
    w("")
    if results["resp"]:
        for pinned in (False, True):
            rows = summarize_resp(results, pinned)
            if not rows:
                continue
            if pinned:
                w("## 1b. Redis protocol, pinned: server on CPU 1, redis-benchmark on CPU 0 (`taskset`)")
                w("")
                w("GeoCache runs one Tokio worker here (`TOKIO_WORKER_THREADS=1`, which is also what the runtime "
                  "picks from a one-CPU affinity mask), so both servers have exactly one core.")
            else:
                w("## 1. Redis protocol: `redis-benchmark`, unpinned")
            w("")
            w(f"`redis-benchmark -c {c['clients']} -d {c['value_bytes']} -r {c['keyspace']}`, "
              f"`-n {c['n_p1']}` at `-P 1`, `-n {c['n_p16']}` at `-P 16`; key space pre-filled, so GETs hit. "
              "Latency is redis-benchmark's, in ms. Server CPU is the user+system time the server process "
              "used per request (from /proc), which shows the efficiency independent of who got the cores. "
              f"Each figure is the median of the runs that other work on the machine left alone (under "
              f"{c['clean_threshold']} cores busy meanwhile); every run is in the details.")
            w("")
            w("| test | redis-server ops/s | GeoCache ops/s | **GeoCache/Redis** | Redis p50 / p99 ms | "
              "GeoCache p50 / p99 ms | p99 ratio | server CPU µs/op Redis / GeoCache |")
            w("|---|---:|---:|---:|---:|---:|---:|---:|")
            for r in rows:
                red, geo = r["redis"], r["geocache"]
                flag = " ⚠" if red["clean"] == 0 or geo["clean"] == 0 else ""
                w(f"| {test_label(r['test'], r['pipeline'])}{flag} | {fmt_rps(red['rps'])} | {fmt_rps(geo['rps'])} | "
                  f"{fmt_ratio(r['ratio'])} | {fmt_ms(red['p50_ms'])} / {fmt_ms(red['p99_ms'])} | "
                  f"{fmt_ms(geo['p50_ms'])} / {fmt_ms(geo['p99_ms'])} | {r['p99_ratio']:.2f}x | "
                  f"{red['cpu_us_per_op']:.2f} / {geo['cpu_us_per_op']:.2f} |")
            w("")
            if any(r["redis"]["clean"] == 0 or r["geocache"]["clean"] == 0 for r in rows):
                w("⚠ = no undisturbed run of this test for one of the systems: the median of all its runs is shown; "
                  "treat it as a lower bound.")
                w("")
            w("<details><summary>every run: ops/s (CPU cores used by other work on the machine meanwhile)</summary>")
            w("")
            w("| test | redis-server | GeoCache |")
            w("|---|---|---|")

            def runs(a):
                return ", ".join(f"{fmt_rps(x)} ({o:.2f})" if o is not None else fmt_rps(x)
                                 for x, o in zip(a["all_rps"], a["all_other"]))
            for r in rows:
                w(f"| {test_label(r['test'], r['pipeline'])} | {runs(r['redis'])} | {runs(r['geocache'])} |")
            w("")
            w("</details>")
            w("")
    if results["http"]:
        w("## 2. HTTP JSON API (`wrk`), GeoCache only")
        w("")
        w(f"`wrk -t {c['wrk_threads']} -c {c['clients']} -d {c['wrk_duration']}s` with "
          f"[wrk.lua](wrk.lua): `PUT /v1/keys/key:N` of a {c['value_bytes']}-byte JSON document, "
          f"`GET /v1/keys/key:N`, random N over {c['keyspace']} pre-loaded keys; median of the undisturbed runs "
          f"({', '.join(f'{x:.2f}' for x in [r['other_cores'] for r in results['http']])} cores used by other "
          "work during each run). "
          "HTTP/1.1 keep-alive, one request in flight per connection, so the comparable RESP row is `-P 1`.")
        w("")
        resp_rows = {(r["test"], r["pipeline"]): r for r in summarize_resp(results, False)} if results["resp"] else {}
        w("| request | ops/s | p50 / p90 / p99 ms | server CPU µs/op | RESP `-P 1` equivalent ops/s | HTTP/RESP |")
        w("|---|---:|---:|---:|---:|---:|")
        for mode, resp_test in (("PUT", "SET-JSON"), ("GET", "GET")):
            rs = [r for r in results["http"] if r["test"] == mode]
            if not rs:
                continue
            rs = [r for r in rs if is_clean(r)] or rs
            rps = median([r["rps"] for r in rs])
            eq = resp_rows.get((resp_test, 1))
            eq_rps = eq["geocache"]["rps"] if eq else None
            eq_txt = f"{fmt_rps(eq_rps)} ({'SET JSON' if resp_test == 'SET-JSON' else 'GET'})" if eq_rps else "—"
            w(f"| {mode} | {fmt_rps(rps)} | {fmt_ms(median([r['p50_ms'] for r in rs]))} / "
              f"{fmt_ms(median([r['p90_ms'] for r in rs]))} / {fmt_ms(median([r['p99_ms'] for r in rs]))} | "
              f"{median([r['cpu_us_per_op'] for r in rs]):.2f} | {eq_txt} | "
              f"{fmt_ratio(rps / eq_rps if eq_rps else None)} |")
        w("")
    if results["memory"]:
        mem = {r["system"]: r for r in results["memory"]}
        w("## 3. Memory")
        w("")
        n = CFG["mem_keys"]
        payload = results["memory"][0]["payload_bytes_per_key"]
        w(f"{n:,} keys `doc:NNNNNNNNNNNN` (16 B) with a {c['value_bytes']}-byte JSON document and `EX {TTL_S}`, "
          f"loaded with `redis-cli --pipe` in two halves; bytes/key = (RSS loaded − RSS of the empty process) / keys; "
          f"marginal = RSS growth over the second half / its keys (leaves out fixed costs such as preallocated "
          f"buffers). Payload (key + value) is {payload} B per key; overhead = bytes/key − payload.")
        w("")
        w("| system | RSS empty | RSS loaded | **bytes/key** | overhead/key | marginal bytes/key | self-reported | load rate |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|")
        for sysname, label, rep in (("redis", "redis-server", "`used_memory`"),
                                    ("geocache", "GeoCache", "`/v1/status` `memory_bytes`")):
            r = mem.get(sysname)
            if not r:
                continue
            w(f"| {label} | {r['rss_empty'] / 1e6:.1f} MB | {r['rss_loaded'] / 1e6:.1f} MB | "
              f"**{r['bytes_per_key']:.0f}** | {r['bytes_per_key'] - payload:.0f} | {r['marginal_bytes_per_key']:.0f} | "
              f"{rep} {r['reported_memory'] / 1e6:.1f} MB = {r['reported_per_key']:.0f} B/key | "
              f"{r['load_rate']:,.0f} keys/s |")
        if "redis" in mem and "geocache" in mem:
            ratio = mem["geocache"]["bytes_per_key"] / mem["redis"]["bytes_per_key"]
            oratio = (mem["geocache"]["bytes_per_key"] - payload) / (mem["redis"]["bytes_per_key"] - payload)
            mratio = mem["geocache"]["marginal_bytes_per_key"] / mem["redis"]["marginal_bytes_per_key"]
            w(f"| **GeoCache/Redis** | | | **{ratio:.2f}x** | {oratio:.2f}x | {mratio:.2f}x | | |")
        w("")
    if results["recovery"]:
        w("## 4. Recovery (restart with data on disk)")
        w("")
        n = CFG["recovery_keys"]
        w(f"{n:,} keys of {c['value_bytes']}-byte JSON with a TTL, loaded with `redis-cli --pipe`, process stopped "
          "cleanly, then restarted; time from process start until GeoCache's `/readyz` answers 200, or until "
          "redis-server answers PING and `INFO persistence` says `loading:0`. GeoCache \"log\" is a data dir that "
          "is only the append-only log (`--compact-min 100tb`); \"snapshot\" is after the node compacted it. "
          "Redis AOF is a pure command log (`--aof-use-rdb-preamble no`, no rewrite); RDB is after `SAVE`. "
          "The files are in the page cache (written just before), so this is replay speed, not disk speed.")
        w("")
        w("| system | on disk | ready after (median) | logged load time | s per GB on disk | vs Redis RDB | vs Redis AOF "
          "| other load, cores |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|")
        modes = [("redis", "aof", "redis-server, AOF"), ("redis", "rdb", "redis-server, RDB"),
                 ("geocache", "log", "GeoCache, log only"), ("geocache", "snapshot", "GeoCache, snapshot")]
        agg = {}
        for sysname, mode, label in modes:
            rs = [r for r in results["recovery"] if r["system"] == sysname and r["mode"] == mode]
            if rs:
                agg[(sysname, mode)] = {"ready": median([r["ready_s"] for r in rs]),
                                        "other": ", ".join(f"{r.get('other_cores', 0):.2f}" for r in rs),
                                        "logged": median([r["logged_ms"] for r in rs if r["logged_ms"] is not None]),
                                        "disk": rs[0]["disk_bytes"]}
        rdb = agg.get(("redis", "rdb"), {}).get("ready")
        aofr = agg.get(("redis", "aof"), {}).get("ready")
        for sysname, mode, label in modes:
            a = agg.get((sysname, mode))
            if not a:
                continue
            spg = a["ready"] / (a["disk"] / 1e9)
            logged = f"{a['logged'] / 1000:.2f} s" if a["logged"] is not None else "—"
            w(f"| {label} | {a['disk'] / 1e6:,.0f} MB | **{a['ready']:.2f} s** | {logged} | {spg:.1f} | "
              f"{fmt_ratio(a['ready'] / rdb if rdb else None)} | {fmt_ratio(a['ready'] / aofr if aofr else None)} | "
              f"{a['other']} |")
        w("")
        w("Ratios here are time ratios: below 1.0x means GeoCache restarts faster.")
        w("")
    w("## 5. Replication")
    w("")
    rep = results.get("replication")
    if rep:
        g, r, t = rep["geocache"], rep.get("redis"), rep["throughput"]
        d = rep["delay_ms"]
        w(f"Measured by `lagbench` (tests/src/bin/lagbench.rs): two sides of a userspace WAN proxy that delays "
          f"every byte by {d} ms one way; a background client writes {rep['load_per_s']} writes/s; a probe writes "
          f"a key on one side and polls the other until it appears. Redis: a replica (`--replicaof`) behind the "
          f"same proxy, measured the same way.")
        w("")
        w("| system | one-way delay | samples | lag p50 | lag p99 | max |")
        w("|---|---:|---:|---:|---:|---:|")
        w(f"| GeoCache | {d} ms | {g['samples']} | **{g['p50_ms']:.1f} ms** | **{g['p99_ms']:.1f} ms** | {g['max_ms']:.1f} ms |")
        if r:
            w(f"| Redis replica | {d} ms | {r['samples']} | {r['p50_ms']:.1f} ms | {r['p99_ms']:.1f} ms | {r['max_ms']:.1f} ms |")
        w("")
        ratio = t["with_two_peers_set_per_s"] / t["standalone_set_per_s"]
        w("| write throughput, `redis-benchmark -t set -P 16 -c 50 -d 200` | SET/s | vs standalone | writer CPU µs/write |")
        w("|---|---:|---:|---:|")
        w(f"| standalone node | {t['standalone_set_per_s']:,.0f} | 1.00x | {t['standalone_cpu_us_per_write']:.2f} |")
        w(f"| node pushing to 2 remote peers | {t['with_two_peers_set_per_s']:,.0f} | **{ratio:.2f}x** | "
          f"{t['with_two_peers_cpu_us_per_write']:.2f} |")
        w("")
        w("The two peers, their WAN proxies and redis-benchmark run on the same 2 cores as the writer, so the "
          "throughput ratio mostly measures the peers' work competing for the CPU; the writer's own CPU per write "
          "is the figure that carries over to one machine per node.")
    else:
        w("| measurement | result |")
        w("|---|---|")
        w("| replication lag and throughput | not measured in this run (phase skipped or failed) |")
    w("")
    # Goals
    w("## Goals (issue 5) against this run")
    w("")
    w("| goal | measured | met |")
    w("|---|---|---|")
    if results["resp"]:
        rows = {(r["test"], r["pipeline"]): r for r in summarize_resp(results, False)}
        for t in ("SET", "GET"):
            r = rows.get((t, 16))
            if r:
                w(f"| {t} `-P 16` throughput ≥ 1.0x redis-server | {r['ratio']:.2f}x | "
                  f"{'yes' if r['ratio'] >= 1.0 else 'no'} |")
        for t in ("SET", "GET"):
            r = rows.get((t, 1))
            if r:
                w(f"| {t} `-P 1` throughput ≥ 1.0x and p99 ≤ 1.2x redis-server (performance-anchors.md) | "
                  f"{r['ratio']:.2f}x, p99 {r['p99_ratio']:.2f}x | "
                  f"{'yes' if r['ratio'] >= 1.0 and r['p99_ratio'] <= 1.2 else 'no'} |")
        prow = {(r["test"], r["pipeline"]): r for r in summarize_resp(results, True)}
        for t in ("SET", "GET"):
            r = prow.get((t, 16))
            if r:
                w(f"| {t} `-P 16`, pinned, ≥ 1.0x redis-server (performance-anchors.md) | {r['ratio']:.2f}x | "
                  f"{'yes' if r['ratio'] >= 1.0 else 'no'} |")
    if len(results["memory"]) == 2:
        mem = {r["system"]: r for r in results["memory"]}
        ratio = mem["geocache"]["bytes_per_key"] / mem["redis"]["bytes_per_key"]
        w(f"| memory per key ≤ 0.8x redis-server | {ratio:.2f}x "
          f"({mem['geocache']['bytes_per_key']:.0f} vs {mem['redis']['bytes_per_key']:.0f} B/key) | "
          f"{'yes' if ratio <= 0.8 else 'no'} |")
    rec = results["recovery"]
    if rec:
        g = [r for r in rec if r["system"] == "geocache" and r["mode"] == "snapshot"]
        rd = [r for r in rec if r["system"] == "redis" and r["mode"] == "rdb"]
        if g and rd:
            gs = median([r["ready_s"] / (r["disk_bytes"] / 1e9) for r in g])
            rs_ = median([r["ready_s"] / (r["disk_bytes"] / 1e9) for r in rd])
            gt, rt = median([r["ready_s"] for r in g]), median([r["ready_s"] for r in rd])
            w(f"| reload ≥ 2x faster than Redis RDB, ≤ 5 s/GB (performance-anchors.md) | snapshot {gt:.2f} s vs RDB "
              f"{rt:.2f} s for the same keys ({rt / gt:.2f}x faster); {gs:.1f} s/GB of snapshot vs {rs_:.1f} s/GB of "
              f"RDB | {'yes' if rt / gt >= 2 and gs <= 5 else 'no'} |")
    rep = results.get("replication")
    if rep:
        g, r, d = rep["geocache"], rep.get("redis"), rep["delay_ms"]
        ok = g["p99_ms"] <= d + 10 and (r is None or g["p99_ms"] <= r["p99_ms"] * 1.05)
        w(f"| replication lag p99 ≤ one-way delay + 10 ms, ≤ a Redis replica | {g['p99_ms']:.1f} ms at {d} ms "
          f"(Redis replica {r['p99_ms']:.1f} ms) | {'yes' if ok else 'no'} |" if r else
          f"| replication lag p99 ≤ one-way delay + 10 ms | {g['p99_ms']:.1f} ms at {d} ms | "
          f"{'yes' if ok else 'no'} |")
        t = rep["throughput"]
        ratio = t["with_two_peers_set_per_s"] / t["standalone_set_per_s"]
        w(f"| write throughput with 2 remote peers ≥ 0.8x standalone | {ratio:.2f}x (peers on the same 2 cores) | "
          f"{'yes' if ratio >= 0.8 else 'no'} |")
    w("")
    w("## Method and caveats")
    w("")
    w("- Everything runs on one machine over loopback (random `127.x.y.z` addresses and ports); the load "
      "generator shares the cores with the server. redis-server is single-threaded (no I/O threads); "
      "geocache-node runs a Tokio multi-threaded runtime with one worker per core. Unpinned, GeoCache can use "
      "both cores while redis-benchmark also needs one, so the pinned table (server and client on one core "
      "each) is the like-for-like comparison of per-core efficiency, and server CPU µs/op shows it too.")
    w("- redis-benchmark's `-d` payload is not JSON, so GeoCache stores it as an opaque string; the "
      "`SET 200 B JSON doc` rows send a JSON document (GeoCache validates it and stores it as JSON).")
    w("- Systems are alternated test by test (A B, then B A), each test repeated; the median is reported. "
      "The machine is shared: before each measurement the script waits (within a budget, `BENCH_QUIET_BUDGET`) "
      "until other work uses under `BENCH_CLEAN_THRESHOLD` (0.2) cores, and it records how many cores other work used during each run "
      "(machine busy time minus server and client CPU) — see every run in the details.")
    w("- Memory is RSS from `/proc/<pid>/status`, not the allocator's view; both processes are fresh.")
    w("- Knobs: `BENCH_QUICK=1`, `BENCH_ROUNDS`, `BENCH_N_P1`, `BENCH_N_P16`, `BENCH_KEYSPACE`, `BENCH_CLIENTS`, "
      "`BENCH_PIN=0`, `BENCH_WRK_DURATION`, `BENCH_MEM_KEYS`, `BENCH_RECOVERY_KEYS`, `BENCH_SKIP=resp,pinned,http,"
      "memory,recovery,profile`, `BENCH_QUIET_BUDGET`, `BENCH_PROFILER=perf|callgrind|none`; see `tests/bench/run.sh`.")
    w(f"- This run: rounds {c['rounds']}, clients {c['clients']}, value {c['value_bytes']} B, key space "
      f"{c['keyspace']:,}, `-n` {c['n_p1']:,} (`-P 1`) / {c['n_p16']:,} (`-P 16`), memory keys {c['mem_keys']:,}, "
      f"recovery keys {c['recovery_keys']:,}, pinned table {'on' if c['pin'] else 'off'}.")
    w("")
    with open(os.path.join(OUT, "RESULTS.md"), "w") as f:
        f.write("\n".join(L))


# --- SVG chart (hand-written, no dependency) ---------------------------------

RED, GEO, GEO2 = "#d6453d", "#2b6cb0", "#7fb3e6"


def svg_bar_panel(x0, y0, w, h, title, groups, unit, series, note=None):
    """groups: [(label, [values per series], annotation)]; series: [(name, color)]."""
    out = []
    out.append(f'<text x="{x0}" y="{y0 - 28}" font-size="15" font-weight="bold">{esc(title)}</text>')
    vals = [v for _, vs, _ in groups for v in vs if v is not None]
    vmax = max(vals) if vals else 1
    vmax = nice_ceiling(vmax * 1.12)  # headroom for the labels
    # axes and grid
    for i in range(5):
        yv = vmax * i / 4
        yy = y0 + h - h * i / 4
        out.append(f'<line x1="{x0}" y1="{yy:.1f}" x2="{x0 + w}" y2="{yy:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{x0 - 6}" y="{yy + 4:.1f}" font-size="11" text-anchor="end">{fmt_axis(yv)}</text>')
    out.append(f'<text x="{x0 - 48}" y="{y0 + h / 2}" font-size="11" transform="rotate(-90 {x0 - 48} {y0 + h / 2})" '
               f'text-anchor="middle">{esc(unit)}</text>')
    n = len(groups)
    gw = w / max(n, 1)
    ns = len(series)
    bw = min(34, gw * 0.8 / max(ns, 1))
    for gi, (label, vs, ann) in enumerate(groups):
        present = [(si, v) for si, v in enumerate(vs) if v is not None]
        gx = x0 + gi * gw + (gw - bw * len(present)) / 2
        for j, (si, v) in enumerate(present):
            bh = h * v / vmax
            out.append(f'<rect x="{gx + j * bw:.1f}" y="{y0 + h - bh:.1f}" width="{bw - 2:.1f}" height="{bh:.1f}" '
                       f'fill="{series[si][1]}"><title>{esc(series[si][0])}: {fmt_axis(v)} {esc(unit)}</title></rect>')
        if ann:
            top = max(v for v in vs if v is not None) if any(v is not None for v in vs) else 0
            out.append(f'<text x="{x0 + gi * gw + gw / 2:.1f}" y="{y0 + h - h * top / vmax - 6:.1f}" font-size="11" '
                       f'text-anchor="middle" font-weight="bold">{esc(ann)}</text>')
        for li, part in enumerate(label.split("\n")):
            out.append(f'<text x="{x0 + gi * gw + gw / 2:.1f}" y="{y0 + h + 15 + li * 13}" font-size="11" '
                       f'text-anchor="middle">{esc(part)}</text>')
    # legend
    lx = x0
    for name, color in series:
        out.append(f'<rect x="{lx}" y="{y0 - 20}" width="10" height="10" fill="{color}"/>')
        out.append(f'<text x="{lx + 14}" y="{y0 - 11}" font-size="11">{esc(name)}</text>')
        lx += 16 + 7 * len(name)
    if note:
        out.append(f'<text x="{x0 + w}" y="{y0 - 11}" font-size="10" text-anchor="end" fill="#555">{esc(note)}</text>')
    return out


def nice_ceiling(v):
    if v <= 0:
        return 1
    import math
    e = 10 ** math.floor(math.log10(v))
    for m in (1, 1.2, 1.6, 2, 2.4, 3.2, 4, 4.8, 6, 8, 10):  # quarters stay round
        if m * e >= v:
            return m * e
    return 10 * e


def fmt_axis(v):
    if v >= 1000:
        return f"{v / 1000:,.0f}k" if v >= 10000 else f"{v / 1000:,.1f}k"
    if v >= 10:
        return f"{v:,.0f}"
    return f"{v:.2f}".rstrip("0").rstrip(".") if v else "0"


def esc(s):
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def md(s):
    """Text for a Markdown table cell."""
    return str(s).replace("|", "\\|")


def write_svg(results, info):
    W = 1100
    panels = []
    y = 60
    parts = []
    if results["resp"]:
        for pinned in (False, True):
            rows = summarize_resp(results, pinned)
            if not rows:
                continue
            groups = [(test_label(r["test"], r["pipeline"]).replace("`", "").replace(", ", "\n"),
                       [r["redis"]["rps"], r["geocache"]["rps"]], f"{r['ratio']:.2f}x") for r in rows]
            title = "Redis protocol throughput (redis-benchmark, 50 clients, 200 B)" + (
                ", pinned 1 core server / 1 core client" if pinned else "")
            parts += svg_bar_panel(90, y + 40, W - 130, 220, title, groups, "ops/s",
                                   [("redis-server", RED), ("GeoCache", GEO)], note="label: GeoCache/Redis")
            y += 340
    if results["http"] and results["resp"]:
        rows = {(r["test"], r["pipeline"]): r for r in summarize_resp(results, False)}
        groups = []
        for mode, rt in (("PUT", "SET-JSON"), ("GET", "GET")):
            rs = [r["rps"] for r in results["http"] if r["test"] == mode and is_clean(r)] or \
                [r["rps"] for r in results["http"] if r["test"] == mode]
            eq = rows.get((rt, 1))
            if rs and eq:
                h = median(rs)
                groups.append((f"{mode} (HTTP)\nvs {'SET JSON' if rt == 'SET-JSON' else 'GET'} (RESP -P 1)",
                               [eq["redis"]["rps"], eq["geocache"]["rps"], h], f"HTTP/RESP {h / eq['geocache']['rps']:.2f}x"))
        if groups:
            parts += svg_bar_panel(90, y + 40, (W - 130) / 2 - 40, 200, "HTTP JSON API (wrk) next to RESP -P 1", groups,
                                   "ops/s", [("redis RESP", RED), ("GeoCache RESP", GEO), ("GeoCache HTTP", GEO2)])
    if len(results["memory"]) == 2:
        mem = {r["system"]: r for r in results["memory"]}
        payload = results["memory"][0]["payload_bytes_per_key"]
        groups = [("bytes per key\n(RSS delta / keys)", [mem["redis"]["bytes_per_key"], mem["geocache"]["bytes_per_key"]],
                   f"{mem['geocache']['bytes_per_key'] / mem['redis']['bytes_per_key']:.2f}x"),
                  ("overhead per key\n(minus key+value)", [mem["redis"]["bytes_per_key"] - payload,
                                                           mem["geocache"]["bytes_per_key"] - payload],
                   f"{(mem['geocache']['bytes_per_key'] - payload) / (mem['redis']['bytes_per_key'] - payload):.2f}x"),
                  ("marginal per key\n(second half)", [mem["redis"]["marginal_bytes_per_key"],
                                                       mem["geocache"]["marginal_bytes_per_key"]],
                   f"{mem['geocache']['marginal_bytes_per_key'] / mem['redis']['marginal_bytes_per_key']:.2f}x")]
        xm = 90 + (W - 130) / 2 + 40 if (results["http"] and results["resp"]) else 90
        parts += svg_bar_panel(xm, y + 40, (W - 130) / 2 - 40, 200, f"Memory, {CFG['mem_keys']:,} keys of 200 B JSON + TTL",
                               groups, "bytes", [("redis-server", RED), ("GeoCache", GEO)])
    if results["http"] or results["memory"]:
        y += 320
    if results["recovery"]:
        groups = []
        rdb = [r["ready_s"] for r in results["recovery"] if r["system"] == "redis" and r["mode"] == "rdb"]
        rdb = median(rdb) if rdb else None
        for sysname, mode, label in (("redis", "aof", "redis AOF"), ("redis", "rdb", "redis RDB"),
                                     ("geocache", "log", "GeoCache log"), ("geocache", "snapshot", "GeoCache snapshot")):
            rs = [r for r in results["recovery"] if r["system"] == sysname and r["mode"] == mode]
            if rs:
                t = median([r["ready_s"] for r in rs])
                vals = [t, None] if sysname == "redis" else [None, t]
                ann = f"{t:.1f} s" + (f" ({t / rdb:.2f}x RDB)" if rdb and mode != "rdb" else "")
                groups.append((f"{label}\n{rs[0]['disk_bytes'] / 1e6:,.0f} MB", vals, ann))
        parts += svg_bar_panel(90, y + 40, W - 130, 200,
                               f"Restart until ready, {CFG['recovery_keys']:,} keys on disk (lower is better)", groups,
                               "seconds", [("redis-server", RED), ("GeoCache", GEO)])
        y += 320
    H = y + 30
    head = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
            f'font-family="Helvetica, Arial, sans-serif">',
            f'<rect width="{W}" height="{H}" fill="white"/>',
            f'<text x="20" y="28" font-size="18" font-weight="bold">GeoCache vs redis-server {esc(info["redis"])}</text>',
            f'<text x="20" y="46" font-size="12" fill="#444">{esc(info["date"])} · {info["nproc"]} × {esc(info["cpu"])} · '
            f'kernel {esc(info["kernel"])} · geocache-node {esc(info["geocache"])}'
            f'{" · QUICK mode" if CFG["quick"] else ""}</text>']
    with open(os.path.join(OUT, "results.svg"), "w") as f:
        f.write("\n".join(head + parts + ["</svg>", ""]))


# --- PROFILE.md generated section --------------------------------------------

BEGIN, END = "<!-- BEGIN GENERATED by tests/bench/run.sh -->", "<!-- END GENERATED -->"


def write_profile_md(results, info):
    prof = results["profile"]
    if not prof.get("runs"):
        return
    L = [BEGIN, "", f"Generated {info['date']} on {info['nproc']} × {info['cpu']}, geocache-node {info['geocache']}, "
         f"redis-server {info['redis']}; tool: {prof['tool']}" +
         (" (`perf record -F 999 --call-graph dwarf -p <server>` while redis-benchmark runs, 50 clients, 200 B "
          "values, 100k keys; software cpu-clock event, as this VM exposes no hardware counters)"
          if prof["tool"] == "perf" else " (`valgrind --tool=callgrind`, instruction counts)") + ".", "",
         "How to read: each sample of the server process is charged to the syscall it is in (kernel samples) or to "
         "the innermost GeoCache function on its stack (user samples; so `memcmp` called by `Shard::find` counts "
         "for `Shard::find`). For redis-server, user samples are charged to the leaf function. µs/op = share × "
         "server CPU per request, measured while profiled (perf adds a little).", ""]
    for key, e in prof["runs"].items():
        L.append(f"### {key}")
        L.append("")
        cpu = f", server CPU {e['cpu_us_per_op']:.2f} µs/op" if e.get("cpu_us_per_op") else ""
        samples = f", {e['samples']:,} samples" if e.get("samples") else ""
        L.append(f"{e['rps']:,.0f} ops/s while profiled{cpu}{samples}.")
        L.append("")
        cpu_op = e.get("cpu_us_per_op")
        if e.get("buckets"):
            L.append("| where (summary) | share | µs/op |")
            L.append("|---|---:|---:|")
            for name, pct in e["buckets"]:
                if pct >= 0.5:
                    L.append(f"| {esc(name)} | {pct:.1f}% | {pct / 100 * cpu_op:.2f} |" if cpu_op else
                             f"| {esc(name)} | {pct:.1f}% | |")
            L.append("")
        if e.get("owners"):
            L.append("<details" + (" open" if e["system"] == "geocache" and "-P 16" in key else "") +
                     "><summary>charged to (function or syscall)</summary>")
            L.append("")
            L.append("| charged to | share | µs/op | where inside (leaf functions) |")
            L.append("|---|---:|---:|---|")
            for o in e["owners"][:18]:
                if o["pct"] < 0.4:
                    break
                leaves = ", ".join(f"{md(s)} {p:.0f}%" for s, p in o["leaves"])
                us = f"{o['pct'] / 100 * cpu_op:.2f}" if cpu_op else ""
                L.append(f"| `{md(shorten(o['owner'], 90))}` | {o['pct']:.1f}% | {us} | {leaves} |")
            L.append("")
            L.append("</details>")
            L.append("")
        L.append("<details><summary>flat profile (self time per function)</summary>")
        L.append("")
        L.append("| self | dso | function |")
        L.append("|---:|---|---|")
        for pct, dso, sym in e["self"][:20]:
            L.append(f"| {pct:.1f}% | {md(dso)} | `{md(shorten(sym))}` |")
        L.append("")
        L.append("</details>")
        L.append("")
    L.append(END)
    gen = "\n".join(L)
    path = os.path.join(OUT, "PROFILE.md")
    if os.path.exists(path):
        with open(path) as f:
            text = f.read()
        if BEGIN in text and END in text:
            text = text[: text.index(BEGIN)] + gen + text[text.index(END) + len(END):]
        else:
            text = text.rstrip() + "\n\n## Profile data\n\n" + gen + "\n"
    else:
        text = "# Where the time goes (RESP hot path)\n\n## Profile data\n\n" + gen + "\n"
    with open(path, "w") as f:
        f.write(text)


# ---------------------------------------------------------------------------


def phase_replication(results):
    """Replication lag through the WAN proxy next to a Redis replica behind the same proxy, and
    write throughput with two remote peers, measured by the `lagbench` binary (tests/src/bin)."""
    lagbench = os.environ.get("LAGBENCH_BIN", "")
    if not lagbench or not os.access(lagbench, os.X_OK):
        raise BenchError("LAGBENCH_BIN is not set or not executable (run.sh builds it)")
    delay = env_int("BENCH_WAN_DELAY_MS", 20)
    samples = env_int("BENCH_LAG_SAMPLES", 100 if QUICK else 500)
    writes = env_int("BENCH_REPL_WRITES", 200000 if QUICK else 1000000)
    cmd = [lagbench, "--node-bin", NODE_BIN, "--delay-ms", str(delay), "--samples", str(samples),
           "--load", str(env_int("BENCH_LAG_LOAD", 2000)), "--writes", str(writes)]
    log("replication: " + " ".join(cmd))
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise BenchError(f"lagbench failed: {out.stderr[-2000:]}")
    last = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if not last:
        raise BenchError("lagbench printed no result")
    results["replication"] = json.loads(last[-1])


def main():
    global JSON_VALUE
    os.makedirs(os.path.join(WORK, "logs"), exist_ok=True)
    os.makedirs(OUT, exist_ok=True)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    JSON_VALUE = json_doc(42, CFG["value_bytes"])
    if not os.access(NODE_BIN, os.X_OK):
        raise BenchError(f"{NODE_BIN} is missing: build it with cargo build --release -p geocache-node")
    info = machine_info()
    log(f"machine: {info['nproc']} × {info['cpu']}, kernel {info['kernel']}, redis {info['redis']}, "
        f"geocache {info['geocache']}; load {info['loadavg_start']}")
    log(f"config: {json.dumps({k: (sorted(v) if isinstance(v, set) else v) for k, v in CFG.items()})}")
    results = {"config": {k: (sorted(v) if isinstance(v, set) else v) for k, v in CFG.items()}, "machine": info,
               "resp": [], "http": [], "memory": [], "recovery": [], "profile": {}, "replication": None}
    t0 = time.monotonic()
    if not CFG["pin"] or CPUS < 2 or "resp" in CFG["skip"]:
        CFG["skip"].add("pinned")
    phases = [("resp", lambda: phase_resp(results, False)),
              ("pinned", lambda: phase_resp(results, True)),
              ("http", lambda: phase_http(results)),
              ("memory", lambda: phase_memory(results)),
              ("recovery", lambda: phase_recovery(results)),
              ("replication", lambda: phase_replication(results)),
              ("profile", lambda: phase_profile(results))]
    failed = []
    try:
        for name, fn in phases:
            if name in CFG["skip"]:
                log(f"skipping {name} (BENCH_SKIP)")
                continue
            t = time.monotonic()
            try:
                fn()
            except BenchError as e:
                # Report what we have; a failed phase is named in the output and the exit status.
                log(f"phase {name} FAILED: {e}")
                failed.append(f"{name}: {e}")
            log(f"phase {name} took {time.monotonic() - t:.0f}s")
    finally:
        stop_all()
    info["loadavg_end"] = loadavg()
    info["duration_s"] = round(time.monotonic() - t0)
    results["failed"] = failed
    write_results_md(results, info)
    if failed:
        with open(os.path.join(OUT, "RESULTS.md"), "a") as f:
            f.write("\n## Failed phases\n\n" + "\n".join(f"- {x}" for x in failed) + "\n")
    write_svg(results, info)
    write_profile_md(results, info)
    with open(os.path.join(OUT, "results.json"), "w") as f:
        json.dump(results, f, indent=1, default=list)
    log(f"wrote {OUT}/RESULTS.md, results.svg, results.json, PROFILE.md in {info['duration_s']}s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
