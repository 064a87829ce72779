# Sourced by the Makefile targets and .ci/run: makes the project's Python environment and puts it and the
# test cluster's binaries on PATH. The environment lives under ${MODELFLEET_CACHE:-~/.cache/modelfleet}
# and is reused while pyproject.toml is unchanged.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export MODELFLEET_CACHE="${MODELFLEET_CACHE:-$HOME/.cache/modelfleet}"
PY="${PYTHON:-python3}"
PYVER="$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
VENV="$MODELFLEET_CACHE/venv-py$PYVER"
STAMP="$VENV/.modelfleet-$(sha256sum "$ROOT/pyproject.toml" | cut -c1-12)-$(echo "$ROOT" | sha256sum | cut -c1-8)"
if [[ ! -f "$STAMP" ]]; then
  echo "[env] preparing $VENV (first run installs torch: a few minutes)" >&2
  [[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip >&2
  "$VENV/bin/pip" install --quiet -e "$ROOT[runtime,dev]" >&2
  rm -f "$VENV"/.modelfleet-*
  touch "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
export VIRTUAL_ENV="$VENV"
