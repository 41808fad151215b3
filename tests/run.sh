#!/usr/bin/env bash
# Runs every test of GeoCache. It installs what the tests need when it is missing
# (Debian's redis-tools for the real redis-cli), then runs the workspace's tests.
# Usage: tests/run.sh            (from anywhere in the repository)
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

need_apt=()
command -v redis-cli >/dev/null 2>&1 || need_apt+=(redis-tools)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
if [ ${#need_apt[@]} -gt 0 ]; then
  step "installing ${need_apt[*]} (Debian packages)"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
redis-cli --version

step "formatting (cargo fmt --check)"
cargo fmt --all -- --check

step "unit, property and process tests (cargo test --workspace)"
cargo test --workspace --locked --all-targets

step "all tests passed"
