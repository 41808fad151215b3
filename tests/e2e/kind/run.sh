#!/usr/bin/env bash
# The end-to-end scenario of GeoCache on three kind clusters, with the images of the
# repository's Dockerfiles, on real kubelets (see README.md next to this file). It builds the
# node and operator images (and checks their user, entrypoint and --help), creates three
# clusters, installs the operator with its chart in the first, deploys a GeoCache with one
# region per cluster, and checks: replication across clusters through the Services the
# operator makes, over TLS, with ack=global; the status; the pods' user, read-only root and
# capabilities as the kernel reports them for the running process; a node killed in its
# container restarting through the kubelet and catching up; a node deleted with its pod
# recovering from its provisioned volume (local-path-provisioner); the operator's probes,
# RBAC and leader election in its real pod, across a deletion of that pod; the clean-up of
# every cluster when the GeoCache is deleted. Deletes the clusters at the end unless KEEP=1.
#
# Two ways to run, chosen by ENGINE (default auto: docker when `docker info` works, else local):
#   ENGINE=docker  a machine with Docker and a registry: images are pulled as needed and
#                  node/operator images built by their Dockerfiles' build stage;
#   ENGINE=local   our machines (root, no registry, no Docker engine): prepare.sh builds
#                  everything offline, engine.sh runs dockerd in a network namespace of its
#                  own, the binaries are built on the host (cargo, static) and taken by the
#                  Dockerfiles' prebuilt path; the scenario runs inside that namespace; the
#                  engine and the namespace are removed at the end, and the machine's routes
#                  and iptables rules are compared with what they were before.
#   usage: tests/e2e/kind/run.sh        (knobs: environment variables, see README.md)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
# shellcheck source=lib.sh
source "$here/lib.sh"

ENGINE="${ENGINE:-auto}"
KEEP="${KEEP:-0}"
# ENGINE=local: a hard bound, in seconds, on everything (cold: Go builds, debootstrap, the
# release build, the scenario); each part gets what is left. Clean-up comes after it.
KIND_TIMEOUT="${KIND_TIMEOUT:-3600}"

# ===============================================================================================
# ENGINE=local: the outer part, in the machine's namespace. It prepares, starts the engine,
# and runs this script again inside the engine's namespace (GEOCACHE_KIND_INSIDE=1).
# ===============================================================================================

# net_state: the machine's routes and firewall rules, without counters and timestamps.
net_state() {
  echo "# ip route"
  ip route show table all 2>/dev/null | grep -v -e ' table local ' -e '^local ' || true
  echo "# ip -6 route"
  ip -6 route show 2>/dev/null || true
  local save
  for save in iptables-save ip6tables-save; do
    echo "# $save"
    if command -v "$save" >/dev/null 2>&1; then
      "$save" 2>/dev/null | sed -e '/^#/d' -e 's/\[[0-9]*:[0-9]*\]$//' || true
    fi
  done
}

# The kubelets in kind's privileged nodes set these kernel tunables of the machine (they are
# not namespaced); they are put back at the end.
kernel_tunables=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes)

# The EXIT trap of ENGINE=local: stop the host build, stop the engine, put the tunables
# back, compare the network.
state="" engine_started=0 tunables_saved=0 kind_deadline=0 cargo_pid=""
local_cleanup() {
  local rc=$?
  set +e
  if [ -n "$cargo_pid" ] && kill -0 "$cargo_pid" 2>/dev/null; then
    # timeout(1) passes the signal on to cargo's process group.
    kill -TERM "$cargo_pid"
    wait "$cargo_pid"
  fi
  if [ "$engine_started" = 1 ]; then
    if [ "$KEEP" = 1 ]; then
      step "KEEP=1: the engine stays up (stop it with: $here/engine.sh down)"
      echo "reach the clusters with: $here/engine.sh exec env PATH=$state/bin:\$PATH kubectl --kubeconfig ${WORK_DIR:-${TMPDIR:-/tmp}/geocache-e2e-kind}/kubeconfig get nodes"
    else
      step "stopping the engine and removing its network namespace (engine.sh down)"
      "$here/engine.sh" down
    fi
  fi
  if [ "$tunables_saved" = 1 ]; then
    local line
    while read -r line; do sysctl -q -w "${line// /}" >/dev/null 2>&1; done <"$state/tunables"
    if sysctl -e "${kernel_tunables[@]}" | diff -u "$state/tunables" -; then
      echo "kernel tunables as they were: $(tr '\n' ' ' <"$state/tunables")"
    else
      echo "error: kernel tunables could not be put back (diff above)" >&2
      [ "$rc" -ne 0 ] || rc=1
    fi
  fi
  if [ -f "$state/net.before" ] && [ "$KEEP" != 1 ]; then
    step "checking that the machine's routes and iptables rules are as they were"
    net_state >"$state/net.after"
    if diff -u "$state/net.before" "$state/net.after"; then
      echo "unchanged: $(grep -c . "$state/net.before") lines of ip route, ip -6 route, iptables-save, ip6tables-save"
    else
      echo "error: the machine's network changed (diff above)" >&2
      [ "$rc" -ne 0 ] || rc=1
    fi
  fi
  rm -rf "$state"
  kind_step_done
  if [ "$rc" -eq 0 ]; then
    echo "PASS: kind tier (ENGINE=local), $((SECONDS - kind_t0))s in all"
  else
    echo "FAIL: kind tier (ENGINE=local), exit status $rc after $((SECONDS - kind_t0))s" >&2
  fi
  exit "$rc"
}

# left: the seconds left of KIND_TIMEOUT (fails when none are).
left() {
  local n=$((kind_deadline - SECONDS))
  [ "$n" -gt 0 ] || die "KIND_TIMEOUT (${KIND_TIMEOUT}s) is used up"
  echo "$n"
}

run_local() {
  case "$KIND_TIMEOUT" in '' | *[!0-9]*) die "KIND_TIMEOUT must be a number of seconds" ;; esac
  kind_deadline=$((SECONDS + KIND_TIMEOUT))
  [ "$(id -u)" -eq 0 ] || die "ENGINE=local needs root (network namespace, dockerd); or run with Docker (ENGINE=docker)"
  command -v cargo >/dev/null 2>&1 || die "ENGINE=local builds the binaries with cargo, which is missing"
  state="$(mktemp -d "${TMPDIR:-/tmp}/geocache-kind-local.XXXXXX")"
  engine_started=0
  tunables_saved=0
  trap local_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM

  # One run at a time per machine: the engine's namespace, socket and exec root are the same
  # for every user and HOME. /run is a tmpfs: no stale lock survives a reboot, and the lock
  # goes with the process that holds it.
  exec 8>>/run/geocache-kind.lock
  if ! flock -n 8; then
    echo "another run of the kind tier holds the engine (/run/geocache-kind.lock); waiting up to $(left)s"
    flock -w "$(left)" 8 || die "the engine stayed busy for KIND_TIMEOUT (${KIND_TIMEOUT}s)"
  fi

  step "Debian packages of the local engine (prepare.sh packages)"
  "$here/prepare.sh" packages
  net_state >"$state/net.before"
  sysctl -e "${kernel_tunables[@]}" >"$state/tunables"
  tunables_saved=1

  # One cargo invocation for both binaries (their dependencies are compiled once), in the
  # background while prepare.sh builds the Go binaries and the images: both are mostly CPU,
  # but each has long stretches on one core (links, the largest crates and packages, image
  # imports), which the other fills. The cargo profile `image` (Cargo.toml) is release's
  # optimisation without debug info and with more codegen units: CI compiles it from nothing
  # on every fresh machine.
  local profile="${PROFILE:-image}" target=x86_64-unknown-linux-gnu
  step "host build of the node and operator binaries, in the background (cargo profile $profile, static glibc: the Dockerfiles' prebuilt path; log: $state/cargo.log)"
  # timeout(1) runs it in a process group of its own and signals all of it.
  # shellcheck disable=SC2016 # expanded by the inner bash, from its arguments
  RUSTFLAGS='-C target-feature=+crt-static' timeout -k 30 "$(left)" bash -c '
    started=$SECONDS
    cargo build --manifest-path "$1/Cargo.toml" --profile "$2" --locked --target "$3" \
      -p geocache-node --bin geocache-node -p geocache-operator --bin geocache-operator
    rc=$?
    echo "cargo build: exit status $rc after $((SECONDS - started))s"
    exit "$rc"' cargo-build "$repo" "$profile" "$target" >"$state/cargo.log" 2>&1 </dev/null &
  cargo_pid=$!

  step "engine: dockerd in its own network namespace (engine.sh up)"
  if "$here/engine.sh" exec docker version >/dev/null 2>&1; then
    echo "an engine of an earlier run is up: it is used, and stopped at the end"
  fi
  engine_started=1
  "$here/engine.sh" up

  step "preparing the kind node image and the other images, offline (prepare.sh; cached, up to $(left)s)"
  timeout -k 60 "$(left)" "$here/prepare.sh" | tee "$state/prepare.log"
  local images
  images="$(tail -n 1 "$state/prepare.log")"
  case "$images" in
    KIND_NODE_IMAGE=*' CURL_IMAGE='*) ;;
    *) die "prepare.sh did not name its images (last line: $images)" ;;
  esac
  local kind_node_image curl_image
  kind_node_image="${images%% *}"
  kind_node_image="${kind_node_image#KIND_NODE_IMAGE=}"
  curl_image="${images##*CURL_IMAGE=}"

  step "waiting for the host build (cargo profile $profile, started in the background)"
  local cargo_rc=0
  wait "$cargo_pid" || cargo_rc=$?
  cargo_pid=""
  if [ "$cargo_rc" -ne 0 ]; then
    tail -n 60 "$state/cargo.log" >&2
    die "the host build failed (exit status $cargo_rc)"
  fi
  grep -v -e '^ *Compiling ' -e '^ *Downloaded ' -e '^ *Downloading ' "$state/cargo.log" | tail -n 5
  file "$repo/target/$target/$profile/geocache-node" 2>/dev/null || ls -l "$repo/target/$target/$profile/geocache-node"

  # The tools of the scenario, first on its PATH: Debian's docker client (the engine's own
  # version, with BuildKit built in), kind and kubectl v1.37.2 from the cache.
  mkdir -p "$state/bin"
  ln -s /usr/bin/docker "$state/bin/docker"
  ln -s "$kind_bin_cache/kind" "$state/bin/kind"
  ln -s "$k8s_node_cache/kubectl" "$state/bin/kubectl"
  # Nothing inside the namespace reaches the network: helm is found (or built) out here.
  local helm="${HELM:-}"
  if [ -z "$helm" ]; then
    if command -v helm >/dev/null 2>&1; then helm="$(command -v helm)"; else helm="$("$repo/tests/helm.sh")"; fi
  fi

  step "the scenario, inside netns $ENGINE_NETNS (up to $(left)s)"
  timeout -k 120 "$(left)" "$here/engine.sh" exec env \
    GEOCACHE_KIND_INSIDE=1 kind_t0=0 PATH="$state/bin:$PATH" \
    BINARY=prebuilt PROFILE="$profile" KIND_NODE_IMAGE="$kind_node_image" CURL_IMAGE="$curl_image" HELM="$helm" \
    "$here/run.sh"
}

if [ "${GEOCACHE_KIND_INSIDE:-0}" != 1 ]; then
  case "$ENGINE" in
    auto)
      if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then ENGINE=docker; else ENGINE=local; fi
      ;;
    docker | local) ;;
    *) die "ENGINE must be auto, docker or local" ;;
  esac
  echo "kind tier: ENGINE=$ENGINE"
  if [ "$ENGINE" = local ]; then
    run_local
    exit 0
  fi
fi

# ===============================================================================================
# The scenario (ENGINE=docker, or inside the engine's namespace for ENGINE=local).
# ===============================================================================================

CLUSTER_PREFIX="${CLUSTER_PREFIX:-geocache-e2e}"
SKIP_BUILD="${SKIP_BUILD:-0}"
# build: the Dockerfiles compile the binaries (needs a registry for the rust image);
# prebuilt: they take target/x86_64-unknown-linux-gnu/$PROFILE/ from a host build.
BINARY="${BINARY:-build}"
PROFILE="${PROFILE:-release}"
NODE_IMAGE="${NODE_IMAGE:-geocache/geocache-node:e2e}"
OPERATOR_IMAGE="${OPERATOR_IMAGE:-geocache/geocache-operator:e2e}"
KIND_NODE_IMAGE="${KIND_NODE_IMAGE:-}"
CURL_IMAGE="${CURL_IMAGE:-curlimages/curl:8.11.1}"
REPLICAS="${REPLICAS:-2}"
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
LEASE=geocache-operator
clusters=("$CLUSTER_PREFIX-1" "$CLUSTER_PREFIX-2" "$CLUSTER_PREFIX-3")
regions=(eu-west us-east ap-south)
kubeconfig="$WORK_DIR/kubeconfig"

clusters_touched=0 # set before the first cluster is created: the EXIT trap deletes them
clusters_up=0      # set once all clusters answer: the EXIT trap prints diagnostics on failure
password=""
last_seen=""
checks=0

pass() {
  checks=$((checks + 1))
  echo "  ok: $*"
}

# k I ARGS...: kubectl against cluster I (1, 2 or 3), every request bounded.
k() {
  local i=$1
  shift
  kubectl --kubeconfig "$kubeconfig" --context "kind-${clusters[i - 1]}" --request-timeout=30s "$@"
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
    echo "--- ${clusters[i - 1]} (region ${regions[i - 1]}): nodes and pods of every namespace ---"
    k "$i" get nodes -o wide
    k "$i" get pods -A -o wide
    echo "--- ${clusters[i - 1]}: objects in namespace $NS ---"
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
  kind_step_done
  if [ "$rc" -eq 0 ]; then
    echo
    echo "PASS: kind end-to-end scenario, $checks checks ($((SECONDS - kind_t0))s)"
  else
    echo
    echo "FAIL: kind end-to-end scenario (exit status $rc, after $((SECONDS - kind_t0))s, $checks checks passed)" >&2
  fi
  exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
step "checking the prerequisites"
case "$REPLICAS" in '' | *[!0-9]* | 0 | 1) die "REPLICAS must be a number of nodes per region, 2 or more" ;; esac
case "$WAIT" in '' | *[!0-9]*) die "WAIT must be a number of seconds" ;; esac
case "$MEMBER_CREDENTIALS" in token | admin) ;; *) die "MEMBER_CREDENTIALS must be token or admin" ;; esac
case "$BINARY" in build | prebuilt) ;; *) die "BINARY must be build or prebuilt" ;; esac
case "$PROFILE" in release | image) ;; *) die "PROFILE must be release or image (the Dockerfiles' .dockerignore send only those)" ;; esac
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
    # tests/helm.sh builds helm into ~/.cache/geocache/ when it is not installed.
    HELM="$("$repo/tests/helm.sh" 2>/dev/null)" || HELM=""
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
  # BuildKit: it skips the Dockerfile's stage that is not chosen (BINARY) and reads
  # <Dockerfile>.dockerignore. PROFILE only matters to the prebuilt path.
  step "building $NODE_IMAGE (node/Dockerfile, BINARY=$BINARY)"
  DOCKER_BUILDKIT=1 docker build -f "$repo/node/Dockerfile" --build-arg "BINARY=$BINARY" --build-arg "PROFILE=$PROFILE" \
    -t "$NODE_IMAGE" "$repo"
  step "building $OPERATOR_IMAGE (operator/Dockerfile, BINARY=$BINARY)"
  DOCKER_BUILDKIT=1 docker build -f "$repo/operator/Dockerfile" --build-arg "BINARY=$BINARY" --build-arg "PROFILE=$PROFILE" \
    -t "$OPERATOR_IMAGE" "$repo"
fi

step "checking the images: user, entrypoint, and that the binaries run on them"
# check_image IMAGE ENTRYPOINT: the user is 65532:65532 and the entrypoint is ENTRYPOINT.
check_image() {
  local image=$1 entrypoint=$2 user ep
  user="$(docker image inspect "$image" --format '{{.Config.User}}')"
  ep="$(docker image inspect "$image" --format '{{json .Config.Entrypoint}}')"
  [ "$user" = "65532:65532" ] || die "$image runs as '$user', not 65532:65532"
  [ "$ep" = "[\"$entrypoint\"]" ] || die "$image's entrypoint is $ep, not [\"$entrypoint\"]"
  pass "$image: user $user, entrypoint $ep"
}
check_image "$NODE_IMAGE" /geocache-node
check_image "$OPERATOR_IMAGE" /geocache-operator
# As a user would try them, and as Kubernetes runs them: read-only root, no capabilities.
help="$(docker run --rm --read-only --cap-drop ALL "$NODE_IMAGE" --help)" || die "docker run --rm $NODE_IMAGE --help failed"
grep -q -- '--region' <<<"$help" || die "the node's --help does not describe --region: $help"
pass "docker run --rm $NODE_IMAGE --help ($(wc -l <<<"$help") lines, read-only root, no capabilities)"
docker run --rm --read-only --cap-drop ALL "$OPERATOR_IMAGE" --help >/dev/null ||
  die "docker run --rm $OPERATOR_IMAGE --help failed"
pass "docker run --rm $OPERATOR_IMAGE --help"

# ---------------------------------------------------------------------------------------------
step "creating the kind clusters ${clusters[*]}"
# kubelet v1.37 refuses cgroup v1 unless told (our CI machines are cgroup v1); harmless on v2.
kind_config="$WORK_DIR/kind.yaml"
cat >"$kind_config" <<'YAML'
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
kubeadmConfigPatches:
  - |
    kind: KubeletConfiguration
    failCgroupV1: false
YAML
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
  create_args=(--name "$name" --kubeconfig "$kubeconfig" --config "$kind_config" --wait 3m)
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

system_ready() { # cluster index: CoreDNS and the storage provisioner run
  local out
  out="$(k "$1" get deployments -A -o jsonpath='{range .items[*]}{.metadata.name}={.status.readyReplicas}/{.spec.replicas} {end}' 2>&1)" || {
    last_seen="$out"
    return 1
  }
  last_seen="$out"
  grep -q 'coredns=2/2' <<<"$out" && grep -q 'local-path-provisioner=1/1' <<<"$out"
}
for i in 1 2 3; do
  wait_for "CoreDNS and local-path-provisioner ready in ${clusters[i - 1]}" "$WAIT" system_ready "$i"
done
[ "$(k 1 get storageclass standard -o jsonpath='{.provisioner}')" = rancher.io/local-path ] ||
  die "the default StorageClass 'standard' is not local-path-provisioner's"
pass "every cluster runs CoreDNS and local-path-provisioner (StorageClass standard)"

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
  --set "leaderElection.leaseName=$LEASE" \
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
  cat >"$out" <<YAML
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
YAML
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
# Throwaway client pods (curl and a shell). Their scripts read the parameters from the
# environment and retry until $DEADLINE seconds have passed; the pod's exit status is the
# verdict. Clients speak TLS to the nodes, trusting the CA of $CA (the PEM the operator
# publishes in the ConfigMap <name>-<region>-ca).

in_pod() { # cluster index, what, script, NAME=VALUE environment...
  local i=$1 what=$2 script=$3
  shift 3
  local args=(--env="DEADLINE=$WAIT" --env="GEOCACHE_PASSWORD=$password" --env="CA=${ca_pem:-}") kv
  for kv in "$@"; do args+=(--env="$kv"); done
  echo "[${clusters[i - 1]}] $what (throwaway pod, up to ${WAIT}s)"
  # --attach with --restart=Never: kubectl exits with the container's exit status. Bounded by
  # --pod-running-timeout (to start) and by the script's own deadline (to finish).
  kubectl --kubeconfig "$kubeconfig" --context "kind-${clusters[i - 1]}" -n "$NS" \
    run "e2e-curl-$RANDOM$RANDOM" --attach --rm --quiet --restart=Never \
    --image="$CURL_IMAGE" --image-pull-policy=IfNotPresent --pod-running-timeout=4m \
    --labels=app.kubernetes.io/part-of=geocache-e2e \
    "${args[@]}" --command -- sh -c "$script"
}

reach_script() {
  cat <<'SH'
end=$(( $(date +%s) + DEADLINE ))
for server in $SERVERS; do
  until curl -ksS -m 5 -o /dev/null -w "$server: HTTP %{http_code}\n" "$server/version"; do
    if [ "$(date +%s)" -ge "$end" ]; then echo "cannot reach $server" >&2; exit 1; fi
    sleep 2
  done
done
SH
}

put_script() {
  cat <<'SH'
printf '%s\n' "$CA" >/tmp/ca.crt
end=$(( $(date +%s) + DEADLINE ))
while :; do
  code=$(curl -sS -m 10 --cacert /tmp/ca.crt -o /tmp/body -w '%{http_code}' -X PUT \
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
SH
}

get_script() {
  cat <<'SH'
printf '%s\n' "$CA" >/tmp/ca.crt
end=$(( $(date +%s) + DEADLINE ))
while :; do
  code=$(curl -sS -m 10 --cacert /tmp/ca.crt -D /tmp/headers -o /tmp/body -w '%{http_code}' \
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
SH
}

step "checking that ${clusters[0]}'s pods reach the member clusters' API servers"
in_pod 1 "TLS connection to$member_servers" "$(reach_script)" "SERVERS=$member_servers"
pass "pods of ${clusters[0]} reach the API servers of the member clusters"

# ---------------------------------------------------------------------------------------------
step "deploying GeoCache $NS/$NAME: ${regions[*]}, one region per cluster, $REPLICAS nodes each"
if k 1 -n "$NS" get geocache "$NAME" >/dev/null 2>&1; then
  echo "deleting the GeoCache left by an earlier run (waiting up to ${WAIT}s)"
  k 1 -n "$NS" delete geocache "$NAME" --wait=true --timeout="${WAIT}s"
fi
manifest="$WORK_DIR/geocache.yaml"
cat >"$manifest" <<YAML
# Adapted from examples/geocache-multicluster.yaml for kind: the e2e images (loaded with
# kind load, so never pulled), small nodes, NodePort replication Services (kind has no load
# balancer: the operator publishes a ready pod's node address and the node port), volumes of
# kind's StorageClass "standard" (local-path-provisioner). Peer TLS and client passwords: the
# defaults (on); clients speak TLS too.
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
  tombstoneRetention: 2h
  security:
    clientTls:
      enabled: true
  resources:
    requests:
      cpu: 50m
      memory: 96Mi
    limits:
      memory: 192Mi
  persistence:
    enabled: true
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
YAML
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
pass "GeoCache $NAME is READY 3/3 across three clusters"

password="$(k 1 -n "$NS" get secret "$NAME-client-auth" -o jsonpath='{.data.password}' | base64 -d)"
[ -n "$password" ] || die "no client password in Secret $NS/$NAME-client-auth (key password)"
ca_pem="$(k 1 -n "$NS" get configmap "$NAME-${regions[0]}-ca" -o jsonpath='{.data.ca\.crt}')"
grep -q 'BEGIN CERTIFICATE' <<<"$ca_pem" || die "no CA in ConfigMap $NS/$NAME-${regions[0]}-ca"
for i in 2 3; do
  [ "$(k "$i" -n "$NS" get configmap "$NAME-${regions[i - 1]}-ca" -o jsonpath='{.data.ca\.crt}')" = "$ca_pem" ] ||
    die "region ${regions[i - 1]} publishes another CA than ${regions[0]}"
done
pass "every region publishes the same client CA"

# ---------------------------------------------------------------------------------------------
step "checking the data path: a write in one region is read in the others (HTTPS, through the client Services)"
nonce="$(date +%s)-$RANDOM"
url() { echo "https://$NAME-${regions[$1 - 1]}:8080/v1/keys/$2"; } # region index, key

key="e2e-$nonce"
in_pod 1 "PUT $key in ${regions[0]}" "$(put_script)" \
  "URL=$(url 1 "$key")" "DOC={\"e2e\":\"$nonce\",\"from\":\"${regions[0]}\"}"
for i in 2 3; do
  in_pod "$i" "GET $key in ${regions[i - 1]} until it has arrived" "$(get_script)" \
    "URL=$(url "$i" "$key")" "EXPECT=$nonce" "ORIGIN=${regions[0]}"
done
pass "a document written in ${regions[0]} is read in ${regions[1]} and ${regions[2]}"

# The other way round, from a member cluster, acknowledged by every region before the answer.
key="e2e-global-$nonce"
in_pod 3 "PUT $key in ${regions[2]} with ack=global" "$(put_script)" \
  "URL=$(url 3 "$key")?ack=global" "DOC={\"e2e\":\"global-$nonce\",\"from\":\"${regions[2]}\"}"
in_pod 1 "GET $key in ${regions[0]}" "$(get_script)" \
  "URL=$(url 1 "$key")" "EXPECT=global-$nonce" "ORIGIN=${regions[2]}"
pass "a write acknowledged with ack=global in ${regions[2]} is read in ${regions[0]}"

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
pass "every region is ready with its peers up, Degraded=False"

step "checking that the regions replicate through the Services the operator made"
# Each region's endpoint in the status is its replication Service's node port on its
# cluster's node, and every other region's peers file names it.
for i in 1 2 3; do
  region=${regions[i - 1]}
  svc_type="$(k "$i" -n "$NS" get service "$NAME-$region-replication" -o jsonpath='{.spec.type}')"
  node_port="$(k "$i" -n "$NS" get service "$NAME-$region-replication" -o jsonpath='{.spec.ports[0].nodePort}')"
  node_ip="$(k "$i" get nodes -o jsonpath='{.items[0].status.addresses[?(@.type=="InternalIP")].address}')"
  endpoint="$(k 1 -n "$NS" get geocache "$NAME" -o jsonpath="{.status.regions[?(@.name==\"$region\")].endpoint}")"
  [ "$svc_type" = NodePort ] || die "Service $NAME-$region-replication in ${clusters[i - 1]} is '$svc_type', not NodePort"
  [ "$endpoint" = "$node_ip:$node_port" ] ||
    die "region $region's endpoint is '$endpoint', not its replication Service's node port $node_ip:$node_port"
  for j in 1 2 3; do
    [ "$j" != "$i" ] || continue
    peers_file="$(k "$j" -n "$NS" get configmap "$NAME-${regions[j - 1]}-peers" -o jsonpath='{.data.peers\.json}')"
    grep -qF "$endpoint" <<<"$peers_file" ||
      die "the peers file of region ${regions[j - 1]} does not name $region's endpoint $endpoint: $peers_file"
  done
  pass "region $region: Service $NAME-$region-replication (NodePort) at $endpoint, in the other regions' peers files"
done

# ---------------------------------------------------------------------------------------------
debug_running() { # cluster index, namespace, pod, ephemeral container
  last_seen="$(k "$1" -n "$2" get pod "$3" -o jsonpath="{.status.ephemeralContainerStatuses[?(@.name==\"$4\")].state}")"
  grep -q running <<<"$last_seen"
}

# inspect I NAMESPACE POD CONTAINER: prints /proc/1/status and the root's line of
# /proc/1/mountinfo of CONTAINER's process, read by an ephemeral container that shares its
# process namespace (kubectl debug --target): what the kernel enforces, not what the spec asks.
inspect() {
  local i=$1 ns=$2 pod=$3 container=$4 debug="e2e-inspect-$RANDOM"
  k "$i" -n "$ns" debug "$pod" --image="$CURL_IMAGE" --image-pull-policy=IfNotPresent \
    --target="$container" --container="$debug" --profile=restricted -- sleep 600 >/dev/null
  wait_for "the ephemeral container $debug in pod $pod" 120 debug_running "$i" "$ns" "$pod" "$debug" >&2
  # shellcheck disable=SC2016 # expanded by the container's shell
  k "$i" -n "$ns" exec "$pod" -c "$debug" -- sh -c \
    'tr "\0" " " </proc/1/cmdline; echo; cat /proc/1/status; awk "\$5 == \"/\"" /proc/1/mountinfo'
}

# check_process I NAMESPACE POD CONTAINER BINARY: the process runs BINARY as 65532:65532,
# with no capability in any set, no new privileges, on a read-only root.
check_process() {
  local i=$1 ns=$2 pod=$3 container=$4 binary=$5 out
  out="$(inspect "$i" "$ns" "$pod" "$container")"
  local cmd uid gid caps nnp root
  cmd="$(head -n 1 <<<"$out")"
  cmd="${cmd% }"
  uid="$(awk '/^Uid:/ { print $2, $3, $4, $5 }' <<<"$out")"
  gid="$(awk '/^Gid:/ { print $2, $3, $4, $5 }' <<<"$out")"
  caps="$(awk '/^Cap(Inh|Prm|Eff|Bnd|Amb):/ { printf "%s%s ", $1, $2 }' <<<"$out")"
  nnp="$(awk '/^NoNewPrivs:/ { print $2 }' <<<"$out")"
  root="$(awk '$5 == "/" { print $6 }' <<<"$out")"
  case "$cmd" in "$binary"*) ;; *) die "$pod: process 1 of container $container is '$cmd', not $binary" ;; esac
  [ "$uid" = "65532 65532 65532 65532" ] || die "$pod: the process runs with uids '$uid', not 65532"
  [ "$gid" = "65532 65532 65532 65532" ] || die "$pod: the process runs with gids '$gid', not 65532"
  [ "$caps" = "CapInh:0000000000000000 CapPrm:0000000000000000 CapEff:0000000000000000 CapBnd:0000000000000000 CapAmb:0000000000000000 " ] ||
    die "$pod: the process has capabilities: $caps"
  [ "$nnp" = 1 ] || die "$pod: the process may gain privileges (NoNewPrivs: $nnp)"
  case ",$root," in *,ro,*) ;; *) die "$pod: the container's root is mounted '$root', not read-only" ;; esac
  pass "$pod ($container): $cmd runs as uid/gid 65532, no capabilities, no new privileges, root mounted $root"
}

step "checking, in the running processes, the pods' user, capabilities and read-only root"
for i in 1 2 3; do
  check_process "$i" "$NS" "$NAME-${regions[i - 1]}-0" geocache /geocache-node
done
operator_pod() { # the operator's pod that is not terminating
  k 1 -n "$OPERATOR_NS" get pods -l "app.kubernetes.io/instance=$RELEASE" \
    -o jsonpath='{range .items[*]}{.metadata.name} {.metadata.deletionTimestamp}{"\n"}{end}' |
    awk 'NF == 1 { print $1; exit }'
}
check_process 1 "$OPERATOR_NS" "$(operator_pod)" operator /geocache-operator

# ---------------------------------------------------------------------------------------------
step "checking the operator in its real pod: probes, RBAC, leader election"
op_pod="$(operator_pod)"
[ -n "$op_pod" ] || die "no operator pod"
probes="$(k 1 -n "$OPERATOR_NS" get pod "$op_pod" -o jsonpath='{.spec.containers[0].livenessProbe.httpGet.path} {.spec.containers[0].readinessProbe.httpGet.path}')"
[ "$probes" = "/healthz /readyz" ] || die "the operator's probes are '$probes'"
state="$(k 1 -n "$OPERATOR_NS" get pod "$op_pod" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status} {.status.containerStatuses[0].restartCount}')"
[ "$state" = "True 0" ] || die "the operator's pod is not ready without restarts (Ready, restarts: $state)"
pass "operator pod $op_pod: ready through its readiness probe (/readyz), liveness probe /healthz, no restart"
sa="system:serviceaccount:$OPERATOR_NS:$RELEASE"
# can_i NAMESPACE VERB RESOURCE [SUBRESOURCE]: the operator's ServiceAccount may.
can_i() {
  local answer
  answer="$(k 1 auth can-i "$2" "$3" ${4:+--subresource="$4"} --as="$sa" -n "$1" 2>&1)" || true
  [ "$answer" = yes ] || die "$sa may not $2 $3${4:+/$4} in namespace $1 ($answer)"
}
can_i "$NS" create statefulsets.apps
can_i "$NS" patch services
can_i "$NS" delete configmaps
can_i "$NS" create poddisruptionbudgets.policy
can_i "$NS" get pods proxy
can_i "$NS" patch geocaches.geocache.dev status
can_i "$OPERATOR_NS" update leases.coordination.k8s.io
if k 1 -n "$OPERATOR_NS" logs "$op_pod" | grep -i 'forbidden'; then
  die "the operator was refused a request (lines above)"
fi
pass "the chart's RBAC lets the operator do its work, and nothing it asked was forbidden"
lease_holder() { k 1 -n "$OPERATOR_NS" get lease "$LEASE" -o jsonpath='{.spec.holderIdentity}' 2>/dev/null; }
[ "$(lease_holder)" = "$op_pod" ] || die "Lease $OPERATOR_NS/$LEASE is held by '$(lease_holder)', not by $op_pod"
pass "Lease $OPERATOR_NS/$LEASE is held by the operator's pod $op_pod"
echo "deleting the operator's pod $op_pod: its successor must take the Lease over and reconcile"
k 1 -n "$OPERATOR_NS" delete pod "$op_pod" --wait=false
new_leader() {
  local pod holder
  pod="$(operator_pod)"
  holder="$(lease_holder)"
  last_seen="pod ${pod:-none}, Lease holder ${holder:-none}"
  [ -n "$pod" ] && [ "$pod" != "$op_pod" ] && [ "$holder" = "$pod" ]
}
wait_for "a new operator pod holding the Lease" "$WAIT" new_leader
op_pod="$(operator_pod)"
k 1 -n "$OPERATOR_NS" wait --for=condition=Ready "pod/$op_pod" --timeout="${WAIT}s"
# Proof that the new leader reconciles: an object it owns in a member cluster, deleted, is back.
pdb="$NAME-${regions[2]}"
old_uid="$(k 3 -n "$NS" get poddisruptionbudget "$pdb" -o jsonpath='{.metadata.uid}')"
k 3 -n "$NS" delete poddisruptionbudget "$pdb"
pdb_back() {
  last_seen="$(k 3 -n "$NS" get poddisruptionbudget "$pdb" -o jsonpath='{.metadata.uid}' 2>&1)"
  [ -n "$last_seen" ] && [ "$last_seen" != "$old_uid" ] && ! grep -q NotFound <<<"$last_seen"
}
wait_for "the new leader to recreate PodDisruptionBudget $pdb in ${clusters[2]}" "$WAIT" pdb_back
pass "after its pod was deleted, the new operator pod $op_pod took the Lease over and reconciles"

# ---------------------------------------------------------------------------------------------
# pod_url I POD PATH: the node POD of region I by its stable name (its certificate names it).
pod_url() { echo "https://$2.$NAME-${regions[$1 - 1]}-peers.$NS.svc.cluster.local:8080$3"; }
restarts() { k "$1" -n "$NS" get pod "$2" -o jsonpath='{.status.containerStatuses[0].restartCount}'; }
pod_ready() { # cluster index, pod
  last_seen="$(k "$1" -n "$NS" get pod "$2" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status} restarts={.status.containerStatuses[0].restartCount}' 2>&1)"
  [ "${last_seen%% *}" = True ]
}

step "killing a node inside its container: the kubelet restarts it and it catches up"
victim="$NAME-${regions[1]}-0"
node_container="${clusters[1]}-control-plane"
before="$(restarts 2 "$victim")"
# The node's process, found on the kind node (the container's processes are the node's) by
# the HOSTNAME of its environment, which is the pod's name; SIGKILL, as a crash would.
killed="$(docker exec "$node_container" sh -c '
  for pid in $(pgrep -x geocache-node); do
    if tr "\0" "\n" <"/proc/$pid/environ" | grep -qx "HOSTNAME=$1"; then kill -KILL "$pid" && echo "$pid"; fi
  done' sh "$victim")"
[ -n "$killed" ] || die "found no geocache-node process of $victim on $node_container"
echo "killed process $killed of $victim (restarts before: $before)"
key="e2e-while-down-$nonce"
in_pod 1 "PUT $key in ${regions[0]} while $victim restarts" "$(put_script)" \
  "URL=$(url 1 "$key")" "DOC={\"e2e\":\"while-down-$nonce\"}"
restarted() {
  pod_ready 2 "$victim" && [ "$(restarts 2 "$victim")" -gt "$before" ]
}
wait_for "$victim restarted by the kubelet and ready" "$WAIT" restarted
reason="$(k 2 -n "$NS" get pod "$victim" -o jsonpath='{.status.containerStatuses[0].lastState.terminated.exitCode}')"
[ "$reason" = 137 ] || die "$victim's last run ended with exit code '$reason', not 137 (SIGKILL)"
pass "$victim: killed (exit code 137), restarted by the kubelet ($(restarts 2 "$victim") restarts), ready"
in_pod 2 "GET $key from $victim itself" "$(get_script)" \
  "URL=$(pod_url 2 "$victim" "/v1/keys/$key")" "EXPECT=while-down-$nonce" "ORIGIN=${regions[0]}"
pass "$victim caught up with a write made in ${regions[0]} while it was down"

# ---------------------------------------------------------------------------------------------
step "deleting a node's pod: its successor recovers from the provisioned volume"
victim="$NAME-${regions[2]}-0"
claim="$(k 3 -n "$NS" get pod "$victim" -o jsonpath='{.spec.volumes[?(@.persistentVolumeClaim)].persistentVolumeClaim.claimName}')"
[ -n "$claim" ] || die "$victim has no PersistentVolumeClaim"
pv="$(k 3 -n "$NS" get pvc "$claim" -o jsonpath='{.spec.volumeName}')"
phase="$(k 3 -n "$NS" get pvc "$claim" -o jsonpath='{.status.phase}')"
provisioner="$(k 3 get pv "$pv" -o jsonpath='{.metadata.annotations.pv\.kubernetes\.io/provisioned-by}')"
if [ "$phase" != Bound ] || [ "$provisioner" != rancher.io/local-path ]; then
  die "claim $claim is '$phase', volume $pv provisioned by '$provisioner' (expected Bound, rancher.io/local-path)"
fi
host_path="$(k 3 get pv "$pv" -o jsonpath='{.spec.hostPath.path}{.spec.local.path}')"
pass "claim $claim of $victim is Bound to $pv, provisioned by local-path-provisioner at $host_path"
key="e2e-persisted-$nonce"
in_pod 3 "PUT $key in ${regions[2]}" "$(put_script)" "URL=$(url 3 "$key")" "DOC={\"e2e\":\"persisted-$nonce\"}"
in_pod 3 "GET $key from $victim" "$(get_script)" \
  "URL=$(pod_url 3 "$victim" "/v1/keys/$key")" "EXPECT=persisted-$nonce" "ORIGIN=${regions[2]}"
sleep 2 # fsync: every-second
files="$(docker exec "${clusters[2]}-control-plane" find "$host_path" -type f)"
[ -n "$files" ] || die "the volume's directory $host_path on the node holds no file"
echo "on the node, in $host_path: $(tr '\n' ' ' <<<"$files")"
old_uid="$(k 3 -n "$NS" get pod "$victim" -o jsonpath='{.metadata.uid}')"
k 3 -n "$NS" delete pod "$victim" --wait=true --timeout="${WAIT}s"
replaced() {
  local uid
  uid="$(k 3 -n "$NS" get pod "$victim" -o jsonpath='{.metadata.uid}' 2>/dev/null)"
  [ -n "$uid" ] && [ "$uid" != "$old_uid" ] && pod_ready 3 "$victim"
}
wait_for "a new $victim, ready" "$WAIT" replaced
[ "$(k 3 -n "$NS" get pvc "$claim" -o jsonpath='{.spec.volumeName}')" = "$pv" ] || die "claim $claim changed volume"
# What the node says it read from its data directory when it started (its startup log line).
recovered="$(k 3 -n "$NS" logs "$victim" -c geocache | grep -o 'recovered [0-9]* entries' | tail -n 1 | tr -dc 0-9)"
echo "the new $victim recovered ${recovered:-no} records from its volume"
[ "${recovered:-0}" -ge 1 ] || die "the new $victim recovered nothing from its volume"
in_pod 3 "GET $key from the new $victim" "$(get_script)" \
  "URL=$(pod_url 3 "$victim" "/v1/keys/$key")" "EXPECT=persisted-$nonce" "ORIGIN=${regions[2]}"
pass "the new $victim recovered ${recovered} records from volume $pv and serves $key"

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
pass "no object of $NAME is left in any cluster"

step "all checks passed"
