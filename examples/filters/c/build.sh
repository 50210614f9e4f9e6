#!/usr/bin/env bash
# Build one C plugin of the corpus: build.sh <plugin_dir> <out.wasm>  (driven by scripts/build_plugins.py)
#
# Raw proxy-wasm ABI 0.2.1, no SDK: the plugin's *.c plus _common/*.c (imports declared in _common/proxy_wasm.h),
# Debian clang + lld + wasi-libc, WASI reactor (exports _initialize). Linked with -nodefaultlibs -lc because
# Debian's clang does not ship compiler-rt's wasm32 builtins by default; a plugin needing one fails to link.
set -euo pipefail
plugin_dir=$(cd "$1" && pwd)
out=$2
sdk_dir=$(cd "$(dirname "$0")" && pwd)
command -v clang >/dev/null || { echo "clang missing: run scripts/install-system-deps.sh" >&2; exit 1; }
clang --target=wasm32-wasi -mexec-model=reactor -O2 -std=c11 -Wall -Wextra -Werror \
  -I"$sdk_dir/_common" "$plugin_dir"/*.c "$sdk_dir"/_common/*.c \
  -nodefaultlibs -lc -Wl,--strip-all -o "$out"
