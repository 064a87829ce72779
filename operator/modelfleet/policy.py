"""The operator's policy: what a TrainingJob or InferenceService may make the operator do on its behalf.

Whoever may create these resources gets pods made for them by the operator, and outbound requests made by it;
the policy limits both to what the cluster's admin allowed in the chart's `values.policy`. It is read once from
the environment the chart sets; `violations` is a pure function of a spec and a policy.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from modelfleet.api.inference import InferenceServiceSpec, ModelFormat
from modelfleet.api.training import TrainingJobSpec
from modelfleet.contract import (
    POLICY_ALLOW_HOST_PATH_ENV,
    POLICY_ALLOW_PICKLED_MODELS_ENV,
    POLICY_PROMETHEUS_URLS_ENV,
)
from modelfleet.kube import Refused

NODE_LEVEL_VOLUMES = ("hostPath", "flexVolume")
"""Volume types that reach into the node itself: a path of its filesystem, or a driver binary run as root there
with options from the spec. Gated by policy.allowHostPath. Network and CSI volumes are left to Pod Security."""

IN_CLUSTER_SERVICE = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?\.[a-z0-9]([-a-z0-9]*[a-z0-9])?\.svc(\.cluster\.local)?$"
)
"""The DNS name of a Service, <service>.<namespace>.svc[.cluster.local]: what an empty allow-list admits."""

DEFAULT_PORTS = {"http": 80, "https": 443}
POLICY_DENIED = "PolicyDenied"


@dataclass(frozen=True)
class Policy:
    allow_host_path: bool = False
    allow_pickled_models: bool = False
    prometheus_urls: tuple[str, ...] = ()
    """Base URLs a prometheusUrl must lie under; empty: any in-cluster Service URL (IN_CLUSTER_SERVICE)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Policy:
        """Anything but "true" or "1" is false: a mistyped flag keeps the safe default."""
        return cls(
            allow_host_path=_flag(env.get(POLICY_ALLOW_HOST_PATH_ENV)),
            allow_pickled_models=_flag(env.get(POLICY_ALLOW_PICKLED_MODELS_ENV)),
            prometheus_urls=tuple((env.get(POLICY_PROMETHEUS_URLS_ENV) or "").split()),
        )


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("true", "1")


@functools.cache
def current() -> Policy:
    """The operator's policy, read from its environment on first use."""
    return Policy.from_env(os.environ)


def _split(url: str) -> tuple[SplitResult, int] | None:
    """The URL and its port; None when it has no host, a bad port, credentials, a query or a fragment (a base
    URL has none of these, and each could make the request go elsewhere than it reads)."""
    try:
        parts = urlsplit(url)
        port = parts.port or DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        return None
    if not parts.hostname or port is None or "@" in parts.netloc or parts.query or parts.fragment:
        return None
    return parts, port


def prometheus_url_allowed(url: str, allowed: tuple[str, ...]) -> bool:
    """Whether the operator may query this Prometheus: the URL lies under one of `allowed` (same scheme, host and
    port; its path that path or below it), or, with an empty list, it is an in-cluster Service's URL."""
    if (split := _split(url)) is None:
        return False
    parts, port = split
    if not allowed:
        return bool(IN_CLUSTER_SERVICE.match(parts.hostname or ""))
    for entry in allowed:
        if (base := _split(entry)) is None:
            continue
        base_parts, base_port = base
        same_origin = (parts.scheme, parts.hostname, port) == (base_parts.scheme, base_parts.hostname, base_port)
        if same_origin and (parts.path.rstrip("/") + "/").startswith(base_parts.path.rstrip("/") + "/"):
            return True
    return False


def violations(spec: TrainingJobSpec | InferenceServiceSpec, policy: Policy) -> list[str]:
    """What in the spec the policy forbids, one line per field, each naming the field and the chart value."""
    found = [
        f"spec.volumes[{i}].{kind}: {kind} volumes reach into the node and are not allowed by the operator's "
        "policy (chart value policy.allowHostPath)"
        for i, volume in enumerate(spec.volumes)
        for kind in NODE_LEVEL_VOLUMES
        if kind in volume and not policy.allow_host_path
    ]
    if not isinstance(spec, InferenceServiceSpec):
        return found
    if spec.model.format == ModelFormat.PYTORCH and not policy.allow_pickled_models:
        found.append(
            "spec.model.format: pytorch (a pickled module, which runs code as it loads) is not allowed by the "
            "operator's policy (chart value policy.allowPickledModels); use torchscript"
        )
    url = spec.autoscaling.prometheus_url
    if url and not prometheus_url_allowed(url, policy.prometheus_urls):
        allowed = (
            f"one of {', '.join(policy.prometheus_urls)}"
            if policy.prometheus_urls
            else "an in-cluster Service, http(s)://<service>.<namespace>.svc[.cluster.local][:port][/path]"
        )
        found.append(
            f"spec.autoscaling.prometheusUrl: {url} is not under {allowed}, as the operator's policy asks "
            "(chart value policy.prometheusUrls)"
        )
    return found


def refusal(spec: TrainingJobSpec | InferenceServiceSpec, policy: Policy | None = None) -> Refused | None:
    """The spec's violations of the policy (default: the operator's) as a refusal with reason PolicyDenied,
    reported like an object the API refused; None when there are none."""
    found = violations(spec, policy or current())
    return Refused(POLICY_DENIED, "; ".join(found)) if found else None
