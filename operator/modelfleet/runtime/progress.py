"""Rank 0's progress: a JSON log line, and the pod annotation the operator copies into status.progress.

Reporting never stops training: failures are logged and the next report tries again.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger("modelfleet.train")
ANNOTATION = "modelfleet.dev/progress"


class ProgressReporter:
    def __init__(self, every_seconds: float = 5.0) -> None:
        self.every = every_seconds
        self.last = 0.0
        self.pod = os.environ.get("MODELFLEET_POD_NAME")
        self.namespace = os.environ.get("MODELFLEET_NAMESPACE")
        self._api: Any = None
        self._lock = threading.Lock()

    def report(self, step: int, epoch: int, loss: float, samples_per_second: float, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.every:
            return
        self.last = now
        payload = {
            "step": step,
            "epoch": epoch,
            "loss": round(loss, 6),
            "samplesPerSecond": round(samples_per_second, 2),
            "updatedAt": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        log.info("progress %s", json.dumps(payload))
        if self.pod and self.namespace:
            threading.Thread(target=self._annotate, args=(payload,), daemon=True).start()

    def _annotate(self, payload: dict[str, Any]) -> None:
        if not self._lock.acquire(blocking=False):
            return  # the previous report is still on its way
        try:
            if self._api is None:
                from kubernetes import client, config

                config.load_incluster_config()
                self._api = client.CoreV1Api()
            body = {"metadata": {"annotations": {ANNOTATION: json.dumps(payload)}}}
            self._api.patch_namespaced_pod(self.pod, self.namespace, body)
        except Exception as exc:
            log.warning("could not report progress: %s", exc)
        finally:
            self._lock.release()
