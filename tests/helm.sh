#!/usr/bin/env bash
# Prints the path of helm v3.22.0, building it once with `go install` from the Go module
# proxy into ~/.cache/geocache/ (a few minutes the first time) when it is not there yet.
#   usage: helm="$(tests/helm.sh)"
set -euo pipefail
helm_version=v3.22.0
helm_dir="$HOME/.cache/geocache/helm-$helm_version"
if [ ! -x "$helm_dir/helm" ]; then
  echo "building helm $helm_version with go install into $helm_dir (once; a few minutes)" >&2
  GOBIN="$helm_dir" go install -v "helm.sh/helm/v3/cmd/helm@$helm_version" >&2
fi
echo "$helm_dir/helm"
