#!/usr/bin/env bash
# Build one Rust plugin of the corpus: build.sh <plugin_dir> <out.wasm>  (driven by scripts/build_plugins.py)
#
# Toolchain: Debian's rustc 1.63 + cargo 1.65 + libstd-rust-dev-wasm32 (scripts/install-system-deps.sh), by
# absolute path (a rustup toolchain earlier on PATH has no wasm32 std). Crates come from crates.io at the
# versions of the committed Cargo.lock (--locked). Cargo 1.65 only reaches crates.io through the sparse index,
# which it ships as an unstable feature: -Z sparse-registry, allowed by cargo's channel override variable.
# CARGO_HOME (downloaded crates) and the target dir are cached under $MESHPLUG_CACHE/rust, never in git.
set -euo pipefail
plugin_dir=$(cd "$1" && pwd)
out=$2
sdk_dir=$(cd "$(dirname "$0")" && pwd)
name=$(basename "$plugin_dir")
cache=${MESHPLUG_CACHE:-$HOME/.cache/meshplug}/rust
mkdir -p "$cache"
export CARGO_HOME=$cache/cargo-home
export CARGO_TARGET_DIR=$cache/target
export RUSTC=/usr/bin/rustc
export RUSTDOC=/usr/bin/rustdoc
export __CARGO_TEST_CHANNEL_OVERRIDE_DO_NOT_USE_THIS=nightly
[ -x /usr/bin/cargo ] && [ -x /usr/bin/rustc ] || { echo "Debian rustc/cargo missing: run scripts/install-system-deps.sh" >&2; exit 1; }
/usr/bin/cargo -Z sparse-registry build --locked --release --target wasm32-unknown-unknown \
  --manifest-path "$sdk_dir/Cargo.toml" -p "$name"
cp "$CARGO_TARGET_DIR/wasm32-unknown-unknown/release/$name.wasm" "$out"
