"""The dev cluster's pod runner: a small kubelet for the nodes labelled `sim.modelfleet.dev/run-pods: "true"`.

KWOK simulates every other node; on these, each scheduled pod's containers run for real as local processes (the
command with the project's own python, see modelfleet.devcluster.podspec for env, DNS and volumes), each bound to
the pod's own loopback IP (127.101.x.y, handed out here): the runner gives the process MODELFLEET_HOST and
MODELFLEET_METRICS_HOST, which modelfleet's runtime binds to, and MODELFLEET_TERMINATION_LOG, the local file behind
the container's terminationMessagePath. The runner writes what a kubelet writes to the pod's status: phase, podIP,
container states with exit code and termination message, and readiness from an httpGet readinessProbe.
Containers restart per the pod's restartPolicy (with a back-off). A deleted pod's processes get SIGTERM, then
SIGKILL when its grace period ends, and the pod is then removed. Logs: <state>/pods/<namespace>/<pod>/<container>.log.

    python -m modelfleet.devcluster.runner --kubeconfig <file> --state-dir <dir>
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from modelfleet.contract import HOST_ENV, METRICS_HOST_ENV, TERMINATION_LOG_ENV
from modelfleet.devcluster.nodes import RUN_PODS_LABEL
from modelfleet.devcluster.podspec import (
    PathMap,
    UnsupportedPod,
    command_line,
    container_env,
    dns_names,
    probe_url,
    resolve_names,
    volume_dirs,
)

log = logging.getLogger("modelfleet.runner")
POD_IP_RANGE = ipaddress.ip_network("127.101.0.0/16")
HOST_IP = "127.0.0.1"
MAX_MESSAGE_BYTES = 4096
MAX_BACKOFF_SECONDS = 20.0
LOST_STATUS = {"phase": "Failed", "reason": "RunnerRestarted", "message": "the local pod runner restarted"}


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Container:
    spec: dict[str, Any]
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    message_path: Path
    paths: PathMap
    ready_url: str | None
    proc: subprocess.Popen[bytes] | None = None
    started_at: str = ""
    restarts: int = 0
    ready: bool = False
    terminated: dict[str, Any] | None = None
    restart_at: float = 0.0

    start_error: str | None = None

    def start(self, cwd: Path) -> None:
        """Starts the process; one that cannot start (no such executable) is recorded for `reap` to report as a
        runtime does: terminated with StartError, exit code 128, then restarted with back-off per the policy."""
        self.message_path.write_text("")
        self.started_at, self.ready, self.terminated = now_iso(), self.ready_url is None, None
        with open(self.log_path, "ab") as out:
            try:
                self.proc = subprocess.Popen(
                    self.argv, env=self.env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                )
            except OSError as exc:
                self.proc, self.start_error = None, f"failed to start {self.argv[0]!r}: {exc.strerror or exc}"
                log.warning("container %s: %s", self.spec["name"], self.start_error)

    def signal(self, sig: int) -> None:
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def reap(self) -> bool:
        """Records the exit of a process that has ended, or that could not start; True when it just did."""
        if self.start_error is not None:
            self.terminated = {
                "exitCode": 128,
                "reason": "StartError",
                "message": self.paths.container(self.start_error),
                "startedAt": self.started_at,
                "finishedAt": now_iso(),
            }
            self.start_error, self.ready = None, False
            return True
        if self.proc is None or self.terminated is not None or (code := self.proc.poll()) is None:
            return False
        message = self.paths.container(self.message_path.read_bytes()[:MAX_MESSAGE_BYTES].decode(errors="replace"))
        if not message and code and self.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            message = self.log_path.read_bytes()[-2048:].decode(errors="replace")
        code = 128 - code if code < 0 else code  # killed by a signal: 128 + its number, as a runtime reports
        self.terminated = {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": self.started_at,
            "finishedAt": now_iso(),
            **({"message": message} if message else {}),
        }
        self.ready = False
        return True

    def status(self) -> dict[str, Any]:
        running = self.terminated is None and self.proc is not None
        if running:
            state: dict[str, Any] = {"running": {"startedAt": self.started_at}}
        elif self.terminated is not None and self.restart_at == 0.0:
            state = {"terminated": self.terminated}
        else:
            state = {"waiting": {"reason": "CrashLoopBackOff" if self.terminated else "ContainerCreating"}}
        entry = {
            "name": self.spec["name"],
            "image": self.spec.get("image", ""),
            "imageID": "",
            "ready": self.ready,
            "started": running,
            "restartCount": self.restarts,
            "state": state,
        }
        if self.terminated is not None and self.restart_at:
            entry["lastState"] = {"terminated": self.terminated}
        return entry


@dataclass
class PodRun:
    namespace: str
    name: str
    uid: str
    ip: str
    directory: Path
    restart_policy: str
    containers: list[Container] = field(default_factory=list)
    start_time: str = field(default_factory=now_iso)
    stopping: bool = False
    written: dict[str, Any] = field(default_factory=dict)
    transitions: dict[str, str] = field(default_factory=dict)

    def phase(self) -> str:
        if any(c.terminated is None or c.restart_at for c in self.containers):
            return "Running"
        return "Succeeded" if all(c.terminated and c.terminated["exitCode"] == 0 for c in self.containers) else "Failed"

    def status(self) -> dict[str, Any]:
        phase = self.phase()
        ready = phase == "Running" and all(c.ready for c in self.containers)
        reason = {"Succeeded": "PodCompleted", "Failed": "PodFailed"}.get(phase)
        conditions = [
            self._condition("PodScheduled", True),
            self._condition("Initialized", True),
            self._condition("ContainersReady", ready, reason),
            self._condition("Ready", ready, reason),
        ]
        return {
            "phase": phase,
            "conditions": conditions,
            "hostIP": HOST_IP,
            "hostIPs": [{"ip": HOST_IP}],
            "podIP": self.ip,
            "podIPs": [{"ip": self.ip}],
            "startTime": self.start_time,
            "containerStatuses": [c.status() for c in self.containers],
        }

    def _condition(self, type_: str, ok: bool, reason: str | None = None) -> dict[str, Any]:
        status = "True" if ok else "False"
        key = f"{type_}={status}"
        if key not in self.transitions:
            self.transitions = {k: v for k, v in self.transitions.items() if not k.startswith(f"{type_}=")}
            self.transitions[key] = now_iso()
        entry = {"type": type_, "status": status, "lastTransitionTime": self.transitions[key]}
        if reason and not ok:
            entry["reason"] = reason
        return entry

    def alive(self) -> bool:
        return any(c.proc is not None and c.proc.poll() is None for c in self.containers)


class PodRunner:
    """Runs the pods bound to run-pods nodes; `tick` does one pass, `run` loops until `stop` is set."""

    def __init__(self, api: client.CoreV1Api, state_dir: Path, python: str = sys.executable) -> None:
        self.api, self.state_dir, self.python = api, state_dir, python
        self.runs: dict[str, PodRun] = {}
        self.stop = threading.Event()
        self.probe = httpx.Client(timeout=0.5, trust_env=False)

    @property
    def claims_dir(self) -> Path:
        """Where each PersistentVolumeClaim is a directory: <state>/pvc/<namespace>/<claim>."""
        return self.state_dir / "pvc"

    def run(self, every: float = 0.3) -> None:
        while not self.stop.is_set():
            try:
                self.tick()
            except Exception as exc:  # the apiserver restarting, a half-written object: the next pass retries
                log.warning("pass failed: %s", str(exc).splitlines()[0] if str(exc) else repr(exc))
            self.stop.wait(every)
        self.shutdown()

    def tick(self) -> None:
        nodes = {n["metadata"]["name"] for n in self._list(self.api.list_node, label_selector=f"{RUN_PODS_LABEL}=true")}
        self._provision()
        pods = self._list(self.api.list_pod_for_all_namespaces)
        ours = [p for p in pods if p["spec"].get("nodeName") in nodes]
        addresses = {
            (p["metadata"]["namespace"], name): p["status"]["podIP"]
            for p in pods
            if (p.get("status") or {}).get("podIP")
            for name in dns_names(p)
        }
        used = {p["status"]["podIP"] for p in pods if (p.get("status") or {}).get("podIP")} | {
            r.ip for r in self.runs.values()
        }
        for pod in ours:
            self._sync(pod, addresses, used)
        listed = {p["metadata"]["uid"] for p in ours}
        for uid in [u for u in self.runs if u not in listed]:
            self._forget(self.runs.pop(uid), deadline=time.time() + 2)

    def _provision(self) -> None:
        """A PersistentVolume for each unbound claim: its directory under <state>/pvc, pre-bound to the claim (the
        controller-manager then binds the pair, and the scheduler can place the pods that mount it)."""
        for claim in self._list(self.api.list_persistent_volume_claim_for_all_namespaces):
            meta, spec = claim["metadata"], claim["spec"]
            if spec.get("volumeName") or (claim.get("status") or {}).get("phase") == "Bound":
                continue
            path = self.claims_dir / meta["namespace"] / meta["name"]
            path.mkdir(parents=True, exist_ok=True)
            volume = {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": f"pvc-{meta['uid']}", "labels": {"app.kubernetes.io/managed-by": "pod-runner"}},
                "spec": {
                    "capacity": {"storage": spec.get("resources", {}).get("requests", {}).get("storage", "1Gi")},
                    "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": spec.get("storageClassName") or "",
                    "hostPath": {"path": str(path)},
                    "claimRef": {"namespace": meta["namespace"], "name": meta["name"], "uid": meta["uid"]},
                },
            }
            try:
                self.api.create_persistent_volume(volume)
                log.info(
                    "provisioned %s for claim %s/%s at %s",
                    volume["metadata"]["name"],
                    meta["namespace"],
                    meta["name"],
                    path,
                )
            except ApiException as exc:
                if exc.status != 409:
                    raise

    def _sync(self, pod: dict[str, Any], addresses: dict[tuple[str, str], str], used: set[str]) -> None:
        meta, status = pod["metadata"], pod.get("status") or {}
        uid = meta["uid"]
        run = self.runs.get(uid)
        if meta.get("deletionTimestamp"):
            self._delete(pod, run)
            return
        if run is None:
            if status.get("phase") in ("Succeeded", "Failed"):
                return
            if status.get("podIP") and pod["spec"].get("restartPolicy", "Always") == "Never":
                self._write(pod, LOST_STATUS)  # its processes ended with an earlier runner
                return
            run = self._start(pod, addresses, used, status.get("podIP"))
            if run is None:
                return
        self._step(run)
        self._write(pod, run.status(), run)

    def _start(
        self, pod: dict[str, Any], addresses: dict[tuple[str, str], str], used: set[str], ip: str | None
    ) -> PodRun | None:
        meta, spec = pod["metadata"], pod["spec"]
        namespace = meta["namespace"]
        ip = ip or next(str(a) for a in POD_IP_RANGE.hosts() if str(a) not in used and not str(a).endswith(".0"))
        names = {(namespace, n): ip for n in dns_names(pod)}
        addresses.update(names)
        directory = self.state_dir / "pods" / namespace / f"{meta['name']}-{meta['uid'][:8]}"
        try:
            volumes = volume_dirs(pod, directory, self.claims_dir)
            containers = [self._container(pod, c, ip, volumes, directory, addresses) for c in spec["containers"]]
        except UnsupportedPod as exc:
            self._write(pod, self._refused_status(pod, str(exc)))
            return None
        if any(c is None for c in containers):
            for name in names:  # a name it needs does not resolve yet: try again next pass
                addresses.pop(name, None)
            return None
        for path in volumes.values():
            path.mkdir(parents=True, exist_ok=True)
        run = PodRun(namespace, meta["name"], meta["uid"], ip, directory, spec.get("restartPolicy", "Always"))
        run.containers = [c for c in containers if c is not None]
        used.add(ip)
        for container in run.containers:
            container.start(directory)
        self.runs[meta["uid"]] = run
        log.info("started %s/%s on %s at %s", namespace, meta["name"], spec.get("nodeName"), ip)
        return run

    def _container(
        self,
        pod: dict[str, Any],
        spec: dict[str, Any],
        ip: str,
        volumes: dict[str, Path],
        directory: Path,
        addresses: dict[tuple[str, str], str],
    ) -> Container | None:
        namespace = pod["metadata"]["namespace"]
        directory.mkdir(parents=True, exist_ok=True)
        message_path = directory / f"{spec['name']}.termination-log"
        paths = PathMap.of(spec, volumes, message_path)
        for _mount, local in paths.mounts:
            local.mkdir(parents=True, exist_ok=True)
        env: dict[str, str] = {}
        for key, value in container_env(pod, spec, ip, HOST_IP).items():
            value, known = resolve_names(value, namespace, lambda ns, name: addresses.get((ns, name)))
            if not known:
                return None
            env[key] = paths.local(value)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOSTNAME": pod["spec"].get("hostname") or pod["metadata"]["name"],
            **env,
            HOST_ENV: ip,
            METRICS_HOST_ENV: ip,
            TERMINATION_LOG_ENV: str(message_path),
        }
        argv = command_line(spec, env, self.python, paths.local)
        log_path = directory / f"{spec['name']}.log"
        return Container(spec, argv, env, log_path, message_path, paths, probe_url(spec, ip))

    def _step(self, run: PodRun) -> None:
        """Reaps exits, restarts per the restart policy (back-off 1, 2, 4 ... 20 s), probes readiness."""
        for c in run.containers:
            if c.restart_at and time.monotonic() >= c.restart_at and not run.stopping:
                c.restarts += 1
                c.restart_at = 0.0
                c.start(run.directory)
            if c.reap():
                code = c.terminated["exitCode"] if c.terminated else 0
                log.info("%s/%s container %s exited %d", run.namespace, run.name, c.spec["name"], code)
                if run.restart_policy == "Always" or (run.restart_policy == "OnFailure" and code != 0):
                    c.restart_at = time.monotonic() + min(2.0**c.restarts, MAX_BACKOFF_SECONDS)
            if c.ready_url and c.terminated is None and c.proc is not None:
                c.ready = self._probe(c.ready_url)

    def _probe(self, url: str) -> bool:
        try:
            return 200 <= self.probe.get(url).status_code < 400
        except httpx.HTTPError:
            return False

    def _delete(self, pod: dict[str, Any], run: PodRun | None) -> None:
        """Stops the pod's processes within its grace period, then removes the pod, as a kubelet confirms it."""
        meta = pod["metadata"]
        if run is not None and not run.stopping:
            deadline = datetime.fromisoformat(meta["deletionTimestamp"].replace("Z", "+00:00")).timestamp() - 0.5
            threading.Thread(target=self._forget, args=(run, deadline), daemon=True).start()
            return
        if run is not None and run.alive():
            return
        self.runs.pop(meta["uid"], None)
        try:
            self.api.delete_namespaced_pod(
                meta["name"],
                meta["namespace"],
                grace_period_seconds=0,
                body=client.V1DeleteOptions(
                    grace_period_seconds=0, preconditions=client.V1Preconditions(uid=meta["uid"])
                ),
            )
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise

    def _forget(self, run: PodRun, deadline: float) -> None:
        """SIGTERM to every container, SIGKILL to what still runs at `deadline` (wall clock); then the pod's
        emptyDir volumes go."""
        run.stopping = True
        for c in run.containers:
            c.signal(signal.SIGTERM)
        while run.alive() and time.time() < deadline:
            time.sleep(0.1)
        for c in run.containers:
            c.signal(signal.SIGKILL)
            if c.proc is not None:
                c.proc.wait()
        shutil.rmtree(run.directory / "volumes", ignore_errors=True)

    def _write(self, pod: dict[str, Any], status: dict[str, Any], run: PodRun | None = None) -> None:
        if run is not None and run.written.get("status") == status:
            return
        try:
            self.api.patch_namespaced_pod_status(
                pod["metadata"]["name"],
                pod["metadata"]["namespace"],
                {"metadata": {"uid": pod["metadata"]["uid"]}, "status": status},
                _content_type="application/merge-patch+json",
            )
        except ApiException as exc:
            if exc.status not in (404, 409, 422):
                raise
            return
        if run is not None:
            run.written["status"] = status

    @staticmethod
    def _refused_status(pod: dict[str, Any], message: str) -> dict[str, Any]:
        log.warning("%s/%s cannot run locally: %s", pod["metadata"]["namespace"], pod["metadata"]["name"], message)
        return {"phase": "Failed", "reason": "UnsupportedLocally", "message": message}

    def _list(self, fn: Any, **kwargs: Any) -> list[dict[str, Any]]:
        response = fn(_preload_content=False, _request_timeout=10, **kwargs)
        return json.loads(response.data)["items"]

    def shutdown(self) -> None:
        threads = [threading.Thread(target=self._forget, args=(r, time.time() + 5)) for r in self.runs.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--state-dir", required=True, type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    runner = PodRunner(client.CoreV1Api(config.new_client_from_config(config_file=args.kubeconfig)), args.state_dir)
    signal.signal(signal.SIGTERM, lambda *_: runner.stop.set())
    signal.signal(signal.SIGINT, lambda *_: runner.stop.set())
    runner.run()


if __name__ == "__main__":
    main()
