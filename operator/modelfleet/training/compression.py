"""What a TrainingJob's `spec.compression` asks of its workers: env for the trainer, and the teacher's volume."""

from __future__ import annotations

from typing import Any

from modelfleet.api.training import TEACHER_VOLUME, TrainingJobSpec
from modelfleet.contract import (
    DISTILL_ALPHA_ENV,
    DISTILL_TEACHER_ENV,
    DISTILL_TEMPERATURE_ENV,
    PRUNE_AMOUNT_ENV,
    PRUNE_AT_ENV,
    PRUNE_STRUCTURED_ENV,
)

TEACHER_MOUNT_ROOT = "/mnt/teacher"


def teacher_location(uri: str) -> tuple[str, dict[str, Any] | None, dict[str, Any] | None]:
    """The path the workers load the teacher from, and for pvc://<claim>/<path> the read-only volume and mount."""
    if not uri.startswith("pvc://"):
        return uri.removeprefix("file://"), None, None
    claim, _, path = uri.removeprefix("pvc://").partition("/")
    volume = {"name": TEACHER_VOLUME, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
    mount = {"name": TEACHER_VOLUME, "mountPath": f"{TEACHER_MOUNT_ROOT}/{claim}", "readOnly": True}
    return f"{TEACHER_MOUNT_ROOT}/{claim}/{path}", volume, mount


def compression_env(spec: TrainingJobSpec) -> dict[str, str]:
    """MODELFLEET_DISTILL_* and MODELFLEET_PRUNE_*, which `python -m modelfleet.runtime.train` reads."""
    env: dict[str, str] = {}
    if distillation := spec.compression.distillation:
        env[DISTILL_TEACHER_ENV] = teacher_location(distillation.teacher)[0]
        env[DISTILL_TEMPERATURE_ENV] = str(distillation.temperature)
        env[DISTILL_ALPHA_ENV] = str(distillation.alpha)
    if pruning := spec.compression.pruning:
        env[PRUNE_AMOUNT_ENV] = str(pruning.amount)
        env[PRUNE_STRUCTURED_ENV] = str(pruning.structured).lower()
        env[PRUNE_AT_ENV] = str(pruning.at_fraction)
    return env


def teacher_volume(spec: TrainingJobSpec) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The (volume, mount) a pvc:// teacher needs in every worker, or None."""
    if not spec.compression.distillation:
        return None
    _, volume, mount = teacher_location(spec.compression.distillation.teacher)
    return (volume, mount) if volume and mount else None
