#!/usr/bin/env bash
# Builds, once, every binary of the kind tier that is not a Debian package, into versioned
# folders of ~/.cache/geocache (never into the repository): the control plane
# (tests/controlplane/build.sh, first: the node binaries reuse most of its compiled packages
# from the Go build cache), kind, the Kubernetes node and client binaries (kubelet, kubeadm,
# kubectl, kube-proxy) from tests/e2e/kind/k8s (the Go wrapper module of the control-plane
# tier, with a go.sum for these), CoreDNS and local-path-provisioner from the add-ons module
# tests/e2e/kind/addons, and the pause binary. Safe to run again: it builds what is missing.
#   usage: tests/e2e/kind/build-binaries.sh
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

export CGO_ENABLED=0 GOFLAGS=-mod=readonly
minor="${K8S_VERSION#v1.}"
minor="${minor%%.*}"
# The version stamps kubeadm checks (it refuses a kubelet or control plane that says v0.0.0).
k8s_ldflags="-s -w \
 -X k8s.io/component-base/version.gitVersion=$K8S_VERSION \
 -X k8s.io/component-base/version.gitMajor=1 \
 -X k8s.io/component-base/version.gitMinor=$minor \
 -X k8s.io/component-base/version.gitTreeState=clean \
 -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION \
 -X k8s.io/client-go/pkg/version.gitMajor=1 \
 -X k8s.io/client-go/pkg/version.gitMinor=$minor"

# built DIR NAME: true when DIR/NAME exists (then says so).
built() {
  if [ -x "$1/$2" ]; then
    echo "  $2: cached ($1)"
    return 0
  fi
  return 1
}

build_k8s() { # name, package
  local name=$1 pkg=$2 started=$SECONDS
  built "$k8s_node_cache" "$name" && return 0
  echo "  building $name $K8S_VERSION (1-2 minutes on 2 cores)..."
  mkdir -p "$k8s_node_cache"
  (cd "$kind_lib_dir/k8s" &&
    go build -trimpath -ldflags "$k8s_ldflags" -o "$k8s_node_cache/$name.tmp" "$pkg")
  mv "$k8s_node_cache/$name.tmp" "$k8s_node_cache/$name"
  echo "  $name: built in $((SECONDS - started))s"
}

# go_install DIR NAME MODULE@VERSION: go install into DIR (GOBIN), unless DIR/NAME exists.
go_install() {
  local dir=$1 name=$2 module=$3 started=$SECONDS
  built "$dir" "$name" && return 0
  echo "  go install $module..."
  mkdir -p "$dir.tmp"
  (cd / && GOFLAGS='' GOBIN="$dir.tmp" go install -trimpath -ldflags "-s -w" "$module")
  rm -rf "$dir"
  mv "$dir.tmp" "$dir"
  echo "  $name: built in $((SECONDS - started))s"
}

build_pause() {
  built "$k8s_node_cache" pause && return 0
  mkdir -p "$k8s_node_cache"
  gcc -Os -static -Wall -Werror -o "$k8s_node_cache/pause.tmp" "$kind_lib_dir/images/pause.c"
  strip "$k8s_node_cache/pause.tmp"
  mv "$k8s_node_cache/pause.tmp" "$k8s_node_cache/pause"
  echo "  pause: built (static, from images/pause.c)"
}

# build_addon DIR NAME PACKAGE: go build PACKAGE of the add-ons module into DIR/NAME.
build_addon() {
  local dir=$1 name=$2 pkg=$3 started=$SECONDS
  built "$dir" "$name" && return 0
  echo "  building $name..."
  mkdir -p "$dir"
  (cd "$kind_lib_dir/addons" && go build -trimpath -ldflags "-s -w" -o "$dir/$name.tmp" "$pkg")
  mv "$dir/$name.tmp" "$dir/$name"
  echo "  $name: built in $((SECONDS - started))s"
}

build_all() {
  # First: the node binaries below share the control plane's module versions and flags
  # (CGO_ENABLED=0, -trimpath), so most of their packages come from the Go build cache.
  step "Kubernetes $K8S_VERSION control plane (tests/controlplane/build.sh: etcd, kube-apiserver, kube-controller-manager, kube-scheduler)"
  # Another run of build.sh (the control-plane tier) may hold this lock meanwhile.
  with_lock controlplane-build "$kind_repo_dir/tests/controlplane/build.sh" >"$GEOCACHE_CACHE/.controlplane-dir.tmp"
  mv "$GEOCACHE_CACHE/.controlplane-dir.tmp" "$GEOCACHE_CACHE/.controlplane-dir"

  step "kind $KIND_VERSION"
  go_install "$kind_bin_cache" kind "sigs.k8s.io/kind@$KIND_VERSION"
  "$kind_bin_cache/kind" version

  step "Kubernetes $K8S_VERSION node binaries (kubelet, kubeadm, kubectl, kube-proxy)"
  build_k8s kubelet k8s.io/kubernetes/cmd/kubelet
  build_k8s kubeadm k8s.io/kubernetes/cmd/kubeadm
  build_k8s kubectl k8s.io/kubernetes/cmd/kubectl
  build_k8s kube-proxy k8s.io/kubernetes/cmd/kube-proxy
  build_pause

  step "CoreDNS $COREDNS_VERSION (addons/: the plugins of kind's Corefile only)"
  build_addon "$coredns_cache" coredns .

  step "local-path-provisioner $LOCAL_PATH_VERSION (addons/: the volumes of the PersistentVolumeClaims)"
  build_addon "$local_path_cache" local-path-provisioner github.com/rancher/local-path-provisioner
  kind_step_done
}

command -v go >/dev/null 2>&1 || die "go is required (the Go module proxy is where these come from)"
command -v gcc >/dev/null 2>&1 || die "gcc is required (the static pause binary)"
command -v flock >/dev/null 2>&1 || die "flock is required (util-linux)"
mkdir -p "$GEOCACHE_CACHE"
# One build at a time per cache: a second run waits for the first instead of racing it.
exec 9>"$GEOCACHE_CACHE/kind-binaries.lock"
flock 9
build_all
