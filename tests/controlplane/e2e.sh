#!/usr/bin/env bash
# The end-to-end tier: the operator's Helm chart and the nodes on real Kubernetes control
# planes (v1.37.2, built by build.sh), whose test kubelets run the real operator and node
# binaries as the pods' processes, first with one cluster, then with three. Exit status 0
# only when every check passed.
#   usage: tests/controlplane/e2e.sh            (as root; it makes its own network namespace)
# Env: GEOCACHE_E2E_DIR (work directory; default a new one under /tmp, removed on success),
#      GEOCACHE_E2E_TIMEOUT (hard bound in seconds, default 1800),
#      GEOCACHE_E2E_ONLY=one|three (run one scenario), GEOCACHE_E2E_KEEP=1 (keep the clusters
#      running at the end, for a look around: tests/controlplane/netns.sh is then needed to
#      reach them... so rather keep the directory and read the logs).
# wait_for takes `eval '...'` checks whose expansions must happen at each try, not once:
# shellcheck disable=SC2016
set -Eeuo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo"
if [ -z "${GEOCACHE_NETNS:-}" ] || [ "$GEOCACHE_NETNS" != "$(readlink /proc/self/ns/net)" ]; then
  # What the tier runs is built here: nothing inside the namespace reaches the network.
  "$here/build.sh" >/dev/null
  tests/helm.sh >/dev/null
  echo "building the operator, the node and the test kubelet (cargo build)"
  cargo build --locked -q --workspace --all-targets
  exec "$here/netns.sh" "$0" "$@"
fi

started=$SECONDS
work="${GEOCACHE_E2E_DIR:-$(mktemp -d /tmp/geocache-e2e.XXXXXX)}"
mkdir -p "$work"
current_dir=""
checks=0

log() { printf '[e2e %4ss] %s\n' "$((SECONDS - started))" "$*"; }
pass() {
  checks=$((checks + 1))
  log "ok: $*"
}
fail() {
  log "FAILED: $*"
  exit 1
}

# wait_for DESCRIPTION SECONDS COMMAND...: runs COMMAND until it succeeds.
wait_for() {
  local what=$1 timeout=$2
  shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      log "gave up after ${timeout}s waiting for: $what"
      "$@" || true
      fail "$what"
    fi
    sleep 1
  done
  pass "$what"
}

dump() {
  [ -n "$current_dir" ] || return 0
  log "--- state at failure ---"
  for kc in "$current_dir"/cluster-*.kubeconfig; do
    [ -f "$kc" ] || continue
    echo "### $(basename "$kc" .kubeconfig)"
    kubectl --kubeconfig "$kc" get geocaches,statefulsets,pods,services -A -o wide 2>&1 | head -60 || true
  done
  kubectl --kubeconfig "$current_dir/cluster-1.kubeconfig" get geocaches -A -o yaml 2>&1 | tail -80 || true
  for f in "$current_dir"/cluster-*/etcd.log "$current_dir"/cluster-*/kube-apiserver.log; do
    echo "### $f (tail)"
    tail -10 "$f" 2>/dev/null || true
  done
  df -h "$current_dir" || true
  echo "### operator log (tail)"
  for f in "$current_dir"/cluster-1/kubelet/pods/geocache-system_*/container.log; do
    [ -f "$f" ] || continue
    echo "### $f (tail)"
    tail -40 "$f" || true
  done
  for f in "$current_dir"/cluster-*/test-kubelet.log; do
    [ -f "$f" ] || continue
    echo "### $f (tail)"
    tail -20 "$f" || true
  done
  for f in "$current_dir"/cluster-*/kubelet/pods/*/container.log; do
    [ -f "$f" ] || continue
    echo "### $f (tail)"
    tail -8 "$f" || true
  done
}

down() {
  if [ -n "$current_dir" ]; then "$here/down.sh" "$current_dir" || true; fi
}

on_exit() {
  local status=$?
  kill "$watchdog" 2>/dev/null || true
  if [ $status -ne 0 ]; then dump; fi
  if [ "${GEOCACHE_E2E_KEEP:-}" != "1" ]; then down; fi
  if [ $status -eq 0 ] && [ -z "${GEOCACHE_E2E_DIR:-}" ]; then rm -rf "$work"; fi
  if [ $status -eq 0 ]; then
    log "end-to-end tier passed: $checks checks in $((SECONDS - started))s"
  else
    log "end-to-end tier FAILED (logs kept in $work)"
  fi
}
trap on_exit EXIT
# Any command that fails outside a check stops the tier, and says which one (set -E: in
# functions too).
trap 'log "FAILED: \"$BASH_COMMAND\" exited with status $? (e2e.sh line $LINENO)"' ERR
# A hard bound on the whole tier: past it, stop and clean up like any failure. Every kubectl
# call has a request timeout, so the script always gets to run its traps.
timeout_s="${GEOCACHE_E2E_TIMEOUT:-1800}"
(sleep "$timeout_s" && kill -TERM $$) 2>/dev/null &
watchdog=$!
trap 'log "timed out after ${timeout_s}s"; exit 124' TERM INT
kubectl() { command kubectl --request-timeout=30s "$@"; }

# kubeconfig_for_token KUBECONFIG TOKEN: the cluster of KUBECONFIG, authenticating with TOKEN.
kubeconfig_for_token() {
  cat <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: cluster
  cluster:
    server: $(kubectl --kubeconfig "$1" config view --raw -o jsonpath='{.clusters[0].cluster.server}')
    certificate-authority-data: $(kubectl --kubeconfig "$1" config view --raw -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')
users:
- name: user
  user: {token: "$2"}
contexts:
- name: context
  context: {cluster: cluster, user: user}
current-context: context
KUBECONFIG
}

fresh() { # a scenario directory from a previous run is stopped and emptied first
  if [ -d "$1" ]; then
    "$here/down.sh" "$1" || true
    rm -rf "$1"
  fi
}

# --- helpers on a cluster (K: the kubeconfig in use) -------------------------------------
k() { kubectl --kubeconfig "$K" "$@"; }
jsonpath() { # resource, jsonpath, [namespace]
  k get "$1" -n "${3:-default}" -o "jsonpath=$2" 2>/dev/null
}
cluster_ip() { jsonpath "svc/$1" '{.spec.clusterIP}' "${2:-default}"; }
password() { # namespace, geocache
  k get secret "$2-client-auth" -n "$1" -o jsonpath='{.data.password}' | base64 -d
}
# http METHOD URL [BODY]: a request with the client password in $PASSWORD.
http() {
  local method=$1 url=$2
  shift 2
  curl -sf -m 5 -X "$method" -H "Authorization: Bearer $PASSWORD" -H 'Content-Type: application/json' \
    ${CURL_TLS[@]+"${CURL_TLS[@]}"} ${1:+--data "$1"} "$url"
}
reads() { # url, expected body
  [ "$(http GET "$1")" = "$2" ]
}
sts_ready() { # namespace, name, replicas
  [ "$(jsonpath "statefulset/$2" '{.status.readyReplicas}' "$1")" = "$3" ] &&
    [ "$(jsonpath "statefulset/$2" '{.status.replicas}' "$1")" = "$3" ]
}
sts_rolled() { # namespace, name, replicas: every pod runs the newest revision and is ready
  local status
  status="$(jsonpath "statefulset/$2" '{.status.updateRevision}={.status.currentRevision} {.status.updatedReplicas}/{.status.readyReplicas}' "$1")"
  local revisions=${status% *} counts=${status#* }
  [ "${revisions%=*}" = "${revisions#*=}" ] && [ "$counts" = "$3/$3" ] &&
    [ "$(jsonpath "statefulset/$2" '{.status.observedGeneration}' "$1")" = "$(jsonpath "statefulset/$2" '{.metadata.generation}' "$1")" ]
}
gc_ready() { # namespace, name, "ready" column value
  [ "$(jsonpath "geocache/$2" '{.status.ready}' "$1")" = "$3" ] &&
    [ "$(jsonpath "geocache/$2" '{.status.conditions[?(@.type=="Ready")].status}' "$1")" = "True" ]
}
condition_is() { # namespace, name, type, status
  [ "$(jsonpath "geocache/$2" "{.status.conditions[?(@.type==\"$3\")].status}" "$1")" = "$4" ]
}
regions_linked_with_lag() { # namespace, name, regions: each has >= regions-1 peers up and a lag
  local -a peers lags
  read -ra peers <<<"$(jsonpath "geocache/$2" '{.status.regions[*].peersUp}' "$1")"
  read -ra lags <<<"$(jsonpath "geocache/$2" '{.status.regions[*].maxLagMs}' "$1")"
  [ "${#peers[@]}" -eq "$3" ] && [ "${#lags[@]}" -eq "$3" ] || return 1
  local v
  for v in "${peers[@]}"; do [ "$v" -ge $(($3 - 1)) ] || return 1; done
  for v in "${lags[@]}"; do [[ "$v" =~ ^[0-9]+$ ]] || return 1; done
}
none_left() { # namespace, instance
  [ -z "$(k get statefulsets,services,configmaps,poddisruptionbudgets,pods -n "$1" \
    -l "app.kubernetes.io/instance=$2" -o name 2>/dev/null)" ]
}
pod_ip() { jsonpath "pod/$2" '{.status.podIP}' "$1"; }
container_pid() { # namespace, pod: the process id the test kubelet puts in the container id
  local id
  id="$(jsonpath "pod/$2" '{.status.containerStatuses[0].containerID}' "$1")"
  [ -n "${id##*://}" ] || fail "no process id for pod $1/$2"
  echo "${id##*://}"
}
operator_pod_name() { # the operator's pod that is not terminating (one replica)
  k get pods -n geocache-system -l app.kubernetes.io/instance=geocache \
    -o jsonpath='{range .items[*]}{.metadata.name} {.metadata.deletionTimestamp}{"\n"}{end}' 2>/dev/null |
    awk 'NF == 1 { print $1; exit }'
}
operator_ready() { # the Deployment has its one pod, up to date and ready, and no other
  local status
  status="$(k get deployments -n geocache-system -l app.kubernetes.io/instance=geocache \
    -o jsonpath='{.items[0].status.updatedReplicas}/{.items[0].status.readyReplicas}/{.items[0].status.replicas}')"
  [ "$status" = "1/1/1" ]
}
pod_restarts() { jsonpath "pod/$2" '{.status.containerStatuses[0].restartCount}' "$1"; }
resource_versions() { # namespace, instance: what the operator writes (not what controllers put in status)
  {
    k get statefulsets,poddisruptionbudgets -n "$1" -l "app.kubernetes.io/instance=$2" \
      -o jsonpath='{range .items[*]}{.kind}/{.metadata.name} generation {.metadata.generation}{"\n"}{end}'
    k get services,configmaps,secrets -n "$1" -l "app.kubernetes.io/instance=$2" \
      -o jsonpath='{range .items[*]}{.kind}/{.metadata.name} version {.metadata.resourceVersion}{"\n"}{end}'
  } | sort
}

# watch_degraded NAMESPACE NAME FILE: records, in FILE, every version of the GeoCache's
# Degraded condition ("status reason message", one line per change of the object) until
# stop_watch is called; a watch sees every write, so a short false alarm is not missed.
watch_degraded() {
  # A list watch by name: it works before the object exists (a watch of the object itself
  # would end at once with NotFound).
  command kubectl --kubeconfig "$K" get geocaches -n "$1" --field-selector "metadata.name=$2" --watch \
    -o 'jsonpath={.status.conditions[?(@.type=="Degraded")].status} {.status.conditions[?(@.type=="Degraded")].reason} {.status.conditions[?(@.type=="Degraded")].message}{"\n"}' \
    >"$3" 2>/dev/null &
  watcher=$!
}
stop_watch() {
  kill "$watcher" 2>/dev/null || true
  wait "$watcher" 2>/dev/null || true
}
# degraded_never_true FILE WHAT: the watch recorded versions, none Degraded=True.
degraded_never_true() {
  [ -s "$1" ] || fail "no status recorded while $2"
  if grep -q '^True ' "$1"; then
    fail "Degraded=True while $2: $(grep '^True ' "$1" | sort | uniq -c | head -5)"
  fi
  pass "Degraded stayed False while $2 ($(wc -l <"$1") versions of the status watched)"
}

# events NAMESPACE NAME: the GeoCache's Events, one per line: type|reason|message|count|first|last.
events() {
  k get events -n "$1" --field-selector "involvedObject.kind=GeoCache,involvedObject.name=$2" \
    -o jsonpath='{range .items[*]}{.type}|{.reason}|{.message}|{.count}|{.firstTimestamp}|{.lastTimestamp}{"\n"}{end}'
}

# install_operator: the operator's chart in cluster $K, as users install it; its pod runs.
install_operator() {
  "$("$repo/tests/helm.sh")" --kubeconfig "$K" install geocache charts/geocache-operator \
    --namespace geocache-system --create-namespace --set resyncSeconds=10 --set logFormat=text >/dev/null
  pass "helm install of charts/geocache-operator"
  wait_for "the CRD is established" 60 k wait --for condition=established crd/geocaches.geocache.dev --timeout=5s
  wait_for "the operator's pod is ready (in cluster, with its ServiceAccount's token)" 120 operator_ready
  # Least privilege: no cert-manager rights unless certManager.enabled; no Secrets outside
  # what the rules list (e.g. no update); the chart's names are not doubled.
  local sa=system:serviceaccount:geocache-system:geocache-operator
  [ "$(k auth can-i create certificates.cert-manager.io --as "$sa" -n default 2>/dev/null)" = no ] ||
    fail "the operator may create cert-manager Certificates without certManager.enabled"
  [ "$(k auth can-i update secrets --as "$sa" -n default 2>/dev/null)" = no ] || fail "the operator may update Secrets"
  [ "$(k auth can-i watch secrets --as "$sa" -n default 2>/dev/null)" = yes ] || fail "the operator may not watch Secrets"
  pass "RBAC: no cert-manager rights by default, Secrets only as the rules say (ServiceAccount geocache-operator)"
}

# --- one cluster ----------------------------------------------------------------------------
scenario_one() {
  current_dir="$work/one"
  fresh "$current_dir"
  log "scenario 1: one cluster, examples/geocache.yaml"
  "$here/up.sh" 1 "$current_dir"
  K="$current_dir/cluster-1.kubeconfig"

  # The operator's chart, as users install it: its CRD, ServiceAccount, RBAC and the
  # Deployment, whose pod the test kubelet runs (image geocache-operator) with in-cluster
  # configuration: the API server at the kubernetes Service, the ServiceAccount's token
  # projected into the pod. So the chart's Deployment, probes and RBAC are what runs.
  install_operator
  local file message out
  for file in invalid-duplicate-regions:"region names must be unique" \
    invalid-negative-replicas:"replicas must be 0 or more" \
    invalid-region-name:"region name must be a DNS label" \
    invalid-client-tls-without-peer-tls:"security.clientTls needs security.peerTls" \
    invalid-resource-quantity:"each resources.requests value must be a quantity"; do
    message="${file#*:}"
    if out="$(k apply -f "$here/e2e/${file%%:*}.yaml" 2>&1)"; then
      fail "the API server accepted ${file%%:*}.yaml"
    fi
    grep -qF "$message" <<<"$out" || fail "${file%%:*}.yaml was refused without the CEL message '$message': $out"
    pass "the API server refuses ${file%%:*}.yaml with: $message"
  done

  # A spec the CRD admits but whose StatefulSet the API server refuses: reported in one line
  # (the API server's words and what to do, no dump of its error object), stalled, and no
  # Event says the region was created.
  k apply -f "$here/e2e/failing-affinity.yaml" >/dev/null
  wait_for "a StatefulSet the API server refuses stalls and degrades the GeoCache" 60 \
    eval 'condition_is default failing Stalled True && condition_is default failing Degraded True'
  local degraded failing_events
  degraded="$(jsonpath geocache/failing '{.status.conditions[?(@.type=="Degraded")].message}')"
  [[ "$degraded" == "eu: failed to apply StatefulSet failing-eu: "*"(http 422); correct the GeoCache's spec" ]] ||
    fail "the failure is not one line with what to do: $degraded"
  if grep -qE 'ErrorResponse|Status \{|\(Status|\{ status' <<<"$degraded"; then fail "a raw API error in the status: $degraded"; fi
  wait_for "a ReconcileFailed Warning tells it" 30 \
    eval 'events default failing | grep -qF "Warning|ReconcileFailed|eu: failed to apply StatefulSet failing-eu: "'
  failing_events="$(events default failing)"
  if grep -q 'RegionCreated' <<<"$failing_events"; then fail "a region that failed was announced as created: $failing_events"; fi
  [ "$(jsonpath geocache/failing '{.status.regions[0].state}')" = Pending ] ||
    fail "region eu of the failing GeoCache is not Pending: $(jsonpath geocache/failing '{.status.regions}')"
  pass "a refused StatefulSet: Stalled and Degraded in one line with what to do, a Warning, no RegionCreated"
  k delete geocache failing --wait=false >/dev/null
  wait_for "the failing GeoCache is deleted" 60 eval 'test -z "$(k get geocache failing -o name 2>/dev/null)"'

  watch_degraded default demo "$current_dir/degraded-create.log"
  k apply -f examples/geocache.yaml >/dev/null
  pass "kubectl apply -f examples/geocache.yaml"
  wait_for "the GeoCache is ready (2/2 regions)" 180 gc_ready default demo 2/2

  out="$(k get geocaches)"
  echo "$out"
  head -1 <<<"$out" | grep -qE '^NAME +READY +REGIONS +MAX-LAG +DEGRADED +AGE' || fail "kubectl get geocaches columns: $out"
  grep -qE '^demo +2/2 +eu,us +[0-9]+ms +False ' <<<"$out" || fail "kubectl get geocaches values: $out"
  pass "kubectl get geocaches shows READY 2/2, REGIONS eu,us, MAX-LAG and DEGRADED False"
  out="$(k get geocaches -o wide)"
  echo "$out"
  grep -qE '^demo +2/2 +eu,us +[0-9]+ms +False +AsExpected +eu Ready 3/3, us Ready 2/2 ' <<<"$out" ||
    fail "kubectl get geocaches -o wide: $out"
  pass "kubectl get geocaches -o wide shows the reason and each region's state"
  for condition in Ready=True Reconciling=False Stalled=False; do
    condition_is default demo "${condition%=*}" "${condition#*=}" ||
      fail "condition $condition: $(jsonpath geocache/demo '{.status.conditions}')"
  done
  pass "kstatus conditions: Ready True, Reconciling False, Stalled False"

  local sel="app.kubernetes.io/name=geocache,app.kubernetes.io/instance=demo,app.kubernetes.io/managed-by=geocache-operator"
  [ "$(k get statefulsets -l "$sel,geocache.dev/region=eu" -o name)" = "statefulset.apps/demo-eu" ] ||
    fail "StatefulSet demo-eu with every label"
  [ "$(k get services -l "$sel,geocache.dev/region=us" -o name | wc -l)" = 3 ] || fail "3 Services of region us with every label"
  [ "$(k get configmaps -l "$sel,geocache.dev/region=eu" -o name)" = "configmap/demo-eu-peers" ] ||
    fail "ConfigMap demo-eu-peers with every label"
  pass "StatefulSets, Services and ConfigMaps carry the four labels"
  wait_for "the operator records Events on the GeoCache" 30 \
    eval 'test -n "$(k get events -n default --field-selector involvedObject.kind=GeoCache,involvedObject.name=demo -o name)"'

  PASSWORD="$(password default demo)"
  local eu us
  eu="$(cluster_ip demo-eu)"
  us="$(cluster_ip demo-us)"
  http PUT "http://$eu:8080/v1/keys/greeting" '{"hello":"world"}' >/dev/null || fail "PUT through the eu client Service"
  wait_for "a document written in eu is read in us (client Services)" 30 reads "http://$us:8080/v1/keys/greeting" '{"hello":"world"}'
  [ "$(redis-cli -h "$us" --no-auth-warning -a "$PASSWORD" GET greeting)" = '{"hello":"world"}' ] ||
    fail "redis-cli GET through the us client Service"
  pass "redis-cli reads it through the us client Service"

  # A client password Secret deleted by mistake comes back (the operator watches Secrets),
  # with the password the nodes accept, not a new one.
  local deleted_at
  k delete secret demo-client-auth >/dev/null
  deleted_at=$SECONDS
  wait_for "the deleted client password Secret is restored" 30 \
    eval 'test "$(password default demo 2>/dev/null)" = "$PASSWORD"'
  log "restored within about $((SECONDS - deleted_at)) s of its deletion (resync interval: 10 s)"
  http PUT "http://$eu:8080/v1/keys/after-restore" '{"ok":true}' >/dev/null || fail "the restored password is refused"
  pass "the restored Secret holds the password the nodes accept"

  # Scale us up, with the operator's process killed midway (its container restarts, takes
  # the lease back and finishes), then down.
  local operator_pod
  operator_pod="$(operator_pod_name)"
  k patch geocache demo --type json -p '[{"op":"replace","path":"/spec/regions/1/replicas","value":3}]' >/dev/null
  kill -KILL "$(container_pid geocache-system "$operator_pod")"
  wait_for "the killed operator's container restarts" 60 \
    eval 'test "$(pod_restarts geocache-system "$operator_pod")" -ge 1'
  wait_for "region us scales up to 3 ready nodes" 120 sts_ready default demo-us 3
  wait_for "the GeoCache reports us with 3 ready replicas" 60 \
    eval 'test "$(jsonpath geocache/demo "{.status.regions[?(@.name==\"us\")].readyReplicas}")" = 3'
  wait_for "the new node demo-us-2 has the document (full resync)" 60 \
    eval 'reads "http://$(pod_ip default demo-us-2):8080/v1/keys/greeting" "{\"hello\":\"world\"}"'
  k patch geocache demo --type json -p '[{"op":"replace","path":"/spec/regions/1/replicas","value":2}]' >/dev/null
  wait_for "region us scales back down to 2" 120 sts_ready default demo-us 2
  wait_for "pod demo-us-2 is gone" 60 eval 'test -z "$(k get pod demo-us-2 -o name 2>/dev/null)"'
  wait_for "the GeoCache reports us ready with 2 nodes" 60 \
    eval 'test "$(jsonpath geocache/demo "{.status.regions[?(@.name==\"us\")].state}")" = Ready'
  local scaled
  scaled="$(events default demo)"
  local way
  for way in "2 to 3" "3 to 2"; do
    grep -qF "Normal|RegionScaled|region us scaled from $way nodes|" <<<"$scaled" ||
      fail "no RegionScaled Event for us from $way nodes: $scaled"
  done
  if grep -q '^Warning|' <<<"$scaled"; then fail "Warning Events in a normal rollout: $scaled"; fi
  pass "scaling is told by one Normal Event each way, and no Warning"

  # The pods' security context is applied: the node runs as its user, on a read-only root.
  local node_pid
  node_pid="$(container_pid default demo-eu-0)"
  [ "$(stat -c %u "/proc/$node_pid")" = 65532 ] || fail "demo-eu-0 does not run as user 65532"
  awk '$5 == "/" { print $6 }' "/proc/$node_pid/mountinfo" | grep -q '^ro' ||
    fail "demo-eu-0's root filesystem is writable: $(awk '$5 == "/"' "/proc/$node_pid/mountinfo")"
  pass "the nodes run as user 65532 on a read-only root filesystem, as their pods ask"

  stop_watch
  degraded_never_true "$current_dir/degraded-create.log" \
    "the GeoCache was created, became ready, and region us was scaled up and down"

  # A killed node process restarts and catches up with what it missed.
  kill -KILL "$(container_pid default demo-eu-0)"
  http PUT "http://$us:8080/v1/keys/while-down" '{"written":"while demo-eu-0 was down"}' >/dev/null ||
    fail "PUT while a node is down"
  wait_for "the killed node demo-eu-0 is restarted" 60 eval 'test "$(pod_restarts default demo-eu-0)" -ge 1'
  wait_for "demo-eu-0 is ready again" 60 sts_ready default demo-eu 3
  wait_for "demo-eu-0 caught up with the write it missed" 30 \
    reads "http://$(pod_ip default demo-eu-0):8080/v1/keys/while-down" '{"written":"while demo-eu-0 was down"}'
  # A deleted pod is recreated by its StatefulSet and catches up.
  local old_uid
  # shellcheck disable=SC2034 # read by the eval below
  old_uid="$(jsonpath pod/demo-us-1 '{.metadata.uid}')"
  k delete pod demo-us-1 --wait=false >/dev/null
  wait_for "the deleted pod demo-us-1 is recreated" 90 \
    eval 'test "$(jsonpath pod/demo-us-1 "{.metadata.uid}")" != "$old_uid"'
  wait_for "the recreated demo-us-1 is ready" 90 \
    eval 'test "$(jsonpath pod/demo-us-1 "{.status.containerStatuses[0].ready}")" = true'
  wait_for "the recreated demo-us-1 has the documents written before" 30 \
    eval 'reads "http://$(pod_ip default demo-us-1):8080/v1/keys/while-down" "{\"written\":\"while demo-eu-0 was down\"}"'

  # Restarting the operator (a rollout of its Deployment: a new pod) changes nothing.
  local before after
  before="$(resource_versions default demo)"
  k rollout restart deployment -n geocache-system -l app.kubernetes.io/instance=geocache >/dev/null
  wait_for "the operator's Deployment rolls out a new pod" 120 \
    eval 'test "$(operator_pod_name)" != "$operator_pod" && operator_ready'
  wait_for "the new operator pod leads" 60 \
    eval 'test "$(jsonpath lease/geocache-operator "{.spec.holderIdentity}" geocache-system)" = "$(operator_pod_name)"'
  sleep 12
  after="$(resource_versions default demo)"
  [ "$before" = "$after" ] || fail "the restarted operator changed objects: $(diff <(echo "$before") <(echo "$after"))"
  pass "a restarted operator leaves every object as it was ($(wc -l <<<"$before") objects)"

  # A change of the nodes' settings rolls through the StatefulSets one pod at a time; no
  # data is lost (each restarted node catches up from its peers).
  k patch geocache demo --type merge -p '{"spec":{"maxMemory":"200mb"}}' >/dev/null
  wait_for "the operator puts the new maxMemory in the eu StatefulSet" 60 \
    eval 'test "$(jsonpath statefulset/demo-eu "{.spec.template.spec.containers[0].env[?(@.name==\"GEOCACHE_MAX_MEMORY\")].value}")" = 200mb'
  wait_for "the new maxMemory rolls out to every eu node" 180 sts_rolled default demo-eu 3
  [ "$(jsonpath pod/demo-eu-2 '{.spec.containers[0].env[?(@.name=="GEOCACHE_MAX_MEMORY")].value}')" = 200mb ] ||
    fail "demo-eu-2 does not run with the new maxMemory"
  local pod
  for pod in demo-eu-0 demo-eu-1 demo-eu-2; do
    wait_for "$pod still has the document after the rolling update" 30 \
      eval 'reads "http://$(pod_ip default $pod):8080/v1/keys/greeting" "{\"hello\":\"world\"}"'
  done

  # Removing a region cleans it up, at once from the other region's peers file and status.
  wait_for "the GeoCache is ready again after the rolling update" 120 \
    eval 'gc_ready default demo 2/2 && condition_is default demo Degraded False'
  watch_degraded default demo "$current_dir/degraded-remove.log"
  k patch geocache demo --type json -p '[{"op":"remove","path":"/spec/regions/1"}]' >/dev/null
  wait_for "region us is removed (no StatefulSet, Services, ConfigMap, pods)" 120 \
    eval 'test -z "$(k get statefulsets,services,configmaps,pods -l app.kubernetes.io/instance=demo,geocache.dev/region=us -o name)"'
  wait_for "the eu peers file no longer lists us" 60 \
    eval '! jsonpath configmap/demo-eu-peers "{.data.peers\.json}" | grep -q "\"us\""'
  wait_for "a RegionDeleted Event tells region us is removed" 30 \
    eval 'events default demo | grep -qF "Normal|RegionDeleted|region us removed: its "'
  wait_for "the GeoCache is ready with 1/1 region" 60 gc_ready default demo 1/1
  sleep 15 # a few more looks at the nodes by the operator
  stop_watch
  degraded_never_true "$current_dir/degraded-remove.log" "region us was removed, and for 15 s after"

  # Deleting the GeoCache cleans everything.
  k delete geocache demo --wait=false >/dev/null
  wait_for "deleting the GeoCache removes every object it made" 120 none_left default demo
  wait_for "the GeoCache is gone (finalizer done)" 60 eval 'test -z "$(k get geocache demo -o name 2>/dev/null)"'
  down
  current_dir=""
}

# --- three clusters ---------------------------------------------------------------------------
member_kubeconfig() { # cluster index -> kubeconfig with the member RBAC's token
  local kc="$current_dir/cluster-$1.kubeconfig" token
  kubectl --kubeconfig "$kc" create namespace geocache >/dev/null
  kubectl --kubeconfig "$kc" apply -f examples/member-cluster-rbac.yaml >/dev/null
  local deadline=$((SECONDS + 60))
  until token="$(kubectl --kubeconfig "$kc" get secret geocache-operator-token -n geocache \
    -o jsonpath='{.data.token}' 2>/dev/null | base64 -d)" && [ -n "$token" ]; do
    [ $SECONDS -lt $deadline ] || fail "cluster-$1: no token for the member ServiceAccount"
    sleep 1
  done
  kubeconfig_for_token "$kc" "$token"
}

scenario_three() {
  current_dir="$work/three"
  fresh "$current_dir"
  log "scenario 2: three clusters, one region each, through load balancers with a WAN delay"
  "$here/up.sh" 3 "$current_dir"
  local c1="$current_dir/cluster-1.kubeconfig" c2="$current_dir/cluster-2.kubeconfig" c3="$current_dir/cluster-3.kubeconfig"
  K="$c1"
  # The operator runs in cluster 1, as a pod of the chart's Deployment; it reaches the member
  # clusters' API servers through the pod network, with the member RBAC's tokens.
  install_operator
  k create namespace geocache >/dev/null
  member_kubeconfig 2 >"$current_dir/us.kubeconfig"
  member_kubeconfig 3 >"$current_dir/ap.kubeconfig"
  k -n geocache create secret generic us-kubeconfig --from-file=kubeconfig="$current_dir/us.kubeconfig" >/dev/null
  k -n geocache create secret generic ap-kubeconfig --from-file=kubeconfig="$current_dir/ap.kubeconfig" >/dev/null
  pass "member clusters are reached with the rights of examples/member-cluster-rbac.yaml"
  kubectl --kubeconfig "$c2" create priorityclass geocache-high --value=1000 >/dev/null

  watch_degraded geocache sessions "$current_dir/degraded-create.log"
  k apply -f "$here/e2e/geocache-3-clusters.yaml" >/dev/null
  wait_for "the GeoCache is ready in three clusters (3/3 regions)" 240 gc_ready geocache sessions 3/3
  K="$c2" wait_for "region us runs in cluster 2" 5 sts_ready geocache sessions-us 2
  K="$c3" wait_for "region ap runs in cluster 3" 5 sts_ready geocache sessions-ap 1
  local endpoint
  endpoint="$(jsonpath geocache/sessions '{.status.regions[?(@.name=="ap")].endpoint}' geocache)"
  [[ "$endpoint" == 172.30.3.*:7946 ]] || fail "region ap's endpoint is its load balancer, got '$endpoint'"
  pass "region ap is reached at its load balancer $endpoint"
  [ "$(K="$c3" jsonpath statefulset/sessions-ap '{.spec.template.spec.containers[0].image}' geocache)" = \
    "ghcr.io/geocache/geocache-node:$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)" ] ||
    fail "the nodes run the default image of the operator's release"
  [ "$(K="$c3" jsonpath statefulset/sessions-ap \
    '{.spec.template.spec.containers[0].env[?(@.name=="GEOCACHE_TOMBSTONE_RETENTION")].value}' geocache)" = 2h ] ||
    fail "spec.tombstoneRetention reaches the nodes"
  pass "the nodes run the operator release's image by default, with spec.tombstoneRetention"
  # Placement: region us's pods carry the default topology spread, its affinity, priority
  # class and labels, and the GeoCache-wide pull secret and annotations.
  local spread placed
  spread="$(K="$c2" jsonpath pod/sessions-us-0 \
    '{range .spec.topologySpreadConstraints[*]}{.topologyKey}/{.maxSkew}/{.whenUnsatisfiable} {end}' geocache)"
  [ "$spread" = "topology.kubernetes.io/zone/1/ScheduleAnyway kubernetes.io/hostname/1/ScheduleAnyway " ] ||
    fail "sessions-us-0 lacks the default topology spread: '$spread'"
  placed="$(K="$c2" jsonpath pod/sessions-us-0 '{.spec.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].preference.matchExpressions[0].key}|{.spec.imagePullSecrets[*].name}|{.spec.priorityClassName}|{.spec.priority}|{.metadata.labels.team}|{.metadata.annotations.example\.com/owner}' geocache)"
  [ "$placed" = "example.com/cache-pool|registry-credentials|geocache-high|1000|sessions|platform-team" ] ||
    fail "sessions-us-0: affinity|pull secrets|priority class|priority|label team|annotation, got '$placed'"
  pass "region us's pods carry the default topology spread, the spec's affinity, pull secrets, priority class, labels and annotations"

  # Clients speak TLS to the nodes, trusting the CA the operator publishes in each region.
  PASSWORD="$(password geocache sessions)"
  local eu_ip ap_ip eu ap
  eu_ip="$(cluster_ip sessions-eu geocache)"
  ap_ip="$(K="$c3" cluster_ip sessions-ap geocache)"
  jsonpath configmap/sessions-eu-ca '{.data.ca\.crt}' geocache >"$current_dir/ca-eu.crt"
  K="$c3" jsonpath configmap/sessions-ap-ca '{.data.ca\.crt}' geocache >"$current_dir/ca-ap.crt"
  grep -q "BEGIN CERTIFICATE" "$current_dir/ca-ap.crt" || fail "no CA published in region ap"
  cmp -s "$current_dir/ca-eu.crt" "$current_dir/ca-ap.crt" || fail "regions eu and ap publish different CAs"
  CURL_TLS=(--cacert "$current_dir/ca-eu.crt" --resolve "sessions-eu.geocache.svc:8080:$eu_ip"
    --resolve "sessions-ap.geocache.svc:8080:$ap_ip")
  eu="https://sessions-eu.geocache.svc:8080"
  ap="https://sessions-ap.geocache.svc:8080"
  if curl -sf -m 5 "http://$eu_ip:8080/healthz" >/dev/null 2>&1; then fail "region eu answers in clear text"; fi
  http PUT "$eu/v1/keys/cart:42" '{"items":["book"]}' >/dev/null || fail "PUT over TLS in region eu"
  pass "region eu serves its clients over TLS with a certificate for its Service name"
  wait_for "a document written in cluster 1 is read in cluster 3" 30 reads "$ap/v1/keys/cart:42" '{"items":["book"]}'
  [ "$(redis-cli --tls --cacert "$current_dir/ca-ap.crt" -h "$ap_ip" --no-auth-warning -a "$PASSWORD" GET cart:42)" = \
    '{"items":["book"]}' ] || fail "redis-cli --tls GET in region ap"
  pass "redis-cli --tls reads it in region ap"
  local ap_lb
  K="$c3" wait_for "region ap's client Service gets a load balancer (clientService.type)" 60 \
    eval 'test -n "$(jsonpath svc/sessions-ap "{.status.loadBalancer.ingress[0].ip}" geocache)"'
  ap_lb="$(K="$c3" jsonpath svc/sessions-ap '{.status.loadBalancer.ingress[0].ip}' geocache)"
  [ "$(curl -sf -m 5 --cacert "$current_dir/ca-ap.crt" --resolve "sessions-ap.geocache.svc:8080:$ap_lb" \
    -H "Authorization: Bearer $PASSWORD" "https://sessions-ap.geocache.svc:8080/v1/keys/cart:42")" = '{"items":["book"]}' ] ||
    fail "GET through region ap's client load balancer"
  pass "an application outside cluster 3 reads through region ap's client load balancer ($ap_lb)"
  [ "$(jsonpath geocache/sessions '{.status.regions[*].readyReplicas}' geocache)" = "2 2 1" ] ||
    fail "per-region readiness in the status: $(jsonpath geocache/sessions '{.status.regions}' geocache)"
  pass "the status reports every region's ready nodes (eu 2, us 2, ap 1)"
  wait_for "every region reports peers up across clusters (ap's single node: both other regions) and its lag in ms" 60 \
    regions_linked_with_lag geocache sessions 3
  k get geocaches -n geocache -o wide
  # Events read correctly for three regions: one RegionCreated each with its own message,
  # Ready once every region serves, both timestamps and a count on each, no Warning.
  local all_events
  all_events="$(events geocache sessions)"
  echo "$all_events"
  for region in eu:2 us:2 ap:1; do
    grep -qE "^Normal\|RegionCreated\|region ${region%:*} created with ${region#*:} nodes\|1\|[0-9TZ:-]+\|[0-9TZ:-]+$" <<<"$all_events" ||
      fail "no RegionCreated Event of its own for region ${region%:*}: $all_events"
  done
  grep -qE '^Normal\|Ready\|3 of 3 regions serve \(' <<<"$all_events" || fail "no Ready Event for 3 of 3 regions: $all_events"
  if grep -q '^Warning|' <<<"$all_events"; then fail "Warning Events while the GeoCache was created: $all_events"; fi
  if grep -qE '\|\|' <<<"$all_events"; then fail "an Event without a count or timestamp: $all_events"; fi
  pass "Events: RegionCreated for eu, us and ap each, Ready 3 of 3, timestamps set, no Warning"
  # ack=global, every region linked: acknowledged once every reachable region (and a majority)
  # has it, so region ap has it at once, without waiting.
  http PUT "$eu/v1/keys/cart:43?ack=global" '{"items":["pen"]}' >/dev/null || fail "PUT ?ack=global in region eu"
  reads "$ap/v1/keys/cart:43" '{"items":["pen"]}' || fail "region ap lacks a write acknowledged with ack=global"
  pass "a write acknowledged with ack=global in cluster 1 is already in cluster 3"

  stop_watch
  degraded_never_true "$current_dir/degraded-create.log" "the GeoCache was created in three clusters and used"

  # A node restarts from its volume.
  local pid
  pid="$(K="$c3" jsonpath pod/sessions-ap-0 '{.status.containerStatuses[0].containerID}' geocache)"
  kill -KILL "${pid##*://}"
  K="$c3" wait_for "the killed node of region ap restarts" 60 eval 'test "$(pod_restarts geocache sessions-ap-0)" -ge 1'
  K="$c3" wait_for "region ap is ready again" 60 sts_ready geocache sessions-ap 1
  local recovered
  recovered="$(cat "$current_dir"/cluster-3/kubelet/pods/geocache_sessions-ap-0_*/container.log |
    grep -o 'recovered [0-9]* entries' | tail -1 | tr -dc 0-9)"
  [ "${recovered:-0}" -ge 1 ] || fail "the restarted node did not recover entries from its volume"
  pass "the restarted node recovered $recovered entries from its volume"
  wait_for "region ap still has the document" 30 reads "$ap/v1/keys/cart:42" '{"items":["book"]}'

  # A member cluster that goes away: Degraded, then back.
  local apiserver
  apiserver="$(cat "$current_dir/cluster-3/kube-apiserver.pid")"
  kill -KILL "$apiserver"
  while kill -0 "$apiserver" 2>/dev/null; do sleep 0.2; done
  wait_for "the GeoCache is Degraded while cluster 3's API server is down" 120 condition_is geocache sessions Degraded True
  http PUT "$eu/v1/keys/during-outage" '{"ok":true}' >/dev/null || fail "PUT during the outage"
  wait_for "replication to cluster 3 goes on without its API server" 30 reads "$ap/v1/keys/during-outage" '{"ok":true}'
  "$here/up.sh" 3 "$current_dir"
  wait_for "the GeoCache recovers when cluster 3 returns" 120 condition_is geocache sessions Degraded False
  wait_for "and is ready again" 60 gc_ready geocache sessions 3/3

  # Deleting the GeoCache cleans every cluster.
  k delete geocache sessions -n geocache --wait=false >/dev/null
  wait_for "cluster 1 is cleaned" 120 none_left geocache sessions
  K="$c2" wait_for "cluster 2 is cleaned" 120 none_left geocache sessions
  K="$c3" wait_for "cluster 3 is cleaned" 120 none_left geocache sessions
  wait_for "the GeoCache is gone" 60 eval 'test -z "$(k get geocache sessions -n geocache -o name 2>/dev/null)"'
  CURL_TLS=()
  down
  current_dir=""
}

case "${GEOCACHE_E2E_ONLY:-all}" in
  one) scenario_one ;;
  three) scenario_three ;;
  all)
    scenario_one
    scenario_three
    ;;
  *) fail "GEOCACHE_E2E_ONLY must be one or three" ;;
esac
