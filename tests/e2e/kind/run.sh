#!/usr/bin/env bash
# The end-to-end scenario of GeoCache on three kind clusters (see README.md next to this file):
# builds the node and operator images, creates three clusters, installs the operator in the
# first, deploys a GeoCache with one region per cluster, checks that a write in one region is
# read in the others and that the status shows every region ready, deletes the GeoCache and
# checks that every cluster was cleaned up; deletes the clusters at the end unless KEEP=1.
#   usage: tests/e2e/kind/run.sh        (knobs: environment variables, see README.md)
# Needs docker (with a running engine), kind, kubectl and helm 3; not cargo.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"

CLUSTER_PREFIX="${CLUSTER_PREFIX:-geocache-e2e}"
KEEP="${KEEP:-0}"
SKIP_BUILD="${SKIP_BUILD:-0}"
NODE_IMAGE="${NODE_IMAGE:-geocache/geocache-node:e2e}"
OPERATOR_IMAGE="${OPERATOR_IMAGE:-geocache/geocache-operator:e2e}"
KIND_NODE_IMAGE="${KIND_NODE_IMAGE:-}"
CURL_IMAGE="${CURL_IMAGE:-curlimages/curl:8.11.1}"
REPLICAS="${REPLICAS:-2}"
PERSISTENCE="${PERSISTENCE:-1}"
MEMBER_CREDENTIALS="${MEMBER_CREDENTIALS:-token}"
WAIT="${WAIT:-300}"
WORK_DIR="${WORK_DIR:-${TMPDIR:-/tmp}/geocache-e2e-kind}"
HELM="${HELM:-}"

# What the scenario deploys: GeoCache $NAME in namespace $NS (the namespace the member-cluster
# RBAC example is written for), region i in cluster i; the operator in cluster 1.
NAME=sessions
NS=geocache
OPERATOR_NS=geocache-system
RELEASE=geocache-operator
clusters=("$CLUSTER_PREFIX-1" "$CLUSTER_PREFIX-2" "$CLUSTER_PREFIX-3")
regions=(eu-west us-east ap-south)
kubeconfig="$WORK_DIR/kubeconfig"

start_time=$SECONDS
clusters_touched=0 # set before the first cluster is created: the EXIT trap deletes them
clusters_up=0      # set once all clusters answer: the EXIT trap prints diagnostics on failure
password=""
last_seen=""

step() { printf '\n==> [%ss] %s\n' "$((SECONDS - start_time))" "$*"; }
die() {
  echo "error: $*" >&2
  exit 1
}

# k I ARGS...: kubectl against cluster I (1, 2 or 3).
k() {
  local i=$1
  shift
  kubectl --kubeconfig "$kubeconfig" --context "kind-${clusters[i - 1]}" "$@"
}

helm_1() { "$HELM" --kubeconfig "$kubeconfig" --kube-context "kind-${clusters[0]}" "$@"; }

# wait_for WHAT SECONDS COMMAND...: runs COMMAND every 3 seconds until it succeeds, for at
# most SECONDS. COMMAND may set $last_seen to what it observed; it is shown every 30 seconds
# and on timeout.
wait_for() {
  local what=$1 seconds=$2
  shift 2
  local began=$SECONDS next_report=$((SECONDS + 30))
  last_seen=""
  echo "waiting up to ${seconds}s for $what"
  until "$@"; do
    if [ $((SECONDS - began)) -ge "$seconds" ]; then
      echo "timed out after ${seconds}s waiting for $what${last_seen:+; last seen: $last_seen}" >&2
      return 1
    fi
    if [ "$SECONDS" -ge "$next_report" ]; then
      echo "  still waiting ($((SECONDS - began))s) for $what${last_seen:+; now: $last_seen}"
      next_report=$((SECONDS + 30))
    fi
    sleep 3
  done
  echo "ok after $((SECONDS - began))s: $what"
}

diagnostics() {
  echo
  echo "==================== diagnostics ===================="
  echo "--- kubectl get geocache -o yaml (${clusters[0]}) ---"
  k 1 -n "$NS" get geocache -o yaml
  echo "--- events of geocache/$NAME ---"
  k 1 -n "$NS" get events --field-selector "involvedObject.kind=GeoCache,involvedObject.name=$NAME" \
    --sort-by=.metadata.creationTimestamp
  local i
  for i in 1 2 3; do
    echo "--- ${clusters[i - 1]} (region ${regions[i - 1]}): objects in namespace $NS ---"
    k "$i" -n "$NS" get statefulsets,services,configmaps,poddisruptionbudgets,persistentvolumeclaims,pods -o wide
    echo "--- ${clusters[i - 1]}: recent events in namespace $NS ---"
    k "$i" -n "$NS" get events --sort-by=.metadata.creationTimestamp | tail -n 40
    echo "--- ${clusters[i - 1]}: logs of the cache nodes ---"
    k "$i" -n "$NS" logs -l "app.kubernetes.io/instance=$NAME" --all-containers --prefix --tail=60 \
      --max-log-requests=20
  done
  echo "--- operator pods (${clusters[0]}, namespace $OPERATOR_NS) ---"
  k 1 -n "$OPERATOR_NS" get pods -o wide
  echo "--- operator logs ---"
  k 1 -n "$OPERATOR_NS" logs "deployment/$RELEASE" --all-containers --tail=400
  echo "--- operator logs before its last restart, if any ---"
  k 1 -n "$OPERATOR_NS" logs "deployment/$RELEASE" --all-containers --tail=100 --previous 2>/dev/null
  echo "====================================================="
}

on_exit() {
  local rc=$?
  set +e
  if [ "$rc" -ne 0 ] && [ "$clusters_up" = 1 ]; then
    diagnostics
  fi
  if [ "$clusters_touched" = 1 ]; then
    if [ "$KEEP" = 1 ]; then
      echo
      echo "KEEP=1: the clusters stay (${clusters[*]}). Look around with"
      echo "  export KUBECONFIG=$kubeconfig; kubectl --context kind-${clusters[0]} -n $NS get geocaches"
      echo "and delete them with: for c in ${clusters[*]}; do kind delete cluster --name \$c; done"
    else
      step "deleting the kind clusters"
      local name
      for name in "${clusters[@]}"; do
        kind delete cluster --name "$name" --kubeconfig "$kubeconfig"
      done
    fi
  fi
  if [ "$rc" -eq 0 ]; then
    echo
    echo "PASS: kind end-to-end scenario ($((SECONDS - start_time))s)"
  else
    echo
    echo "FAIL: kind end-to-end scenario (exit status $rc, after $((SECONDS - start_time))s)" >&2
  fi
  exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
step "checking the prerequisites"
case "$REPLICAS" in '' | *[!0-9]* | 0) die "REPLICAS must be a number of nodes per region, 1 or more" ;; esac
case "$WAIT" in '' | *[!0-9]*) die "WAIT must be a number of seconds" ;; esac
case "$MEMBER_CREDENTIALS" in token | admin) ;; *) die "MEMBER_CREDENTIALS must be token or admin" ;; esac
for image in "$NODE_IMAGE" "$OPERATOR_IMAGE"; do
  case "${image##*/}" in
    *:*) ;;
    *) die "image $image needs an explicit tag (repository:tag)" ;;
  esac
done
for tool in docker kind kubectl; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is required (see $here/README.md)"
done
if [ -z "$HELM" ]; then
  if command -v helm >/dev/null 2>&1; then
    HELM=helm
  else
    # tests/run.sh builds helm into ~/.cache/geocache/ when it is not installed.
    for candidate in "$HOME"/.cache/geocache/helm-*/helm; do
      if [ -x "$candidate" ]; then HELM="$candidate"; fi
    done
  fi
fi
[ -n "$HELM" ] || die "helm 3 is required (or HELM=/path/to/helm; see $here/README.md)"
docker info >/dev/null 2>&1 || die "docker cannot reach its engine ('docker info' failed)"
echo "docker $(docker version --format '{{.Server.Version}}'), $(kind version)"
echo "kubectl $(kubectl version --client -o yaml | sed -n 's/^ *gitVersion: //p' | head -n 1), helm $("$HELM" version --short)"
mkdir -p "$WORK_DIR"
chmod 700 "$WORK_DIR" # kubeconfigs with credentials live here
echo "work directory: $WORK_DIR"

# ---------------------------------------------------------------------------------------------
if [ "$SKIP_BUILD" = 1 ]; then
  step "using the existing images (SKIP_BUILD=1)"
  for image in "$NODE_IMAGE" "$OPERATOR_IMAGE"; do
    docker image inspect "$image" >/dev/null 2>&1 || die "SKIP_BUILD=1 but docker has no image $image"
  done
else
  step "building $NODE_IMAGE (node/Dockerfile; a release build, several minutes the first time)"
  DOCKER_BUILDKIT=1 docker build -f "$repo/node/Dockerfile" -t "$NODE_IMAGE" "$repo"
  step "building $OPERATOR_IMAGE (operator/Dockerfile)"
  DOCKER_BUILDKIT=1 docker build -f "$repo/operator/Dockerfile" -t "$OPERATOR_IMAGE" "$repo"
fi

# ---------------------------------------------------------------------------------------------
step "creating the kind clusters ${clusters[*]}"
existing="$(kind get clusters 2>/dev/null || true)"
clusters_touched=1
for name in "${clusters[@]}"; do
  if grep -qxF "$name" <<<"$existing"; then
    if [ "$KEEP" = 1 ]; then
      echo "reusing the existing cluster $name (KEEP=1)"
      kind export kubeconfig --name "$name" --kubeconfig "$kubeconfig"
      continue
    fi
    echo "deleting the cluster $name left by an earlier run (KEEP=1 reuses it instead)"
    kind delete cluster --name "$name" --kubeconfig "$kubeconfig"
  fi
  create_args=(--name "$name" --kubeconfig "$kubeconfig" --wait 3m)
  if [ -n "$KIND_NODE_IMAGE" ]; then create_args+=(--image "$KIND_NODE_IMAGE"); fi
  kind create cluster "${create_args[@]}"
done
for i in 1 2 3; do
  k "$i" get nodes -o wide
done
clusters_up=1

step "loading the images into the clusters"
for name in "${clusters[@]}"; do
  kind load docker-image "$NODE_IMAGE" --name "$name"
done
kind load docker-image "$OPERATOR_IMAGE" --name "${clusters[0]}"

# ---------------------------------------------------------------------------------------------
step "installing the operator and its CRD with helm in ${clusters[0]} (namespace $OPERATOR_NS)"
release_existed=0
if helm_1 status "$RELEASE" -n "$OPERATOR_NS" >/dev/null 2>&1; then release_existed=1; fi
echo "waiting up to ${WAIT}s for the operator's Deployment (helm --wait)"
helm_1 upgrade --install "$RELEASE" "$repo/charts/geocache-operator" \
  --namespace "$OPERATOR_NS" --create-namespace \
  --set-string "image.repository=${OPERATOR_IMAGE%:*}" \
  --set-string "image.tag=${OPERATOR_IMAGE##*:}" \
  --set image.pullPolicy=IfNotPresent \
  --set resyncSeconds=10 \
  --wait --timeout "${WAIT}s"
if [ "$release_existed" = 1 ]; then
  # Same tag, maybe a new build: restart so that the operator runs the image just loaded.
  k 1 -n "$OPERATOR_NS" rollout restart "deployment/$RELEASE"
  echo "waiting up to ${WAIT}s for the restarted operator"
  k 1 -n "$OPERATOR_NS" rollout status "deployment/$RELEASE" --timeout "${WAIT}s"
fi
echo "waiting up to 60s for the CRD geocaches.geocache.dev to be established"
k 1 wait --for condition=Established crd/geocaches.geocache.dev --timeout 60s
k 1 -n "$OPERATOR_NS" get pods -o wide

# ---------------------------------------------------------------------------------------------
step "preparing namespace $NS in every cluster and the member clusters' access"
for i in 1 2 3; do
  k "$i" get namespace "$NS" >/dev/null 2>&1 || k "$i" create namespace "$NS"
done

token_ready() { # cluster index
  local token
  token="$(k "$1" -n "$NS" get secret geocache-operator-token -o jsonpath='{.data.token}' 2>/dev/null)" || return 1
  [ -n "$token" ]
}

# member_kubeconfig I FILE: writes the kubeconfig the operator uses for cluster I. The server
# is the one `kind get kubeconfig --internal` gives (the control-plane container's name, which
# resolves on the docker network the clusters share); the user is the ServiceAccount of
# examples/member-cluster-rbac.yaml (MEMBER_CREDENTIALS=token), or kind's admin
# (MEMBER_CREDENTIALS=admin).
member_kubeconfig() {
  local i=$1 out=$2 name=${clusters[$1 - 1]}
  local internal="$WORK_DIR/$name.internal.kubeconfig"
  kind get kubeconfig --internal --name "$name" >"$internal"
  if [ "$MEMBER_CREDENTIALS" = admin ]; then
    cp "$internal" "$out"
    return 0
  fi
  local server ca token
  server="$(kubectl --kubeconfig "$internal" config view --raw -o jsonpath='{.clusters[0].cluster.server}')"
  ca="$(kubectl --kubeconfig "$internal" config view --raw -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')"
  if [ -z "$server" ] || [ -z "$ca" ]; then die "no server or CA in the internal kubeconfig of $name"; fi
  wait_for "the token of ServiceAccount $NS/geocache-operator in $name" 60 token_ready "$i"
  token="$(k "$i" -n "$NS" get secret geocache-operator-token -o jsonpath='{.data.token}' | base64 -d)"
  cat >"$out" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: $name
    cluster:
      server: $server
      certificate-authority-data: $ca
users:
  - name: geocache-operator
    user:
      token: $token
contexts:
  - name: $name
    context:
      cluster: $name
      user: geocache-operator
      namespace: $NS
current-context: $name
EOF
}

member_servers=""
for i in 2 3; do
  echo "member cluster ${clusters[i - 1]} (region ${regions[i - 1]}): applying examples/member-cluster-rbac.yaml"
  k "$i" apply -f "$repo/examples/member-cluster-rbac.yaml"
  file="$WORK_DIR/${clusters[i - 1]}.member.kubeconfig"
  member_kubeconfig "$i" "$file"
  server="$(kubectl --kubeconfig "$file" config view --raw -o jsonpath='{.clusters[0].cluster.server}')"
  member_servers="$member_servers $server"
  echo "Secret $NS/${regions[i - 1]}-kubeconfig in ${clusters[0]}: $MEMBER_CREDENTIALS credentials for $server"
  k 1 -n "$NS" create secret generic "${regions[i - 1]}-kubeconfig" --from-file=kubeconfig="$file" \
    --dry-run=client -o yaml |
    k 1 apply --server-side --force-conflicts --field-manager=geocache-e2e -f -
done

# ---------------------------------------------------------------------------------------------
# Throwaway pods with curl. Their scripts read the parameters from the environment and retry
# until $DEADLINE seconds have passed; the pod's exit status is the verdict.

in_pod() { # cluster index, what, script, NAME=VALUE environment...
  local i=$1 what=$2 script=$3
  shift 3
  local args=(--env="DEADLINE=$WAIT" --env="GEOCACHE_PASSWORD=$password") kv
  for kv in "$@"; do args+=(--env="$kv"); done
  echo "[${clusters[i - 1]}] $what (throwaway pod, up to ${WAIT}s)"
  # --attach with --restart=Never: kubectl exits with the container's exit status. Bounded by
  # --pod-running-timeout (to start) and by the script's own deadline (to finish).
  k "$i" -n "$NS" run "e2e-curl-$RANDOM$RANDOM" --attach --rm --quiet --restart=Never \
    --image="$CURL_IMAGE" --image-pull-policy=IfNotPresent --pod-running-timeout=4m \
    --labels=app.kubernetes.io/part-of=geocache-e2e \
    "${args[@]}" --command -- sh -c "$script"
}

reach_script() {
  cat <<'EOF'
end=$(( $(date +%s) + DEADLINE ))
for server in $SERVERS; do
  until curl -ksS -m 5 -o /dev/null -w "$server: HTTP %{http_code}\n" "$server/version"; do
    if [ "$(date +%s)" -ge "$end" ]; then echo "cannot reach $server" >&2; exit 1; fi
    sleep 2
  done
done
EOF
}

put_script() {
  cat <<'EOF'
end=$(( $(date +%s) + DEADLINE ))
while :; do
  code=$(curl -sS -m 10 -o /tmp/body -w '%{http_code}' -X PUT \
    -H "Authorization: Bearer $GEOCACHE_PASSWORD" -H 'Content-Type: application/json' \
    --data "$DOC" "$URL") || code="(curl failed)"
  case "$code" in
    200|201) echo "PUT $URL: HTTP $code $(cat /tmp/body)"; exit 0 ;;
  esac
  if [ "$(date +%s)" -ge "$end" ]; then
    echo "PUT $URL kept failing for ${DEADLINE}s; last: HTTP $code $(cat /tmp/body 2>/dev/null)" >&2
    exit 1
  fi
  sleep 2
done
EOF
}

get_script() {
  cat <<'EOF'
end=$(( $(date +%s) + DEADLINE ))
while :; do
  code=$(curl -sS -m 10 -D /tmp/headers -o /tmp/body -w '%{http_code}' \
    -H "Authorization: Bearer $GEOCACHE_PASSWORD" "$URL") || code="(curl failed)"
  if [ "$code" = 200 ] && grep -qF "$EXPECT" /tmp/body \
    && grep -qi "^x-geocache-origin-region: *$ORIGIN" /tmp/headers; then
    echo "GET $URL: HTTP 200 $(cat /tmp/body) (written in $ORIGIN)"
    exit 0
  fi
  if [ "$(date +%s)" -ge "$end" ]; then
    echo "GET $URL: no document with $EXPECT from $ORIGIN after ${DEADLINE}s; last: HTTP $code $(cat /tmp/body 2>/dev/null)" >&2
    exit 1
  fi
  sleep 2
done
EOF
}

step "checking that ${clusters[0]}'s pods reach the member clusters' API servers"
in_pod 1 "TLS connection to$member_servers" "$(reach_script)" "SERVERS=$member_servers"

# ---------------------------------------------------------------------------------------------
step "deploying GeoCache $NS/$NAME: ${regions[*]}, one region per cluster, $REPLICAS nodes each"
if k 1 -n "$NS" get geocache "$NAME" >/dev/null 2>&1; then
  echo "deleting the GeoCache left by an earlier run (waiting up to ${WAIT}s)"
  k 1 -n "$NS" delete geocache "$NAME" --wait=true --timeout="${WAIT}s"
fi
persist=false
if [ "$PERSISTENCE" = 1 ]; then persist=true; fi
manifest="$WORK_DIR/geocache.yaml"
cat >"$manifest" <<EOF
# Adapted from examples/geocache-multicluster.yaml for kind: the e2e images (loaded with
# kind load, so never pulled), small nodes, NodePort replication Services (kind has no load
# balancer: the operator publishes a ready pod's node address and the node port), kind's
# storage class "standard". Peer TLS and client passwords: the defaults (on).
apiVersion: geocache.dev/v1alpha1
kind: GeoCache
metadata:
  name: $NAME
  namespace: $NS
spec:
  image: $NODE_IMAGE
  imagePullPolicy: IfNotPresent
  maxMemory: 64mb
  defaultTtl: 30m
  resources:
    requests:
      cpu: 50m
      memory: 96Mi
    limits:
      memory: 192Mi
  persistence:
    enabled: $persist
    size: 256Mi
    fsync: every-second
    storageClassName: standard
  regions:
    - name: ${regions[0]}
      replicas: $REPLICAS
      service:
        type: NodePort
    - name: ${regions[1]}
      replicas: $REPLICAS
      cluster:
        kubeconfigSecretRef:
          name: ${regions[1]}-kubeconfig
          key: kubeconfig
      service:
        type: NodePort
    - name: ${regions[2]}
      replicas: $REPLICAS
      cluster:
        kubeconfigSecretRef:
          name: ${regions[2]}-kubeconfig
      service:
        type: NodePort
EOF
cat "$manifest"
k 1 apply -f "$manifest"

geocache_ready() {
  local out ready condition observed generation message
  out="$(k 1 -n "$NS" get geocache "$NAME" -o jsonpath='{.status.ready}|{.status.conditions[?(@.type=="Ready")].status}|{.status.observedGeneration}|{.metadata.generation}|{.status.conditions[?(@.type=="Ready")].message}' 2>&1)" || {
    last_seen="$out"
    return 1
  }
  IFS='|' read -r ready condition observed generation message <<<"$out"
  last_seen="READY ${ready:-none}, Ready=${condition:-none}: ${message:-no message}"
  [ "$ready" = "3/3" ] && [ "$condition" = True ] && [ "$observed" = "$generation" ]
}
wait_for "kubectl get geocache $NAME to show READY 3/3 (condition Ready=True)" "$WAIT" geocache_ready
k 1 -n "$NS" get geocache "$NAME"

# ---------------------------------------------------------------------------------------------
step "checking the data path: a write in one region is read in the others"
password="$(k 1 -n "$NS" get secret "$NAME-client-auth" -o jsonpath='{.data.password}' | base64 -d)"
[ -n "$password" ] || die "no client password in Secret $NS/$NAME-client-auth (key password)"
nonce="$(date +%s)-$RANDOM"

key="e2e-$nonce"
in_pod 1 "PUT $key in ${regions[0]}" "$(put_script)" \
  "URL=http://$NAME-${regions[0]}:8080/v1/keys/$key" \
  "DOC={\"e2e\":\"$nonce\",\"from\":\"${regions[0]}\"}"
for i in 2 3; do
  in_pod "$i" "GET $key in ${regions[i - 1]} until it has arrived" "$(get_script)" \
    "URL=http://$NAME-${regions[i - 1]}:8080/v1/keys/$key" "EXPECT=$nonce" "ORIGIN=${regions[0]}"
done

# The other way round, from a member cluster, acknowledged by every region before the answer.
key="e2e-global-$nonce"
in_pod 3 "PUT $key in ${regions[2]} with ack=global" "$(put_script)" \
  "URL=http://$NAME-${regions[2]}:8080/v1/keys/$key?ack=global" \
  "DOC={\"e2e\":\"global-$nonce\",\"from\":\"${regions[2]}\"}"
in_pod 1 "GET $key in ${regions[0]}" "$(get_script)" \
  "URL=http://$NAME-${regions[0]}:8080/v1/keys/$key" "EXPECT=global-$nonce" "ORIGIN=${regions[2]}"

# ---------------------------------------------------------------------------------------------
step "checking the status: every region ready, with its endpoint and peers up"
regions_healthy() {
  local out degraded rest name replicas ready endpoint peers seen=0 bad=""
  out="$(k 1 -n "$NS" get geocache "$NAME" -o jsonpath='{.status.conditions[?(@.type=="Degraded")].status}{"\n"}{range .status.regions[*]}{.name}|{.replicas}|{.readyReplicas}|{.endpoint}|{.peersUp}{"\n"}{end}' 2>&1)" || {
    last_seen="$out"
    return 1
  }
  degraded="$(head -n 1 <<<"$out")"
  rest="$(tail -n +2 <<<"$out")"
  while IFS='|' read -r name replicas ready endpoint peers; do
    [ -n "$name" ] || continue
    seen=$((seen + 1))
    # Each node sees at least one node of each of the two other regions up.
    if [ "$replicas" != "$REPLICAS" ] || [ "$ready" != "$REPLICAS" ] || [ -z "$endpoint" ] ||
      [ -z "$peers" ] || [ "$peers" -lt 2 ]; then
      bad="$bad $name(replicas=$replicas ready=${ready:-?} endpoint=${endpoint:-none} peersUp=${peers:-?})"
    fi
  done <<<"$rest"
  last_seen="Degraded=${degraded:-none}, $seen regions${bad:+, not yet:$bad}"
  [ "$seen" = 3 ] && [ -z "$bad" ] && [ "$degraded" = False ]
}
wait_for "every region of $NAME ready, with an endpoint and peers up, and Degraded=False" "$WAIT" regions_healthy
k 1 -n "$NS" get geocache "$NAME" -o jsonpath='{range .status.regions[*]}{.name}: {.readyReplicas}/{.replicas} ready, endpoint {.endpoint}, peersUp {.peersUp}, maxLagMs {.maxLagMs}{"\n"}{end}'
k 1 -n "$NS" get geocache "$NAME"

# ---------------------------------------------------------------------------------------------
step "deleting GeoCache $NAME: every cluster must be cleaned up"
echo "waiting up to ${WAIT}s for the GeoCache to be gone (the operator's finalizer cleans up the member clusters)"
k 1 -n "$NS" delete geocache "$NAME" --wait=true --timeout="${WAIT}s"

objects_of() { # cluster index, kinds
  k "$1" -n "$NS" get "$2" -l "app.kubernetes.io/instance=$NAME" -o name
}
# The finalizer is removed only once the member clusters are clean: nothing may be left there.
for i in 2 3; do
  left="$(objects_of "$i" statefulsets,services,configmaps,poddisruptionbudgets,secrets)"
  [ -z "$left" ] || die "the GeoCache is gone but ${clusters[i - 1]} still has: $(echo "$left" | tr '\n' ' ')"
  echo "${clusters[i - 1]}: no StatefulSet, Service, ConfigMap, PodDisruptionBudget or Secret of $NAME left"
done
instance_gone() { # cluster index
  local left
  left="$(objects_of "$1" statefulsets,services,configmaps,poddisruptionbudgets,secrets,persistentvolumeclaims,pods 2>&1)" || {
    last_seen="$left"
    return 1
  }
  last_seen="${clusters[$1 - 1]}: $(echo "$left" | tr '\n' ' ')"
  [ -z "$left" ]
}
for i in 1 2 3; do
  wait_for "${clusters[i - 1]} to have no object, volume claim or pod of $NAME left (garbage collection, pods terminating)" \
    "$WAIT" instance_gone "$i"
done

step "all checks passed"
