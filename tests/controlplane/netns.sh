#!/usr/bin/env bash
# Runs a command in a private network and mount namespace: the test kubelets give pods
# addresses, routes and veth pairs, and the machine's own network must not see any of it.
# Inside, only loopback exists (brought up here); everything the tier starts lives there.
# Nothing inside reaches the network: build what is needed before (e2e.sh and up.sh do).
#   usage: tests/controlplane/netns.sh COMMAND [ARGS...]
#   e.g.:  tests/controlplane/netns.sh bash   (then up.sh, kubectl, curl in that shell)
#   or:    tests/controlplane/netns.sh --dir DIR COMMAND [ARGS...]
#          runs COMMAND in the named namespace up.sh made for DIR (up.sh started outside).
# Needs root (CI runs as root). Inside, GEOCACHE_NETNS names the namespace, so that nested
# calls (and up.sh, e2e.sh) know they are in one and run COMMAND directly. (The namespace
# of PID 1 is no reference: reading it needs a capability containers often lack.)
set -euo pipefail
# shellcheck disable=SC2016 # expanded by the bash inside the namespace
enter='ip link set lo up 2>/dev/null || true; GEOCACHE_NETNS="$(readlink /proc/self/ns/net)"; export GEOCACHE_NETNS; exec "$@"'
if [ "${1:-}" = "--dir" ]; then
  dir="${2:?usage: netns.sh --dir DIR COMMAND...}"
  if [ ! -f "$dir/netns" ]; then
    echo "netns.sh: $dir has no network namespace (up.sh was not run there from outside one)" >&2
    exit 1
  fi
  name="$(cat "$dir/netns")"
  shift 2
  exec ip netns exec "$name" bash -c "$enter" netns.sh "$@"
fi
if [ -n "${GEOCACHE_NETNS:-}" ] && [ "$GEOCACHE_NETNS" = "$(readlink /proc/self/ns/net)" ]; then
  exec "$@"
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "netns.sh: the test control plane needs root (network namespaces, mounts, veth pairs)" >&2
  exit 1
fi
exec unshare --net --mount --propagation private -- bash -c "$enter" netns.sh "$@"
