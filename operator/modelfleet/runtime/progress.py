"""Rank 0's progress: Prometheus gauges on a small HTTP endpoint the operator scrapes into status.progress, and a
JSON log line every few seconds. Workers need no Kubernetes API rights for it.

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

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
