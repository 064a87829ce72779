"""Plays the kubelet for InferenceService pods: a real model server process per Running pod, bound to its
(loopback) pod IP, started with the env from the pod's own container spec."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from tests.support.kube import Kube
from tests.support.processes import ServerProcess


class PodServers:
    def __init__(self, kube: Kube, namespace: str, service: str, logs: Path) -> None:
        self.kube, self.namespace, self.service, self.logs = kube, namespace, service, logs
        self.servers: dict[str, ServerProcess] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PodServers:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopping.set()
        self.thread.join(timeout=10)
        with self.lock:
            for server in self.servers.values():
                server.stop()

    def urls(self) -> list[str]:
        with self.lock:
            return [s.url for s in self.servers.values() if s.proc.poll() is None and s.ready]

    def _run(self) -> None:
        while not self.stopping.is_set():
            selector = f"modelfleet.dev/service-name={self.service}"
            pods = self.kube.get_json("pods", "-n", self.namespace, "-l", selector)["items"]
            live = {
                p["metadata"]["name"]: p
                for p in pods
                if p["status"].get("phase") == "Running"
                and p["status"].get("podIP")
                and not p["metadata"].get("deletionTimestamp")
            }
            with self.lock:
                for name in set(self.servers) - set(live):
                    self.servers.pop(name).stop()
            for name, pod in live.items():
                if name not in self.servers:
                    container = pod["spec"]["containers"][0]
                    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
                    server = ServerProcess(
                        env, pod["status"]["podIP"], int(env["MODELFLEET_PORT"]), self.logs / f"{name}.log"
                    )
                    with self.lock:
                        self.servers[name] = server
                    threading.Thread(target=self._mark_ready, args=(server,), daemon=True).start()
            time.sleep(0.5)

    @staticmethod
    def _mark_ready(server: ServerProcess) -> None:
        try:
            server.wait_ready()
            server.ready = True
        except (RuntimeError, TimeoutError):
            server.ready = False
