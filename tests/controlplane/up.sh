#!/usr/bin/env bash
# Starts N independent Kubernetes clusters on this machine: each has its control plane
# (etcd, kube-apiserver, kube-controller-manager, kube-scheduler v1.37.2, built by build.sh)
# and a test kubelet (tests/src/kubelet) that runs GeoCache pods as local processes, with
# its own pod network, cluster DNS, service proxy and load balancers. Writes
# DIR/cluster-1.kubeconfig ... DIR/cluster-N.kubeconfig; returns when every API server
# answers /readyz and every node is Ready. Stop everything with down.sh DIR.
#   usage: tests/controlplane/up.sh N DIR     (as root)
# Everything runs in a network namespace of its own: started from the machine's namespace,
# up.sh makes a named one for DIR (`ip netns`, name in DIR/netns) and reaches it with
#   tests/controlplane/netns.sh --dir DIR kubectl --kubeconfig DIR/cluster-1.kubeconfig get nodes
# down.sh DIR removes it. Started inside a private namespace already (netns.sh COMMAND, as
# e2e.sh does), it uses that one. Idempotent: what is already running is left alone, so
# running it again restarts only what was stopped.
# Cluster i:  API server 172.29.<i>.1:6443 (reachable from pods too, as in any cluster),
#             etcd, controller manager, scheduler and the node at 127.<net>.<i>.1 (net:
#             $GEOCACHE_CP_NET, default 60)
#             pods 10.<10+i>.0.0/16, services 10.<100+i>.0.0/16, DNS 172.31.<i>.53,
#             load balancers 172.30.<i>.0/24 with a one-way delay of $GEOCACHE_CP_WAN_DELAY
#             (default 20ms) in front of them, like a WAN between clusters.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
n="${1:?usage: up.sh N DIR}"
dir="${2:?usage: up.sh N DIR}"
net="${GEOCACHE_CP_NET:-60}"
wan_delay="${GEOCACHE_CP_WAN_DELAY:-20ms}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# Built first: nothing inside the namespace reaches the network.
bin="$("$here/build.sh")"
echo "building geocache-node and test-kubelet (cargo build --workspace --all-targets, as cargo test builds them)" >&2
(cd "$repo" && cargo build --locked -q --workspace --all-targets)
if [ -z "${GEOCACHE_NETNS:-}" ] || [ "$GEOCACHE_NETNS" != "$(readlink /proc/self/ns/net)" ]; then
  [ "$(id -u)" -eq 0 ] || { echo "up.sh: needs root (network namespaces, veth pairs, mounts)" >&2; exit 1; }
  name="geocache-cp-$(printf '%s' "$dir" | cksum | cut -d' ' -f1)"
  ip netns list | grep -qw "^$name" || ip netns add "$name"
  echo "$name" >"$dir/netns"
  echo "up.sh: in network namespace $name (reach it with: $here/netns.sh --dir $dir COMMAND)" >&2
  exec "$here/netns.sh" --dir "$dir" "$0" "$@"
fi
target="${CARGO_TARGET_DIR:-$repo/target}/debug"

# not_ready CLUSTER-DIR REASON: says why a cluster did not come up, with the end of its
# control plane's logs and the free disk space (etcd stops writing on a full disk).
not_ready() {
  echo "$(basename "$1"): $2; logs in $1" >&2
  local f
  for f in "$1"/etcd.log "$1"/kube-apiserver.log; do
    echo "--- $f: its last errors, then its last lines" >&2
    { grep -E '"level":"(error|panic|fatal)"|^panic:|^[EF][0-9]{4} ' "$f" | tail -5 && tail -5 "$f"; } 2>/dev/null |
      cut -c1-500 >&2 || true
  done
  df -h "$1" >&2 || true
  return 1
}

wait_ready() { # kubeconfig, cluster dir
  local deadline=$((SECONDS + 120)) p
  until kubectl --kubeconfig "$1" get --raw /readyz >/dev/null 2>&1; do
    for p in etcd kube-apiserver; do
      running "$2/$p.pid" || { not_ready "$2" "$p exited before the API server became ready"; return 1; }
    done
    [ $SECONDS -lt $deadline ] || { not_ready "$2" "the API server did not become ready in 120 s"; return 1; }
    sleep 0.5
  done
}

kubectl() { command kubectl --request-timeout=20s "$@"; }

running() { # pid file
  [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

start() { # name, log, command...
  local name=$1 log=$2
  shift 2
  if running "$(dirname "$log")/$name.pid"; then
    return 0
  fi
  nohup "$@" >>"$log" 2>&1 &
  echo $! >"$(dirname "$log")/$name.pid"
}

for i in $(seq 1 "$n"); do
  ip="127.$net.$i.1"
  api="172.29.$i.1"
  ip addr replace "$api/32" dev lo
  d="$dir/cluster-$i"
  mkdir -p "$d/pki" "$d/etcd"
  chmod 700 "$d/etcd"
  if [ ! -f "$d/pki/sa.key" ]; then
    openssl genrsa -out "$d/pki/sa.key" 2048 2>/dev/null
    openssl rsa -in "$d/pki/sa.key" -pubout -out "$d/pki/sa.pub" 2>/dev/null
  fi
  if [ ! -f "$d/pki/apiserver.crt" ]; then # a CA per cluster and the API server's certificate
    openssl req -x509 -newkey rsa:2048 -nodes -keyout "$d/pki/ca.key" -out "$d/pki/ca.crt" -days 3650 \
      -subj "/CN=cluster-$i-ca" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -keyout "$d/pki/apiserver.key" -out "$d/pki/apiserver.csr" \
      -subj "/CN=kube-apiserver" 2>/dev/null
    printf '%s\n' "subjectAltName=IP:$api,IP:$ip,IP:10.$((100 + i)).0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local" \
      "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" >"$d/pki/apiserver.ext"
    openssl x509 -req -in "$d/pki/apiserver.csr" -CA "$d/pki/ca.crt" -CAkey "$d/pki/ca.key" -CAcreateserial \
      -out "$d/pki/apiserver.crt" -days 3650 -extfile "$d/pki/apiserver.ext" 2>/dev/null
  fi
  kubeconfig="$dir/cluster-$i.kubeconfig"
  if [ ! -f "$d/tokens.csv" ]; then
    token="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    echo "$token,admin,admin,system:masters" >"$d/tokens.csv"
  fi
  token="$(cut -d, -f1 "$d/tokens.csv")"
  cat >"$kubeconfig" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: cluster-$i
  cluster:
    server: https://$api:6443
    certificate-authority-data: $(base64 -w0 "$d/pki/ca.crt")
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
  echo "cluster-$i: starting (API server $api)" >&2
  start etcd "$d/etcd.log" "$bin/etcd" --name "cluster-$i" --data-dir "$d/etcd" \
    --listen-client-urls "http://$ip:2379" --advertise-client-urls "http://$ip:2379" \
    --listen-peer-urls "http://$ip:2380" --initial-advertise-peer-urls "http://$ip:2380" \
    --initial-cluster "cluster-$i=http://$ip:2380" --log-level warn
  start kube-apiserver "$d/kube-apiserver.log" "$bin/kube-apiserver" \
    --etcd-servers "http://$ip:2379" --bind-address "$api" --advertise-address "$api" --secure-port 6443 \
    --tls-cert-file "$d/pki/apiserver.crt" --tls-private-key-file "$d/pki/apiserver.key" --token-auth-file "$d/tokens.csv" --authorization-mode RBAC \
    --service-account-issuer "https://kubernetes.default.svc" --service-account-key-file "$d/pki/sa.pub" \
    --service-account-signing-key-file "$d/pki/sa.key" --service-cluster-ip-range "10.$((100 + i)).0.0/16" \
    --allow-privileged=true
done
for i in $(seq 1 "$n"); do
  ip="127.$net.$i.1"
  d="$dir/cluster-$i"
  kubeconfig="$dir/cluster-$i.kubeconfig"
  wait_ready "$kubeconfig" "$d"
  start kube-controller-manager "$d/kube-controller-manager.log" "$bin/kube-controller-manager" \
    --kubeconfig "$kubeconfig" --bind-address "$ip" --secure-port 10257 --leader-elect=false \
    --service-account-private-key-file "$d/pki/sa.key" --root-ca-file "$d/pki/ca.crt" \
    --use-service-account-credentials=false
  start kube-scheduler "$d/kube-scheduler.log" "$bin/kube-scheduler" \
    --kubeconfig "$kubeconfig" --bind-address "$ip" --secure-port 10259 --leader-elect=false
  start test-kubelet "$d/test-kubelet.log" "$target/test-kubelet" \
    --kubeconfig "$kubeconfig" --node-name "cluster-$i-node" --node-ip "$ip" \
    --pod-cidr "10.$((10 + i)).0.0/16" --dns-ip "172.31.$i.53" --lb-cidr "172.30.$i.0/24" \
    --lb-delay "$wan_delay" --image "geocache-node=$target/geocache-node" \
    --image "geocache-operator=$target/geocache-operator" --state-dir "$d/kubelet"
  echo "cluster-$i: ready ($(kubectl --kubeconfig "$kubeconfig" get --raw /version | grep -m1 '"gitVersion"' | tr -d ' ",'))" >&2
done
for i in $(seq 1 "$n"); do
  kubeconfig="$dir/cluster-$i.kubeconfig"
  deadline=$((SECONDS + 90))
  until [ "$(kubectl --kubeconfig "$kubeconfig" get node "cluster-$i-node" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = "True" ]; do
    if [ $SECONDS -ge $deadline ]; then
      echo "cluster-$i: the node did not become Ready; see $dir/cluster-$i/test-kubelet.log" >&2
      exit 1
    fi
    sleep 0.5
  done
done
echo "$n cluster(s) up; kubeconfigs in $dir" >&2
