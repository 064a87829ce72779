"""The artifact of a succeeded TrainingJob, from rank 0's termination message (pure).

Rank 0 writes `{"path", "digest", "metrics"}` (modelfleet.runtime.artifact); the URI follows from where the job
mounts that path: `pvc://<claim>/<path in the claim>` when it lies on a PersistentVolumeClaim (what an
InferenceService can mount), else `file://<path>`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any

from modelfleet.api.common import REPLICA_INDEX_LABEL
from modelfleet.api.training import TrainingJobSpec
from modelfleet.training.builders import WORKER_CONTAINER


def artifact_uri(spec: TrainingJobSpec, path: str) -> str:
    """The URI of `path` as the workers saw it: on the claim mounted deepest above it, or a plain file URI."""
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in spec.volumes if "persistentVolumeClaim" in v}
    target = PurePosixPath(path)
    for mount in sorted(spec.volume_mounts, key=lambda m: -len(m["mountPath"])):
        if mount["name"] in claims and target.is_relative_to(mount["mountPath"]):
            inside = PurePosixPath(str(mount.get("subPath") or "")) / target.relative_to(mount["mountPath"])
            return f"pvc://{claims[mount['name']]}/{inside}".removesuffix("/.")
    return f"file://{target}"


def rank_zero_message(pods: Sequence[Mapping[str, Any]]) -> tuple[str, str] | None:
    """(termination message, finishedAt) of the worker container of the succeeded replica-0 pod, if any."""
    for pod in pods:
        if (pod["metadata"].get("labels") or {}).get(REPLICA_INDEX_LABEL) != "0":
            continue
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (cs.get("state") or {}).get("terminated") or {}
            if cs.get("name") == WORKER_CONTAINER and terminated.get("exitCode") == 0 and terminated.get("message"):
                return terminated["message"], terminated.get("finishedAt") or ""
    return None


def artifact_from_pods(spec: TrainingJobSpec, pods: Sequence[Mapping[str, Any]], job_uid: str) -> dict[str, Any] | None:
    """status.artifact from rank 0's report, or None when it made none (no outputPath, or not modelfleet's runtime)."""
    found = rank_zero_message(pods)
    if found is None:
        return None
    message, finished_at = found
    try:
        report = json.loads(message)
        path = str(report["path"])
    except (ValueError, KeyError, TypeError):
        return None
    metrics = {
        str(k): float(v)
        for k, v in (report.get("metrics") or {}).items()
        if isinstance(v, int | float) and math.isfinite(v)
    }
    artifact: dict[str, Any] = {"uri": artifact_uri(spec, path), "metrics": metrics, "jobUid": job_uid}
    if isinstance(report.get("digest"), str):
        artifact["digest"] = report["digest"]
    if finished_at:
        artifact["createdAt"] = finished_at
    return artifact
