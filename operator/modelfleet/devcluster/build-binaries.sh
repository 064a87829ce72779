#!/usr/bin/env bash
# Builds the local test control plane from Go modules: etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, kwok and helm. Binaries are cached per version under
# ${MODELFLEET_CACHE:-~/.cache/modelfleet}/bin/<versions>/, so a second run only prints the path.
# Usage: build-binaries.sh            (prints the bin directory on the last line of stdout)
#
# kwok is built from its module's source with one line changed: the channel between its pod watch and its pod
# controller holds KWOK_POD_EVENTS events instead of 1. kwok plays the kubelets of every node through that one watch,
# and with one slot the watch is read only as fast as one goroutine matches stages. On a loaded machine it falls a
# second behind, the API server drops it as an unresponsive watcher, and kwok then marks pods Running a second time
# with a new IP (thousands in a 1,000-job benchmark run). A real kubelet watches its own node's pods and is not the
# cluster's slowest watcher; with the wider channel kwok reads its watch as fast as it decodes.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.36.3}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"
HELM_VERSION="${HELM_VERSION:-v3.21.4}"
KWOK_POD_EVENTS=65536

CACHE="${MODELFLEET_CACHE:-$HOME/.cache/modelfleet}"
BIN="$CACHE/bin/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION-helm-$HELM_VERSION"
WANTED=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok helm)

KWOK_STAMP="$BIN/kwok.pod-events-$KWOK_POD_EVENTS"
have_all() {
  for b in "${WANTED[@]}"; do [[ -x "$BIN/$b" ]] || return 1; done
  [[ -f "$KWOK_STAMP" ]]
}
if have_all; then echo "$BIN"; exit 0; fi

log() { echo "[build-binaries] $*" >&2; }
mkdir -p "$BIN"
WORK="$CACHE/build"
mkdir -p "$WORK"
export GOFLAGS="-mod=mod -buildvcs=false"
export CGO_ENABLED=0
start=$(date +%s)

minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
staging_version="v0.${K8S_VERSION#v1.}"
STAGING=(api apiextensions-apiserver apimachinery apiserver cli-runtime client-go cloud-provider cluster-bootstrap
  code-generator component-base component-helpers controller-manager cri-api cri-client cri-streaming
  csi-translation-lib dynamic-resource-allocation endpointslice externaljwt kms kube-aggregator
  kube-controller-manager kube-proxy kube-scheduler kubectl kubelet metrics mount-utils pod-security-admission
  sample-apiserver sample-cli-plugin sample-controller streaming)

build_kubernetes() {
  local dir="$WORK/kubernetes-$K8S_VERSION"
  mkdir -p "$dir"
  {
    echo "module modelfleet.dev/testcluster/kubernetes"
    echo
    echo "go 1.26"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    for m in "${STAGING[@]}"; do echo "replace k8s.io/$m => k8s.io/$m $staging_version"; done
  } >"$dir/go.mod"
  local ld="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  log "building kubernetes $K8S_VERSION (apiserver, controller-manager, scheduler, kubectl)"
  (cd "$dir" && go mod download k8s.io/kubernetes && go build -ldflags "$ld" -o "$BIN/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl)
}

build_etcd() {
  local dir="$WORK/etcd-$ETCD_VERSION"
  mkdir -p "$dir"
  printf 'module modelfleet.dev/testcluster/etcd\n\ngo 1.26\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION" >"$dir/go.mod"
  log "building etcd $ETCD_VERSION"
  (cd "$dir" && go build -ldflags "-s -w" -o "$BIN/etcd" go.etcd.io/etcd/server/v3)
}

build_kwok() {
  log "building kwok $KWOK_VERSION (pod event channel: $KWOK_POD_EVENTS)"
  local module dir file="pkg/kwok/controllers/controller.go"
  module="$(go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  dir="$WORK/kwok-$KWOK_VERSION"
  rm -rf "$dir" && cp -r "$module" "$dir" && chmod -R u+w "$dir"
  sed -i "s/\(c\.podsChan = make(chan informer\.Event\[\*corev1\.Pod\], \)1)/\1$KWOK_POD_EVENTS)/" "$dir/$file"
  grep -qF "corev1.Pod], $KWOK_POD_EVENTS)" "$dir/$file" || { log "kwok $KWOK_VERSION: pod channel not found in $file"; exit 1; }
  (cd "$dir" && go build -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION" -o "$BIN/kwok" ./cmd/kwok)
  rm -f "$BIN"/kwok.pod-events-* && touch "$KWOK_STAMP"
}

build_helm() {
  log "building helm $HELM_VERSION"
  GOBIN="$BIN" go install -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
}

[[ -x "$BIN/etcd" ]] || build_etcd
[[ -x "$BIN/kwok" && -f "$KWOK_STAMP" ]] || build_kwok
[[ -x "$BIN/helm" ]] || build_helm
[[ -x "$BIN/kube-apiserver" && -x "$BIN/kubectl" ]] || build_kubernetes
have_all || { log "missing binaries in $BIN"; exit 1; }
log "done in $(( $(date +%s) - start ))s"
echo "$BIN"
