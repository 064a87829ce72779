"""What a kubelet would make of a pod's container, for the dev cluster's pod runner (pure functions).

A local process has no network or mount namespace of its own, so the runner stands in for them:
- env: `value`s as written, `valueFrom.fieldRef` resolved as a kubelet would (pod name, namespace, uid, IP, node,
  service account, a label or annotation); `$(VAR)` references expanded in env, command and args;
- cluster DNS: a value naming a pod by `<hostname>.<subdomain>[.<namespace>[.svc[.cluster.local]]]` (alone or as
  `name:port`) gets that pod's IP, as a headless Service's record would give it;
- volumes: each mount path maps to a local directory (emptyDir: one per pod; persistentVolumeClaim: one per claim,
  shared by every pod that mounts it, which is how a model store PVC works locally), and every env value and
  argument that is a mounted path, or lies under one, is rewritten to the local path (and local paths in the
  termination message back to the container's).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"
PYTHON_NAMES = ("python", "python3")
_VAR_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
_FIELD_WITH_KEY = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


class UnsupportedPod(ValueError):
    """The pod needs something the local runner cannot give it (no command, an unsupported env source)."""


def field_value(pod: Mapping[str, Any], path: str, pod_ip: str, host_ip: str) -> str:
    """A `fieldRef.fieldPath` of the downward API."""
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
    }
    if path in simple:
        return simple[path]
    if match := _FIELD_WITH_KEY.match(path):
        return (meta.get(match.group(1)) or {}).get(match.group(2), "")
    raise UnsupportedPod(f"fieldRef {path} is not supported by the local runner")


def expand(value: str, env: Mapping[str, str]) -> str:
    """`$(VAR)` replaced by VAR's value when VAR is defined (kept as written otherwise); `$$` escapes `$`."""
    parts = value.split("$$")
    return "$".join(_VAR_REFERENCE.sub(lambda m: env.get(m.group(1), m.group(0)), p) for p in parts)


def container_env(pod: Mapping[str, Any], container: Mapping[str, Any], pod_ip: str, host_ip: str) -> dict[str, str]:
    """The container's env in order, each value expanded against the ones before it, as a kubelet does."""
    env: dict[str, str] = {}
    for item in container.get("env") or []:
        if "valueFrom" in item:
            ref = item["valueFrom"].get("fieldRef")
            if ref is None:
                raise UnsupportedPod(f"env {item['name']}: only value and valueFrom.fieldRef are supported locally")
            env[item["name"]] = field_value(pod, ref["fieldPath"], pod_ip, host_ip)
        else:
            env[item["name"]] = expand(str(item.get("value", "")), env)
    return env


def dns_names(pod: Mapping[str, Any]) -> list[str]:
    """The names a headless Service gives a pod with hostname and subdomain set."""
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    hostname, subdomain = spec.get("hostname"), spec.get("subdomain")
    if not hostname or not subdomain:
        return []
    base = f"{hostname}.{subdomain}"
    namespace = meta.get("namespace", "default")
    return [base, f"{base}.{namespace}", f"{base}.{namespace}.svc", f"{base}.{namespace}.svc.cluster.local"]


def resolve_names(value: str, namespace: str, lookup: Callable[[str, str], str | None]) -> tuple[str, bool]:
    """`value` with a pod DNS name (alone, or before `:port`) replaced by its IP; False when it names a pod
    whose IP is not known yet (the caller waits, as a process would retry its lookup)."""
    host, sep, port = value.partition(":")
    parts = host.split(".")
    if len(parts) < 2 or not all(p and p[0].isalpha() for p in parts[:2]):
        return value, True
    suffixes = (namespace, "svc", "cluster", "local")
    if parts[2:] != list(suffixes[: len(parts) - 2]):
        return value, True
    ip = lookup(namespace, ".".join(parts[:2]))
    if ip is None:
        return value, False
    return f"{ip}{sep}{port}", True


def volume_dirs(pod: Mapping[str, Any], pod_dir: Path, claims_dir: Path) -> dict[str, Path]:
    """Volume name -> local directory: a PVC is `claims_dir/<namespace>/<claim>`, a hostPath itself, any other
    volume an empty directory of the pod's own (the service-account token volume included: pods get no API
    credentials here)."""
    namespace = (pod.get("metadata") or {}).get("namespace", "default")
    dirs: dict[str, Path] = {}
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        if "persistentVolumeClaim" in volume:
            dirs[volume["name"]] = claims_dir / namespace / volume["persistentVolumeClaim"]["claimName"]
        elif "hostPath" in volume:
            dirs[volume["name"]] = Path(volume["hostPath"]["path"])
        else:  # emptyDir; projected, secret, configMap and downwardAPI volumes come up empty here
            dirs[volume["name"]] = pod_dir / "volumes" / volume["name"]
    return dirs


@dataclass(frozen=True)
class PathMap:
    """The container's mount paths (longest first) and termination message path -> local paths."""

    mounts: tuple[tuple[str, Path], ...]
    termination_message: tuple[str, Path]

    @classmethod
    def of(cls, container: Mapping[str, Any], volumes: Mapping[str, Path], termination_log: Path) -> PathMap:
        mounts = [
            (m["mountPath"].rstrip("/") or "/", volumes[m["name"]] / m.get("subPath", ""))
            for m in container.get("volumeMounts") or []
        ]
        message_path = container.get("terminationMessagePath") or DEFAULT_TERMINATION_MESSAGE_PATH
        return cls(tuple(sorted(mounts, key=lambda p: -len(p[0]))), (message_path, termination_log))

    def local(self, value: str) -> str:
        """The local path of a container path (unchanged when it is in no mount)."""
        if value == self.termination_message[0]:
            return str(self.termination_message[1])
        for mount, local in self.mounts:
            if value == mount:
                return str(local)
            if value.startswith(mount.rstrip("/") + "/"):
                return str(local / value[len(mount) :].lstrip("/"))
        return value

    def container(self, text: str) -> str:
        """`text` with the mounts' local paths written back as the container sees them (a termination message)."""
        for mount, local in sorted(self.mounts, key=lambda pair: -len(str(pair[1]))):
            text = text.replace(str(local), mount)
        return text


def command_line(
    container: Mapping[str, Any], env: Mapping[str, str], python: str, local: Callable[[str], str] = str
) -> list[str]:
    """command + args with `$(VAR)` expanded and container paths made `local`; a leading `python` is the given
    interpreter (the project's venv: a local path already, never remapped, even under a mount path such as /tmp)."""
    if not container.get("command"):
        raise UnsupportedPod(f"container {container.get('name')}: the local runner needs a command (no image here)")
    argv = [expand(str(a), env) for a in [*container["command"], *(container.get("args") or [])]]
    if argv[0] in PYTHON_NAMES:
        return [python, *map(local, argv[1:])]
    return [local(a) for a in argv]


def probe_url(container: Mapping[str, Any], pod_ip: str, probe: str = "readinessProbe") -> str | None:
    """The URL of an httpGet probe, or None when the container has none."""
    get = (container.get(probe) or {}).get("httpGet")
    if not get:
        return None
    port = get.get("port")
    if isinstance(port, str) and not port.isdigit():
        port = next(p["containerPort"] for p in container.get("ports") or [] if p.get("name") == port)
    return f"http://{pod_ip}:{port}{get.get('path', '/')}"
