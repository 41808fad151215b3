#!/usr/bin/env bash
# GeoCache next to redis-server on this machine, in one run: redis-benchmark (SET/GET,
# -P 1 and -P 16), the HTTP JSON API with wrk, memory per key, restart time with data
# on disk, and a profile of the RESP hot path. Writes tests/bench/RESULTS.md,
# tests/bench/results.svg, tests/bench/results.json and the generated part of
# tests/bench/PROFILE.md. Not part of the test suite; it measures, it never asserts timings.
#
# Usage (from anywhere):  tests/bench/run.sh
#   BENCH_QUICK=1               small counts (a few minutes); numbers are indicative only
#   BENCH_ROUNDS=5              rounds per RESP test (median reported; systems alternate)
#   BENCH_N_P1=200000           redis-benchmark -n at -P 1
#   BENCH_N_P16=1000000         redis-benchmark -n at -P 16
#   BENCH_KEYSPACE=100000       redis-benchmark -r and wrk key space
#   BENCH_CLIENTS=50            redis-benchmark -c and wrk -c
#   BENCH_PIN=1                 also run the RESP tests with server and client pinned to one core each
#   BENCH_WRK_DURATION=10       seconds per wrk run
#   BENCH_MEM_KEYS=1000000      keys for the memory test
#   BENCH_RECOVERY_KEYS=4000000 keys for the restart test (4M x 200 B is ~1 GB of log)
#   BENCH_SKIP=http,profile     skip phases (resp, pinned, http, memory, recovery, profile)
#   BENCH_QUIET_BUDGET=900      seconds the script may wait in total for other work on the machine to calm down
#   BENCH_PROFILER=auto         perf | callgrind | none
#   BENCH_TIMEOUT=5400          hard limit for the whole measurement, seconds
#   BENCH_OUT=dir               where to write the results (default: tests/bench)
#   BENCH_KEEP=1                keep the work directory (logs, generated data)
#   BENCH_NO_INSTALL=1          do not apt-get install what is missing
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$BENCH_DIR/../.." && pwd)"
cd "$REPO"

step() { printf '\n==> %s\n' "$*"; }

WORKDIR="$(mktemp -d "${TMPDIR:-/tmp}/geocache-bench.XXXXXX")"
export BENCH_WORKDIR="$WORKDIR"
BENCH_PID=""

# Ends every process this script started (by pid: the Python driver, and each server,
# client and profiler the driver recorded in $WORKDIR/pids), then removes the work dir.
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if [ -n "$BENCH_PID" ] && kill -0 "$BENCH_PID" 2>/dev/null; then
    kill -TERM "$BENCH_PID" 2>/dev/null || true
    for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$BENCH_PID" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$BENCH_PID" 2>/dev/null || true
  fi
  if [ -f "$WORKDIR/pids" ]; then
    # "pid start-time" lines: only a process with the same start time is still ours.
    while read -r pid started; do
      if [ -z "$pid" ] || [ ! -r "/proc/$pid/stat" ]; then continue; fi
      now="$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{print $20}')"
      if [ "$now" = "$started" ]; then kill -KILL "$pid" 2>/dev/null || true; fi
    done <"$WORKDIR/pids"
  fi
  if [ "${BENCH_KEEP:-0}" = "1" ] || { [ "$status" -ne 0 ] && [ -d "$WORKDIR/logs" ]; }; then
    echo "work directory (logs) kept: $WORKDIR" >&2
    # Generated data sets are large; keep only the logs.
    rm -f "$WORKDIR"/*.resp "$WORKDIR"/*.data 2>/dev/null || true
    rm -rf "$WORKDIR"/geo-data "$WORKDIR"/redis-data 2>/dev/null || true
  else
    rm -rf "$WORKDIR"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- what the benchmark needs ------------------------------------------------------
need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
{ command -v redis-cli >/dev/null 2>&1 && command -v redis-benchmark >/dev/null 2>&1; } || need_apt+=(redis-tools)
command -v wrk >/dev/null 2>&1 || need_apt+=(wrk)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
command -v taskset >/dev/null 2>&1 || need_apt+=(util-linux)
if [ "${BENCH_PROFILER:-auto}" != "none" ] && ! command -v perf >/dev/null 2>&1 \
  && ! command -v valgrind >/dev/null 2>&1; then
  need_apt+=(linux-perf)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "${BENCH_NO_INSTALL:-0}" = "1" ]; then
    echo "missing: ${need_apt[*]} (BENCH_NO_INSTALL=1)" >&2
    exit 1
  fi
  step "installing ${need_apt[*]} (Debian packages)"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  timeout 600 $SUDO apt-get update -qq
  # linux-perf is optional (the profile falls back to callgrind, or is skipped).
  for pkg in "${need_apt[@]}"; do
    if ! DEBIAN_FRONTEND=noninteractive timeout 900 $SUDO apt-get install -y -qq --no-install-recommends "$pkg" \
      >/dev/null; then
      [ "$pkg" = linux-perf ] || { echo "cannot install $pkg" >&2; exit 1; }
      echo "note: linux-perf could not be installed; the profile will be skipped" >&2
    fi
  done
fi
redis-server --version
wrk --version 2>&1 | head -1 || true

# --- the release node ----------------------------------------------------------------
step "building the release node (cargo build --release -p geocache-node)"
timeout 3600 cargo build --release --locked -p geocache-node
timeout 3600 cargo build --release --locked -p geocache-tests --bin lagbench
export GEOCACHE_NODE_BIN="$REPO/target/release/geocache-node"
export LAGBENCH_BIN="$REPO/target/release/lagbench"
"$GEOCACHE_NODE_BIN" --version

# --- measure -------------------------------------------------------------------------
step "measuring (work directory $WORKDIR)"
timeout --signal=TERM --kill-after=30 "${BENCH_TIMEOUT:-5400}" python3 "$BENCH_DIR/bench.py" &
BENCH_PID=$!
status=0
wait "$BENCH_PID" || status=$?
BENCH_PID=""
if [ "$status" -ne 0 ]; then
  echo "the benchmark failed or timed out (status $status); see $WORKDIR/logs" >&2
  exit "$status"
fi

step "done: ${BENCH_OUT:-$BENCH_DIR}/RESULTS.md, results.svg, PROFILE.md"
