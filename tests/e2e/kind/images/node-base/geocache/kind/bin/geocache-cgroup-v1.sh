#!/bin/sh
# Creates kubelet.slice in every cgroup v1 hierarchy (see 20-geocache.conf); nothing on v2.
set -eu
[ ! -f /sys/fs/cgroup/cgroup.controllers ] || exit 0
for dir in /sys/fs/cgroup/*/; do
  [ -L "${dir%/}" ] || mkdir -p "${dir}kubelet.slice"
done
