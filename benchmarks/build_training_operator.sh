#!/usr/bin/env bash
# Builds the peer for benchmarks/scale.py, Kubeflow's training operator, from its Go module (no replace lines, so a
# plain `go install` works). v1.9.2 rather than v1.8.1: v1.8.1's client is held to 20 requests/s with no flag to
# raise it; v1.9.2 has --kube-api-qps/--kube-api-burst (v1.9.0 does not), which the tuned run raises. Cached per
# version. Prints the binary's path and its PyTorchJob CRD's (in the module cache).
set -euo pipefail
VERSION="${TRAINING_OPERATOR_VERSION:-v1.9.2}"
CACHE="${MODELFLEET_CACHE:-$HOME/.cache/modelfleet}/bin/training-operator-$VERSION"
if [[ ! -x "$CACHE/training-operator.v1" ]]; then
  mkdir -p "$CACHE"
  GOFLAGS=-buildvcs=false CGO_ENABLED=0 GOBIN="$CACHE" go install -ldflags "-s -w" \
    "github.com/kubeflow/training-operator/cmd/training-operator.v1@$VERSION" >&2
fi
echo "$CACHE/training-operator.v1"
echo "$(go env GOMODCACHE)/github.com/kubeflow/training-operator@$VERSION/manifests/base/crds/kubeflow.org_pytorchjobs.yaml"
