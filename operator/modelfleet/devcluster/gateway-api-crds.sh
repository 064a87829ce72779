#!/usr/bin/env bash
# Fetches the Gateway API's standard CRDs (HTTPRoute, Gateway, ...) from its Go module, for tests that install them
# into the test cluster. Cached per version under ${MODELFLEET_CACHE:-~/.cache/modelfleet}/gateway-api-<version>/,
# beside build-binaries.sh's binaries, so a second run only prints the path.
# Usage: gateway-api-crds.sh      (prints the directory of the CRD YAML files on the last line of stdout)
set -euo pipefail

GATEWAY_API_VERSION="${GATEWAY_API_VERSION:-v1.4.1}"
CACHE="${MODELFLEET_CACHE:-$HOME/.cache/modelfleet}"
DIR="$CACHE/gateway-api-$GATEWAY_API_VERSION"

if [[ -f "$DIR/gateway.networking.k8s.io_httproutes.yaml" ]]; then echo "$DIR"; exit 0; fi
echo "[gateway-api-crds] downloading sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION" >&2
module="$(GOFLAGS=-mod=mod go mod download -json "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION" \
  | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",*$/\1/p')"
[[ -n "$module" && -d "$module/config/crd/standard" ]] || { echo "[gateway-api-crds] no CRDs in '$module'" >&2; exit 1; }
mkdir -p "$DIR.tmp"
cp "$module"/config/crd/standard/*.yaml "$DIR.tmp/"
chmod -R u+w "$DIR.tmp"
rm -rf "$DIR" && mv "$DIR.tmp" "$DIR"
echo "$DIR"
