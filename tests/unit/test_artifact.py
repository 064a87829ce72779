from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelfleet.api.training import TrainingJobSpec
from modelfleet.runtime.artifact import artifact_digest, report_artifact, summary
from modelfleet.training.artifact import artifact_from_pods, artifact_uri

SPEC = TrainingJobSpec.model_validate(
    {
        "workers": {"replicas": 2},
        "volumes": [{"name": "store", "persistentVolumeClaim": {"claimName": "models"}}, {"name": "s", "emptyDir": {}}],
        "volumeMounts": [
            {"name": "store", "mountPath": "/models"},
            {"name": "store", "mountPath": "/models/sub", "subPath": "deep"},
            {"name": "s", "mountPath": "/scratch"},
        ],
    }
)


def worker(index: int, code: int, message: str | None) -> dict:
    terminated = {"exitCode": code, "finishedAt": "2026-01-01T00:00:00Z", **({"message": message} if message else {})}
    return {
        "metadata": {"name": f"j-worker-{index}", "labels": {"modelfleet.dev/replica-index": str(index)}},
        "status": {"containerStatuses": [{"name": "worker", "state": {"terminated": terminated}}]},
    }


def test_uri_is_the_claim_path_under_the_deepest_mount() -> None:
    assert artifact_uri(SPEC, "/models/mlp") == "pvc://models/mlp"
    assert artifact_uri(SPEC, "/models/sub/x") == "pvc://models/deep/x"
    assert artifact_uri(SPEC, "/scratch/x") == "file:///scratch/x"
    assert artifact_uri(SPEC, "/elsewhere") == "file:///elsewhere"


def test_digest_covers_names_and_contents(tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(b"abc")
    (tmp_path / ".model.pt.tmp").write_bytes(b"half")
    first = artifact_digest(tmp_path)
    assert first.startswith("sha256:") and first == artifact_digest(tmp_path)
    (tmp_path / "model.pt").write_bytes(b"abd")
    assert artifact_digest(tmp_path) != first


def test_rank_zero_report_becomes_the_artifact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.pt").write_bytes(b"abc")
    log = tmp_path / "termination-log"
    monkeypatch.setenv("MODELFLEET_TERMINATION_LOG", str(log))
    report_artifact(out, {"loss": 0.5, "accuracy": float("nan"), "epochSeconds": [0.1, 0.2]})
    message = json.loads(log.read_text())
    assert message["metrics"] == {"loss": 0.5} and message["digest"] == artifact_digest(out)
    text = summary(out, {"loss": 0.25})
    pods = [worker(1, 0, None), worker(0, 0, text.replace(str(out), "/models/mlp"))]
    artifact = artifact_from_pods(SPEC, pods, "uid-1")
    assert artifact == {
        "uri": "pvc://models/mlp",
        "digest": artifact_digest(out),
        "metrics": {"loss": 0.25},
        "jobUid": "uid-1",
        "createdAt": "2026-01-01T00:00:00Z",
    }


def test_no_artifact_without_a_report_or_from_a_failed_rank_zero() -> None:
    assert artifact_from_pods(SPEC, [worker(0, 0, None)], "u") is None
    assert artifact_from_pods(SPEC, [worker(0, 1, '{"path": "/models/x"}')], "u") is None
    assert artifact_from_pods(SPEC, [worker(0, 0, "not json")], "u") is None
