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

log = logging.getLogger("modelfleet.train")
PORT_ENV = "MODELFLEET_METRICS_PORT"
HOST_ENV = "MODELFLEET_METRICS_HOST"
DEFAULT_PORT = 9400
STEP = "modelfleet_training_step"
EPOCH = "modelfleet_training_epoch"
LOSS = "modelfleet_training_loss"
SAMPLES_PER_SECOND = "modelfleet_training_samples_per_second"
UPDATED = "modelfleet_training_updated_timestamp_seconds"
"""Unix time of the last report; 0 until the first one."""
RANK = "modelfleet_training_rank"
WORKER_SHARE = "modelfleet_training_worker_share"
WORKER_SAMPLES_PER_SECOND = "modelfleet_training_worker_samples_per_second"
WORKER_LABEL = "worker"
"""Label of the per-worker gauges: the worker pod's replica index."""


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
                (STEP, "Global step of rank 0."),
                (EPOCH, "Epoch of rank 0."),
                (LOSS, "Latest training loss."),
                (SAMPLES_PER_SECOND, "Throughput of the whole gang."),
                (UPDATED, "Unix time of the last progress report."),
                (RANK, "Global rank of the reporting process (always 0)."),
            )
        }
        self.workers = {
            name: Gauge(name, help_, [WORKER_LABEL], registry=self.registry)
            for name, help_ in (
                (WORKER_SHARE, "Current share of every global batch, per worker pod."),
                (WORKER_SAMPLES_PER_SECOND, "Measured (smoothed) samples per second of compute, per worker pod."),
            )
        }
        host = host or os.environ.get(HOST_ENV, "0.0.0.0")
        port = port if port is not None else int(os.environ.get(PORT_ENV, str(DEFAULT_PORT)))
        self.server = None
        try:
            self.server, _ = start_http_server(port, host, self.registry)
            log.info("progress metrics on http://%s:%d/metrics", host, port)
        except OSError as exc:
            log.warning("no progress endpoint on %s:%d: %s", host, port, exc)

    def report(self, step: int, epoch: int, loss: float, samples_per_second: float, force: bool = False) -> None:
        """Updates the gauges (a non-finite loss is served as it is: the operator leaves it out of status)."""
        values = {STEP: step, EPOCH: epoch, LOSS: loss, SAMPLES_PER_SECOND: samples_per_second, UPDATED: time.time()}
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
            self.workers[WORKER_SHARE].labels(str(index)).set(share)
            self.workers[WORKER_SAMPLES_PER_SECOND].labels(str(index)).set(samples_per_second.get(index, 0.0))

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
