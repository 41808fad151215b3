#!/usr/bin/env bash
# Runs every test of GeoCache. It installs what the tests need when it is missing
# (Debian's redis-tools for the real redis-cli, shellcheck; helm, etcd and Kubernetes
# v1.37.2 built with Go into ~/.cache/geocache), then checks formatting and clippy's lints, runs
# the workspace's tests, lints the chart and the shell scripts, runs the end-to-end tier against real control planes, and
# last the kind tier: the three-cluster scenario on kind, real containers from our
# Dockerfiles (tests/e2e/kind/run.sh; offline Docker engine in a network namespace of its
# own, everything built here and cached in ~/.cache/geocache: 30 min on a fresh machine of
# 2 cores shared with other work, 5.5 min warm, see tests/e2e/kind/README.md).
# Usage: tests/run.sh            (from anywhere in the repository; as root for both e2e tiers)
# GEOCACHE_SKIP_E2E=1 skips the end-to-end tier (it needs root: network namespaces);
# GEOCACHE_SKIP_KIND=1 skips the kind tier (it runs by default as root; not run otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

# The kind tier's downloads (debootstrap, Go modules) run in the background while the
# workspace's tests build; stopped (its whole process group) if this script ends first.
kind_fetch_pid=""
stop_kind_fetch() {
  if [ -n "$kind_fetch_pid" ] && kill -0 "$kind_fetch_pid" 2>/dev/null; then
    kill -TERM -- "-$kind_fetch_pid" 2>/dev/null || true
    wait "$kind_fetch_pid" 2>/dev/null || true
  fi
  if [ -n "${kind_fetch_log:-}" ]; then rm -f "$kind_fetch_log"; fi
}
trap stop_kind_fetch EXIT
kind_tier=0
if [ "${GEOCACHE_SKIP_KIND:-0}" != 1 ] && [ "$(id -u)" -eq 0 ]; then kind_tier=1; fi

need_apt=()
command -v redis-cli >/dev/null 2>&1 || need_apt+=(redis-tools)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
# libfaketime: the fault-injection and clock-skew tests offset a node's clock with it.
command -v faketime >/dev/null 2>&1 || need_apt+=(faketime)
# The end-to-end tier: network namespaces and veth pairs (ip, unshare), HTTP checks (curl).
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v unshare >/dev/null 2>&1 || need_apt+=(util-linux)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
if [ ${#need_apt[@]} -gt 0 ]; then
  step "installing ${need_apt[*]} (Debian packages)"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
redis-cli --version
# A debug build of the workspace with its tests takes about 7 GB, and etcd stops writing on a
# full disk (the e2e tier's API servers then never come up): say so before it happens.
avail_kb="$(df -Pk . | awk 'NR == 2 { print $4 }')"
if [ "${avail_kb:-0}" -lt $((10 * 1024 * 1024)) ]; then
  echo "warning: only $((avail_kb / 1024)) MB free on this disk; the build and the e2e tier need about 10 GB" >&2
fi

if [ "$kind_tier" = 1 ]; then
  # Its Debian packages now (apt-get holds dpkg's lock: not in the background), then what it
  # downloads, in the background (setsid: a process group of its own, to stop it as one).
  step "kind tier: Debian packages (tests/e2e/kind/prepare.sh packages); debootstrap and Go modules in the background"
  tests/e2e/kind/prepare.sh packages
  kind_fetch_log="$(mktemp "${TMPDIR:-/tmp}/geocache-kind-fetch.XXXXXX")"
  setsid tests/e2e/kind/prepare.sh fetch >"$kind_fetch_log" 2>&1 </dev/null &
  kind_fetch_pid=$!
fi

step "formatting (cargo fmt --check)"
cargo fmt --all -- --check

# Lints: clippy's defaults, and the workspace lints that keep unwrap, expect and panic out of
# the node's and the operator's non-test code (Cargo.toml, clippy.toml).
step "lints (cargo clippy --workspace --all-targets -D warnings)"
cargo clippy --version >/dev/null 2>&1 || { echo "clippy is missing: rustup component add clippy" >&2; exit 1; }
cargo clippy --workspace --all-targets --locked -- -D warnings

step "unit, property and process tests (cargo test --workspace)"
cargo test --workspace --locked --all-targets

step "operator chart (helm lint, helm template)"
helm="$(tests/helm.sh)"
"$helm" version --short
"$helm" lint --strict charts/geocache-operator
"$helm" template geocache charts/geocache-operator --namespace geocache-system >/dev/null
"$helm" template geocache charts/geocache-operator --namespace geocache-system \
  --set 'watchNamespaces={team-a,team-b}' --set replicaCount=2 >/dev/null
echo "chart lints and renders (all namespaces; two watched namespaces with two replicas)"

step "shell scripts (shellcheck)"
tests/lint-shell.sh

if [ "${GEOCACHE_SKIP_E2E:-}" = "1" ]; then
  step "end-to-end tier skipped (GEOCACHE_SKIP_E2E=1)"
else
  step "end-to-end tier: the operator and nodes on real Kubernetes control planes (tests/controlplane/e2e.sh)"
  tests/controlplane/e2e.sh
fi

# The kind tier (real containers, images from our Dockerfiles; tests/e2e/kind/README.md).
if [ "${GEOCACHE_SKIP_KIND:-0}" = "1" ]; then
  step "kind tier skipped (GEOCACHE_SKIP_KIND=1)"
elif [ "$kind_tier" != 1 ]; then
  step "kind tier skipped: it needs root here (an offline Docker engine in a network namespace); with Docker, run tests/e2e/kind/run.sh"
else
  step "kind tier: waiting for its background downloads (prepare.sh fetch)"
  fetch_rc=0
  wait "$kind_fetch_pid" || fetch_rc=$?
  kind_fetch_pid=""
  cat "$kind_fetch_log"
  # Not fatal: prepare.sh does again whatever is missing, and says what fails.
  [ "$fetch_rc" -eq 0 ] || echo "warning: the background downloads failed (exit status $fetch_rc); the kind tier retries them" >&2
  step "kind tier: the three-cluster scenario on kind, real containers from our Dockerfiles (tests/e2e/kind/run.sh)"
  tests/e2e/kind/run.sh
fi

step "all tests passed"
