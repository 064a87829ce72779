"""Pure builders: a TrainingJob and its placement plan in, Kubernetes manifests out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from modelfleet.api.common import HOSTNAME_LABEL, REGION_LABEL, owner_reference
from modelfleet.api.training import ShardingMode, TrainingJobSpec
from modelfleet.contract import (
    ATTEMPT_ENV,
    CHECKPOINT_DIR_ENV,
    CHECKPOINT_INTERVAL_ENV,
    GANG_ATTEMPT_LABEL,
    JOB_NAME_ENV,
    JOB_NAME_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    METRICS_PORT_ENV,
    NAMESPACE_ENV,
    OUTPUT_DIR_ENV,
    POD_NAME_ENV,
    REBALANCE_STEPS_ENV,
    REPLICA_INDEX_ENV,
    REPLICA_INDEX_LABEL,
    SHARD_WEIGHTS_ENV,
    SHARDING_ENV,
    TRAINING_METRICS_PORT,
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
from modelfleet.scheduling.gpus import shard_weights
from modelfleet.scheduling.nodes import NodeInfo
from modelfleet.training.compression import compression_env, teacher_volume

WORKER_CONTAINER = "worker"
DEFAULT_TRAIN_COMMAND = ["python", "-m", "modelfleet.runtime.train"]
METRICS_PORT_NAME = "metrics"
"""The container port where rank 0 serves its progress (the operator scrapes it into status.progress)."""


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
        JOB_NAME_ENV: name,
        NAMESPACE_ENV: meta["namespace"],
        SHARD_WEIGHTS_ENV: ",".join(f"{w:.6f}" for w in weights),
        REPLICA_INDEX_ENV: str(index),
        SHARDING_ENV: str(spec.dataset.sharding),
        REBALANCE_STEPS_ENV: str(spec.dataset.rebalance_interval_steps),
        ATTEMPT_ENV: str(attempt),
        METRICS_PORT_ENV: str(TRAINING_METRICS_PORT),
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
        env[CHECKPOINT_DIR_ENV] = spec.checkpoint.path
        env[CHECKPOINT_INTERVAL_ENV] = str(spec.checkpoint.interval_steps)
    if spec.output_path:
        env[OUTPUT_DIR_ENV] = spec.output_path
    env.update(compression_env(spec))
    fixed = [{"name": k, "value": v} for k, v in env.items()]
    fixed.append({"name": POD_NAME_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})
    user = [e.to_api() for e in spec.env if e.name not in env]
    return fixed + scratch_env(spec.env) + user


def pinned_affinity(node: NodeInfo) -> dict[str, Any]:
    """The node the queue planned the worker on, by its hostname label (what `pod_node` reads) and by its name: a
    `metadata.name` field requirement makes kube-scheduler's NodeAffinity PreFilter hand on that one node, so it
    filters one node per worker instead of every node in the cluster."""
    expressions = [{"key": HOSTNAME_LABEL, "operator": "In", "values": [node.name]}]
    if node.region:
        expressions.append({"key": REGION_LABEL, "operator": "In", "values": [node.region]})
    by_name = [{"key": "metadata.name", "operator": "In", "values": [node.name]}]
    term = {"matchExpressions": expressions, "matchFields": by_name}
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}}


def worker_pod(
    meta: Mapping[str, Any],
    spec: TrainingJobSpec,
    index: int,
    nodes: Sequence[NodeInfo],
    attempt: int,
) -> dict[str, Any]:
    """Worker `index` of a gang placed on `nodes`, pinned to its node."""
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
        "ports": [
            {"name": "rendezvous", "containerPort": spec.master_port},
            {"name": METRICS_PORT_NAME, "containerPort": TRAINING_METRICS_PORT},
        ],
        "resources": container_resources(spec.resources.gpus, spec.resources.cpu, spec.resources.memory),
        "securityContext": container_security_context(spec.container_security_context),
    }
    volumes, container["volumeMounts"] = with_scratch(spec.volumes, spec.volume_mounts)
    if teacher := teacher_volume(spec):
        volumes.append(teacher[0])
        container["volumeMounts"].append(teacher[1])
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "hostname": worker_name(name, index),
        "subdomain": name,
        "enableServiceLinks": False,
        "affinity": pinned_affinity(nodes[index]),
        "tolerations": gpu_tolerations(spec.resources.gpus),
        "securityContext": pod_security_context(spec.security_context),
        "containers": [container],
        "volumes": volumes,
    }
    pod_spec.update(service_account_fields(spec.service_account_name))
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
