#!/usr/bin/env bash
# Prepares everything the kind scenario needs on a machine without a container registry
# (our CI; see README.md next to this file), each step cached under ~/.cache/geocache by
# version, so that a second run only checks:
#   1. Debian packages: docker.io, containerd, runc, debootstrap, iptables, jq, busybox-static;
#   2. two Debian root filesystems from the archive (debootstrap): the kind node's base
#      (systemd, containerd, runc, CNI plugins) and a small one (kube-proxy, the client image);
#   3. binaries (build-binaries.sh): kind, Kubernetes, CoreDNS, local-path-provisioner, pause;
#   4. images, in the engine of engine.sh (its data root is kept between runs): the kind node
#      image for Kubernetes v1.37.2 with every image a cluster needs already imported into its
#      containerd, and the client image of the scenario's throwaway pods.
#   usage: tests/e2e/kind/prepare.sh            all of it (starts and stops the engine unless
#                                               it is already running: then it stays)
#          tests/e2e/kind/prepare.sh packages   only step 1
#          tests/e2e/kind/prepare.sh fetch      only what is mostly network: step 1, step 2,
#                                               and the Go modules of step 3 (tests/run.sh
#                                               runs it in the background while the
#                                               workspace's tests build and run)
# Prints, last, the lines to eval for run.sh: KIND_NODE_IMAGE=... CURL_IMAGE=...
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[ "$(id -u)" -eq 0 ] || die "run as root (apt-get, debootstrap, dockerd in a network namespace)"

packages=(docker.io containerd runc debootstrap iptables jq busybox-static util-linux iproute2 gcc libc6-dev)
# The kind node: what kind's own base image (images/base/Dockerfile of kind) installs, less
# NFS, iSCSI and fuse-overlayfs, plus Debian's containerd, runc and CNI plugins (kind builds
# those from source; we cannot fetch sources).
node_packages=systemd,dbus,conntrack,iptables,nftables,iproute2,ethtool,util-linux,mount,kmod,libseccomp2,pigz,e2fsprogs,bash,ca-certificates,curl,jq,procps,containerd,runc,containernetworking-plugins
# kube-proxy needs iptables and conntrack; the scenario's client pods need curl and a shell.
slim_packages=iptables,conntrack,curl,ca-certificates,procps
debian_mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

install_packages() {
  step "Debian packages (${packages[*]})"
  local missing=() pkg
  for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -eq 0 ]; then
    echo "  all installed"
    return 0
  fi
  echo "  installing ${missing[*]}"
  # Installing docker.io would start dockerd in the machine's own network namespace (its
  # postinst asks invoke-rc.d), where it would add a bridge, routes and iptables rules: a
  # policy-rc.d that forbids starting services prevents it (Debian's documented mechanism).
  local policy=/usr/sbin/policy-rc.d added_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# tests/e2e/kind/prepare.sh: no service starts during its apt-get install\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    added_policy=1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [ "$added_policy" = 1 ]; then rm -f "$policy"; fi
  echo "  installed"
}

# rootfs NAME PACKAGES: a Debian root filesystem (debootstrap --variant=minbase plus PACKAGES)
# as a tar under the cache, keyed by the package list. Prints the tar's path.
rootfs() {
  local name=$1 pkgs=$2 key tar
  key="$(printf '%s %s %s' "$DEBIAN_SUITE" "$pkgs" "$debian_mirror" | sha256sum | cut -c1-12)"
  tar="$rootfs_cache/$name-$key.tar"
  if [ -f "$tar" ]; then
    echo "  $name: cached ($tar)" >&2
    echo "$tar"
    return 0
  fi
  echo "  debootstrap $DEBIAN_SUITE ($name: minbase + $pkgs), 1-3 minutes..." >&2
  local dir="$rootfs_cache/$name-$key.tmp" started=$SECONDS
  rm -rf "$dir"
  mkdir -p "$dir" "$rootfs_cache/debs"
  # --cache-dir: the .debs of the first root filesystem serve the second and later runs.
  if ! debootstrap --variant=minbase --include="$pkgs" --cache-dir="$rootfs_cache/debs" \
    "$DEBIAN_SUITE" "$dir" "$debian_mirror" >"$dir.log" 2>&1; then
    tail -n 30 "$dir.log" >&2
    die "debootstrap failed (log: $dir.log)"
  fi
  # Smaller images: no package lists, caches or docs.
  rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/* "$dir"/usr/share/doc/* "$dir"/usr/share/man/* \
    "$dir"/usr/share/locale/*
  tar -C "$dir" --numeric-owner -cf "$tar.tmp" .
  rm -rf "$dir" "$dir.log"
  # Older root filesystems of this name are of other package lists.
  find "$rootfs_cache" -maxdepth 1 -name "$name-*.tar" ! -name "$name-$key.tar" -delete
  mv "$tar.tmp" "$tar"
  echo "  $name: built in $((SECONDS - started))s" >&2
  echo "$tar"
}

# Debian's docker client: the engine's own version (another client may lack the legacy
# builder or BuildKit without buildx).
docker_() { DOCKER_HOST="unix://$engine_sock" /usr/bin/docker "$@"; }
have_image() { docker_ image inspect "$1" >/dev/null 2>&1; }

# build_image TAG CONTEXT [docker build args...]: the legacy builder (BuildKit would fetch
# its frontend image), quiet unless it fails.
build_image() {
  local tag=$1 context=$2
  shift 2
  local log="$work/build-${tag//[:\/]/_}.log"
  if ! DOCKER_BUILDKIT=0 docker_ build -t "$tag" "$@" "$context" >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    die "docker build of $tag failed (log: $log)"
  fi
  echo "  $tag: built"
}

# scratch_image TAG BINARY DEST ENTRYPOINT_JSON: FROM scratch + one static binary.
scratch_image() {
  local tag=$1 binary=$2 dest=$3 entrypoint=$4 ctx
  have_image "$tag" && return 0
  ctx="$(mktemp -d "$work/ctx.XXXXXX")"
  cp "$binary" "$ctx/bin"
  cat >"$ctx/Dockerfile" <<DOCKERFILE
FROM scratch
COPY bin $dest
ENV PATH=/usr/local/bin:/usr/bin:/bin
ENTRYPOINT $entrypoint
DOCKERFILE
  build_image "$tag" "$ctx"
  rm -rf "$ctx"
}

build_images() {
  local kind_src cp_dir kubeadm_images images=() image
  kind_src="$(cd / && GOFLAGS='' go mod download -json "sigs.k8s.io/kind@$KIND_VERSION" | jq -r .Dir)"
  [ -d "$kind_src/images/base/files" ] || die "no images/base/files in kind's module source ($kind_src)"
  cp_dir="$(cat "$GEOCACHE_CACHE/.controlplane-dir")"

  # Every input of the images below: a change in any rebuilds them (new tags).
  local key
  key="$( (
    cat "$kind_lib_dir/lib.sh" "$0"
    find "$kind_lib_dir/images" -type f -print0 | sort -z | xargs -0 cat
    sha256sum "$k8s_node_cache"/* "$cp_dir"/* "$coredns_cache/coredns" "$local_path_cache/local-path-provisioner" \
      "$node_rootfs" "$slim_rootfs" | cut -d' ' -f1
  ) | sha256sum | cut -c1-12)"
  node_image="geocache-kind/node:$K8S_VERSION-$key"
  client_image="geocache-kind/client:$key"
  if have_image "$node_image" && have_image "$client_image"; then
    echo "  $node_image and $client_image: cached in the engine's data root"
    return 0
  fi

  step "images: Debian bases (docker import of the root filesystems)"
  local debian="geocache-kind/debian:$DEBIAN_SUITE-$key" node_base="geocache-kind/node-base:$key"
  have_image "$debian" || docker_ import "$slim_rootfs" "$debian" >/dev/null
  echo "  $debian: imported"
  if ! have_image "$node_base"; then
    docker_ import "$node_rootfs" "$node_base-rootfs" >/dev/null
    local ctx
    ctx="$(mktemp -d "$work/ctx.XXXXXX")"
    cp -r "$kind_src/images/base/files" "$ctx/kind-files"
    chmod -R u+w "$ctx/kind-files"
    cp -r "$kind_lib_dir/images/node-base/." "$ctx/"
    build_image "$node_base" "$ctx" --build-arg "BASE=$node_base-rootfs"
    docker_ image rm "$node_base-rootfs" >/dev/null
    rm -rf "$ctx"
  fi

  step "images: the Kubernetes $K8S_VERSION images kubeadm asks for, CoreDNS, pause, local-path-provisioner"
  # kubeadm names the images (and tags) it will use; each is made here under that name.
  kubeadm_images="$("$k8s_node_cache/kubeadm" config images list --kubernetes-version "$K8S_VERSION")"
  local line
  while read -r line; do echo "  kubeadm wants: $line"; done <<<"$kubeadm_images"
  local pause_image=""
  while read -r image; do
    case "$image" in
      */kube-apiserver:* | */kube-controller-manager:* | */kube-scheduler:*)
        local name="${image##*/}"
        name="${name%%:*}"
        scratch_image "$image" "$cp_dir/$name" "/usr/local/bin/$name" "[\"/usr/local/bin/$name\"]"
        ;;
      # The etcd of the control-plane tier (tests/controlplane/etcd: 3.6.x) under the tag
      # kubeadm asks for (3.7.0-0): the 3.6 server serves kubeadm's 1.37 control plane.
      */etcd:*) scratch_image "$image" "$cp_dir/etcd" /usr/local/bin/etcd '["/usr/local/bin/etcd"]' ;;
      */coredns:*) scratch_image "$image" "$coredns_cache/coredns" /coredns '["/coredns"]' ;;
      */pause:*)
        pause_image="$image"
        scratch_image "$image" "$k8s_node_cache/pause" /pause '["/pause"]'
        ;;
      */kube-proxy:*)
        if ! have_image "$image"; then
          local ctx
          ctx="$(mktemp -d "$work/ctx.XXXXXX")"
          cp "$k8s_node_cache/kube-proxy" "$ctx/kube-proxy"
          printf 'FROM %s\nCOPY kube-proxy /usr/local/bin/kube-proxy\nENTRYPOINT ["/usr/local/bin/kube-proxy"]\n' "$debian" >"$ctx/Dockerfile"
          build_image "$image" "$ctx"
          rm -rf "$ctx"
        fi
        ;;
      *) die "kubeadm wants $image, which this script does not know how to make" ;;
    esac
    images+=("$image")
  done <<<"$kubeadm_images"
  [ -n "$pause_image" ] || die "kubeadm lists no pause image"

  # local-path-provisioner under the names kind's storage manifest uses (the manifest is
  # taken from kind's source), so that the node image's default StorageClass is kind's own.
  local storage_go="$kind_src/pkg/build/nodeimage/const_storage.go" provisioner_image helper_image
  provisioner_image="$(sed -n 's/^const storageProvisionerImage = "\(.*\)"$/\1/p' "$storage_go")"
  helper_image="$(sed -n 's/^const storageHelperImage = "\(.*\)"$/\1/p' "$storage_go")"
  if [ -z "$provisioner_image" ] || [ -z "$helper_image" ]; then die "no storage images in $storage_go"; fi
  scratch_image "$provisioner_image" "$local_path_cache/local-path-provisioner" \
    /usr/local/bin/local-path-provisioner '["/usr/local/bin/local-path-provisioner"]'
  if ! have_image "$helper_image"; then
    # The helper pods run `sh -c` scripts (mkdir, rm): busybox's static binary is all they need.
    local ctx
    ctx="$(mktemp -d "$work/ctx.XXXXXX")"
    mkdir -p "$ctx/rootfs/bin" "$ctx/rootfs/tmp"
    cp /bin/busybox "$ctx/rootfs/bin/busybox"
    local applet
    for applet in sh mkdir rm rmdir chmod ls cat echo test; do ln -s busybox "$ctx/rootfs/bin/$applet"; done
    printf 'FROM scratch\nCOPY rootfs/ /\nENV PATH=/bin\nCMD ["/bin/sh"]\n' >"$ctx/Dockerfile"
    build_image "$helper_image" "$ctx"
    rm -rf "$ctx"
  fi
  images+=("$provisioner_image" "$helper_image")

  # The throwaway pods of run.sh: curl and a shell (no registry, so no curlimages/curl).
  if ! have_image "$client_image"; then
    local ctx
    ctx="$(mktemp -d "$work/ctx.XXXXXX")"
    printf 'FROM %s\nCMD ["/bin/sh"]\n' "$debian" >"$ctx/Dockerfile"
    build_image "$client_image" "$ctx"
    rm -rf "$ctx"
  fi
  images+=("$client_image")

  step "images: the kind node image $node_image (kind's node-image steps, offline)"
  # What `kind build node-image` does, without its network fetches: a container of the base
  # image runs containerd, which imports every image above; the Kubernetes binaries, the
  # version and the manifests are copied in; docker commit.
  docker_ save -o "$work/images.tar" "${images[@]}"
  local id
  id="$(docker_ run -d --privileged --entrypoint sleep "$node_base" infinity)"
  build_container="$id"
  local bin
  for bin in kubelet kubeadm kubectl; do
    docker_ cp "$k8s_node_cache/$bin" "$id:/usr/bin/$bin"
  done
  docker_ exec "$id" sh -c "echo $K8S_VERSION >/kind/version && mkdir -p /kind/manifests"
  # shellcheck disable=SC2016 # backquotes of Go's raw string, not of the shell
  sed -n '/^const defaultStorageManifest = `$/,/^`$/p' "$storage_go" | sed '1d;$d' |
    sed -e "s|\` + storageProvisionerImage + \`|$provisioner_image|" -e "s|\` + storageHelperImage + \`|$helper_image|" |
    docker_ exec -i "$id" sh -c 'cat >/kind/manifests/default-storage.yaml'
  docker_ exec -i "$id" sh -c 'cat >/kind/manifests/default-cni.yaml' <"$kind_lib_dir/images/default-cni.yaml"
  if docker_ exec "$id" grep -q '` +' /kind/manifests/default-storage.yaml; then
    die "the storage manifest of kind $KIND_VERSION has a placeholder this script does not fill"
  fi
  docker_ exec "$id" sed -i "s|@PAUSE_IMAGE@|$pause_image|" /etc/containerd/config.toml
  docker_ exec -d "$id" sh -c 'containerd >/var/log/containerd-build.log 2>&1'
  local deadline=$((SECONDS + 30))
  until docker_ exec "$id" ctr version >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || die "containerd did not start in the build container"
    sleep 1
  done
  docker_ exec -i "$id" ctr --namespace=k8s.io images import --all-platforms --no-unpack - <"$work/images.tar" >/dev/null
  docker_ exec "$id" ctr --namespace=k8s.io images list -q | sed 's/^/  in the node image: /'
  docker_ exec "$id" sh -c 'pkill containerd; while pgrep -x containerd >/dev/null; do sleep 0.2; done; rm -f /var/log/containerd-build.log'
  docker_ commit --change 'ENTRYPOINT [ "/usr/local/bin/entrypoint", "/sbin/init" ]' "$id" "$node_image" >/dev/null
  docker_ rm -f -v "$id" >/dev/null
  build_container=""
  rm -f "$work/images.tar"
  echo "  $node_image: committed"

  step "images: removing the images of earlier versions of this tier"
  local old
  old="$(docker_ images --format '{{.Repository}}:{{.Tag}}' | grep '^geocache-kind/' | grep -v -e ":$key\$" -e "-$key\$" || true)"
  # The intermediate images only served this build; the node image holds what it needs.
  old="$old $debian $node_base ${images[*]}"
  local keep
  for keep in "$node_image" "$client_image"; do old="${old//$keep/}"; done
  # shellcheck disable=SC2086 # one image a word
  docker_ image rm $old >/dev/null 2>&1 || true
  docker_ image prune -f >/dev/null
  docker_ images
}

started_engine=0
rootfs_pid=""
build_container=""
work=""
cleanup() {
  local rc=$?
  set +e
  if [ -n "$rootfs_pid" ] && kill -0 "$rootfs_pid" 2>/dev/null; then
    kill "$rootfs_pid"
    wait "$rootfs_pid"
  fi
  if [ -n "$build_container" ]; then docker_ rm -f -v "$build_container" >/dev/null 2>&1; fi
  if [ "$started_engine" = 1 ]; then "$kind_lib_dir/engine.sh" down; fi
  if [ -n "$work" ]; then rm -rf "$work"; fi
  kind_step_done
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# fetch_go_modules: downloads the Go modules of build-binaries.sh into the module cache
# (`go list -deps` of what it builds: the module files and go.sum stay as they are).
fetch_go_modules() {
  local started=$SECONDS
  (cd "$kind_repo_dir/tests/controlplane/etcd" && GOFLAGS=-mod=readonly go list -deps . >/dev/null)
  (cd "$kind_lib_dir/k8s" && GOFLAGS=-mod=readonly go list -deps k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kubeadm k8s.io/kubernetes/cmd/kubectl \
    k8s.io/kubernetes/cmd/kube-proxy >/dev/null)
  (cd "$kind_lib_dir/addons" && GOFLAGS=-mod=readonly go list -deps . github.com/rancher/local-path-provisioner >/dev/null)
  (cd / && GOFLAGS='' go mod download "sigs.k8s.io/kind@$KIND_VERSION")
  echo "  Go modules downloaded in $((SECONDS - started))s"
}

install_packages
[ "${1:-}" = packages ] && exit 0

work="$(mktemp -d "${TMPDIR:-/tmp}/geocache-kind-prepare.XXXXXX")"
if [ "${1:-}" = fetch ]; then
  step "Go modules of the binaries (go list -deps)"
  fetch_go_modules
  step "Debian $DEBIAN_SUITE root filesystems (debootstrap, cached by package list)"
  rootfs node "$node_packages" >/dev/null
  rootfs slim "$slim_packages" >/dev/null
  kind_step_done
  echo "fetched in $((SECONDS - kind_t0))s"
  exit 0
fi
# debootstrap (mostly downloads and unpacking) runs while the Go builds use the CPUs.
step "Debian $DEBIAN_SUITE root filesystems (debootstrap, cached by package list; in the background)"
(
  rootfs node "$node_packages" >"$work/node-rootfs"
  rootfs slim "$slim_packages" >"$work/slim-rootfs"
) 2>"$work/rootfs.log" &
rootfs_pid=$!

step "binaries (build-binaries.sh: Go module proxy, cached by version)"
"$kind_lib_dir/build-binaries.sh"

step "Debian $DEBIAN_SUITE root filesystems (waiting for debootstrap)"
rootfs_rc=0
wait "$rootfs_pid" || rootfs_rc=$?
cat "$work/rootfs.log"
[ "$rootfs_rc" -eq 0 ] || die "making the root filesystems failed"
node_rootfs="$(cat "$work/node-rootfs")"
slim_rootfs="$(cat "$work/slim-rootfs")"

step "engine (engine.sh up: dockerd in network namespace $ENGINE_NETNS)"
if [ ! -S "$engine_sock" ] || ! docker_ version >/dev/null 2>&1; then
  started_engine=1
  "$kind_lib_dir/engine.sh" up
else
  echo "  already running"
fi
node_image="" client_image=""
build_images
kind_step_done
echo "prepared in $((SECONDS - kind_t0))s"
echo "KIND_NODE_IMAGE=$node_image CURL_IMAGE=$client_image"
