"""CPU models frozen to TorchScript where that measures faster: fp32 TorchScript models `torch.jit.freeze`d and
`torch.jit.optimize_for_inference`d (weights folded in, conv/linear fused, MKL-DNN layouts); int8 models (torch.fx
GraphModules, which run each op through Python) scripted and frozen, their packed int8 weights inlined
(`optimize_for_inference` is left out for int8: its MKL-DNN rewrites are for float convolutions; measured no
faster on the int8 CNN). A frozen int8 copy answers exactly as the GraphModule (tested).

It is not faster at every batch size (the small fp32 CNN: 2x faster at 16-64 rows, 2x slower at one row, where its
layout conversions cost more than the pass), so both modules are kept and each pass runs the one measured faster
for its row count: the frozen one from `from_rows` up. Measured at load at every power of two up to the batch the
batcher may run (the sizes it does run); a row count where the frozen copy lost is timed once more (on a loaded
node one noisy measurement at 64 rows had served the int8 CNN unfrozen, ~35 % slower). The frozen copy holds the
weights again (inlined constants).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
from torch import nn

from modelfleet.runtime.quantize import seconds_per_pass

MEASURE_BUDGET = 0.1  # seconds of timed passes per row count


class BySize(nn.Module):
    """`plain` for passes of fewer than `from_rows` rows, `frozen` from there; the state is `plain`'s."""

    def __init__(self, plain: nn.Module, frozen: torch.jit.ScriptModule, from_rows: int) -> None:
        super().__init__()
        self.plain = plain
        self.from_rows = from_rows
        object.__setattr__(self, "frozen", frozen)  # not a submodule: its constants are not state

    def forward(self, *inputs: torch.Tensor) -> object:
        return (self.frozen if inputs[0].shape[0] >= self.from_rows else self.plain)(*inputs)


def row_counts(batch_rows: int) -> list[int]:
    counts = [1]
    while counts[-1] < batch_rows:
        counts.append(min(counts[-1] * 2, batch_rows))
    return counts


def frozen_copy(module: nn.Module, quantized: bool) -> torch.jit.ScriptModule:
    """`module` scripted (unless it is TorchScript already) and frozen; fp32 also optimized for inference."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit announces its deprecation on every call
        scripted = module if isinstance(module, torch.jit.ScriptModule) else torch.jit.script(module)
        frozen = torch.jit.freeze(scripted.eval())
        return frozen if quantized else torch.jit.optimize_for_inference(frozen)


def choose_frozen(
    module: nn.Module, probe: Callable[[int], Sequence[torch.Tensor]], batch_rows: int, quantized: bool = False
) -> tuple[nn.Module, str]:
    """`module` with its frozen twin for the row counts where that is faster (see BySize), or `module` itself;
    and why. `probe(rows)` makes inputs of that many rows; `quantized`: an int8 GraphModule (see quantize.py)."""
    kind = "int8" if quantized else "fp32"
    if not quantized and not isinstance(module, torch.jit.ScriptModule):
        return module, "fp32 served as loaded (not TorchScript: nothing to freeze)"
    try:
        frozen = frozen_copy(module, quantized)
    except Exception as exc:  # a model freezing cannot handle is served as it is
        return module, f"{kind} served as loaded (freezing failed: {exc})"
    timings = {rows: seconds_per_pass([module, frozen], probe(rows), MEASURE_BUDGET) for rows in row_counts(batch_rows)}
    for rows, (plain, fast) in timings.items():
        if fast >= plain:  # a loss is timed again, minima kept: one burst of load elsewhere does not decide it
            again = seconds_per_pass([module, frozen], probe(rows), MEASURE_BUDGET)
            timings[rows] = [min(plain, again[0]), min(fast, again[1])]
    shown = ", ".join(f"{rows}: {plain * 1e3:.3f} -> {fast * 1e3:.3f}" for rows, (plain, fast) in timings.items())
    faster = [rows for rows, (plain, fast) in timings.items() if fast < plain]
    # from the smallest row count above which it is faster at every measured size
    from_rows = next((rows for rows in timings if all(r in faster for r in timings if r >= rows)), None)
    if from_rows is None:
        return module, f"{kind} served as loaded: frozen is not faster at {batch_rows} rows (ms per pass {shown})"
    return BySize(module, frozen, from_rows), f"{kind} frozen from {from_rows} rows (ms per pass {shown})"
