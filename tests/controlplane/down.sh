#!/usr/bin/env bash
# Stops everything up.sh started in DIR (TERM, then KILL after 10 s), and removes the
# network namespace up.sh made for it.
#   usage: tests/controlplane/down.sh DIR
set -uo pipefail
dir="${1:?usage: down.sh DIR}"
# The named network namespace up.sh made for DIR, if it made one.
remove_netns() {
  if [ -f "$dir/netns" ]; then
    ip netns del "$(cat "$dir/netns")" 2>/dev/null || true
    rm -f "$dir/netns"
  fi
}
pids=()
for f in "$dir"/cluster-*/*.pid; do
  [ -f "$f" ] || continue
  pid="$(cat "$f")"
  kill -TERM "$pid" 2>/dev/null && pids+=("$pid")
  rm -f "$f"
done
for _ in $(seq 1 100); do
  alive=0
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
  if [ $alive -eq 0 ]; then
    remove_netns
    exit 0
  fi
  sleep 0.1
done
for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null; done
remove_netns
exit 0
