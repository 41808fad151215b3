#!/usr/bin/env bash
# Stops everything up.sh started in DIR (TERM, then KILL after 10 s).
#   usage: tests/controlplane/down.sh DIR
set -uo pipefail
dir="${1:?usage: down.sh DIR}"
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
  [ $alive -eq 0 ] && exit 0
  sleep 0.1
done
for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null; done
exit 0
