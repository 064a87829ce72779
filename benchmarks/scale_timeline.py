"""Where modelfleet's jobs spend their time to Running in the scale benchmark, from timestamps the run already has.

Per job: its creation, its pods' creation and PodScheduled times (the API's, to the second) and when the benchmark
saw all its workers Running. The path splits into: waiting to be placed (queue pass, verdict, placement slot), the
gang's creates, ungating and binding (the last pod scheduled), and the kubelet's part (KWOK marks a bound pod
Running). Plus the operator's own counters: Admit verdicts published, placements by result, placement-slot wait.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import httpx
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from modelfleet.contract import JOB_NAME_LABEL

STAGES = ("to_first_pod", "creates", "to_scheduled", "to_running")
SLOT_FAMILIES = ("modelfleet_placement_slot_wait_seconds", "modelfleet_placement_seconds")


def _seconds(stamp: str | None) -> float | None:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() if stamp else None


def _scheduled_at(pod: dict[str, Any]) -> float | None:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "True":
            return _seconds(cond.get("lastTransitionTime"))
    return None


def job_paths(jobs: list[dict[str, Any]], pods: list[dict[str, Any]], running_at: dict[str, float]) -> list[dict]:
    """Each job's stages in seconds (wall clock, `running_at` by job name), for jobs with every timestamp."""
    by_job: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for pod in pods:
        if job := (pod["metadata"].get("labels") or {}).get(JOB_NAME_LABEL):
            by_job[job].append(pod)
    paths = []
    for job in jobs:
        name = job["metadata"]["name"]
        created, workers = _seconds(job["metadata"].get("creationTimestamp")), by_job.get(name, [])
        made = [_seconds(p["metadata"].get("creationTimestamp")) for p in workers]
        bound = [_scheduled_at(p) for p in workers]
        if not workers or created is None or name not in running_at or None in made or None in bound:
            continue
        first, last, scheduled = min(made), max(made), max(bound)  # type: ignore[type-var]
        paths.append({
            "to_first_pod": first - created, "creates": last - first, "to_scheduled": scheduled - last,
            "to_running": running_at[name] - scheduled, "total": running_at[name] - created,
            "restarts": (job.get("status") or {}).get("restarts") or 0, "job": name,
        })  # fmt: skip
    return paths


def oddities(paths: list[dict[str, Any]], jobs: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """Jobs whose gang was restarted during the run, and jobs with a pod bound after the benchmark saw all their
    workers Running (a pod replaced after that: its stages above then mix two gangs); the conditions of up to three
    such jobs of `jobs`, to say why."""
    restarted = [p["job"] for p in paths if p["restarts"] > 0]
    rebound = [p["job"] for p in paths if p["to_running"] < 0]
    conditions = {j["metadata"]["name"]: (j.get("status") or {}).get("conditions") or [] for j in jobs}
    examples = {
        name: [f"{c.get('type')}={c.get('status')} {c.get('reason')}: {c.get('message')}" for c in conditions[name]]
        for name in list(dict.fromkeys(restarted + rebound))[:3]
        if name in conditions
    }
    return {"jobs_restarted": len(restarted), "bound_after_running": len(rebound), "examples": examples}


def summary(paths: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Median of each stage over all jobs, and its mean over the slowest 1 % (by total)."""
    if not paths:
        return {}
    slowest = sorted(paths, key=lambda p: p["total"])[-max(len(paths) // 100, 1) :]
    return {
        "median_all": {s: round(statistics.median(p[s] for p in paths), 1) for s in (*STAGES, "total")},
        "mean_slowest_1pct": {s: round(statistics.fmean(p[s] for p in slowest), 1) for s in (*STAGES, "total")},
    }


def operator_counters(port: str | None) -> dict[str, float]:
    """Admit verdicts, placements by result and the placement-slot wait from the operator's /metrics."""
    if not port:
        return {}
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(f"http://127.0.0.1:{port}/metrics").text):
        for sample in family.samples:
            if sample.name == "modelfleet_queue_admits_total":
                found["admits_published"] = sample.value
            elif sample.name == "modelfleet_gang_placements_total":
                found[f"placements_{sample.labels['result']}"] = sample.value
            elif sample.name.endswith(("_sum", "_count")) and family.name in SLOT_FAMILIES:
                found[sample.name.removeprefix("modelfleet_")] = round(sample.value, 1)
    return found


def modelfleet_path(
    api_client: client.ApiClient, namespace: str, running_at: dict[str, float]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The stages' summary and the oddities for every TrainingJob in the namespace (one list of jobs, one of pods)."""
    custom, core = client.CustomObjectsApi(api_client), client.CoreV1Api(api_client)
    jobs = custom.list_namespaced_custom_object("modelfleet.dev", "v1alpha1", namespace, "trainingjobs")["items"]
    pods = json.loads(core.list_namespaced_pod(namespace, _preload_content=False).data)["items"]
    paths = job_paths(jobs, pods, running_at)
    return summary(paths), oddities(paths, jobs)


def print_path(diagnostics: dict[str, Any]) -> None:
    if path := diagnostics.get("path"):
        print("modelfleet's path to Running, seconds (API timestamps, to the second):")
        print(f"  {'':18}" + "".join(f"{s:>14}" for s in (*STAGES, "total")))
        for row, values in path.items():
            print(f"  {row:18}" + "".join(f"{values[s]:>14}" for s in (*STAGES, "total")))
    if odd := diagnostics.get("oddities"):
        print("jobs restarted during the run: {jobs_restarted}; with a pod bound after all were Running: "
              "{bound_after_running}".format(**odd))  # fmt: skip
        for name, conditions in odd["examples"].items():
            print(f"  {name}: " + "; ".join(conditions))
    if counters := diagnostics.get("counters"):
        print("modelfleet's counters: " + ", ".join(f"{k} {v:g}" for k, v in sorted(counters.items())))
