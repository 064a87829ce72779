"""Pod parts both workloads build the same way (pure): resources, GPU tolerations, the restricted security contexts,
the writable /tmp on a read-only root filesystem, the pod's identity; and when a pod counts as ready."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from modelfleet.api.common import GPU_RESOURCE, SCRATCH_VOLUME, ContainerSecurityContext, EnvVar, PodSecurityContext

# A numeric non-root UID/GID (distroless "nonroot", as the operator's own chart runs): runAsNonRoot alone makes the
# kubelet refuse the many images whose USER is root or a name, so the pods run as this unless the spec says otherwise.
NON_ROOT_ID = 65532
SCRATCH_PATH = "/tmp"
RESTRICTED_POD_SECURITY: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": NON_ROOT_ID,
    "runAsGroup": NON_ROOT_ID,
    "fsGroup": NON_ROOT_ID,
    "fsGroupChangePolicy": "OnRootMismatch",
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED_CONTAINER_SECURITY: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "readOnlyRootFilesystem": True,
}


def container_resources(gpus: int, cpu: str | int | None, memory: str | int | None) -> dict[str, Any]:
    """Requests equal to limits (what GPUs require, and Guaranteed QoS); {} when nothing is asked for."""
    amounts: dict[str, str] = {}
    if cpu is not None:
        amounts["cpu"] = str(cpu)
    if memory is not None:
        amounts["memory"] = str(memory)
    if gpus:
        amounts[GPU_RESOURCE] = str(gpus)
    return {"requests": dict(amounts), "limits": dict(amounts)} if amounts else {}


def gpu_tolerations(gpus: int) -> list[dict[str, Any]]:
    """A pod that asks for GPUs tolerates the GPU nodes' usual `nvidia.com/gpu` NoSchedule taint."""
    return [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}] if gpus else []


def merged(defaults: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`defaults` with `overrides` over them, objects merged field by field (the override's value wins)."""
    out = dict(defaults)
    for key, value in overrides.items():
        base = out.get(key)
        out[key] = merged(base, value) if isinstance(base, Mapping) and isinstance(value, Mapping) else value
    return out


def pod_security_context(user: PodSecurityContext | None) -> dict[str, Any]:
    """The Pod Security Standard `restricted` pod fields, with what the user's spec.securityContext sets."""
    return merged(RESTRICTED_POD_SECURITY, user.to_api() if user else {})


def container_security_context(user: ContainerSecurityContext | None) -> dict[str, Any]:
    """The `restricted` container fields, with what the user's spec.containerSecurityContext sets."""
    overrides = user.to_api() if user else {}
    defaults = dict(RESTRICTED_CONTAINER_SECURITY)
    if overrides.get("privileged") or "CAP_SYS_ADMIN" in overrides.get("capabilities", {}).get("add", []):
        # these escalate anyway, and the API refuses either beside allowPrivilegeEscalation: false
        del defaults["allowPrivilegeEscalation"]
    return merged(defaults, overrides)


def service_account_fields(name: str | None) -> dict[str, Any]:
    """The pod's identity. Workers and model servers make no API request, so without a ServiceAccount in the spec
    no API token is mounted (the namespace's `default` account's token would be a credential nothing uses). A named
    one is the user's choice of identity: its own `automountServiceAccountToken` decides. The deprecated alias is set
    too: the API copies one into the other, so on a server-side applied template a field left only in the alias
    would bring serviceAccountName back when the spec drops it (kubernetes/kubernetes#108208)."""
    if name:
        return {"serviceAccountName": name, "serviceAccount": name}
    return {"automountServiceAccountToken": False}


def scratch_env(user_env: Sequence[EnvVar]) -> list[dict[str, str]]:
    """TMPDIR and HOME at the writable /tmp (the root filesystem is read-only), unless the user's env sets them."""
    named = {e.name for e in user_env}
    return [{"name": k, "value": SCRATCH_PATH} for k in ("TMPDIR", "HOME") if k not in named]


def with_scratch(volumes: Sequence[Any], mounts: Sequence[Any]) -> tuple[list[Any], list[Any]]:
    """The pod's volumes and the container's mounts plus an emptyDir at /tmp, unless the user mounts one there."""
    if any(m["mountPath"].rstrip("/") == SCRATCH_PATH for m in mounts):
        return list(volumes), list(mounts)
    return (
        [*volumes, {"name": SCRATCH_VOLUME, "emptyDir": {}}],
        [*mounts, {"name": SCRATCH_VOLUME, "mountPath": SCRATCH_PATH}],
    )


def pod_ready(pod: Mapping[str, Any]) -> bool:
    """Running, not being deleted, and its Ready condition True."""
    if pod.get("metadata", {}).get("deletionTimestamp") or pod.get("status", {}).get("phase") != "Running":
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in pod["status"].get("conditions") or [])
