"""The scale benchmark's pure parts: its inventory, its audit count, its KWOK config and its target checks."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from benchmarks.scale import Size, inventory, print_jobs, repeated_figures, targets
from benchmarks.scale_cluster import OPERATOR_USER, ScaleCluster
from benchmarks.scale_timeline import job_paths, oddities, summary


def test_large_inventory_has_room_for_every_worker() -> None:
    size = Size(jobs=5000, nodes=2000, gpus_per_node=16)
    nodes = inventory(size)
    assert len(nodes) == size.node_count == 1992
    assert {n["status"]["allocatable"]["nvidia.com/gpu"] for n in nodes} == {"16"}
    assert len(nodes) * 16 > 1.5 * 17_500  # ~17,500 workers (3.5 a job), in 3 regions picked at random, all fit


def test_operator_requests_count_each_request_once_by_verb(tmp_path: Path) -> None:
    cluster = ScaleCluster(tmp_path)
    cluster.audit_log.parent.mkdir(parents=True)
    entries = [
        {"auditID": "a", "verb": "watch", "stage": "ResponseStarted", "user": {"username": OPERATOR_USER}},
        {"auditID": "a", "verb": "watch", "stage": "ResponseComplete", "user": {"username": OPERATOR_USER}},
        {"auditID": "b", "verb": "create", "stage": "ResponseComplete", "user": {"username": OPERATOR_USER}},
        {"auditID": "c", "verb": "list", "stage": "ResponseComplete", "user": {"username": "someone-else"}},
    ]
    cluster.audit_log.write_text("".join(json.dumps(e) + "\n" for e in entries))
    assert cluster.operator_requests() == {"watch": 1, "create": 1}


def test_kwok_config_reports_node_status_as_a_kubelet_does(tmp_path: Path) -> None:
    docs = list(yaml.safe_load_all(ScaleCluster(tmp_path).kwok_config().read_text()))
    heartbeat = next(d for d in docs if d["kind"] == "Stage" and d["metadata"]["name"] == "node-heartbeat")
    assert heartbeat["spec"]["delay"]["durationMilliseconds"] >= 240_000
    assert any(d["kind"] == "KwokConfiguration" for d in docs)


def test_targets_say_which_are_met() -> None:
    figures = {"jobs": 1000, "jobs_running": 1000, "peak_rss_mb": 180.0, "cpu_seconds": 50.0, "p99_seconds": 100.0}
    results = {
        "modelfleet": figures,
        "peer": {**figures, "cpu_seconds": 30.0, "p99_seconds": 300.0},
        "peer-tuned": {**figures, "p99_seconds": 90.0},
    }
    lines = targets(Size(1000, 500), results)
    assert lines[0].startswith("met: all 1,000 jobs")
    assert [line.split(":")[0] for line in lines[1:]] == ["met", "NOT met", "met", "NOT met"]


def test_repeated_runs_give_medians_with_their_spread_and_every_run_must_reach_running(capsys) -> None:
    """Ratios and targets are taken on medians; "all reach Running" on the worst run; the printed cells show the
    spread; diagnostics come from the run whose p99 is the median's."""
    runs = [
        {"jobs": 1000, "jobs_running": 1000, "p99_seconds": p99, "cpu_seconds": cpu, "peak_rss_mb": 160.0,
         "measured": at, "diagnostics": {"p99": p99}}
        for p99, cpu, at in ((50.0, 30.0, "02:10 UTC"), (44.0, 25.0, "02:14 UTC"), (60.0, 28.0, "02:18 UTC"))
    ]  # fmt: skip
    runs[2]["jobs_running"] = 998
    figures = repeated_figures(runs)
    assert (figures["p99_seconds"], figures["cpu_seconds"], figures["jobs_running"]) == (50.0, 28.0, 998)
    assert figures["measured"] == "02:10 UTC to 02:18 UTC"
    assert figures["diagnostics"] == {"p99": 50.0}
    assert len(figures["runs"]) == 3 and all("diagnostics" not in run for run in figures["runs"])
    assert repeated_figures(runs[:1]) is runs[0]

    peer = repeated_figures([{**r, "p99_seconds": r["p99_seconds"] - 5, "jobs_running": 1000} for r in runs])
    print_jobs(Size(1000, 500), {"modelfleet": figures, "peer-tuned": peer})
    out = capsys.readouterr().out
    assert "50 (44-60)" in out and "45 (39-55)" in out and "1.11" in out and "998 (998-1000)" in out
    assert "NOT met: all 1,000 jobs reach Running" in out and "1000.0" not in out


def test_a_jobs_path_to_running_splits_at_its_first_pod_its_last_pod_and_its_last_binding() -> None:
    def pod(made: str, bound: str) -> dict:
        scheduled = {"type": "PodScheduled", "status": "True", "lastTransitionTime": f"2026-01-01T00:00:{bound}Z"}
        return {"metadata": {"labels": {"modelfleet.dev/job-name": "j"}, "creationTimestamp": f"2026-01-01T00:00:{made}Z"},
                "status": {"conditions": [scheduled]}}  # fmt: skip

    jobs = [{"metadata": {"name": "j", "creationTimestamp": "2026-01-01T00:00:00Z"}}, {"metadata": {"name": "gone"}}]
    running = {"j": 1767225620.0}  # 00:00:20
    (path,) = job_paths(jobs, [pod("05", "09"), pod("06", "12")], running)
    assert path == {
        "to_first_pod": 5.0, "creates": 1.0, "to_scheduled": 6.0, "to_running": 8.0, "total": 20.0, "restarts": 0,
        "job": "j",
    }  # fmt: skip
    assert oddities([path]) == {"jobs_restarted": 0, "bound_after_running": 0, "examples": {}}
    why = {"type": "Running", "status": "False", "reason": "GangRestart", "message": "worker 1 lost"}
    restarted = {**jobs[0], "status": {"restarts": 1, "conditions": [why]}}
    (replaced,) = job_paths([restarted], [pod("05", "09"), pod("25", "26")], running)  # a pod made again at 00:25
    assert oddities([replaced], [restarted]) == {
        "jobs_restarted": 1, "bound_after_running": 1, "examples": {"j": ["Running=False GangRestart: worker 1 lost"]},
    }  # fmt: skip
    assert summary([path])["mean_slowest_1pct"]["total"] == 20.0
