"""int8 for serving: static quantization (weights and activations) with a calibration at load, kept only where it
makes the model smaller and faster.

Static, not dynamic: dynamic quantization picks each activation's scale from the whole batch it sees, so a row's
answer would depend on the rows it was batched with. With scales fixed at load, a row's answer is the same in any
batch (tested), and on CPU the int8 kernels are the faster ones at batch sizes above a few rows.

Calibration inputs: the artifact's `calibration.pt` (a tensor, or a list of tensors for several inputs; loaded with
weights_only) when there is one, else standard-normal samples of the input shape (what the trainer's synthetic data
and normalised features look like).

The quantized engine (which int8 kernels run) is measured at load too: `x86` (fbgemm or oneDNN per op, for x86
CPUs) and `qnnpack` (built for ARM) where torch has them; the faster at the batch size wins and becomes the
process's engine. Conv-BN-ReLU patterns are fused by torch.fx's preparation before quantizing (one int8 kernel each).
`x.flatten(...)` is traced as `torch.flatten(x, ...)` first: torch.ao's backend configs list only the function among
the ops that keep their input's int8 scale, so the method form ran in fp32 between a dequantize and a quantize (a
conv net's flatten before its classifier: ~5 % of cnn-wide's int8 pass at 64 rows); then the classifier reads the
convolutions' channels-last memory as it lies (int8_layout.py).
"""

from __future__ import annotations

import io
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

CALIBRATION_FILE = "calibration.pt"
CALIBRATION_ROWS = 256
ENGINES = ("x86", "qnnpack")


@dataclass(frozen=True)
class Decision:
    """What was served: `applied` is "int8" or "none"; `reason` says why (measured sizes and times)."""

    applied: str
    reason: str


NOT_QUANTIZED = Decision("none", "no quantization asked for")


def state_bytes(model: nn.Module) -> int:
    """Serialized size of the model's state (what quantization shrinks)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def calibration_inputs(artifact: Path, shapes: Sequence[tuple[int, ...]]) -> list[torch.Tensor]:
    """One batch of calibration rows per input."""
    stored = artifact / CALIBRATION_FILE
    if stored.exists():
        blob = torch.load(stored, map_location="cpu", weights_only=True)
        return [t.float() for t in (blob if isinstance(blob, (list, tuple)) else [blob])]
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(CALIBRATION_ROWS, *shape, generator=generator) for shape in shapes]


# methods whose function form torch.ao quantizes (shares the input's scale) but whose method form it does not
METHODS_AS_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {"flatten": torch.flatten}


def methods_as_functions(module: nn.Module) -> torch.fx.GraphModule:
    """`module` traced, with the calls of METHODS_AS_FUNCTIONS written as the functions (same arguments)."""
    traced = torch.fx.symbolic_trace(module)
    for node in traced.graph.nodes:
        if node.op == "call_method" and node.target in METHODS_AS_FUNCTIONS:
            node.op, node.target = "call_function", METHODS_AS_FUNCTIONS[node.target]
    traced.recompile()
    return traced


def static_int8(module: nn.Module, calibration: Sequence[torch.Tensor], engine: str = "x86") -> nn.Module:
    """The module with int8 weights and activations for `engine` (made the process's quantized engine), observers
    calibrated on `calibration`."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    from modelfleet.runtime.int8_layout import flatten_channels_last  # torch.ao: imported when int8 is asked for

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization announces its move to torchao on every call
        torch.backends.quantized.engine = engine
        traced = methods_as_functions(module.eval())
        prepared = prepare_fx(traced, get_default_qconfig_mapping(engine), tuple(c[:2] for c in calibration))
        with torch.inference_mode():
            for start in range(0, calibration[0].shape[0], 64):
                prepared(*(c[start : start + 64] for c in calibration))
        quantized = convert_fx(prepared)
        flatten_channels_last(quantized, [c[:1] for c in calibration])
        return quantized


def seconds_per_pass(
    forwards: Sequence[Callable[..., object]], inputs: Sequence[torch.Tensor], budget: float = 0.3
) -> list[float]:
    """The fastest of several timed passes of each forward function on `inputs`, taking turns for about `budget`
    seconds after a warm-up: the minimum, and turns, because other processes on the cores only ever add time."""
    best = [float("inf")] * len(forwards)
    with torch.inference_mode():
        for forward in forwards:
            forward(*inputs)
        deadline, rounds = time.perf_counter() + budget, 0
        while rounds < 5 or (time.perf_counter() < deadline and rounds < 200):
            for i, forward in enumerate(forwards):
                started = time.perf_counter()
                forward(*inputs)
                best[i] = min(best[i], time.perf_counter() - started)
            rounds += 1
    return best


def choose_int8(module: nn.Module, calibration: Sequence[torch.Tensor], batch_rows: int) -> tuple[nn.Module, Decision]:
    """The int8 module (on the engine measured fastest) where it is smaller and, at `batch_rows` rows, faster than
    `module`; else `module` itself."""
    engines = [e for e in ENGINES if e in torch.backends.quantized.supported_engines]
    try:
        candidates = {engine: static_int8(module, calibration, engine) for engine in engines}
    except Exception as exc:  # any model torch.fx cannot trace or quantize is served as it is
        return module, Decision("none", f"int8 skipped: the model cannot be quantized statically ({exc})")
    probe = [c[:1].expand(batch_rows, *c.shape[1:]).contiguous() for c in calibration]
    fp32, *per_engine = seconds_per_pass([module, *candidates.values()], probe)  # in turns: noise hits all alike
    timed = dict(zip(candidates, per_engine, strict=True))
    engine = min(timed, key=timed.__getitem__)
    int8 = timed[engine]
    torch.backends.quantized.engine = engine  # a quantized model runs on any engine; this one is for what follows
    quantized = candidates[engine]
    before, after = state_bytes(module), state_bytes(quantized)
    if after >= before:
        return module, Decision("none", f"int8 skipped: it makes the model larger ({before} -> {after} bytes)")
    engines_shown = ", ".join(f"{name} {seconds * 1e3:.3f}" for name, seconds in timed.items())
    timing = f"{fp32 * 1e3:.3f} ms -> {int8 * 1e3:.3f} ms at {batch_rows} rows (engine {engine}; ms: {engines_shown})"
    if int8 >= fp32:
        return module, Decision("none", f"int8 skipped: it makes the model slower ({timing})")
    return quantized, Decision("int8", f"int8: {before} -> {after} bytes, {timing}")
