"""Rank 0's word on the artifact it wrote: a JSON summary in its container's termination message.

Kubernetes copies the file at the container's terminationMessagePath (default /dev/termination-log; env
MODELFLEET_TERMINATION_LOG names another, as the dev cluster's pod runner does) into the pod's status when the
container ends, so the operator reads the artifact from the pod it already lists: workers need no API rights.

    {"path": "/models/mlp", "digest": "sha256:...", "metrics": {"loss": 0.21, "accuracy": 0.93}}
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path

from modelfleet.contract import TERMINATION_LOG_ENV

log = logging.getLogger("modelfleet.train")
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
MAX_MESSAGE_BYTES = 4096
"""What Kubernetes keeps of a termination message."""


def artifact_digest(directory: Path) -> str:
    """sha256 over the artifact's files (names and contents, in name order; hidden temporary files left out)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and not p.name.startswith(".")):
        digest.update(path.relative_to(directory).as_posix().encode() + b"\0")
        with path.open("rb") as data:
            for chunk in iter(lambda: data.read(1 << 20), b""):
                digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def summary(directory: Path, metrics: Mapping[str, object]) -> str:
    """The termination message: path, digest and the finite scalar metrics, within Kubernetes' 4 KiB."""
    finite = {k: round(float(v), 6) for k, v in metrics.items() if isinstance(v, int | float) and math.isfinite(v)}
    message = {"path": str(directory), "digest": artifact_digest(directory), "metrics": finite}
    text = json.dumps(message, separators=(",", ":"))
    if len(text.encode()) > MAX_MESSAGE_BYTES:
        text = json.dumps({**message, "metrics": {}}, separators=(",", ":"))
    return text


def report_artifact(directory: Path, metrics: Mapping[str, object]) -> None:
    """Writes the summary to the termination message file; a file that cannot be written (not in a pod) is logged."""
    target = Path(os.environ.get(TERMINATION_LOG_ENV, DEFAULT_TERMINATION_LOG))
    try:
        target.write_text(summary(directory, metrics))
    except OSError as exc:
        log.info("artifact summary not written to %s: %s", target, exc)
