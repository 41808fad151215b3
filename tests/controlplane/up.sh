#!/usr/bin/env bash
# Starts N independent Kubernetes control planes on loopback (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler v1.37.2, built by build.sh) and writes
# DIR/cluster-1.kubeconfig ... DIR/cluster-N.kubeconfig; returns when every API server
# answers /readyz. Stop them with down.sh DIR.
#   usage: tests/controlplane/up.sh N DIR
# Cluster i listens on 127.<net>.<i>.1 (net: $GEOCACHE_CP_NET, default 60).
# Not yet: the test kubelet (the control-plane issue's item 2); pods stay Pending.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
n="${1:?usage: up.sh N DIR}"
dir="${2:?usage: up.sh N DIR}"
net="${GEOCACHE_CP_NET:-60}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
bin="$("$here/build.sh")"

wait_ready() { # kubeconfig, name
  local deadline=$((SECONDS + 90))
  until kubectl --kubeconfig "$1" get --raw /readyz >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      echo "$2: the API server did not become ready; logs in $(dirname "$1")" >&2
      return 1
    fi
    sleep 0.5
  done
}

start() { # name, log, command...
  local name=$1 log=$2
  shift 2
  nohup "$@" >"$log" 2>&1 &
  echo $! >"$(dirname "$log")/$name.pid"
}

for i in $(seq 1 "$n"); do
  ip="127.$net.$i.1"
  d="$dir/cluster-$i"
  mkdir -p "$d/pki" "$d/etcd"
  chmod 700 "$d/etcd"
  if [ ! -f "$d/pki/sa.key" ]; then
    openssl genrsa -out "$d/pki/sa.key" 2048 2>/dev/null
    openssl rsa -in "$d/pki/sa.key" -pubout -out "$d/pki/sa.pub" 2>/dev/null
  fi
  token="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  echo "$token,admin,admin,system:masters" >"$d/tokens.csv"
  kubeconfig="$dir/cluster-$i.kubeconfig"
  cat >"$kubeconfig" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: cluster-$i
  cluster:
    server: https://$ip:6443
    insecure-skip-tls-verify: true
users:
- name: admin
  user:
    token: $token
contexts:
- name: cluster-$i
  context:
    cluster: cluster-$i
    user: admin
current-context: cluster-$i
KUBECONFIG
  echo "cluster-$i: starting on $ip" >&2
  start etcd "$d/etcd.log" "$bin/etcd" --name "cluster-$i" --data-dir "$d/etcd" \
    --listen-client-urls "http://$ip:2379" --advertise-client-urls "http://$ip:2379" \
    --listen-peer-urls "http://$ip:2380" --initial-advertise-peer-urls "http://$ip:2380" \
    --initial-cluster "cluster-$i=http://$ip:2380" --log-level warn
  start kube-apiserver "$d/kube-apiserver.log" "$bin/kube-apiserver" \
    --etcd-servers "http://$ip:2379" --bind-address "$ip" --advertise-address "$ip" --secure-port 6443 \
    --cert-dir "$d/pki" --token-auth-file "$d/tokens.csv" --authorization-mode RBAC \
    --service-account-issuer "https://kubernetes.default.svc" --service-account-key-file "$d/pki/sa.pub" \
    --service-account-signing-key-file "$d/pki/sa.key" --service-cluster-ip-range 10.96.0.0/16 \
    --allow-privileged=true --endpoint-reconciler-type none
done
for i in $(seq 1 "$n"); do
  ip="127.$net.$i.1"
  d="$dir/cluster-$i"
  kubeconfig="$dir/cluster-$i.kubeconfig"
  wait_ready "$kubeconfig" "cluster-$i"
  start kube-controller-manager "$d/kube-controller-manager.log" "$bin/kube-controller-manager" \
    --kubeconfig "$kubeconfig" --bind-address "$ip" --secure-port 10257 --leader-elect=false \
    --service-account-private-key-file "$d/pki/sa.key" --use-service-account-credentials=false
  start kube-scheduler "$d/kube-scheduler.log" "$bin/kube-scheduler" \
    --kubeconfig "$kubeconfig" --bind-address "$ip" --secure-port 10259 --leader-elect=false
  echo "cluster-$i: ready ($(kubectl --kubeconfig "$kubeconfig" get --raw /version | grep -m1 '"gitVersion"' | tr -d ' ",'))" >&2
done
echo "$n control plane(s) up; kubeconfigs in $dir" >&2
