#!/usr/bin/env bash
# Build the real cosign from the Go module proxy into $MESHPLUG_CACHE/cosign/<version>/cosign, once.
#
# Called by `make cosign` (which `make integration` runs before the tests); the signature tests find the binary
# through tests/testbed/cosign.py. No registry we can reach ships cosign binaries; cosign's go.mod has no
# replace directives, so `go install github.com/sigstore/cosign/v2/cmd/cosign@<version>` builds it.
# A second run with the binary present does nothing; parallel runs wait on a lock, then find the binary.
set -euo pipefail

COSIGN_VERSION="${COSIGN_VERSION:-v2.6.5}"
CACHE="${MESHPLUG_CACHE:-$HOME/.cache/meshplug}"
ROOT="$CACHE/cosign/$COSIGN_VERSION"
BIN="$ROOT/cosign"

if [ -x "$BIN" ]; then exit 0; fi
command -v go >/dev/null || { echo "install-cosign: 'go' not found on PATH (need Go >= 1.24)" >&2; exit 1; }
mkdir -p "$ROOT"
exec 9>"$ROOT/.lock"
flock 9
if [ -x "$BIN" ]; then exit 0; fi

export GOMODCACHE="$CACHE/go/mod" GOCACHE="$CACHE/go/cache" GOFLAGS="-buildvcs=false"
export CGO_ENABLED=0 GOTOOLCHAIN=local
start=$(date +%s)
tmp="$ROOT/tmp"
rm -rf "$tmp" && mkdir -p "$tmp"
echo "install-cosign: go install github.com/sigstore/cosign/v2/cmd/cosign@$COSIGN_VERSION"
# the version string `cosign version` prints (cosign's own Makefile sets it the same way)
GOBIN="$tmp" go install -trimpath \
  -ldflags "-s -w -X sigs.k8s.io/release-utils/version.gitVersion=$COSIGN_VERSION -X sigs.k8s.io/release-utils/version.gitTreeState=clean" \
  "github.com/sigstore/cosign/v2/cmd/cosign@$COSIGN_VERSION"
"$tmp/cosign" version >/dev/null
mv -f "$tmp/cosign" "$BIN"
rmdir "$tmp"
echo "install-cosign: built cosign $COSIGN_VERSION in $(( $(date +%s) - start ))s -> $BIN"
