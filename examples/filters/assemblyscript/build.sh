#!/usr/bin/env bash
# Build one AssemblyScript proxy-wasm plugin of the corpus: build.sh <plugin_dir> <out.wasm>
# Called by scripts/build_plugins.py (`make plugins`). The npm project here (package.json + package-lock.json:
# @solo-io/proxy-runtime 0.1.8, assemblyscript 0.14.9) is shared by every plugin; `npm ci` installs it once
# per lock-file content into $MESHPLUG_CACHE/npm/assemblyscript-<hash>/ (atomically, so concurrent builds
# are safe), never into the repo. Each plugin is <plugin_dir>/assembly/index.ts.
set -euo pipefail

sdk_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
plugin_dir="$(cd "$1" && pwd)"
out="$(realpath -m "$2")"
cache="${MESHPLUG_CACHE:-$HOME/.cache/meshplug}"

command -v npm >/dev/null || { echo "npm not found: install Node.js (>= 16) and npm" >&2; exit 1; }
lock_hash="$(cat "$sdk_dir/package.json" "$sdk_dir/package-lock.json" | sha256sum | cut -c1-16)"
deps="$cache/npm/assemblyscript-$lock_hash"
if [ ! -x "$deps/node_modules/.bin/asc" ]; then
  mkdir -p "$cache/npm"
  staging="$(mktemp -d "$cache/npm/.staging.XXXXXX")"
  trap 'rm -rf "$staging"' EXIT
  cp "$sdk_dir/package.json" "$sdk_dir/package-lock.json" "$staging/"
  (cd "$staging" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
  # another build may have finished the same install meanwhile: keep whichever landed first
  mv -T "$staging" "$deps" 2>/dev/null || true
fi

cd "$plugin_dir"
"$deps/node_modules/.bin/asc" assembly/index.ts -b "$out" --path "$deps/node_modules" \
  --use abort=abort_proc_exit --optimize
