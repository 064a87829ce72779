#!/usr/bin/env bash
# The project's test command: lint, then unit, e2e (real control plane) and runtime tests.
# Extra arguments go to pytest, e.g. hack/test.sh -k training.
set -euo pipefail
cd "$(dirname "$0")/.."
source hack/env.sh
unset KUBECONFIG  # the e2e suite starts its own control plane unless MODELFLEET_E2E_KUBECONFIG is set
if [[ -n "${MODELFLEET_E2E_KUBECONFIG:-}" ]]; then export KUBECONFIG="$MODELFLEET_E2E_KUBECONFIG"; fi
start=$(date +%s)
bash operator/modelfleet/devcluster/build-binaries.sh >/dev/null
echo "[test] control-plane binaries ready after $(( $(date +%s) - start ))s"
ruff check .
ruff format --check .
set +e
python -m pytest "$@"
rc=$?
set -e
if [[ $rc -eq 5 ]]; then echo "[test] pytest collected no tests: failing" >&2; exit 1; fi
echo "[test] finished in $(( $(date +%s) - start ))s with exit code $rc"
exit $rc
