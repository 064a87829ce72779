"""Rank 0's progress, scraped from its metrics endpoint the way model servers' /metrics are (workers need no API
rights), and turned into `status.progress`.

Rank 0 is the worker with replica index 0: it is so under static rendezvous; elastic torchrun (c10d) assigns ranks
at rendezvous, and a rank 0 that lands in another pod leaves replica 0's endpoint empty (no progress, no harm).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from modelfleet.api.common import REPLICA_INDEX_LABEL
from modelfleet.inference.observe import scrape_all
from modelfleet.runtime.progress import EPOCH, LOSS, SAMPLES_PER_SECOND, STEP, UPDATED
from modelfleet.training.builders import METRICS_PORT, METRICS_PORT_NAME

SCRAPE_EVERY_SECONDS = 5.0
SCRAPE_TIMEOUT_SECONDS = 1.0


def metrics_url(pods: Sequence[Mapping[str, Any]]) -> str | None:
    """`http://<pod IP>:<metrics port>/metrics` of the running, not deleting, replica-0 worker, if there is one."""
    for pod in pods:
        meta, status = pod["metadata"], pod.get("status") or {}
        if (
            (meta.get("labels") or {}).get(REPLICA_INDEX_LABEL) == "0"
            and status.get("phase") == "Running"
            and status.get("podIP")
            and not meta.get("deletionTimestamp")
        ):
            ports = [p for c in pod["spec"]["containers"] for p in c.get("ports") or []]
            port = next((p["containerPort"] for p in ports if p.get("name") == METRICS_PORT_NAME), METRICS_PORT)
            return f"http://{status['podIP']}:{port}/metrics"
    return None


def progress_from_metrics(text: str, _at: float = 0.0) -> dict[str, Any] | None:
    """status.progress from rank 0's Prometheus text, or None before its first report. A NaN or infinite value
    (a diverged loss) is left out: JSON has no such number and the API would refuse the status patch."""
    values = {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}
    if not values.get(UPDATED):
        return None
    progress: dict[str, Any] = {}
    for key, name, convert in (
        ("step", STEP, int),
        ("epoch", EPOCH, int),
        ("loss", LOSS, lambda v: round(v, 6)),
        ("samplesPerSecond", SAMPLES_PER_SECOND, lambda v: round(v, 2)),
    ):
        if name in values and math.isfinite(values[name]):
            progress[key] = convert(values[name])
    progress["updatedAt"] = datetime.fromtimestamp(values[UPDATED], UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return progress


class ProgressScraper:
    """Scrapes each running job's rank 0 at most once every `every` seconds."""

    def __init__(self, every: float = SCRAPE_EVERY_SECONDS, timeout: float = SCRAPE_TIMEOUT_SECONDS) -> None:
        self.every, self.timeout = every, timeout
        self.last: dict[str, float] = {}

    async def read(self, uid: str, pods: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
        """The job's fresh progress, or None (nothing running, scraped too recently, or no answer)."""
        url = metrics_url(pods)
        if url is None:
            self.last.pop(uid, None)
            return None
        now = time.monotonic()
        if now - self.last.get(uid, -math.inf) < self.every:
            return None
        self.last[uid] = now
        return (await scrape_all({uid: url}, self.timeout, parse=progress_from_metrics))[uid]

    def due_in(self, uid: str) -> float | None:
        """Seconds until the job's next scrape is due, or None when it has nothing to scrape."""
        if uid not in self.last:
            return None
        return max(self.last[uid] + self.every - time.monotonic(), 0.0)
