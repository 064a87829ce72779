"""Rank 0's progress: Prometheus gauges on a small HTTP endpoint the operator scrapes into status.progress (and each
worker's current share and throughput into status.placement), and a JSON log line every few seconds. Workers need
no Kubernetes API rights for it. Only the process of global rank 0 serves, and says so (`modelfleet_training_rank`):
under elastic torchrun any pod may hold it, and the operator keeps the endpoint that answers.

Reporting never stops training: an endpoint that cannot bind is logged, and training goes on without it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Gauge, start_http_server

from modelfleet.contract import (
    METRICS_HOST_ENV,
    METRICS_PORT_ENV,
    TRAINING_EPOCH,
    TRAINING_LOSS,
    TRAINING_METRICS_PORT,
    TRAINING_RANK,
    TRAINING_SAMPLES_PER_SECOND,
    TRAINING_STEP,
    TRAINING_UPDATED,
    TRAINING_WORKER_LABEL,
    TRAINING_WORKER_SAMPLES_PER_SECOND,
    TRAINING_WORKER_SHARE,
)

log = logging.getLogger("modelfleet.train")


class ProgressReporter:
    """Serves the gauges on `host:port` (env MODELFLEET_METRICS_HOST, default 0.0.0.0, and MODELFLEET_METRICS_PORT,
    default 9400) from construction until `close`."""

    def __init__(self, every_seconds: float = 5.0, host: str | None = None, port: int | None = None) -> None:
        self.every = every_seconds
        self.last = 0.0
        self.registry = CollectorRegistry()
        self.gauges = {
            name: Gauge(name, help_, registry=self.registry)
            for name, help_ in (
                (TRAINING_STEP, "Global step of rank 0."),
                (TRAINING_EPOCH, "Epoch of rank 0."),
                (TRAINING_LOSS, "Latest training loss."),
                (TRAINING_SAMPLES_PER_SECOND, "Throughput of the whole gang."),
                (TRAINING_UPDATED, "Unix time of the last progress report."),
                (TRAINING_RANK, "Global rank of the reporting process (always 0)."),
            )
        }
        self.workers = {
            name: Gauge(name, help_, [TRAINING_WORKER_LABEL], registry=self.registry)
            for name, help_ in (
                (TRAINING_WORKER_SHARE, "Current share of every global batch, per worker pod."),
                (
                    TRAINING_WORKER_SAMPLES_PER_SECOND,
                    "Measured (smoothed) samples per second of compute, per worker pod.",
                ),
            )
        }
        host = host or os.environ.get(METRICS_HOST_ENV, "0.0.0.0")
        port = port if port is not None else int(os.environ.get(METRICS_PORT_ENV, str(TRAINING_METRICS_PORT)))
        self.server = None
        try:
            self.server, _ = start_http_server(port, host, self.registry)
            log.info("progress metrics on http://%s:%d/metrics", host, port)
        except OSError as exc:
            log.warning("no progress endpoint on %s:%d: %s", host, port, exc)

    def report(self, step: int, epoch: int, loss: float, samples_per_second: float, force: bool = False) -> None:
        """Updates the gauges (a non-finite loss is served as it is: the operator leaves it out of status)."""
        values = {
            TRAINING_STEP: step,
            TRAINING_EPOCH: epoch,
            TRAINING_LOSS: loss,
            TRAINING_SAMPLES_PER_SECOND: samples_per_second,
            TRAINING_UPDATED: time.time(),
        }
        for name, value in values.items():
            self.gauges[name].set(value)
        now = time.monotonic()
        if force or now - self.last >= self.every:
            self.last = now
            payload = {
                "step": step,
                "epoch": epoch,
                "loss": round(loss, 6),
                "samplesPerSecond": round(samples_per_second, 2),
                "updatedAt": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
            log.info("progress %s", json.dumps(payload))

    def report_workers(self, shares: dict[int, float], samples_per_second: dict[int, float]) -> None:
        """Each worker pod's (replica index's) current share and throughput."""
        for index, share in shares.items():
            self.workers[TRAINING_WORKER_SHARE].labels(str(index)).set(share)
            self.workers[TRAINING_WORKER_SAMPLES_PER_SECOND].labels(str(index)).set(samples_per_second.get(index, 0.0))

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
