"""Pure builders: an InferenceService in, one Deployment and one Service per region out."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from modelfleet import policy
from modelfleet.api.common import GPU_PRODUCT_LABEL, REGION_LABEL, ZONE_LABEL, owner_reference
from modelfleet.api.inference import DEFAULT_SERVING_IMAGE, InferenceServiceSpec, Region
from modelfleet.contract import (
    ALLOW_PICKLE_ENV,
    DEVICE_ENV,
    GRPC_PORT_ENV,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    MAX_BATCH_SIZE_ENV,
    MAX_DELAY_MS_ENV,
    MODEL_FORMAT_ENV,
    MODEL_NAME_ENV,
    MODEL_PATH_ENV,
    PORT_ENV,
    QUANTIZATION_ENV,
    REGION_NAME_LABEL,
    REVISION_ANNOTATION,
    SERVICE_NAME_LABEL,
)
from modelfleet.pods import (
    container_resources,
    container_security_context,
    gpu_tolerations,
    pod_security_context,
    scratch_env,
    service_account_fields,
    with_scratch,
)

SERVER_CONTAINER = "server"
DEFAULT_SERVE_COMMAND = ["python", "-m", "modelfleet.runtime.serve"]
MODEL_MOUNT_ROOT = "/mnt/models"


def region_object_name(service: str, region: str) -> str:
    return f"{service}-{region}"


def service_labels(name: str) -> dict[str, str]:
    return {MANAGED_BY_LABEL: MANAGED_BY, SERVICE_NAME_LABEL: name}


def region_labels(name: str, region: str) -> dict[str, str]:
    return {**service_labels(name), REGION_NAME_LABEL: region}


def selector_string(name: str) -> str:
    """The label selector of all the service's pods, for the scale subresource."""
    return ",".join(f"{k}={v}" for k, v in service_labels(name).items())


def model_location(uri: str) -> tuple[str, dict[str, Any] | None]:
    """The path the server loads from, and the PVC volume to mount for a pvc://<claim>/<path> URI."""
    if uri.startswith("pvc://"):
        claim, _, path = uri.removeprefix("pvc://").partition("/")
        volume = {"name": "model", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        return f"{MODEL_MOUNT_ROOT}/{claim}/{path}", volume
    return uri.removeprefix("file://"), None


def grpc_port(spec: InferenceServiceSpec) -> int:
    """The server's gRPC V2 port: the one after the HTTP port (8080 -> 8081, as KServe), before it at 65535."""
    return spec.port + 1 if spec.port < 65535 else spec.port - 1


def server_env(name: str, spec: InferenceServiceSpec, model_path: str) -> list[dict[str, str]]:
    """Everything the server needs, as env: any image that reads it can serve."""
    values = {
        MODEL_PATH_ENV: model_path,
        MODEL_NAME_ENV: spec.model.name or name,
        MODEL_FORMAT_ENV: str(spec.model.format),
        QUANTIZATION_ENV: str(spec.model.quantization),
        MAX_BATCH_SIZE_ENV: str(spec.batching.max_batch_size),
        MAX_DELAY_MS_ENV: str(spec.batching.max_delay_ms),
        PORT_ENV: str(spec.port),
        GRPC_PORT_ENV: str(grpc_port(spec)),
        DEVICE_ENV: "cuda" if spec.resources.gpus else "cpu",
        # the operator's policy for the server; always set, so a user's env cannot turn it on
        ALLOW_PICKLE_ENV: "1" if policy.current().allow_pickled_models else "0",
    }
    user = [e.to_api() for e in spec.env if e.name not in values]
    return [{"name": k, "value": v} for k, v in values.items()] + scratch_env(spec.env) + user


def pod_template(
    name: str, spec: InferenceServiceSpec, region: str, gpu_products: Sequence[str] = ()
) -> dict[str, Any]:
    """The server pod: required in `region` and, with a gpuType, on nodes whose product label is one of
    `gpu_products` (the labels in the cluster that match the type; the type itself when none is known)."""
    model_path, model_volume = model_location(spec.model.uri)
    probe = {"httpGet": {"path": "/v2/health/ready", "port": "http"}, "periodSeconds": 2, "failureThreshold": 3}
    container: dict[str, Any] = {
        "name": SERVER_CONTAINER,
        "image": spec.image or DEFAULT_SERVING_IMAGE,
        "command": spec.command or DEFAULT_SERVE_COMMAND,
        "args": spec.args,
        "env": server_env(name, spec, model_path),
        "ports": [{"name": "http", "containerPort": spec.port}, {"name": "grpc", "containerPort": grpc_port(spec)}],
        "readinessProbe": probe,
        "startupProbe": {**probe, "httpGet": {"path": "/v2/health/live", "port": "http"}, "failureThreshold": 300},
        "livenessProbe": {**probe, "httpGet": {"path": "/v2/health/live", "port": "http"}, "periodSeconds": 10},
        "resources": container_resources(spec.resources.gpus, spec.resources.cpu, spec.resources.memory),
        "securityContext": container_security_context(spec.container_security_context),
    }
    volumes, mounts = with_scratch(spec.volumes, spec.volume_mounts)
    if model_volume:
        volumes.append(model_volume)
        claim = model_volume["persistentVolumeClaim"]["claimName"]
        mounts.append({"name": "model", "mountPath": f"{MODEL_MOUNT_ROOT}/{claim}", "readOnly": True})
    container["volumeMounts"] = mounts
    labels = {**spec.pod_metadata.labels, **region_labels(name, region)}
    pod_spec: dict[str, Any] = {
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": node_requirements(spec, region, gpu_products)}]
                }
            }
        },
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": ZONE_LABEL,
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": region_labels(name, region)},
            }
        ],
        "tolerations": gpu_tolerations(spec.resources.gpus),
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 30,
        "securityContext": pod_security_context(spec.security_context),
        "containers": [container],
        "volumes": volumes,
    }
    pod_spec.update(service_account_fields(spec.service_account_name))
    annotations = {
        **spec.pod_metadata.annotations,
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(spec.port),
        "prometheus.io/path": "/metrics",
    }
    template = {"metadata": {"labels": labels, "annotations": annotations}, "spec": pod_spec}
    template["metadata"]["annotations"][REVISION_ANNOTATION] = revision_of(template)
    return template


def node_requirements(spec: InferenceServiceSpec, region: str, gpu_products: Sequence[str]) -> list[dict[str, Any]]:
    requirements = [{"key": REGION_LABEL, "operator": "In", "values": [region]}]
    if spec.resources.gpu_type:
        products = sorted(set(gpu_products)) or [spec.resources.gpu_type]
        requirements.append({"key": GPU_PRODUCT_LABEL, "operator": "In", "values": products})
    return requirements


def revision_of(template: Mapping[str, Any]) -> str:
    """A short hash of the pod template: what a rollout changes."""
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


def deployment(
    meta: Mapping[str, Any], spec: InferenceServiceSpec, region: Region, replicas: int, gpu_products: Sequence[str] = ()
) -> dict[str, Any]:
    name = meta["name"]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": region_object_name(name, region.name),
            "namespace": meta["namespace"],
            "labels": region_labels(name, region.name),
            "ownerReferences": [owner_reference("InferenceService", meta)],
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": region_labels(name, region.name)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": pod_template(name, spec, region.name, gpu_products),
        },
    }


def service(meta: Mapping[str, Any], spec: InferenceServiceSpec, region: str) -> dict[str, Any]:
    name = meta["name"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": region_object_name(name, region),
            "namespace": meta["namespace"],
            "labels": region_labels(name, region),
            "ownerReferences": [owner_reference("InferenceService", meta)],
        },
        "spec": {
            "selector": region_labels(name, region),
            "ports": [
                {"name": "http", "port": 80, "targetPort": "http"},
                {"name": "grpc", "port": 8081, "targetPort": "grpc", "appProtocol": "grpc"},
            ],
        },
    }


def covers(live: Any, wanted: Any) -> bool:
    """Whether the live object already has every field of `wanted` with the same value (fields the API defaulted
    or other managers set may be added; lists must match item by item)."""
    if isinstance(wanted, Mapping):
        return isinstance(live, Mapping) and all(k in live and covers(live[k], v) for k, v in wanted.items())
    if isinstance(wanted, list):
        return isinstance(live, list) and len(live) == len(wanted) and all(map(covers, live, wanted))
    return bool(live == wanted)


def region_url(name: str, namespace: str, region: str) -> str:
    return f"http://{region_object_name(name, region)}.{namespace}.svc.cluster.local"
