#!/usr/bin/env bash
# Builds helm from the tools module in hack/tools/helm into a cache outside the repo, keyed by
# version. Reuses what is there. Prints the bin directory on stdout.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
HELM_VERSION=v4.3.2
cache=${KANAL_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kanal-tools}
bin="$cache/helm-$HELM_VERSION"
mkdir -p "$bin"
cd "$here/tools/helm"
export GOFLAGS=-mod=mod CGO_ENABLED=0
# Same stamp as helm's own Makefile for a tagged release (metadata empty = no "+unreleased").
pkg=helm.sh/helm/v4/internal/version
ld="-X $pkg.version=$HELM_VERSION -X $pkg.metadata= -X $pkg.gitTreeState=clean"
if [ ! -x "$bin/helm" ]; then
  echo "building helm $HELM_VERSION into $bin" >&2
  go build -trimpath -ldflags "-s -w $ld" -o "$bin/helm.tmp" helm.sh/helm/v4/cmd/helm
  mv "$bin/helm.tmp" "$bin/helm"
fi
echo "$bin"
