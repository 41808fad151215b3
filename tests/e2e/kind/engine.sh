#!/usr/bin/env bash
# A Docker engine of the kind tier's own, for machines without one (our CI): Debian's dockerd
# in a network namespace of its own, so that its bridges, routes and iptables rules never
# touch the machine's network. Clients reach it through its socket (DOCKER_HOST); whatever
# must reach the published ports of containers (kind's API servers on 127.0.0.1) runs
# inside the namespace: `engine.sh exec COMMAND...`.
#   usage: tests/e2e/kind/engine.sh up        start it (a no-op when it is running)
#          tests/e2e/kind/engine.sh down      stop it, its containers, and remove the namespace
#          tests/e2e/kind/engine.sh exec CMD  run CMD in the namespace with DOCKER_HOST set
#          tests/e2e/kind/engine.sh env       print the DOCKER_HOST line to eval
# Images stay in its data root (~/.cache/geocache/docker-engine) from one run to the next.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

netns_file="/run/netns/$ENGINE_NETNS"
pidfile="$engine_run_dir/dockerd.pid"
log="$engine_run_dir/dockerd.log"

# running: dockerd of the pid file is alive (a stale pid file of a crashed run may name a pid
# that another process has since taken, or a dead dockerd not yet reaped: the command name
# and the state are checked too).
running() {
  local pid stat
  [ -f "$pidfile" ] || return 1
  pid="$(cat "$pidfile" 2>/dev/null)"
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ] || return 1
  stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [ "${stat%% *}" != Z ]
}

in_netns() {
  DOCKER_HOST="unix://$engine_sock" nsenter --net="$netns_file" -- "$@"
}

# The machine's capability bounding set may lack CAP_SYS_RESOURCE (ours does): runc then
# refuses every container that asks for all capabilities ("unable to apply caps: operation
# not permitted"), and kind's nodes are privileged. The wrapper takes that capability out of
# the OCI spec before runc sees it. Only installed where the capability is missing.
cap_sys_resource_missing() {
  local bnd
  bnd="$(awk '/^CapBnd:/ { print $2 }' /proc/self/status)"
  # CAP_SYS_RESOURCE is capability 24.
  [ $(((16#$bnd >> 24) & 1)) -eq 0 ]
}

write_runc_wrapper() {
  cat >"$engine_run_dir/runc" <<'WRAPPER'
#!/bin/sh
# runc without CAP_SYS_RESOURCE (written by tests/e2e/kind/engine.sh): this machine's
# capability bounding set lacks it, and runc fails to grant what the spec asks for.
set -eu
cmd="" bundle="" process="" prev=""
for arg in "$@"; do
  case "$prev" in
    --bundle | -b) bundle=$arg ;;
    --process | -p) process=$arg ;;
  esac
  case "$arg" in
    --bundle=*) bundle=${arg#--bundle=} ;;
    --process=*) process=${arg#--process=} ;;
    create | run | exec) [ -n "$cmd" ] || cmd=$arg ;;
  esac
  prev=$arg
done
spec=""
case "$cmd" in
  create | run) spec="${bundle:-.}/config.json" ;;
  exec) spec=$process ;;
esac
if [ -n "$spec" ] && [ -f "$spec" ] && grep -q CAP_SYS_RESOURCE "$spec"; then
  jq -c 'del(.. | select(. == "CAP_SYS_RESOURCE"))' "$spec" >"$spec.geocache-tmp"
  mv "$spec.geocache-tmp" "$spec"
fi
exec /usr/sbin/runc "$@"
WRAPPER
  chmod 755 "$engine_run_dir/runc"
}

up() {
  [ "$(id -u)" -eq 0 ] || die "the engine needs root (network namespaces, dockerd)"
  for tool in dockerd containerd nsenter ip jq; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is missing: run tests/e2e/kind/prepare.sh first"
  done
  if running; then
    echo "engine: dockerd already running (pid $(cat "$pidfile")) in netns $ENGINE_NETNS"
    return 0
  fi
  # What a crashed or killed run left (the namespace, processes in it, containers' processes,
  # mounts and sockets under the exec root, a stale pid file) goes first.
  if [ -e "$netns_file" ] || [ -d "$engine_run_dir" ] || [ -n "$(container_pids)" ]; then
    echo "engine: removing what an earlier run left"
    down
  fi
  mkdir -p "$engine_run_dir" "$engine_dir/data"
  if [ ! -e "$netns_file" ]; then
    ip netns add "$ENGINE_NETNS"
  fi
  ip -n "$ENGINE_NETNS" link set lo up
  local config="$engine_run_dir/daemon.json"
  if cap_sys_resource_missing; then
    write_runc_wrapper
    echo "engine: CAP_SYS_RESOURCE is not in the bounding set; runc goes through $engine_run_dir/runc"
    cat >"$config" <<JSON
{"runtimes": {"geocache-runc": {"path": "$engine_run_dir/runc"}}, "default-runtime": "geocache-runc"}
JSON
  else
    echo '{}' >"$config"
  fi
  # `ip netns exec` would remount /sys and hide the cgroup mounts ("Devices cgroup isn't
  # mounted"); nsenter enters the network namespace alone. setsid: the engine outlives
  # this script, and a Ctrl-C in the caller's terminal does not reach it. Without fd 8: the
  # lock of run.sh (one run at a time) must not outlive the run in dockerd.
  DOCKER_HOST="" nsenter --net="$netns_file" -- setsid dockerd \
    --config-file "$config" \
    --data-root "$engine_dir/data" \
    --exec-root "$engine_run_dir/exec" \
    --pidfile "$pidfile" \
    -H "unix://$engine_sock" \
    --storage-driver overlay2 \
    --log-level warn \
    </dev/null >"$log" 2>&1 8>&- &
  local deadline=$((SECONDS + 60))
  until in_netns /usr/bin/docker version >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      tail -n 30 "$log" >&2
      die "dockerd did not answer within 60s (log: $log)"
    fi
    sleep 1
  done
  # Containers in the data root are an earlier run's (the engine stops and removes its
  # containers when it goes down; a killed run may not have): kind would refuse to create
  # clusters of the same names, and their volumes hold disk.
  local stale
  stale="$(in_netns /usr/bin/docker ps -aq)"
  if [ -n "$stale" ]; then
    echo "engine: removing $(wc -l <<<"$stale") containers an earlier run left"
    # shellcheck disable=SC2086 # one id per word
    in_netns /usr/bin/docker rm -f -v $stale >/dev/null
  fi
  # Images left untagged by earlier builds (each run rebuilds the GeoCache images).
  in_netns /usr/bin/docker image prune -f >/dev/null
  echo "engine: dockerd $(in_netns /usr/bin/docker version --format '{{.Server.Version}}') up in netns $ENGINE_NETNS (DOCKER_HOST=unix://$engine_sock)"
}

# container_pids: the processes of this engine's containers (found by their cgroups, named
# after the container ids of the data root), also when dockerd is gone: the containers of kind
# are in network namespaces of their own, out of reach of pids_in_netns.
container_pids() {
  local ids
  ids="$(ls "$engine_dir/data/containers" 2>/dev/null)" || return 0
  [ -n "$ids" ] || return 0
  local id
  for id in $ids; do
    find /sys/fs/cgroup -type d \( -path "*/docker/$id" -o -path "*/docker-$id.scope" \) 2>/dev/null
  done | while read -r dir; do
    find "$dir" -name cgroup.procs -exec cat {} + 2>/dev/null
  done | sort -un
}

# pids_in_netns: every process whose network namespace is the engine's.
pids_in_netns() {
  local ns pid
  ns="$(stat -L -c %i "$netns_file" 2>/dev/null)" || return 0
  for pid in /proc/[0-9]*; do
    if [ "$(stat -L -c %i "$pid/ns/net" 2>/dev/null)" = "$ns" ]; then echo "${pid#/proc/}"; fi
  done
}

down() {
  if running; then
    local pid ids
    pid="$(cat "$pidfile")"
    # Every container goes with its volumes (kind's nodes keep /var in one), bounded: a
    # stuck engine is killed below anyway.
    ids="$(in_netns timeout 30 /usr/bin/docker ps -aq 2>/dev/null)" || ids=""
    if [ -n "$ids" ]; then
      # shellcheck disable=SC2086 # one id per word
      in_netns timeout 120 /usr/bin/docker rm -f -v $ids >/dev/null 2>&1 ||
        echo "engine: could not remove every container (continuing)" >&2
    fi
    # dockerd stops its containers (and its containerd) when it gets SIGTERM.
    kill -TERM "$pid"
    local deadline=$((SECONDS + 60))
    while kill -0 "$pid" 2>/dev/null; do
      if [ "$SECONDS" -ge "$deadline" ]; then
        echo "engine: dockerd (pid $pid) still running after 60s; killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
        break
      fi
      sleep 1
    done
    echo "engine: dockerd stopped"
  fi
  local left_procs
  left_procs="$(container_pids | tr '\n' ' ')"
  if [ -n "${left_procs// /}" ]; then
    echo "engine: killing processes of containers left behind: $left_procs" >&2
    # shellcheck disable=SC2086 # one pid per word
    kill -KILL $left_procs 2>/dev/null || true
    sleep 1
  fi
  if [ -e "$netns_file" ]; then
    # Whatever the engine left (container shims, their processes) dies with the namespace.
    local left
    left="$(pids_in_netns | tr '\n' ' ')"
    if [ -n "${left// /}" ]; then
      echo "engine: killing processes left in netns $ENGINE_NETNS: $left" >&2
      # shellcheck disable=SC2086 # one pid per word
      kill -KILL $left 2>/dev/null || true
      sleep 1
    fi
    ip netns delete "$ENGINE_NETNS"
    echo "engine: netns $ENGINE_NETNS removed"
  fi
  # Mounts dockerd made under its exec root (network namespaces of containers, shm).
  if [ -d "$engine_run_dir" ]; then
    local mnt
    while read -r mnt; do
      umount -l "$mnt" 2>/dev/null || true
    done < <(awk -v dir="$engine_run_dir" 'index($2, dir) == 1 { print $2 }' /proc/self/mounts | sort -r)
    rm -rf "$engine_run_dir"
  fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  exec)
    shift
    [ -e "$netns_file" ] || die "no engine (netns $ENGINE_NETNS): run '$0 up' first"
    # exec: a signal to this process (timeout, Ctrl-C) reaches the command itself.
    DOCKER_HOST="unix://$engine_sock" exec nsenter --net="$netns_file" -- "$@"
    ;;
  env) echo "export DOCKER_HOST=unix://$engine_sock" ;;
  *) die "usage: $0 up|down|exec COMMAND...|env" ;;
esac
