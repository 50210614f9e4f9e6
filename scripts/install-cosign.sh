#!/usr/bin/env bash
# Build the real cosign from the Go module proxy into $MESHPLUG_CACHE/cosign/<version>/cosign, once.
#
# Called by `make cosign` (which `make integration` runs before the tests); the signature tests find the binary
# through tests/testbed/cosign.py. No registry we can reach ships cosign binaries; cosign's go.mod has no
# replace directives, so `go install github.com/sigstore/cosign/v2/cmd/cosign@<version>` builds it (~7 min cold).
set -euo pipefail
COSIGN_VERSION="${COSIGN_VERSION:-v2.6.5}"
# the version string `cosign version` prints (cosign's own Makefile sets it the same way)
exec "$(dirname "$0")/go-install-cached.sh" cosign "$COSIGN_VERSION" "github.com/sigstore/cosign/v2/cmd/cosign" \
  "-X sigs.k8s.io/release-utils/version.gitVersion=$COSIGN_VERSION -X sigs.k8s.io/release-utils/version.gitTreeState=clean"
