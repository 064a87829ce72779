#!/usr/bin/env bash
# Builds the peer for benchmarks/scale.py, Kubeflow's training operator, from its Go module (no replace lines, so a
# plain `go install` works), cached per version: TRAINING_OPERATOR_VERSION, default v1.8.1 (the peer as shipped);
# the tuned peer is v1.9.2, the first with --kube-api-qps/--kube-api-burst (v1.8.1 has only --controller-threads).
# Prints the binary's path and its PyTorchJob CRD's (in the module cache).
set -euo pipefail
VERSION="${TRAINING_OPERATOR_VERSION:-v1.8.1}"
CACHE="${MODELFLEET_CACHE:-$HOME/.cache/modelfleet}/bin/training-operator-$VERSION"
if [[ ! -x "$CACHE/training-operator.v1" ]]; then
  mkdir -p "$CACHE"
  GOFLAGS=-buildvcs=false CGO_ENABLED=0 GOBIN="$CACHE" go install -ldflags "-s -w" \
    "github.com/kubeflow/training-operator/cmd/training-operator.v1@$VERSION" >&2
fi
echo "$CACHE/training-operator.v1"
echo "$(go env GOMODCACHE)/github.com/kubeflow/training-operator@$VERSION/manifests/base/crds/kubeflow.org_pytorchjobs.yaml"
