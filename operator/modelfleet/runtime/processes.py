"""Several server processes per pod: the GIL bounds one Python process to about one core of request handling, so a
pod with several cores runs several servers on the same ports (SO_REUSEPORT), each with its own batcher and a
share of the cores for torch; on GPUs, one process per GPU."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger("modelfleet.serve")
CORES_PER_WORKER = 2  # one for the event loop (HTTP, JSON), one for torch


@dataclass(frozen=True)
class WorkerPlan:
    workers: int
    threads: int  # torch intra-op threads per process
    devices: tuple[str, ...]  # one per process


def available_cores(cgroup: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """CPUs this process may use: its affinity, bounded by the cgroup's CPU quota (a pod's CPU limit)."""
    cores = len(os.sched_getaffinity(0))
    try:
        quota, period = cgroup.read_text().split()
        if quota != "max":
            cores = min(cores, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return cores


def worker_plan(workers: int, device: str, cores: int | None = None, gpus: int | None = None) -> WorkerPlan:
    """`workers` processes (0: one per GPU on `cuda`, else one per CORES_PER_WORKER cores), sharing the cores for
    torch (OMP_NUM_THREADS, when set, wins); on `cuda` without an index, process i gets GPU i mod count."""
    cores = cores or available_cores()
    if device == "cuda":
        gpus = gpus if gpus is not None else torch.cuda.device_count()
        count = workers or max(1, gpus)
        devices = tuple(f"cuda:{i % max(1, gpus)}" for i in range(count))
    else:
        count = workers or max(1, cores // CORES_PER_WORKER)
        devices = (device,) * count
    threads = int(os.environ.get("OMP_NUM_THREADS") or max(1, cores // count))
    return WorkerPlan(count, threads, devices)


def run_workers(plan: WorkerPlan) -> None:
    """Starts one `serve` process per planned device, passes SIGTERM/SIGINT on, and exits when all have; if one
    dies on its own, the others are stopped too (the pod restarts as a whole)."""
    from prometheus_client.multiprocess import mark_process_dead

    metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="modelfleet-metrics-")
    env = {**os.environ, "OMP_NUM_THREADS": str(plan.threads), "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
    command = [sys.executable, "-m", "modelfleet.runtime.serve", *sys.argv[1:], "--workers", "1"]
    children = {
        p.pid: p for p in (subprocess.Popen([*command, "--device", device], env=env) for device in plan.devices)
    }
    log.info("%d server processes, %d torch threads each, on %s", plan.workers, plan.threads, ", ".join(plan.devices))
    stopping = False

    def pass_on(signum: int, _: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children.values():
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, pass_on)
    signal.signal(signal.SIGINT, pass_on)
    exit_code = 0
    while children:
        pid, status = os.wait()
        if children.pop(pid, None) is None:
            continue
        mark_process_dead(pid, metrics_dir)
        if not stopping:
            exit_code = os.waitstatus_to_exitcode(status) or 1
            log.error("server process %d exited (%d): stopping the others", pid, exit_code)
            pass_on(signal.SIGTERM, None)
    sys.exit(exit_code)
