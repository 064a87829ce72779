"""Pure builders: a TrainingJob and its placement plan in, Kubernetes manifests out."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from modelfleet.api.common import (
    GANG_ATTEMPT_LABEL,
    GANG_SCHEDULING_GATE,
    GPU_RESOURCE,
    HOSTNAME_LABEL,
    JOB_NAME_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    PROGRESS_ANNOTATION,
    REGION_LABEL,
    REPLICA_INDEX_LABEL,
    owner_reference,
)
from modelfleet.api.training import ShardingMode, TrainingJobSpec
from modelfleet.scheduling.cluster import NodeInfo
from modelfleet.scheduling.gpus import shard_weights

WORKER_CONTAINER = "worker"
DEFAULT_TRAIN_COMMAND = ["python", "-m", "modelfleet.runtime.train"]


def job_labels(job_name: str) -> dict[str, str]:
    return {MANAGED_BY_LABEL: MANAGED_BY, JOB_NAME_LABEL: job_name}


def worker_name(job_name: str, index: int) -> str:
    return f"{job_name}-worker-{index}"


def master_address(job_name: str) -> str:
    """Rank 0's stable DNS name through the job's headless Service."""
    return f"{worker_name(job_name, 0)}.{job_name}"


def nproc_per_node(spec: TrainingJobSpec) -> int:
    return spec.workers.nproc_per_node or max(spec.resources.gpus, 1)


def headless_service(meta: Mapping[str, Any], spec: TrainingJobSpec) -> dict[str, Any]:
    """`<job>` with publishNotReadyAddresses, so workers resolve rank 0 before any of them is ready."""
    name = meta["name"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": job_labels(name),
            "ownerReferences": [owner_reference("TrainingJob", meta)],
        },
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": job_labels(name),
            "ports": [{"name": "rendezvous", "port": spec.master_port, "targetPort": spec.master_port}],
        },
    }


def worker_weights(spec: TrainingJobSpec, nodes: Sequence[NodeInfo]) -> list[float]:
    if spec.dataset.sharding == ShardingMode.EQUAL:
        return [1 / len(nodes)] * len(nodes)
    return shard_weights([n.gpu_type for n in nodes], spec.resources.gpus, spec.dataset.gpu_speeds)


def worker_env(
    meta: Mapping[str, Any], spec: TrainingJobSpec, index: int, world: int, weights: Sequence[float], attempt: int
) -> list[dict[str, Any]]:
    """The env torch.distributed and torchrun read (same names as PyTorchJob), plus modelfleet's own."""
    name = meta["name"]
    nproc = nproc_per_node(spec)
    master = master_address(name)
    env: dict[str, str] = {
        "MASTER_ADDR": master,
        "MASTER_PORT": str(spec.master_port),
        "WORLD_SIZE": str(world),
        "RANK": str(index),
        "LOCAL_WORLD_SIZE": str(nproc),
        "PET_MASTER_ADDR": master,
        "PET_MASTER_PORT": str(spec.master_port),
        "PET_NPROC_PER_NODE": str(nproc),
        "PET_NODE_RANK": str(index),
        "MODELFLEET_JOB_NAME": name,
        "MODELFLEET_NAMESPACE": meta["namespace"],
        "MODELFLEET_SHARD_WEIGHTS": ",".join(f"{w:.6f}" for w in weights),
        "MODELFLEET_ATTEMPT": str(attempt),
    }
    if spec.workers.min_replicas is not None:
        env["PET_NNODES"] = f"{spec.workers.min_replicas}:{spec.workers.max_replicas}"
        env["PET_RDZV_BACKEND"] = "c10d"
        env["PET_RDZV_ENDPOINT"] = f"{master}:{spec.master_port}"
        env["PET_RDZV_ID"] = meta["uid"]
        env["PET_MAX_RESTARTS"] = str(spec.backoff_limit)
    else:
        env["PET_NNODES"] = str(world)
    if spec.checkpoint.path:
        env["MODELFLEET_CHECKPOINT_DIR"] = spec.checkpoint.path
        env["MODELFLEET_CHECKPOINT_INTERVAL"] = str(spec.checkpoint.interval_steps)
    if spec.output_path:
        env["MODELFLEET_OUTPUT_DIR"] = spec.output_path
    fixed = [{"name": k, "value": v} for k, v in env.items()]
    fixed.append({"name": "MODELFLEET_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})
    user = [e.to_api() for e in spec.env if e.name not in env]
    return fixed + user


def container_resources(gpus: int, cpu: str | int | None, memory: str | int | None) -> dict[str, Any]:
    amounts: dict[str, str] = {}
    if cpu is not None:
        amounts["cpu"] = str(cpu)
    if memory is not None:
        amounts["memory"] = str(memory)
    if gpus:
        amounts[GPU_RESOURCE] = str(gpus)
    return {"requests": dict(amounts), "limits": dict(amounts)} if amounts else {}


def gpu_tolerations(gpus: int) -> list[dict[str, Any]]:
    return [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}] if gpus else []


def pinned_affinity(node: NodeInfo) -> dict[str, Any]:
    expressions = [{"key": HOSTNAME_LABEL, "operator": "In", "values": [node.name]}]
    if node.region:
        expressions.append({"key": REGION_LABEL, "operator": "In", "values": [node.region]})
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": expressions}]}
        }
    }


def worker_pod(
    meta: Mapping[str, Any],
    spec: TrainingJobSpec,
    index: int,
    nodes: Sequence[NodeInfo],
    attempt: int,
    gated: bool,
) -> dict[str, Any]:
    """Worker `index` of a gang placed on `nodes`, pinned to its node and (if gated) held until the gang is whole."""
    name = meta["name"]
    world = len(nodes)
    weights = worker_weights(spec, nodes)
    labels = {
        **spec.pod_metadata.labels,
        **job_labels(name),
        REPLICA_INDEX_LABEL: str(index),
        GANG_ATTEMPT_LABEL: str(attempt),
    }
    container: dict[str, Any] = {
        "name": WORKER_CONTAINER,
        "image": spec.image,
        "command": spec.command or DEFAULT_TRAIN_COMMAND,
        "args": spec.args,
        "env": worker_env(meta, spec, index, world, weights, attempt),
        "ports": [{"name": "rendezvous", "containerPort": spec.master_port}],
        "resources": container_resources(spec.resources.gpus, spec.resources.cpu, spec.resources.memory),
    }
    if spec.volume_mounts:
        container["volumeMounts"] = spec.volume_mounts
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "hostname": worker_name(name, index),
        "subdomain": name,
        "enableServiceLinks": False,
        "affinity": pinned_affinity(nodes[index]),
        "tolerations": gpu_tolerations(spec.resources.gpus),
        "containers": [container],
    }
    if gated:
        pod_spec["schedulingGates"] = [{"name": GANG_SCHEDULING_GATE}]
    if spec.volumes:
        pod_spec["volumes"] = spec.volumes
    if spec.service_account_name:
        pod_spec["serviceAccountName"] = spec.service_account_name
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": worker_name(name, index),
            "namespace": meta["namespace"],
            "labels": labels,
            "annotations": dict(spec.pod_metadata.annotations),
            "ownerReferences": [owner_reference("TrainingJob", meta)],
        },
        "spec": pod_spec,
    }


def placement_record(pod_names: Sequence[str], nodes: Sequence[NodeInfo], weights: Sequence[float]) -> list[dict]:
    return [
        {
            "worker": pod,
            "node": node.name,
            "region": node.region,
            "zone": node.zone,
            "gpuType": node.gpu_type or "",
            "shardWeight": round(weight, 6),
        }
        for pod, node, weight in zip(pod_names, nodes, weights, strict=True)
    ]


def progress_of(pod: Mapping[str, Any]) -> dict[str, Any] | None:
    """Rank 0's progress report from its pod annotation, or None when absent or malformed.

    A NaN or infinite number (a diverged loss) is left out: JSON has no such value and the API would refuse the
    status patch that carried it."""
    raw = (pod.get("metadata", {}).get("annotations") or {}).get(PROGRESS_ANNOTATION)
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    return {k: v for k, v in value.items() if not (isinstance(v, float) and not math.isfinite(v))}
