"""spec.compression and Adaptive sharding as the workers receive them (pure builders) and as the API refuses them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from modelfleet.api.training import TrainingJobSpec
from modelfleet.scheduling.nodes import NodeInfo
from modelfleet.training.builders import worker_pod

META = {"name": "student", "namespace": "ns", "uid": "uid-1"}
NODES = [NodeInfo("n0", "r1", "z1", "H100", 8, 8), NodeInfo("n1", "r1", "z1", "T4", 4, 4)]


def spec(**fields: object) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate({"workers": {"replicas": 2}, "resources": {"gpus": 1}, **fields})


def env(pod: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"] if "value" in e}


def test_compression_reaches_the_workers_as_env_and_a_read_only_teacher_claim() -> None:
    compression = {"distillation": {"teacher": "pvc://models/cnn/teacher", "alpha": 0.7},
                   "pruning": {"amount": 0.5, "structured": True, "atFraction": 1}}  # fmt: skip
    pod = worker_pod(META, spec(compression=compression), 1, NODES, 0)
    assert {k: v for k, v in env(pod).items() if k.startswith(("MODELFLEET_DISTILL", "MODELFLEET_PRUNE"))} == {
        "MODELFLEET_DISTILL_TEACHER": "/mnt/teacher/models/cnn/teacher",
        "MODELFLEET_DISTILL_TEMPERATURE": "2.0",
        "MODELFLEET_DISTILL_ALPHA": "0.7",
        "MODELFLEET_PRUNE_AMOUNT": "0.5",
        "MODELFLEET_PRUNE_STRUCTURED": "true",
        "MODELFLEET_PRUNE_AT": "1.0",
    }
    assert {"name": "teacher", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}} in pod["spec"][
        "volumes"
    ]
    mounts = pod["spec"]["containers"][0]["volumeMounts"]
    assert {"name": "teacher", "mountPath": "/mnt/teacher/models", "readOnly": True} in mounts


def test_a_file_teacher_is_a_path_and_mounts_nothing() -> None:
    pod = worker_pod(META, spec(compression={"distillation": {"teacher": "file:///models/t"}}), 0, NODES, 0)
    assert env(pod)["MODELFLEET_DISTILL_TEACHER"] == "/models/t"
    assert not any(v["name"] == "teacher" for v in pod["spec"]["volumes"])
    assert "MODELFLEET_PRUNE_AMOUNT" not in env(pod)


def test_adaptive_starts_from_the_gpu_weights_and_each_pod_knows_its_index() -> None:
    pods = [worker_pod(META, spec(dataset={"sharding": "Adaptive"}), i, NODES, 0) for i in range(2)]
    weights = [float(w) for w in env(pods[0])["MODELFLEET_SHARD_WEIGHTS"].split(",")]
    assert weights[0] > weights[1], "H100 over T4, as Weighted"
    assert [env(p)["MODELFLEET_REPLICA_INDEX"] for p in pods] == ["0", "1"]
    assert env(pods[0])["MODELFLEET_SHARDING"] == "Adaptive" and env(pods[0])["MODELFLEET_REBALANCE_STEPS"] == "20"


@pytest.mark.parametrize(
    "compression",
    [
        {"distillation": {"teacher": "https://hub.example.com/t"}},
        {"distillation": {"teacher": "/t", "alpha": -0.1}},
        {"distillation": {"teacher": "/t", "temperature": 0}},
        {"pruning": {"amount": 0}},
        {"pruning": {"amount": 0.5, "atFraction": 2}},
    ],
)
def test_out_of_range_compression_is_refused(compression: dict) -> None:
    with pytest.raises(ValidationError):
        spec(compression=compression)
