"""Model artifacts: what the training worker writes and the server loads.

An artifact is a directory with `model.pt` (TorchScript), `weights.pt` (the state dict) and `metadata.json`
(`{"model": "paper-mlp", "inputShape": [3], "classes": 2, "metrics": {...}}`). The server also takes a bare
TorchScript file, or a pickled module (`format: pytorch`) where the operator allows it.

Nothing a user points at runs code on load: weights are read with `weights_only=True`; a pickled module loads only
with MODELFLEET_ALLOW_PICKLE=1 (the operator sets it when the chart's `policy.allowPickledModels` is on); a
`module:factory` named in metadata.json is imported only from the module prefixes in MODELFLEET_MODEL_FACTORIES
(comma-separated; default: modelfleet's own models).
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modelfleet.runtime.models import build_model

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
ALLOW_PICKLE_ENV = "MODELFLEET_ALLOW_PICKLE"
FACTORIES_ENV = "MODELFLEET_MODEL_FACTORIES"
DEFAULT_FACTORIES = "modelfleet.runtime.models"


class RefusedArtifact(ValueError):
    """The artifact would run code this server is not allowed to run."""


def atomic_save(obj: Any, path: Path, save: Any = torch.save) -> None:
    """Writes to a temporary file in the same directory, then renames: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_artifact(
    model: nn.Module, name: str, input_shape: tuple[int, ...], classes: int, out: Path, metrics: dict
) -> Path:
    model = model.eval().cpu()
    scripted = torch.jit.script(model)
    atomic_save(scripted, out / "model.pt", lambda m, p: torch.jit.save(m, p))
    atomic_save(model.state_dict(), out / "weights.pt")
    metadata = {"model": name, "inputShape": list(input_shape), "classes": classes, "metrics": metrics}
    atomic_save(metadata, out / "metadata.json", lambda m, p: Path(p).write_text(json.dumps(m, indent=2)))
    return out


def state_bytes(model: nn.Module) -> int:
    """Serialized size of the model's state (what quantization shrinks)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


@dataclass
class LoadedModel:
    module: nn.Module
    input_shape: tuple[int, ...] | None
    dtype: torch.dtype
    device: str
    metadata: dict[str, Any] = field(default_factory=dict)
    original_bytes: int = 0
    served_bytes: int = 0


def _metadata(path: Path) -> dict[str, Any]:
    meta = (path if path.is_dir() else path.parent) / "metadata.json"
    return json.loads(meta.read_text()) if meta.exists() else {}


def load_model(
    path: str | Path, fmt: str = "torchscript", quantization: str = "none", device: str = "cpu"
) -> LoadedModel:
    """Loads an artifact and applies quantization: int8 dynamic quantization of Linear layers (CPU),
    fp16/bf16 casting (meant for GPUs)."""
    path = Path(path)
    metadata = _metadata(path)
    model_file = path / "model.pt" if path.is_dir() else path
    if not model_file.exists():
        raise FileNotFoundError(f"no model at {model_file}")
    if fmt == "pytorch":
        if os.environ.get(ALLOW_PICKLE_ENV) != "1":
            raise RefusedArtifact(
                "format pytorch is a pickled module, which runs code when loaded: refused unless the chart's "
                "policy.allowPickledModels is true; export the model as TorchScript (format torchscript) instead"
            )
        module: nn.Module = torch.load(model_file, map_location="cpu", weights_only=False)
    elif quantization == "int8":
        module = _eager_from_artifact(model_file, metadata)
    else:
        module = torch.jit.load(str(model_file), map_location="cpu")
    module.eval()
    original = state_bytes(module)
    dtype = torch.float32
    if quantization == "int8":
        if device != "cpu":
            raise ValueError("int8 dynamic quantization runs on CPU; use fp16 or bf16 on GPUs")
        module = torch.ao.quantization.quantize_dynamic(module, {nn.Linear}, dtype=torch.qint8)
    elif quantization in DTYPES:
        dtype = DTYPES[quantization]
        module = module.to(dtype)
    module = module.to(device)
    shape = tuple(metadata["inputShape"]) if "inputShape" in metadata else None
    return LoadedModel(module, shape, dtype, device, metadata, original, state_bytes(module))


def _eager_from_artifact(model_file: Path, metadata: dict[str, Any]) -> nn.Module:
    """int8 needs the eager module: rebuild it from metadata.json's model name and weights.pt."""
    weights = model_file.parent / "weights.pt"
    if "model" not in metadata or not weights.exists():
        raise ValueError(
            "int8 quantization needs an artifact directory with metadata.json and weights.pt, or format pytorch"
        )
    check_factory(metadata["model"])
    module, _, _ = build_model(metadata["model"])
    module.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return module


def check_factory(name: str) -> None:
    """Refuses a `module:factory` whose module is outside the MODELFLEET_MODEL_FACTORIES prefixes (built-in names pass)."""
    module, sep, _ = name.partition(":")
    if not sep:
        return
    allowed = [p.strip() for p in os.environ.get(FACTORIES_ENV, DEFAULT_FACTORIES).split(",") if p.strip()]
    if not any(module == prefix or module.startswith(f"{prefix}.") for prefix in allowed):
        raise RefusedArtifact(
            f"metadata.json names the model factory {name!r}, whose module is not in {FACTORIES_ENV} "
            f"({', '.join(allowed) or 'empty'}): refused, importing it would run its code"
        )
