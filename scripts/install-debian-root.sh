#!/usr/bin/env bash
# A clean Debian root filesystem made by Debian's debootstrap (variant minbase: what debian:<suite>-slim is made
# from), cached as a tarball in $MESHPLUG_CACHE/debian/<suite>-<date>/rootfs.tar, where <date> is the date of the
# suite's Release file on the mirror: a new point release gives a new root, every other run reuses the cached one.
# Prints the tarball's path on its last line.
#
# Called by `make debian-root` and by tests/integration/test_image_build.py, which builds the Dockerfile on it
# (no registry we reach serves debian:bookworm-slim, and there is no Docker engine here). Needs root (debootstrap
# creates device nodes and chowns). Older roots of the same suite are removed once a newer one is in place.
# A mirror that cannot be reached falls back to the newest cached root of the suite.
set -euo pipefail

SUITE="${DEBIAN_SUITE:-bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
CACHE="${MESHPLUG_CACHE:-$HOME/.cache/meshplug}"
BASE="$CACHE/debian"
mkdir -p "$BASE"

newest_cached() { ls -d "$BASE/$SUITE"-*/rootfs.tar 2>/dev/null | sort | tail -n 1; }

release_date=""
if release=$(curl -fsS --max-time 30 "$MIRROR/dists/$SUITE/Release" 2>/dev/null); then
  stamp=$(printf '%s\n' "$release" | sed -n 's/^Date: //p' | head -n 1)
  [ -n "$stamp" ] && release_date=$(date -u -d "$stamp" +%Y%m%d)
fi
if [ -z "$release_date" ]; then
  cached=$(newest_cached)
  if [ -n "$cached" ]; then
    echo "install-debian-root: $MIRROR unreachable; using the cached $cached" >&2
    echo "$cached"
    exit 0
  fi
  echo "install-debian-root: cannot read $MIRROR/dists/$SUITE/Release and nothing is cached" >&2
  exit 1
fi

ROOT="$BASE/$SUITE-$release_date"
TAR="$ROOT/rootfs.tar"
if [ -s "$TAR" ]; then echo "$TAR"; exit 0; fi
command -v debootstrap >/dev/null || { echo "install-debian-root: debootstrap not found (make system)" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "install-debian-root: debootstrap needs root" >&2; exit 1; }
mkdir -p "$ROOT"
exec 9>"$ROOT/.lock"
flock 9
if [ -s "$TAR" ]; then echo "$TAR"; exit 0; fi

start=$(date +%s)
tmp="$ROOT/tmp"
rm -rf "$tmp" && mkdir -p "$tmp"
echo "install-debian-root: debootstrap --variant=minbase $SUITE ($release_date) from $MIRROR" >&2
if ! debootstrap --variant=minbase "$SUITE" "$tmp/root" "$MIRROR" >"$tmp/debootstrap.log" 2>&1; then
  tail -n 20 "$tmp/debootstrap.log" >&2
  exit 1
fi
rm -rf "$tmp/root/var/cache/apt/archives/"*.deb "$tmp/root/var/lib/apt/lists/"*
tar -C "$tmp/root" --numeric-owner -cf "$tmp/rootfs.tar" .
mv -f "$tmp/rootfs.tar" "$TAR"
rm -rf "$tmp"
for old in "$BASE/$SUITE"-*; do
  [ "$old" = "$ROOT" ] || rm -rf "$old"
done
echo "install-debian-root: $SUITE root in $(( $(date +%s) - start ))s -> $TAR" >&2
echo "$TAR"
