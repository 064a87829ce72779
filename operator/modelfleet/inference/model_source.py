"""Which model an InferenceService serves: its `model.uri`, or the artifact of the TrainingJob it names.

`model.fromTrainingJob: <job>` resolves to the job's `status.artifact` once the job has succeeded. The service
keeps serving the artifact it resolved last (its own `status.artifact`) while a newer run of the job is under way
or the job is gone, and rolls out again when a run with another artifact succeeds: the artifact's digest is in the
pod template (env MODELFLEET_MODEL_DIGEST), so a new digest is a new revision even at the same path.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import kopf

from modelfleet import kube
from modelfleet.api.common import Condition, EnvVar, set_condition
from modelfleet.api.inference import InferenceServiceSpec, ServingPhase
from modelfleet.contract import MODEL_DIGEST_ENV
from modelfleet.owned import TRAINING_RESULTS


@dataclass(frozen=True)
class Resolved:
    spec: InferenceServiceSpec
    """The spec with model.uri set to what is served (and the artifact's digest in the env)."""
    artifact: dict[str, Any] | None
    """status.artifact: uri, digest, trainingJob, jobUid (None for a plain model.uri)."""


@dataclass(frozen=True)
class Waiting:
    reason: str
    message: str


def resolve(
    spec: InferenceServiceSpec, job: Mapping[str, Any] | None, served: Mapping[str, Any] | None
) -> Resolved | Waiting:
    """What to serve now, from the named job (None: not found) and the artifact served so far (status.artifact)."""
    name = spec.model.from_training_job
    if not name:
        return Resolved(spec, None)
    status = (job or {}).get("status") or {}
    artifact = status.get("artifact") if status.get("phase") == "Succeeded" else None
    if artifact and artifact.get("uri"):
        record = {"uri": artifact["uri"], "digest": artifact.get("digest"), "trainingJob": name}
        record["jobUid"] = artifact.get("jobUid") or (job or {}).get("metadata", {}).get("uid")
    elif served and served.get("trainingJob") == name:
        record = dict(served)
    elif job is None:
        return Waiting("TrainingJobNotFound", f"TrainingJob {name} does not exist (yet)")
    elif status.get("phase") == "Succeeded":
        return Waiting("NoArtifact", f"TrainingJob {name} succeeded without an artifact: give it spec.outputPath")
    else:
        return Waiting("WaitingForTrainingJob", f"TrainingJob {name} is {status.get('phase') or 'Pending'}")
    record = {k: v for k, v in record.items() if v is not None}
    env = [e for e in spec.env if e.name != MODEL_DIGEST_ENV]
    if record.get("digest"):
        env.append(EnvVar(name=MODEL_DIGEST_ENV, value=record["digest"]))
    model = spec.model.model_copy(update={"uri": record["uri"]})
    return Resolved(spec.model_copy(update={"model": model, "env": env}), record)


def services_serving(bodies: Mapping[tuple[str, str], Mapping[str, Any]], namespace: str, job: str) -> Iterable:
    """Keys of the services whose model comes from that job."""
    return [
        key
        for key, body in bodies.items()
        if key[0] == namespace and ((body.get("spec") or {}).get("model") or {}).get("fromTrainingJob") == job
    ]


async def resolve_for(body: dict[str, Any], spec: InferenceServiceSpec) -> Resolved | None:
    """Reads the named job (from the watch-fed index) and resolves; while there is nothing to serve, says why in status (phase Pending,
    Ready False with the reason, an Event on each new reason) and returns None."""
    meta, prev = body["metadata"], body.get("status") or {}
    job = None
    if spec.model.from_training_job:
        job = next(iter(TRAINING_RESULTS.owned_by((meta["namespace"], spec.model.from_training_job))), None)
    source = resolve(spec, job, prev.get("artifact"))
    if isinstance(source, Resolved):
        return source
    generation = meta.get("generation", 1)
    condition = Condition(
        type="Ready", status="False", reason=source.reason, message=source.message, observed_generation=generation
    )
    conditions = set_condition(list(prev.get("conditions") or []), condition)
    if conditions != prev.get("conditions") or prev.get("phase") != ServingPhase.PENDING:
        status = {"phase": str(ServingPhase.PENDING), "conditions": conditions, "observedGeneration": generation}
        await kube.patch_status("inferenceservices", meta["namespace"], meta["name"], status)
        kopf.event(body, type="Normal", reason=source.reason, message=source.message)
    return None
