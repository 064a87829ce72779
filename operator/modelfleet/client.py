"""The one-line Python API: `modelfleet.deploy(...)` and `modelfleet.train(...)`, and what `modelfleet status` lists.

Manifests are built through the same pydantic models as the CRDs, so a bad option fails here with the same
message the API server would give.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubernetes.client.exceptions import ApiException

from modelfleet.api.common import API_VERSION, GROUP, VERSION
from modelfleet.api.inference import InferenceServiceSpec
from modelfleet.api.training import TrainingJobSpec

PLURALS = {"TrainingJob": "trainingjobs", "InferenceService": "inferenceservices"}


def minimal(spec: InferenceServiceSpec | TrainingJobSpec) -> dict[str, Any]:
    """The spec without the fields left at their defaults (the API server fills those in)."""
    return spec.model_dump(by_alias=True, exclude_defaults=True, mode="json")


def model_uri(model: str) -> str:
    """A URI as given, or a local path made absolute (it must be readable by the server pods, e.g. on a volume)."""
    if "://" in model:
        return model
    return f"file://{Path(model).resolve()}"


def inference_service_manifest(
    model: str,
    name: str,
    regions: list[str],
    gpus: int = 0,
    gpu_type: str | None = None,
    quantize: str = "none",
    min_replicas: int = 1,
    max_replicas: int = 3,
    metric: str = "concurrency",
    target: float | None = None,
    max_batch_size: int = 1,
) -> dict[str, Any]:
    autoscaling: dict[str, Any] = {"metric": metric}
    if target is not None:
        autoscaling["target"] = target
    spec = InferenceServiceSpec.model_validate(
        {
            "model": {"uri": model_uri(model), "quantization": quantize},
            "regions": [{"name": r, "minReplicas": min_replicas, "maxReplicas": max_replicas} for r in regions],
            "resources": {"gpus": gpus, **({"gpuType": gpu_type} if gpu_type else {})},
            "autoscaling": autoscaling,
            "batching": {"maxBatchSize": max_batch_size},
        }
    )
    return {"apiVersion": API_VERSION, "kind": "InferenceService", "metadata": {"name": name}, "spec": minimal(spec)}


def training_job_manifest(
    name: str,
    workers: int,
    gpus: int = 0,
    gpu_type: str | None = None,
    regions: list[str] | None = None,
    image: str | None = None,
    args: list[str] | None = None,
    policy: str = "Pack",
    backoff_limit: int = 3,
) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "workers": {"replicas": workers},
        "resources": {"gpus": gpus, **({"gpuType": gpu_type} if gpu_type else {})},
        "placement": {"regions": regions or [], "policy": policy},
        "args": args or [],
        "backoffLimit": backoff_limit,
    }
    if image:
        fields["image"] = image
    spec = TrainingJobSpec.model_validate(fields)
    return {"apiVersion": API_VERSION, "kind": "TrainingJob", "metadata": {"name": name}, "spec": minimal(spec)}


def apply(manifest: dict[str, Any], namespace: str = "default") -> dict[str, Any]:
    """Creates the object, or merge-patches its spec when it exists."""
    from modelfleet import kube

    plural = PLURALS[manifest["kind"]]
    api = kube.custom()
    try:
        return api.create_namespaced_custom_object(
            GROUP, VERSION, namespace, plural, manifest, _request_timeout=kube.REQUEST_TIMEOUT
        )
    except ApiException as exc:
        if exc.status != 409:
            raise
    name = manifest["metadata"]["name"]
    return api.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, plural, name, {"spec": manifest["spec"]}, _request_timeout=kube.REQUEST_TIMEOUT
    )


def deploy(
    model: str, *, name: str, regions: list[str], namespace: str = "default", dry_run: bool = False, **options: Any
) -> dict[str, Any]:
    """`modelfleet.deploy("./model.pt", name="mlp", regions=["cn-hangzhou"], gpus=1, quantize="int8")`."""
    manifest = inference_service_manifest(model, name, regions, **options)
    return manifest if dry_run else apply(manifest, namespace)


def train(
    *, name: str, workers: int, namespace: str = "default", dry_run: bool = False, **options: Any
) -> dict[str, Any]:
    """`modelfleet.train(name="mlp", workers=4, gpus=2, gpu_type="H100", regions=["cn-hangzhou"])`."""
    manifest = training_job_manifest(name, workers, **options)
    return manifest if dry_run else apply(manifest, namespace)


def list_objects(kind: str, namespace: str | None) -> list[dict[str, Any]]:
    from modelfleet import kube

    api = kube.custom()
    plural = PLURALS[kind]
    if namespace:
        return api.list_namespaced_custom_object(
            GROUP, VERSION, namespace, plural, _request_timeout=kube.REQUEST_TIMEOUT
        )["items"]
    return api.list_cluster_custom_object(GROUP, VERSION, plural, _request_timeout=kube.REQUEST_TIMEOUT)["items"]
