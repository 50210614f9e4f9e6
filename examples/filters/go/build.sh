#!/usr/bin/env bash
# Build one Go proxy-wasm plugin of the corpus: build.sh <plugin_dir> <out.wasm>
# Called by scripts/build_plugins.py (`make plugins`). Standard Go (>= 1.24, wasip1 reactor, c-shared) with
# github.com/proxy-wasm/proxy-wasm-go-sdk from the Go module proxy; one module (go.mod/go.sum here) for all
# plugins, each plugin a `package main` in its own subdirectory. Module and build caches live under
# $MESHPLUG_CACHE/go, never in the repo.
set -euo pipefail

sdk_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
plugin_dir="$(cd "$1" && pwd)"
out="$(realpath -m "$2")"
cache="${MESHPLUG_CACHE:-$HOME/.cache/meshplug}"

GO="${GO:-$(command -v go || true)}"
if [ -z "$GO" ] && [ -x /usr/local/go/bin/go ]; then GO=/usr/local/go/bin/go; fi
if [ -z "$GO" ]; then
  echo "go not found: install Go >= 1.24 (e.g. /usr/local/go)" >&2
  exit 1
fi
minor="$("$GO" env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')"
if [ "$minor" -lt 24 ]; then
  echo "$("$GO" env GOVERSION) is too old: the proxy-wasm Go SDK needs Go >= 1.24 (wasip1 reactors)" >&2
  exit 1
fi

export GOMODCACHE="$cache/go/mod" GOCACHE="$cache/go/build"
export GOFLAGS="-modcacherw -mod=readonly" GOTOOLCHAIN=local GOOS=wasip1 GOARCH=wasm CGO_ENABLED=0
cd "$sdk_dir"
"$GO" build -buildmode=c-shared -trimpath -o "$out" "./$(basename "$plugin_dir")"
