"""Model artifacts: what the training worker writes and the server loads.

An artifact is a directory with `model.pt` (TorchScript), `weights.pt` (the state dict) and `metadata.json`
(`{"model": "paper-mlp", "inputShape": [3], "classes": 2, "metrics": {...}}`; a model with several named inputs or
outputs lists them as `"inputs"`/`"outputs"`: `[{"name", "datatype", "shape"}]`, see v2.Signature), and optionally
`calibration.pt` (input rows for int8 calibration). The server also takes a bare TorchScript file, or a pickled
module (`format: pytorch`) where the operator allows it.

Nothing a user points at runs code on load: weights are read with `weights_only=True`; a pickled module loads only
with MODELFLEET_ALLOW_PICKLE=1 (the operator sets it when the chart's `policy.allowPickledModels` is on); a
`module:factory` named in metadata.json is imported only from the module prefixes in MODELFLEET_MODEL_FACTORIES
(comma-separated; default: modelfleet's own models).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from modelfleet.contract import ALLOW_PICKLE_ENV, MODEL_FACTORIES_ENV
from modelfleet.runtime.frozen import choose_frozen
from modelfleet.runtime.models import build_model
from modelfleet.runtime.quantize import (
    CALIBRATION_FILE,
    NOT_QUANTIZED,
    Decision,
    calibration_inputs,
    choose_int8,
    state_bytes,
)
from modelfleet.runtime.v2 import DATATYPES, Signature

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
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
    model: nn.Module,
    name: str,
    input_shape: tuple[int, ...],
    classes: int,
    out: Path,
    metrics: dict,
    signature: dict[str, list[dict[str, Any]]] | None = None,
    calibration: torch.Tensor | list[torch.Tensor] | None = None,
) -> Path:
    """`signature`: {"inputs": [...], "outputs": [...]} for a model with several named tensors; `calibration`:
    representative input rows the server calibrates int8 activations on."""
    model = model.eval().cpu()
    scripted = torch.jit.script(model)
    atomic_save(scripted, out / "model.pt", lambda m, p: torch.jit.save(m, p))
    atomic_save(model.state_dict(), out / "weights.pt")
    if calibration is not None:
        atomic_save(calibration, out / CALIBRATION_FILE)
    metadata = {"model": name, "inputShape": list(input_shape), "classes": classes, "metrics": metrics}
    metadata.update(signature or {})
    atomic_save(metadata, out / "metadata.json", lambda m, p: Path(p).write_text(json.dumps(m, indent=2)))
    return out


@dataclass
class LoadedModel:
    module: nn.Module
    signature: Signature
    dtype: torch.dtype
    device: str
    metadata: dict[str, Any] = field(default_factory=dict)
    original_bytes: int = 0
    served_bytes: int = 0
    quantization: Decision = NOT_QUANTIZED
    freezing: str = "not frozen (only fp32 TorchScript and int8 models on CPU are)"  # else what choose_frozen decided


def probe_inputs(signature: Signature, rows: int) -> tuple[torch.Tensor, ...]:
    """Zero inputs of `rows` rows in the signature's shapes and datatypes (for timing passes)."""
    return tuple(torch.from_numpy(np.zeros((rows, *t.shape[1:]), DATATYPES[t.datatype])) for t in signature.inputs)  # type: ignore[index]


def _metadata(path: Path) -> dict[str, Any]:
    meta = (path if path.is_dir() else path.parent) / "metadata.json"
    return json.loads(meta.read_text()) if meta.exists() else {}


def load_model(
    path: str | Path,
    fmt: str = "torchscript",
    quantization: str = "none",
    device: str = "cpu",
    batch_rows: int = 1,
    freeze: bool = True,
) -> LoadedModel:
    """Loads an artifact and applies quantization: static int8 (CPU; kept only where smaller and faster at
    `batch_rows` rows, see quantize.py), fp16/bf16 casting (meant for GPUs). An fp32 TorchScript or an int8 model on
    CPU is also frozen for the row counts where that measures faster (see frozen.py), unless `freeze` is off (a
    module the caller moves to another device or trains with)."""
    path = Path(path)
    metadata = _metadata(path)
    signature = Signature.from_metadata(metadata)
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
    decision = NOT_QUANTIZED
    if quantization == "int8":
        if device != "cpu":
            raise ValueError("int8 quantization runs on CPU; use fp16 or bf16 on GPUs")
        shapes = [t.shape[1:] if t.shape else None for t in signature.inputs]
        if any(s is None or -1 in s for s in shapes):
            decision = Decision("none", "int8 skipped: calibration needs the input shapes in metadata.json")
        else:
            calibration = calibration_inputs(model_file.parent, shapes)  # type: ignore[arg-type]
            module, decision = choose_int8(module, calibration, batch_rows)
    elif quantization in DTYPES:
        dtype = DTYPES[quantization]
        module = module.to(dtype)
        decision = Decision(quantization, f"weights cast to {quantization}")
    module = module.to(device)
    served = state_bytes(module)
    freezing = LoadedModel.freezing
    fixed_shapes = all(t.shape is not None and -1 not in t.shape[1:] for t in signature.inputs)
    quantized = decision.applied == "int8"
    if freeze and device == "cpu" and fixed_shapes and (quantized or decision.applied == "none"):
        module, freezing = choose_frozen(module, lambda rows: probe_inputs(signature, rows), batch_rows, quantized)
    return LoadedModel(module, signature, dtype, device, metadata, original, served, decision, freezing)


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
    allowed = [p.strip() for p in os.environ.get(MODEL_FACTORIES_ENV, DEFAULT_FACTORIES).split(",") if p.strip()]
    if not any(module == prefix or module.startswith(f"{prefix}.") for prefix in allowed):
        raise RefusedArtifact(
            f"metadata.json names the model factory {name!r}, whose module is not in {MODEL_FACTORIES_ENV} "
            f"({', '.join(allowed) or 'empty'}): refused, importing it would run its code"
        )
