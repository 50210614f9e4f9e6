#!/usr/bin/env bash
# Build the test bed's kube-apiserver (and kube-controller-manager) from the Go module proxy, cached.
#
# Called by `make integration` before the tests, and by tests/testbed/kube.py's users through that target.
# Output: $MESHPLUG_CACHE/kube/<version>/bin/{kube-apiserver,kube-controller-manager}. A second run with the
# binaries present does nothing. No registry ships these binaries, so we compile them: a throwaway module
# requires k8s.io/kubernetes at the tag and replaces every staging module (k8s.io/kubernetes pins them at
# v0.0.0 through replaces of its own, which Go ignores in a dependency) with the matching v0.X.Y release.
# The staging list is read from the tag's own go.mod, never hard-coded.
set -euo pipefail

KUBE_VERSION="${KUBE_VERSION:-1.36.2}"
STAGING_VERSION="v0.${KUBE_VERSION#*.}"          # 1.36.2 -> v0.36.2
CACHE="${MESHPLUG_CACHE:-$HOME/.cache/meshplug}"
ROOT="$CACHE/kube/$KUBE_VERSION"
BIN="$ROOT/bin"
COMPONENTS=(kube-apiserver kube-controller-manager)

have_all() {
  local c
  for c in "${COMPONENTS[@]}"; do [ -x "$BIN/$c" ] || return 1; done
}
if have_all; then exit 0; fi

command -v go >/dev/null || { echo "install-kube: 'go' not found on PATH (need Go >= 1.26)" >&2; exit 1; }
mkdir -p "$ROOT"
exec 9>"$ROOT/.lock"
flock 9                                           # one build at a time; others wait, then find the binaries
if have_all; then exit 0; fi

export GOMODCACHE="$CACHE/go/mod" GOCACHE="$CACHE/go/cache" GOFLAGS="-mod=mod -buildvcs=false"
export CGO_ENABLED=0 GOTOOLCHAIN=local
go_minor="$(go env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')"
if [ "$go_minor" -ge 27 ]; then export GOEXPERIMENT=nojsonv2; fi   # else the served OpenAPI is malformed

SRC="$ROOT/src"
rm -rf "$SRC" && mkdir -p "$SRC"
cd "$SRC"
start=$(date +%s)
echo "install-kube: resolving k8s.io/kubernetes v$KUBE_VERSION (staging $STAGING_VERSION) into $GOMODCACHE"
gomod="$(go mod download -json "k8s.io/kubernetes@v$KUBE_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')"
[ -f "$gomod" ] || { echo "install-kube: no go.mod for k8s.io/kubernetes v$KUBE_VERSION" >&2; exit 1; }
mapfile -t staging < <(sed -nE 's#^[[:space:]]*(replace[[:space:]]+)?(k8s\.io/[A-Za-z0-9._-]+)[[:space:]]+=>[[:space:]]+\./staging/src/.*#\2#p' "$gomod" | sort -u)
[ ${#staging[@]} -gt 10 ] || { echo "install-kube: found only ${#staging[@]} staging modules in $gomod" >&2; exit 1; }
echo "install-kube: ${#staging[@]} staging modules: ${staging[*]}"

{
  echo "module meshplug.local/kubebuild"
  echo
  echo "go $(sed -nE 's/^go ([0-9.]+)$/\1/p' "$gomod")"
  echo
  echo "require k8s.io/kubernetes v$KUBE_VERSION"
  echo
  echo "replace ("
  for m in "${staging[@]}"; do echo "	$m => $m $STAGING_VERSION"; done
  echo ")"
} > go.mod
{
  echo "//go:build tools"
  echo
  echo "package tools"
  echo
  echo "import ("
  for c in "${COMPONENTS[@]}"; do echo "	_ \"k8s.io/kubernetes/cmd/$c\""; done
  echo ")"
} > tools.go
go mod tidy
echo "install-kube: modules resolved in $(( $(date +%s) - start ))s; compiling ${COMPONENTS[*]}"

ldflags="-s -w"
for kv in "gitVersion=v$KUBE_VERSION" "gitMajor=${KUBE_VERSION%%.*}" \
          "gitMinor=$(echo "$KUBE_VERSION" | cut -d. -f2)" "gitTreeState=clean"; do
  ldflags="$ldflags -X k8s.io/component-base/version.$kv -X k8s.io/client-go/pkg/version.$kv"
done
mkdir -p "$ROOT/tmp"
pkgs=()
for c in "${COMPONENTS[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
go build -trimpath -ldflags "$ldflags" -o "$ROOT/tmp/" "${pkgs[@]}"
mkdir -p "$BIN"
for c in "${COMPONENTS[@]}"; do mv -f "$ROOT/tmp/$c" "$BIN/$c"; done
rmdir "$ROOT/tmp"
echo "install-kube: built ${COMPONENTS[*]} v$KUBE_VERSION in $(( $(date +%s) - start ))s -> $BIN"
