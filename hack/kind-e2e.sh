#!/usr/bin/env bash
# Where Docker and kind exist: create the kind cluster of kind-config.yaml, give its GPU-labelled workers fake
# nvidia.com/gpu capacity, build and load the images, helm install the chart, and run the e2e suite against it.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v docker >/dev/null && command -v kind >/dev/null || { echo "needs docker and kind" >&2; exit 1; }
source hack/env.sh
BIN="$(bash operator/modelfleet/devcluster/build-binaries.sh)"
export PATH="$BIN:$PATH"
kind get clusters | grep -qx modelfleet || kind create cluster --config kind-config.yaml
export KUBECONFIG="$(mktemp)"
kind get kubeconfig --name modelfleet >"$KUBECONFIG"

# fake GPUs: extended resources go in through the status subresource, as many per node as the local cluster's
# inventory gives that product (modelfleet.devcluster.nodes.GPUS_PER_NODE), so the suite expects what it finds
for node in $(kubectl get nodes -l nvidia.com/gpu.product -o name); do
  product="$(kubectl get "$node" -o jsonpath='{.metadata.labels.nvidia\.com/gpu\.product}')"
  count="$(python -c 'import sys; from modelfleet.devcluster.nodes import GPUS_PER_NODE as g; print(g.get(sys.argv[1], 8))' "$product")"
  kubectl patch "$node" --subresource=status --type=json \
    -p "[{\"op\": \"add\", \"path\": \"/status/capacity/nvidia.com~1gpu\", \"value\": \"$count\"}]"
done

docker build -f images/operator.Dockerfile -t ghcr.io/modelfleet/operator:0.1.0 .
docker build -f images/runtime.Dockerfile -t ghcr.io/modelfleet/runtime:0.1.0 .
kind load docker-image --name modelfleet ghcr.io/modelfleet/operator:0.1.0 ghcr.io/modelfleet/runtime:0.1.0
helm upgrade --install modelfleet charts/modelfleet -n modelfleet-system --create-namespace --wait
# kind runs real pods: the tests that need KWOK's simulated exit codes and fake nodes (marker kwok) are skipped
MODELFLEET_E2E_OPERATOR=installed MODELFLEET_E2E_KUBECONFIG="$KUBECONFIG" bash hack/test.sh tests/e2e -m "e2e and not kwok" "$@"
