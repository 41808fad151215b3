# Shared by the scripts of the kind tier on machines without a container registry (sourced;
# see README.md next to this file). Versions, cache paths, step logging and the lock.
# shellcheck shell=bash disable=SC2034 # the variables are used by the scripts that source this

KIND_VERSION=v0.33.0
K8S_VERSION=v1.37.2
DEBIAN_SUITE=bookworm

GEOCACHE_CACHE="${GEOCACHE_CACHE:-$HOME/.cache/geocache}"
kind_lib_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
kind_repo_dir="$(cd "$kind_lib_dir/../../.." && pwd)"
# CoreDNS and local-path-provisioner (the only one on the Go module proxy: v0.0.30) come from
# the add-ons module (addons/go.mod), which names their versions; their cache folders are
# keyed by the module's files too (the plugins CoreDNS is built with, the dependencies).
COREDNS_VERSION="$(awk '$1 == "require" && $2 == "github.com/coredns/coredns" { print $3 }' "$kind_lib_dir/addons/go.mod")"
LOCAL_PATH_VERSION="$(awk '$1 == "github.com/rancher/local-path-provisioner" && $2 != "" { print $2; exit }' "$kind_lib_dir/addons/go.mod")"
addons_key="$(cat "$kind_lib_dir/addons/go.mod" "$kind_lib_dir/addons/go.sum" "$kind_lib_dir/addons/main.go" | sha256sum | cut -c1-12)"
# Where the offline tier keeps what it builds, one folder per input version.
kind_bin_cache="$GEOCACHE_CACHE/kind-$KIND_VERSION"
k8s_node_cache="$GEOCACHE_CACHE/kind-node-k8s-$K8S_VERSION"
coredns_cache="$GEOCACHE_CACHE/coredns-$COREDNS_VERSION-$addons_key"
local_path_cache="$GEOCACHE_CACHE/local-path-provisioner-$LOCAL_PATH_VERSION-$addons_key"
rootfs_cache="$GEOCACHE_CACHE/debian-$DEBIAN_SUITE-rootfs"
# The engine's data root: images survive between runs (the engine itself does not).
engine_dir="$GEOCACHE_CACHE/docker-engine"
# The engine's network namespace and the socket clients use (see engine.sh).
ENGINE_NETNS="${ENGINE_NETNS:-geocache-kind}"
engine_run_dir="/run/geocache-kind"
engine_sock="$engine_run_dir/docker.sock"

kind_t0="${kind_t0:-$SECONDS}"
kind_step_started=$SECONDS
kind_step_name=""
# step NAME: ends the previous step (with its duration) and starts the next.
step() {
  kind_step_done
  kind_step_name="$*"
  kind_step_started=$SECONDS
  printf '\n==> [%4ss] %s\n' "$((SECONDS - kind_t0))" "$*"
}
kind_step_done() {
  if [ -n "$kind_step_name" ]; then
    printf '    (%ss: %s)\n' "$((SECONDS - kind_step_started))" "$kind_step_name"
  fi
  kind_step_name=""
}
die() {
  echo "error: $*" >&2
  exit 1
}
# with_lock NAME COMMAND...: runs COMMAND holding ~/.cache/geocache/NAME.lock, so that two
# runs (or another engineer's build) never write the same cache entry at once.
with_lock() {
  local name=$1
  shift
  mkdir -p "$GEOCACHE_CACHE"
  flock "$GEOCACHE_CACHE/$name.lock" "$@"
}
