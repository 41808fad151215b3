#!/usr/bin/env bash
# Builds, once, the real Kubernetes control plane used by GeoCache's end-to-end tests:
# etcd and kube-apiserver, kube-controller-manager, kube-scheduler v1.37.2, from the Go
# module proxy, into a versioned cache under $HOME (never into the repository).
# Prints the directory holding the binaries. Safe to run again: it builds what is missing.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
K8S_VERSION=v1.37.2
ETCD_VERSION=$(awk '{for (i = 1; i < NF; i++) if ($i == "go.etcd.io/etcd/server/v3") {print $(i + 1); exit}}' "$here/etcd/go.mod")
cache="${GEOCACHE_CONTROLPLANE_CACHE:-$HOME/.cache/geocache/controlplane-k8s-$K8S_VERSION-etcd-$ETCD_VERSION}"
mkdir -p "$cache"
export CGO_ENABLED=0 GOFLAGS=-mod=readonly

minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
ldflags="-s -w \
 -X k8s.io/component-base/version.gitVersion=$K8S_VERSION \
 -X k8s.io/component-base/version.gitMajor=1 \
 -X k8s.io/component-base/version.gitMinor=$minor \
 -X k8s.io/component-base/version.gitTreeState=clean \
 -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION \
 -X k8s.io/client-go/pkg/version.gitMajor=1 \
 -X k8s.io/client-go/pkg/version.gitMinor=$minor"

build() { # name, module dir, package
  local name=$1 dir=$2 pkg=$3
  if [ -x "$cache/$name" ]; then
    echo "  $name: cached" >&2
    return
  fi
  echo "  building $name (a few minutes the first time)..." >&2
  local started=$SECONDS
  (cd "$dir" && go build -trimpath -ldflags "$ldflags" -o "$cache/$name.tmp" "$pkg")
  mv "$cache/$name.tmp" "$cache/$name"
  echo "  $name: built in $((SECONDS - started))s" >&2
}

echo "control plane binaries in $cache" >&2
build etcd "$here/etcd" .
build kube-apiserver "$here/k8s" k8s.io/kubernetes/cmd/kube-apiserver
build kube-controller-manager "$here/k8s" k8s.io/kubernetes/cmd/kube-controller-manager
build kube-scheduler "$here/k8s" k8s.io/kubernetes/cmd/kube-scheduler
"$cache/kube-apiserver" --version >&2
echo "$cache"
