#!/usr/bin/env bash
# Build the test bed's istiod (pilot-discovery) and istio-agent (pilot-agent) from the Go module proxy, cached.
#
# Called by `make istio` (which `make integration` runs before the tests). Output:
# $MESHPLUG_CACHE/istio/<revision>/bin/{pilot-discovery,pilot-agent} and, beside them, the files the test bed
# reads from the same module: Istio's CRDs (crd-all.gen.yaml) and the sidecar bootstrap template
# (envoy_bootstrap.json). istio.io/istio's go.mod has no replace lines, so `go install` at a pinned pseudo-version
# builds both. A second run with everything present does nothing; parallel runs wait on a lock.
set -euo pipefail

ISTIO_VERSION="${ISTIO_VERSION:-v0.0.0-20260827124520-eed52ebb66ad}"   # istiod 1.31-dev, has TrafficExtension
CACHE="${MESHPLUG_CACHE:-$HOME/.cache/meshplug}"
ROOT="$CACHE/istio/$ISTIO_VERSION"
BIN="$ROOT/bin"
COMPONENTS=(pilot-discovery pilot-agent)
FILES=(crd-all.gen.yaml envoy_bootstrap.json)

have_all() {
  local c
  for c in "${COMPONENTS[@]}"; do [ -x "$BIN/$c" ] || return 1; done
  for c in "${FILES[@]}"; do [ -s "$ROOT/$c" ] || return 1; done
}
if have_all; then exit 0; fi

command -v go >/dev/null || { echo "install-istio: 'go' not found on PATH (need Go >= 1.26)" >&2; exit 1; }
mkdir -p "$ROOT"
exec 9>"$ROOT/.lock"
flock 9
if have_all; then exit 0; fi

export GOMODCACHE="$CACHE/go/mod" GOCACHE="$CACHE/go/cache" GOFLAGS="-buildvcs=false"
export CGO_ENABLED=0 GOTOOLCHAIN=local
start=$(date +%s)
tmp="$ROOT/tmp"
rm -rf "$tmp" && mkdir -p "$tmp"
pkgs=()
for c in "${COMPONENTS[@]}"; do pkgs+=("istio.io/istio/pilot/cmd/$c@$ISTIO_VERSION"); done
echo "install-istio: go install ${pkgs[*]}"
GOBIN="$tmp" go install -trimpath -ldflags "-s -w" "${pkgs[@]}"
src="$(go mod download -json "istio.io/istio@$ISTIO_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')"
[ -d "$src" ] || { echo "install-istio: module source for istio.io/istio@$ISTIO_VERSION not found" >&2; exit 1; }
cp "$src/manifests/charts/base/files/crd-all.gen.yaml" "$ROOT/crd-all.gen.yaml"
cp "$src/tools/packaging/common/envoy_bootstrap.json" "$ROOT/envoy_bootstrap.json"
mkdir -p "$BIN"
for c in "${COMPONENTS[@]}"; do mv -f "$tmp/$c" "$BIN/$c"; done
rmdir "$tmp"
echo "install-istio: built ${COMPONENTS[*]} $ISTIO_VERSION in $(( $(date +%s) - start ))s -> $ROOT"
