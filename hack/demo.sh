#!/usr/bin/env bash
# The main job: bring up the local cluster (real control plane, KWOK GPU nodes), install modelfleet's CRDs,
# start the operator, apply the examples and show what modelfleet made of them; then train for real on the
# run-pods nodes (examples/pipeline), serve the artifact through an InferenceService and ask it.
set -euo pipefail
cd "$(dirname "$0")/.."
source hack/env.sh
BIN="$(bash operator/modelfleet/devcluster/build-binaries.sh)"
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
# the operator outlives this script: it must not hold on to what the caller opened (a `flock` around make demo)
(
  for fd in /proc/self/fd/*; do n="${fd##*/}"; if (( n > 2 )); then eval "exec $n>&-" 2>/dev/null || true; fi; done
  exec nohup modelfleet operator >"$STATE/operator.log" 2>&1
) &
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

echo; echo "== train to serve, for real: the pods of the run-pods nodes (region local) run as local processes"
demo_start=$(date +%s)
elapsed() { echo "$(( $(date +%s) - demo_start ))s"; }
kubectl delete tj mlp-local -n modelfleet-demo --ignore-not-found --wait=true >/dev/null  # a fresh run each time
kubectl apply -n modelfleet-demo -f examples/pipeline/
echo "-- kubectl get tj mlp-local -o wide, every 5 s while 4 workers train the 3-4-2 network (gloo, CPU)"
while true; do
  sleep 5
  echo "[$(elapsed)]"; kubectl get tj mlp-local -n modelfleet-demo -o wide
  phase="$(kubectl get tj mlp-local -n modelfleet-demo -o jsonpath='{.status.phase}')"
  [[ "$phase" == "Succeeded" || "$phase" == "Failed" ]] && break
done
echo "-- $phase after $(elapsed); the artifact rank 0 reported:"
kubectl get tj mlp-local -n modelfleet-demo -o jsonpath='{.status.artifact}'; echo
echo; echo "== modelfleet models"
COLUMNS=160 modelfleet models -n modelfleet-demo
echo; echo "== the InferenceService mlp-local serves it (model.fromTrainingJob: mlp-local, int8)"
digest="$(kubectl get tj mlp-local -n modelfleet-demo -o jsonpath='{.status.artifact.digest}')"
for _ in $(seq 1 120); do
  served="$(kubectl get mfis mlp-local -n modelfleet-demo -o jsonpath='{.status.phase} {.status.artifact.digest}')"
  [[ "$served" == "Ready $digest" ]] && break
  sleep 1
done
kubectl get mfis mlp-local -n modelfleet-demo
echo "-- serving $(kubectl get mfis mlp-local -n modelfleet-demo -o jsonpath='{.status.artifact.uri} {.status.artifact.digest}') after $(elapsed)"
ip="$(kubectl get pods -n modelfleet-demo -l modelfleet.dev/service-name=mlp-local \
  -o jsonpath='{range .items[?(@.status.phase=="Running")]}{.status.podIP}{"\n"}{end}' | head -1)"
echo; echo "== POST http://$ip:8080/v2/models/mlp-local/infer"
python - "$ip" <<'PY'
import json, sys, httpx
body = {"inputs": [{"name": "input__0", "shape": [2, 3], "datatype": "FP32", "data": [[0.1, 0.2, 0.3], [3.0, -2.0, 1.0]]}]}
print(json.dumps(body))
answer = httpx.post(f"http://{sys.argv[1]}:8080/v2/models/mlp-local/infer", json=body, timeout=10, trust_env=False)
print(answer.status_code, json.dumps(answer.json()))
PY
echo "-- answered after $(elapsed) (logs of the real pods: $STATE/pods/modelfleet-demo/)"
echo
echo "The cluster keeps running: export KUBECONFIG=$KUBECONFIG PATH=$BIN:\$PATH"
echo "Stop it with: make cluster-down"
