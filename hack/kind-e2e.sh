#!/usr/bin/env bash
# Where Docker and kind exist: create the kind cluster of kind-config.yaml, give its GPU-labelled workers fake
# nvidia.com/gpu capacity, build and load the images, helm install the chart, and run the e2e suite against it.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v docker >/dev/null && command -v kind >/dev/null || { echo "needs docker and kind" >&2; exit 1; }
source hack/env.sh
BIN="$(bash tests/cluster/build-binaries.sh)"
export PATH="$BIN:$PATH"
kind get clusters | grep -qx modelfleet || kind create cluster --config kind-config.yaml
export KUBECONFIG="$(mktemp)"
kind get kubeconfig --name modelfleet >"$KUBECONFIG"

# fake GPUs: extended resources go in through the status subresource
for node in $(kubectl get nodes -l nvidia.com/gpu.product -o name); do
  kubectl patch "$node" --subresource=status --type=json \
    -p '[{"op": "add", "path": "/status/capacity/nvidia.com~1gpu", "value": "8"}]'
done

docker build -f images/operator.Dockerfile -t ghcr.io/modelfleet/operator:0.1.0 .
docker build -f images/runtime.Dockerfile -t ghcr.io/modelfleet/runtime:0.1.0 .
kind load docker-image --name modelfleet ghcr.io/modelfleet/operator:0.1.0 ghcr.io/modelfleet/runtime:0.1.0
helm upgrade --install modelfleet charts/modelfleet -n modelfleet-system --create-namespace --wait
MODELFLEET_E2E_OPERATOR=installed MODELFLEET_E2E_KUBECONFIG="$KUBECONFIG" bash hack/test.sh tests/e2e -m e2e "$@"
