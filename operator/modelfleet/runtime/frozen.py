"""fp32 on CPU: a TorchScript model frozen and optimized for inference (`torch.jit.freeze` +
`torch.jit.optimize_for_inference`: weights folded in, conv/linear fused, MKL-DNN layouts) where that measures faster.

It is not faster at every batch size (the small CNN: 2x faster at 16-64 rows, 2x slower at one row, where its
layout conversions cost more than the pass), so both modules are kept and each pass runs the one measured faster
for its row count: the frozen one from `from_rows` up. Measured at load at every power of two up to the batch the
batcher may run (the sizes it does run). The frozen copy holds the weights again (inlined constants).
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


def choose_frozen(
    module: nn.Module, probe: Callable[[int], Sequence[torch.Tensor]], batch_rows: int
) -> tuple[nn.Module, str]:
    """`module` with its frozen twin for the row counts where that is faster (see BySize), or `module` itself;
    and why. `probe(rows)` makes inputs of that many rows."""
    if not isinstance(module, torch.jit.ScriptModule):
        return module, "fp32 served as loaded (not TorchScript: nothing to freeze)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit announces its deprecation on every call
            frozen = torch.jit.optimize_for_inference(torch.jit.freeze(module.eval()))
    except Exception as exc:  # a model freezing cannot handle is served as it is
        return module, f"fp32 served as loaded (freezing failed: {exc})"
    timings = {rows: seconds_per_pass([module, frozen], probe(rows), MEASURE_BUDGET) for rows in row_counts(batch_rows)}
    shown = ", ".join(f"{rows}: {plain * 1e3:.3f} -> {fast * 1e3:.3f}" for rows, (plain, fast) in timings.items())
    faster = [rows for rows, (plain, fast) in timings.items() if fast < plain]
    # from the smallest row count above which it is faster at every measured size
    from_rows = next((rows for rows in timings if all(r in faster for r in timings if r >= rows)), None)
    if from_rows is None:
        return module, f"fp32 served as loaded: frozen is not faster at {batch_rows} rows (ms per pass {shown})"
    return BySize(module, frozen, from_rows), f"fp32 frozen from {from_rows} rows (ms per pass {shown})"
