#!/usr/bin/env bash
# go-install-cached.sh NAME VERSION PACKAGE [LDFLAGS]: build PACKAGE@VERSION from the Go module proxy into
# $MESHPLUG_CACHE/NAME/VERSION/NAME, once (the binary's `NAME version` must run). Used by install-helm.sh and
# install-cosign.sh for tools whose go.mod has no replace directives. A second run with the binary present does
# nothing; parallel runs wait on a lock, then find the binary. Module and build caches: $MESHPLUG_CACHE/go.
set -euo pipefail

NAME="$1" VERSION="$2" PACKAGE="$3" LDFLAGS="${4:-}"
CACHE="${MESHPLUG_CACHE:-$HOME/.cache/meshplug}"
ROOT="$CACHE/$NAME/$VERSION"
BIN="$ROOT/$NAME"

if [ -x "$BIN" ]; then exit 0; fi
command -v go >/dev/null || { echo "install-$NAME: 'go' not found on PATH" >&2; exit 1; }
mkdir -p "$ROOT"
exec 9>"$ROOT/.lock"
flock 9
if [ -x "$BIN" ]; then exit 0; fi

export GOMODCACHE="$CACHE/go/mod" GOCACHE="$CACHE/go/cache" GOFLAGS="-buildvcs=false"
export CGO_ENABLED=0 GOTOOLCHAIN=local
start=$(date +%s)
tmp="$ROOT/tmp"
rm -rf "$tmp" && mkdir -p "$tmp"
echo "install-$NAME: go install $PACKAGE@$VERSION"
GOBIN="$tmp" go install -trimpath -ldflags "-s -w $LDFLAGS" "$PACKAGE@$VERSION"
"$tmp/$NAME" version >/dev/null
mv -f "$tmp/$NAME" "$BIN"
rmdir "$tmp"
echo "install-$NAME: built $NAME $VERSION in $(( $(date +%s) - start ))s -> $BIN"
