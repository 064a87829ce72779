#!/usr/bin/env bash
# Builds the InferenceService peer for benchmarks/scale.py, KServe's controller manager, from its Go module (v0.15.2
# has no replace lines, so a plain `go install` works; later releases pin controller-runtime with one), cached per
# version. About 1,400 packages: 10+ minutes on 2 cores. Prints the binary's path and the module's directory (CRDs
# and the inferenceservice-config ConfigMap are under config/).
set -euo pipefail
VERSION="${KSERVE_GO_VERSION:-v0.15.2}"
CACHE="${MODELFLEET_CACHE:-$HOME/.cache/modelfleet}/bin/kserve-$VERSION"
if [[ ! -x "$CACHE/manager" ]]; then
  mkdir -p "$CACHE"
  GOFLAGS=-buildvcs=false CGO_ENABLED=0 GOBIN="$CACHE" go install -ldflags "-s -w" \
    "github.com/kserve/kserve/cmd/manager@$VERSION" >&2
fi
echo "$CACHE/manager"
echo "$(go env GOMODCACHE)/github.com/kserve/kserve@$VERSION"
