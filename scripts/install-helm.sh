#!/usr/bin/env bash
# Build a real Helm v3 from the Go module proxy into $MESHPLUG_CACHE/helm/<version>/helm, once.
#
# Called by `make helm` (which `make integration` runs before the tests); tests find the binary through
# tests/integration/test_helm*.py's helm_bin(). No registry we can reach ships Helm binaries, but helm's
# go.mod has no replace directives, so `go install helm.sh/helm/v3/cmd/helm@<version>` builds it.
set -euo pipefail
HELM_VERSION="${HELM_VERSION:-v3.16.2}"
# the version string `helm version` prints (helm's own Makefile sets it the same way)
exec "$(dirname "$0")/go-install-cached.sh" helm "$HELM_VERSION" "helm.sh/helm/v3/cmd/helm" \
  "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
