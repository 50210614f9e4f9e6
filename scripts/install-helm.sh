#!/usr/bin/env bash
# Build a real Helm v3 from the Go module proxy into $MESHPLUG_CACHE/helm/<version>/helm, once.
#
# Called by `make helm` (which `make integration` runs before the tests); tests find the binary through
# tests/integration/test_helm*.py's helm_bin(). No registry we can reach ships Helm binaries, but helm's
# go.mod has no replace directives, so `go install helm.sh/helm/v3/cmd/helm@<version>` builds it.
# A second run with the binary present does nothing; parallel runs wait on a lock, then find the binary.
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v3.16.2}"
CACHE="${MESHPLUG_CACHE:-$HOME/.cache/meshplug}"
ROOT="$CACHE/helm/$HELM_VERSION"
BIN="$ROOT/helm"

if [ -x "$BIN" ]; then exit 0; fi
command -v go >/dev/null || { echo "install-helm: 'go' not found on PATH (need Go >= 1.22)" >&2; exit 1; }
mkdir -p "$ROOT"
exec 9>"$ROOT/.lock"
flock 9
if [ -x "$BIN" ]; then exit 0; fi

export GOMODCACHE="$CACHE/go/mod" GOCACHE="$CACHE/go/cache" GOFLAGS="-buildvcs=false"
export CGO_ENABLED=0 GOTOOLCHAIN=local
start=$(date +%s)
tmp="$ROOT/tmp"
rm -rf "$tmp" && mkdir -p "$tmp"
echo "install-helm: go install helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
# the version string `helm version` prints (helm's own Makefile sets it the same way)
GOBIN="$tmp" go install -trimpath \
  -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
  "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
"$tmp/helm" version --short >/dev/null
mv -f "$tmp/helm" "$BIN"
rmdir "$tmp"
echo "install-helm: built helm $HELM_VERSION in $(( $(date +%s) - start ))s -> $BIN"
