#!/usr/bin/env bash
# Runs a command in a private network and mount namespace: the test kubelets give pods
# addresses, routes and veth pairs, and the machine's own network must not see any of it.
# Inside, only loopback exists (brought up here); everything the tier starts lives there.
#   usage: tests/controlplane/netns.sh COMMAND [ARGS...]
#   e.g.:  tests/controlplane/netns.sh bash   (then up.sh, kubectl, curl in that shell)
# Needs root (CI runs as root); nested calls run COMMAND directly.
set -euo pipefail
if [ "$(readlink /proc/self/ns/net)" != "$(readlink /proc/1/ns/net)" ]; then
  exec "$@"
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "netns.sh: the test control plane needs root (network namespaces, mounts, veth pairs)" >&2
  exit 1
fi
exec unshare --net --mount --propagation private -- bash -c 'ip link set lo up && exec "$@"' netns.sh "$@"
