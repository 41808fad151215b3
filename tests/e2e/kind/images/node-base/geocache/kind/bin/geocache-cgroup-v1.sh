#!/bin/sh
# Creates kubelet.slice in every cgroup v1 hierarchy (see 20-geocache.conf); nothing on v2.
# Some are only directories that systemd made on the read-only tmpfs of /sys/fs/cgroup for
# controllers the host did not mount (hugetlb, net_cls,net_prio, perf_event, cpu,cpuacct),
# which the kubelet still expects kubelet.slice in: the tmpfs is opened for the mkdir.
set -eu
[ ! -f /sys/fs/cgroup/cgroup.controllers ] || exit 0
missing=""
for dir in /sys/fs/cgroup/*/; do
  [ -L "${dir%/}" ] || [ -d "${dir}kubelet.slice" ] || missing="$missing ${dir}kubelet.slice"
done
[ -n "$missing" ] || exit 0
read_only=0
if grep -q ' /sys/fs/cgroup ro,' /proc/self/mountinfo; then
  mount -o remount,rw /sys/fs/cgroup
  read_only=1
fi
# shellcheck disable=SC2086 # one path a word
mkdir -p $missing
if [ "$read_only" = 1 ]; then mount -o remount,ro /sys/fs/cgroup; fi
