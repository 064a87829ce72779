"""Nothing a user points at runs code on load: pickles refused by default, factories from an allow-list only,
every tensor file read with weights_only."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import pytest
import torch

from modelfleet.runtime.data import from_path
from modelfleet.runtime.modelio import RefusedArtifact, load_model, save_artifact
from modelfleet.runtime.models import build_model
from modelfleet.runtime.train import TrainConfig, resume
from tests.runtime.factories import wide_mlp


class Touches:
    """Unpickling it creates a file: the proof that loading ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return Path.touch, (self.marker,)


@pytest.fixture
def pickled_module(tmp_path: Path) -> Path:
    model, _, _ = build_model("paper-mlp")
    torch.save(model, tmp_path / "model.pt")
    return tmp_path / "model.pt"


def test_a_pickled_module_is_refused_by_default(pickled_module: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELFLEET_ALLOW_PICKLE", raising=False)
    with pytest.raises(RefusedArtifact, match=r"format pytorch.*policy\.allowPickledModels"):
        load_model(pickled_module, fmt="pytorch")


def test_a_pickled_module_loads_where_the_policy_allows(pickled_module: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELFLEET_ALLOW_PICKLE", "1")
    assert load_model(pickled_module, fmt="pytorch").module(torch.ones(1, 3)).shape == (1, 2)


def artifact_naming(factory: str, tmp_path: Path) -> Path:
    model, shape, classes = wide_mlp()
    return save_artifact(model, factory, shape, classes, tmp_path / "artifact", {})


@pytest.mark.parametrize("factory", ["tests.runtime.factories:wide_mlp", "modelfleet.runtime.modelsx:evil"])
def test_a_factory_outside_the_allow_list_is_never_imported(
    factory: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MODELFLEET_MODEL_FACTORIES", raising=False)
    artifact = artifact_naming(factory, tmp_path)
    module = factory.partition(":")[0]
    monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.raises(RefusedArtifact, match=r"MODELFLEET_MODEL_FACTORIES \(modelfleet\.runtime\.models\)"):
        load_model(artifact, quantization="int8")
    assert module not in sys.modules


def test_a_factory_inside_the_allow_list_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELFLEET_MODEL_FACTORIES", "modelfleet.runtime.models, tests.runtime")
    loaded = load_model(artifact_naming("tests.runtime.factories:wide_mlp", tmp_path), quantization="int8")
    assert loaded.module(torch.ones(1, 64)).shape == (1, 10)


def test_built_in_models_need_no_allow_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELFLEET_MODEL_FACTORIES", "")
    model, shape, classes = build_model("paper-mlp")
    artifact = save_artifact(model, "paper-mlp", shape, classes, tmp_path / "mlp", {})
    assert load_model(artifact, quantization="int8").module(torch.ones(1, 3)).shape == (1, 2)


def test_weights_data_and_checkpoints_load_tensors_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "ran"
    monkeypatch.setenv("MODELFLEET_MODEL_FACTORIES", "tests.runtime")
    artifact = artifact_naming("tests.runtime.factories:wide_mlp", tmp_path)
    torch.save({"evil": Touches(marker)}, artifact / "weights.pt")
    with pytest.raises(pickle.UnpicklingError):
        load_model(artifact, quantization="int8")
    torch.save({"x": Touches(marker), "y": torch.zeros(1)}, tmp_path / "data.pt")
    with pytest.raises(pickle.UnpicklingError):
        from_path(tmp_path / "data.pt")
    torch.save({"model": Touches(marker), "optimizer": {}, "step": 1}, tmp_path / "checkpoint.pt")
    model, _, _ = build_model("paper-mlp")
    with pytest.raises(pickle.UnpicklingError):
        resume(TrainConfig(checkpoint_dir=str(tmp_path)), model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert not marker.exists()
