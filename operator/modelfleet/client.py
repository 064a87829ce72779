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


class LocalModelPath(ValueError):
    """A model given as a path on this machine: nothing uploads it, and the model servers cannot read it."""

    def __init__(self, model: str) -> None:
        super().__init__(
            f"{model} is a path on this machine, which the model servers cannot read (nothing uploads it): put the "
            "artifact in the model store (a PersistentVolumeClaim) and pass pvc://<claim>/<path>, serve a "
            f"TrainingJob's artifact with --from-job <job>, or pass file://{Path(model).resolve()} if that path "
            "exists inside the server pods (in the image or on the nodes)"
        )


def model_uri(model: str) -> str:
    """A URI as given, or a local path made absolute (checked for the spec, then refused: see LocalModelPath)."""
    if "://" in model:
        return model
    return f"file://{Path(model).resolve()}"


def inference_service_manifest(
    model: str | None,
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
    from_job: str | None = None,
) -> dict[str, Any]:
    """The manifest serving `model` (a URI) or, with `from_job`, the artifact of that TrainingJob."""
    if (model is None) == (from_job is None):
        raise ValueError("give either a model URI or --from-job <TrainingJob>")
    source = {"fromTrainingJob": from_job} if from_job else {"uri": model_uri(model or "")}
    autoscaling: dict[str, Any] = {"metric": metric}
    if target is not None:
        autoscaling["target"] = target
    spec = InferenceServiceSpec.model_validate(
        {
            "model": {**source, "quantization": quantize},
            "regions": [{"name": r, "minReplicas": min_replicas, "maxReplicas": max_replicas} for r in regions],
            "resources": {"gpus": gpus, **({"gpuType": gpu_type} if gpu_type else {})},
            "autoscaling": autoscaling,
            "batching": {"maxBatchSize": max_batch_size},
        }
    )
    if model is not None and "://" not in model:
        raise LocalModelPath(model)
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
    model: str | None = None,
    *,
    name: str,
    regions: list[str],
    namespace: str = "default",
    dry_run: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """`modelfleet.deploy("pvc://models/mlp", name="mlp", regions=["cn-hangzhou"], quantize="int8")`, or
    `modelfleet.deploy(from_job="mlp-train", name="mlp", regions=["cn-hangzhou"])`."""
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


def model_catalog(namespace: str | None) -> list[dict[str, Any]]:
    """The artifacts of succeeded TrainingJobs, newest first, each with the services that serve it now."""
    served: dict[tuple[str, str | None], list[str]] = {}
    for svc in list_objects("InferenceService", namespace):
        artifact = (svc.get("status") or {}).get("artifact") or {}
        served.setdefault((svc["metadata"]["namespace"], artifact.get("digest")), []).append(svc["metadata"]["name"])
    entries = []
    for job in list_objects("TrainingJob", namespace):
        status = job.get("status") or {}
        if status.get("phase") != "Succeeded" or not status.get("artifact"):
            continue
        artifact, ns = status["artifact"], job["metadata"]["namespace"]
        entries.append(
            {
                "namespace": ns,
                "job": job["metadata"]["name"],
                **artifact,
                "servedBy": served.get((ns, artifact.get("digest")), []) if artifact.get("digest") else [],
            }
        )
    return sorted(entries, key=lambda e: e.get("createdAt") or "", reverse=True)
