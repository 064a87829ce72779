"""Chaos run for TrainingJobs, shared by tests/e2e/test_chaos.py (short) and `python -m benchmarks.chaos` (full).

N TrainingJobs of 1-4 workers (seeded) are submitted at random moments. Job i fails its first f_i attempts (KWOK's
pod-fail-attempt stage, annotation sim.modelfleet.dev/fail-attempts) and has backoffLimit b_i, both 0..2: it must
end Succeeded with status.restarts == f_i when f_i <= b_i, else Failed (BackoffLimitExceeded) with restarts == b_i.
Meanwhile the operator is SIGKILLed K times and restarted, kube-apiserver is restarted R times (every other restart,
the first included, is a watch gap: the operator frozen, a job deleted during it, see tests/support/watchgap.py),
and a few more jobs are deleted at random moments. Deleted workers stay Terminating for 2 s (as every training_job).

A sampler lists pods every `sample_interval` s and counts, each distinct case once:
- rank duplicates: two live pods (not terminating, not finished) for one (job, rank, attempt);
- attempt overlaps: live pods of two different attempts of one job at once;
- over-commits: a node whose bound, unfinished pods (terminating ones included: they still hold their GPUs)
  request more nvidia.com/gpu than it has allocatable;
- restart overlaps (reported, not a failure: it is allowed where names carry the attempt): a live pod of an attempt
  beside a still-terminating pod of an older attempt of the same job.
At the end: orphans, pods whose owner TrainingJob is gone (once terminating pods have left).
"""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from kubernetes import client

from modelfleet.api.common import GANG_ATTEMPT_LABEL, GPU_RESOURCE, JOB_NAME_LABEL, REPLICA_INDEX_LABEL
from modelfleet.devcluster import DevCluster
from tests.support.kube import Kube
from tests.support.operator import OperatorProcess
from tests.support.training import training_job
from tests.support.watchgap import watch_gap

GROUP, VERSION, PLURAL = "modelfleet.dev", "v1alpha1", "trainingjobs"
FINISHED = ("Succeeded", "Failed")


@dataclass(frozen=True)
class ChaosConfig:
    jobs: int = 100
    kills: int = 20
    apiserver_restarts: int = 2
    deletions: int | None = None
    """Jobs deleted mid-run, the watch-gap ones included; default: one in ten."""
    seed: int = 1
    window: float | None = None
    """Seconds over which submissions (first 60 %) and faults are spread; default: 20 + 1.5 s a job."""
    timeout: float = 600
    """Seconds after the window for every job to finish."""
    sample_interval: float = 0.5

    @property
    def span(self) -> float:
        return self.window if self.window is not None else 20 + 1.5 * self.jobs


@dataclass(frozen=True)
class JobPlan:
    name: str
    workers: int
    gpus: int
    gpu_type: str | None
    run_for: str
    fail_attempts: int
    backoff_limit: int
    submit_at: float
    delete_at: float | None = None

    @property
    def expected(self) -> tuple[str, int]:
        """Final phase and status.restarts."""
        if self.fail_attempts <= self.backoff_limit:
            return "Succeeded", self.fail_attempts
        return "Failed", self.backoff_limit

    def manifest(self) -> dict[str, Any]:
        return training_job(
            self.name,
            workers=self.workers,
            gpus=self.gpus,
            gpu_type=self.gpu_type,
            exit_code=0,
            run_for=self.run_for,
            fail_attempts=self.fail_attempts,
            backoffLimit=self.backoff_limit,
        )


@dataclass(frozen=True)
class Event:
    at: float
    kind: str
    """submit, delete, kill (the operator), restart (kube-apiserver) or gap (restart as a watch gap + delete)."""
    job: JobPlan | None = None


def plan(config: ChaosConfig) -> tuple[list[JobPlan], list[Event]]:
    """The jobs and the timeline of one run (pure, seeded)."""
    rng = random.Random(config.seed)
    span = config.span
    jobs = [
        JobPlan(
            name=f"chaos-{i:03d}",
            workers=rng.randint(1, 4),
            gpus=rng.choice((1, 2, 4)),
            gpu_type=rng.choice(("H100", "A100", "T4", None)),
            run_for=f"{rng.uniform(2, 5):.1f}s",
            fail_attempts=rng.randint(0, 2),
            backoff_limit=rng.randint(0, 2),
            submit_at=rng.uniform(0, 0.6 * span),
        )
        for i in range(config.jobs)
    ]
    restarts = sorted(rng.uniform(0.2 * span, 0.9 * span) for _ in range(config.apiserver_restarts))
    gaps = restarts[::2]
    deletions = config.deletions if config.deletions is not None else config.jobs // 10
    delete_times = gaps + [rng.uniform(0.3 * span, span) for _ in range(max(deletions - len(gaps), 0))]
    for index, at in zip(
        rng.sample(range(config.jobs), min(len(delete_times), config.jobs)), delete_times, strict=False
    ):
        jobs[index] = replace(jobs[index], submit_at=min(jobs[index].submit_at, max(at - 5, 0)), delete_at=at)
    by_time = {j.delete_at: j for j in jobs if j.delete_at is not None}
    events = [Event(j.submit_at, "submit", j) for j in jobs]
    events += [Event(at, "gap", by_time[at]) for at in gaps if at in by_time]
    events += [Event(at, "restart") for at in restarts[1::2]]
    events += [Event(j.delete_at, "delete", j) for j in jobs if j.delete_at is not None and j.delete_at not in gaps]
    events += [Event(rng.uniform(1, span), "kill") for _ in range(config.kills)]
    return jobs, sorted(events, key=lambda e: e.at)


def _gpus(pod: client.V1Pod) -> int:
    total = 0
    for container in pod.spec.containers or []:
        resources = container.resources
        amounts = (resources.requests or resources.limits or {}) if resources else {}
        total += int(amounts.get(GPU_RESOURCE, 0))
    return total


def _live(pod: client.V1Pod) -> bool:
    return not pod.metadata.deletion_timestamp and pod.status.phase not in FINISHED


class Sampler(threading.Thread):
    """Lists every pod each `interval` s and records duplicates, overlaps and over-committed nodes."""

    def __init__(self, api: client.ApiClient, namespace: str, interval: float) -> None:
        super().__init__(daemon=True)
        self.core = client.CoreV1Api(api)
        self.namespace, self.interval = namespace, interval
        self.stopping = threading.Event()
        self.samples = self.missed = 0
        self.rank_duplicates: dict[tuple[str, str, str], list[str]] = {}
        self.attempt_overlaps: dict[tuple[str, tuple[str, ...]], list[str]] = {}
        self.restart_overlaps: set[tuple[str, str, str]] = set()
        self.overcommits: dict[str, tuple[int, int, list[str]]] = {}
        """node -> (GPUs requested, allocatable, pods) at its worst sample."""
        self.allocatable = {
            n.metadata.name: int((n.status.allocatable or {}).get(GPU_RESOURCE, 0))
            for n in self.core.list_node(_request_timeout=10).items
        }

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            try:
                pods = self.core.list_pod_for_all_namespaces(_request_timeout=5).items
            except Exception:  # the apiserver is down or restarting: a missed sample
                self.missed += 1
                continue
            self.samples += 1
            self._check_nodes(pods)
            self._check_jobs([p for p in pods if p.metadata.namespace == self.namespace])

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=30)

    def _check_nodes(self, pods: list[client.V1Pod]) -> None:
        used: dict[str, int] = defaultdict(int)
        holders: dict[str, list[str]] = defaultdict(list)
        for pod in pods:
            if pod.spec.node_name and pod.status.phase not in FINISHED and (gpus := _gpus(pod)):
                used[pod.spec.node_name] += gpus
                holders[pod.spec.node_name].append(f"{pod.metadata.namespace}/{pod.metadata.name}")
        for node, gpus in used.items():
            limit = self.allocatable.get(node, 0)
            if gpus > limit and gpus > self.overcommits.get(node, (0, 0, []))[0]:
                self.overcommits[node] = (gpus, limit, holders[node])

    def _check_jobs(self, pods: list[client.V1Pod]) -> None:
        by_job: dict[str, list[client.V1Pod]] = defaultdict(list)
        for pod in pods:
            if job := (pod.metadata.labels or {}).get(JOB_NAME_LABEL):
                by_job[job].append(pod)
        for job, members in by_job.items():
            live = [p for p in members if _live(p)]
            ranks: dict[tuple[str, str, str], list[str]] = defaultdict(list)
            for pod in live:
                labels = pod.metadata.labels
                ranks[(job, labels.get(REPLICA_INDEX_LABEL, ""), labels.get(GANG_ATTEMPT_LABEL, ""))].append(
                    pod.metadata.name
                )
            self.rank_duplicates.update({key: names for key, names in ranks.items() if len(names) > 1})
            attempts = {p.metadata.labels.get(GANG_ATTEMPT_LABEL, "") for p in live}
            if len(attempts) > 1:
                self.attempt_overlaps[(job, tuple(sorted(attempts)))] = sorted(p.metadata.name for p in live)
            terminating = {
                p.metadata.labels.get(GANG_ATTEMPT_LABEL, "")
                for p in members
                if p.metadata.deletion_timestamp and p.status.phase not in FINISHED
            }
            self.restart_overlaps.update(
                (job, old, new) for old in terminating for new in attempts if int(old or 0) < int(new or 0)
            )


@dataclass
class ChaosReport:
    jobs: int
    deleted: int
    converged: int = 0
    wrong_phase: list[str] = field(default_factory=list)
    restart_mismatches: list[str] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)
    rank_duplicates: int = 0
    attempt_overlaps: int = 0
    restart_overlaps: int = 0
    orphans: list[str] = field(default_factory=list)
    overcommits: list[str] = field(default_factory=list)
    kills: int = 0
    self_restarts: int = 0
    apiserver_restarts: int = 0
    watch_gaps_gone: int = 0
    samples: int = 0
    missed_samples: int = 0
    wall_s: float = 0.0
    details: list[str] = field(default_factory=list)

    @property
    def expected(self) -> int:
        return self.jobs - self.deleted

    @property
    def ok(self) -> bool:
        return (
            self.converged == self.expected
            and not (self.wrong_phase or self.restart_mismatches or self.orphans or self.overcommits)
            and self.rank_duplicates == self.attempt_overlaps == 0
        )

    def summary(self) -> str:
        lines = [
            f"jobs                 {self.jobs} ({self.deleted} deleted mid-run)",
            f"converged            {self.converged} of {self.expected}",
            f"wrong phase          {len(self.wrong_phase)}",
            f"restart mismatches   {len(self.restart_mismatches)}",
            f"unfinished           {len(self.unfinished)}",
            f"duplicates           {self.rank_duplicates + self.attempt_overlaps} "
            f"({self.rank_duplicates} for one rank of one attempt, {self.attempt_overlaps} live attempts overlapping)",
            f"restart overlaps     {self.restart_overlaps} (new attempt beside a terminating old one; not a failure)",
            f"orphans              {len(self.orphans)}",
            f"GPU over-commits     {len(self.overcommits)}",
            f"operator kills       {self.kills} (and {self.self_restarts} exits of its own, e.g. a lease not renewed)",
            f"apiserver restarts   {self.apiserver_restarts} ({self.watch_gaps_gone} watch gaps with 410 Gone)",
            f"samples              {self.samples} ({self.missed_samples} missed while the apiserver was down)",
            f"wall time            {self.wall_s:.0f} s",
        ]
        problems = self.wrong_phase + self.restart_mismatches + self.unfinished + self.orphans + self.overcommits
        return "\n".join(lines + [f"  {line}" for line in problems + self.details])


def run_chaos(
    cluster: DevCluster,
    kube: Kube,
    operator: OperatorProcess,
    namespace: str,
    config: ChaosConfig,
    log: Callable[[str], None] = print,
) -> ChaosReport:
    """Runs the plan against a running operator and cluster; returns the figures (asserts nothing)."""
    jobs, events = plan(config)
    rng = random.Random(config.seed + 1)
    api = kube.api_client()
    custom = client.CustomObjectsApi(api)
    report = ChaosReport(jobs=len(jobs), deleted=sum(j.delete_at is not None for j in jobs))
    sampler = Sampler(kube.api_client(), namespace, config.sample_interval)
    started, self_restarts = time.monotonic(), operator.restarts

    def delete(job: JobPlan) -> None:
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, job.name, _request_timeout=30)

    sampler.start()
    try:
        for event in events:
            time.sleep(max(0.0, started + event.at - time.monotonic()))
            if event.kind == "submit" and event.job:
                custom.create_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, event.job.manifest(), _request_timeout=30
                )
            elif event.kind == "delete" and event.job:
                delete(event.job)
            elif event.kind == "kill":
                operator.kill()
                time.sleep(rng.uniform(0, 2))
                operator.start()
                report.kills += 1
            elif event.kind == "restart":
                cluster.restart("kube-apiserver")
                report.apiserver_restarts += 1
            elif event.kind == "gap" and event.job:
                gap = watch_gap(cluster, kube, operator, during=partial(delete, event.job))
                report.apiserver_restarts += 1
                report.watch_gaps_gone += gap.gone
            log(f"[chaos] {time.monotonic() - started:6.1f}s {event.kind} {event.job.name if event.job else ''}")
        _wait_finished(custom, namespace, jobs, config.timeout, log)
        _wait_no_terminating(client.CoreV1Api(api), namespace, timeout=60)
    finally:
        sampler.stop()
    report.wall_s = time.monotonic() - started
    report.self_restarts = operator.restarts - self_restarts
    _judge(report, custom, client.CoreV1Api(api), namespace, jobs)
    report.samples, report.missed_samples = sampler.samples, sampler.missed
    report.rank_duplicates = len(sampler.rank_duplicates)
    report.attempt_overlaps = len(sampler.attempt_overlaps)
    report.restart_overlaps = len(sampler.restart_overlaps)
    report.overcommits = [
        f"over-commit: {node} {gpus}/{limit} GPUs: {', '.join(pods)}"
        for node, (gpus, limit, pods) in sorted(sampler.overcommits.items())
    ]
    report.details += [f"rank duplicate {key}: {names}" for key, names in sorted(sampler.rank_duplicates.items())]
    report.details += [f"attempt overlap {key}: {names}" for key, names in sorted(sampler.attempt_overlaps.items())]
    return report


def _jobs_by_name(custom: client.CustomObjectsApi, namespace: str) -> dict[str, dict[str, Any]]:
    items = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, _request_timeout=30)["items"]
    return {j["metadata"]["name"]: j for j in items}


def _wait_finished(
    custom: client.CustomObjectsApi, namespace: str, jobs: list[JobPlan], timeout: float, log: Callable[[str], None]
) -> None:
    kept = {j.name for j in jobs if j.delete_at is None}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            current = _jobs_by_name(custom, namespace)
        except Exception:  # a transient API error: look again
            time.sleep(1)
            continue
        left = sorted(n for n in kept if (current.get(n, {}).get("status") or {}).get("phase") not in FINISHED)
        if not left:
            return
        log(f"[chaos] waiting for {len(left)} jobs: {', '.join(left[:8])}{' ...' if len(left) > 8 else ''}")
        time.sleep(5)


def _wait_no_terminating(core: client.CoreV1Api, namespace: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(p.metadata.deletion_timestamp for p in core.list_namespaced_pod(namespace).items):
            return
        time.sleep(1)


def _judge(
    report: ChaosReport, custom: client.CustomObjectsApi, core: client.CoreV1Api, namespace: str, jobs: list[JobPlan]
) -> None:
    current = _jobs_by_name(custom, namespace)
    for job in jobs:
        got = current.get(job.name)
        if job.delete_at is not None:
            if got:
                report.unfinished.append(f"{job.name}: deleted at {job.delete_at:.0f}s but still there")
            continue
        status = (got or {}).get("status") or {}
        phase, restarts = status.get("phase"), int(status.get("restarts") or 0)
        failed = next((c for c in status.get("conditions") or [] if c.get("type") == "Failed"), {})
        want_phase, want_restarts = job.expected
        seen = (
            f"{job.name} ({job.workers}x{job.gpus} {job.gpu_type or 'any'} GPU, fails {job.fail_attempts}, "
            f"backoffLimit {job.backoff_limit}): want {want_phase}/{want_restarts} restarts, "
            f"got {phase}/{restarts} {failed.get('reason', '')} {failed.get('message', '')}".rstrip()
        )
        if phase not in FINISHED:
            report.unfinished.append(f"unfinished: {seen}")
        elif phase != want_phase or (phase == "Failed" and failed.get("reason") != "BackoffLimitExceeded"):
            report.wrong_phase.append(f"wrong phase: {seen}")
        elif restarts != want_restarts:
            report.restart_mismatches.append(f"restart mismatch: {seen}")
        else:
            report.converged += 1
    uids = {j["metadata"]["uid"] for j in current.values()}
    for pod in core.list_namespaced_pod(namespace).items:
        owners = [r.uid for r in pod.metadata.owner_references or [] if r.kind == "TrainingJob"]
        if owners and not set(owners) & uids:
            report.orphans.append(f"orphan: {pod.metadata.name} (phase {pod.status.phase})")
