#!/usr/bin/env bash
# Install the Debian packages the build and the test bed need; only what is missing.
# Runs as root (CI and developer machines) or through sudo when available.
set -euo pipefail

PACKAGES=(
  docker-registry      # OCI registry of the test bed (CNCF distribution)
  apache2-utils        # htpasswd (bcrypt) for the registry's auth variant
  openssl              # test CAs and serving certificates
  wabt                 # wat2wasm / wasm-objdump for edge-case guests
  gcc libc6-dev python3-dev  # the agent's compiled data path (make native: C extension + mypyc)
  libnghttp2-dev       # the agent's HTTP/2 codec (meshplug/agent/_h2codec.c over nghttp2, as Envoy's)
  clang lld wasi-libc  # C plugins (wasm32-wasi)
  libc++-dev-wasm32 libclang-rt-dev-wasm32  # C++ plugins (meshplug init --sdk cpp): libc++ and builtins for wasm32
  rustc cargo libstd-rust-dev-wasm32  # Rust plugins (Debian's wasm32 std)
  wrk nginx-light      # benchmarks: load generator and a fast upstream
  nghttp2-client       # h2load / nghttp: raw HTTP/2 peers of the test bed and the h2 benchmark
  etcd-server          # storage of the test bed's kube-apiserver
  debootstrap curl     # the clean Debian root the image is built on (scripts/install-debian-root.sh)
  buildah              # builds the Dockerfile on it without a Docker engine (tests/integration/test_image_build.py)
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "installing Debian packages: ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
