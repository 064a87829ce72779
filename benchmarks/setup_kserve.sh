#!/usr/bin/env bash
# A separate environment with KServe's Python server (its pins differ from modelfleet's). torch comes from
# modelfleet's environment through a .pth file placed after KServe's own packages, so it is not installed twice.
# Prints the environment's python.
set -euo pipefail
cd "$(dirname "$0")/.."
source hack/env.sh >/dev/null
KSERVE_VERSION="${KSERVE_VERSION:-0.21.0}"
VENV="$MODELFLEET_CACHE/venv-kserve-$KSERVE_VERSION"
if [[ ! -f "$VENV/.ready" ]]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet "kserve==$KSERVE_VERSION" >&2
  site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' >"$site/zz-modelfleet-torch.pth"
  touch "$VENV/.ready"
fi
echo "$VENV/bin/python"
