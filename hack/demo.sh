#!/usr/bin/env bash
# The main job: bring up the local cluster (real control plane, KWOK GPU nodes), install modelfleet's CRDs,
# start the operator, apply the examples and show what modelfleet made of them.
set -euo pipefail
cd "$(dirname "$0")/.."
source hack/env.sh
BIN="$(bash tests/cluster/build-binaries.sh)"
export PATH="$BIN:$PATH"
STATE="$MODELFLEET_CACHE/dev-cluster"
modelfleet dev-cluster up --dir "$STATE"
export KUBECONFIG="$STATE/kubeconfig"

echo "== install: CRDs"
kubectl apply --server-side --force-conflicts -f crds/ >/dev/null
kubectl wait --for condition=Established crd --all --timeout=60s >/dev/null

echo "== start the operator (log: $STATE/operator.log)"
if [[ -f "$STATE/operator.pid" ]] && kill -0 "$(cat "$STATE/operator.pid")" 2>/dev/null; then
  kill "$(cat "$STATE/operator.pid")"; sleep 1
fi
nohup modelfleet operator >"$STATE/operator.log" 2>&1 &
echo $! >"$STATE/operator.pid"
sleep 3

echo "== apply the examples into namespace modelfleet-demo"
kubectl create namespace modelfleet-demo --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl apply -n modelfleet-demo -f examples/
for _ in $(seq 1 30); do
  phase="$(kubectl get tj paper-mlp -n modelfleet-demo -o jsonpath='{.status.phase}' 2>/dev/null || true)"
  [[ "$phase" == "Running" ]] && break
  sleep 1
done

echo; echo "== kubectl get nodes (simulated GPU nodes)"
kubectl get nodes -L topology.kubernetes.io/region,topology.kubernetes.io/zone,nvidia.com/gpu.product
echo; echo "== kubectl get modelfleet"
kubectl get modelfleet -n modelfleet-demo -o wide
echo; echo "== worker pods"
kubectl get pods -n modelfleet-demo -o wide
echo; echo "== placement of paper-mlp"
kubectl get tj paper-mlp -n modelfleet-demo -o jsonpath='{range .status.placement[*]}{.worker}{"\t"}{.node}{"\t"}{.gpuType}{"\tweight "}{.shardWeight}{"\n"}{end}'
echo
echo "The cluster keeps running: export KUBECONFIG=$KUBECONFIG PATH=$BIN:\$PATH"
echo "Stop it with: make cluster-down"
