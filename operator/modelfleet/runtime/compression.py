"""Compression while training (`spec.compression`): distillation from a teacher artifact, magnitude pruning, and
the figures an artifact records about its size and compute.

- Distillation: the loss is `alpha * T^2 * KL(teacher || student at temperature T) + (1 - alpha) * cross-entropy`,
  summed over the rank's rows like the plain loss, so sharded training still equals single-process training.
- Pruning: at a point in training, the smallest weights by magnitude (`torch.nn.utils.prune`) of every Linear and
  Conv layer are masked: globally across layers (unstructured) or whole output channels by L2 norm per layer
  (structured; the last layer, whose outputs are the classes, is left whole). Training goes on with the masks fixed,
  and `make_permanent` writes the zeros into the weights before the artifact is saved.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune
from torch.utils.flop_counter import FlopCounterMode

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class Distillation:
    teacher: nn.Module
    temperature: float = 2.0
    alpha: float = 0.5

    def loss_sum(self, logits: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The distillation loss summed over the rows (the caller scales it to the global batch mean)."""
        with torch.no_grad():
            soft_targets = F.log_softmax(self.teacher(inputs) / self.temperature, dim=1)
        soft = F.kl_div(
            F.log_softmax(logits / self.temperature, dim=1), soft_targets, reduction="sum", log_target=True
        ) * (self.temperature**2)
        hard = F.cross_entropy(logits, labels, reduction="sum")
        return self.alpha * soft + (1 - self.alpha) * hard


@dataclass(frozen=True)
class Pruning:
    amount: float
    structured: bool = False
    at_fraction: float = 0.5
    """When in training: the fraction of all steps done before pruning (1.0: after the last step)."""

    def step(self, total_steps: int) -> int:
        return round(self.at_fraction * total_steps)

    def apply(self, model: nn.Module) -> None:
        layers = prunable_layers(model)
        if self.structured:
            for layer in layers[:-1]:
                prune.ln_structured(layer, "weight", amount=self.amount, n=2, dim=0)
        else:
            prune.global_unstructured(
                [(layer, "weight") for layer in layers], pruning_method=prune.L1Unstructured, amount=self.amount
            )


def prunable_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, PRUNABLE)]


def restore_masks(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Gives a fresh model the pruning masks a checkpoint holds, so its state dict loads into it."""
    modules = dict(model.named_modules())
    for key in state:
        if key.endswith(".weight_mask"):
            prune.identity(modules[key.removesuffix(".weight_mask")], "weight")


def make_permanent(model: nn.Module) -> None:
    """Writes the masks' zeros into the weights and drops the masks (what the artifact stores)."""
    for layer in prunable_layers(model):
        if prune.is_pruned(layer) and hasattr(layer, "weight_mask"):
            prune.remove(layer, "weight")


def model_figures(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """Parameters, non-zero parameters, FLOPs per sample (dense, and counting only non-zero weights) and the
    serialized size of the weights."""
    parameters = [p.detach() for p in model.parameters()]
    flops = FlopCounterMode(display=False)
    with flops, torch.no_grad():
        model(torch.zeros(1, *input_shape))
    per_module = {name: sum(ops.values()) for name, ops in flops.get_flop_counts().items()}
    root = type(model).__name__
    total = flops.get_total_flops()
    saved = 0.0
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, PRUNABLE) and isinstance(weight, torch.Tensor):
            layer_flops = per_module.get(f"{root}.{name}" if name else root, 0)
            saved += layer_flops * (1 - float(weight.count_nonzero()) / weight.numel())
    weights = io.BytesIO()
    torch.save(model.state_dict(), weights)
    return {
        "parameters": sum(p.numel() for p in parameters),
        "nonzeroParameters": sum(int(p.count_nonzero()) for p in parameters),
        "flopsPerSample": int(total),
        "nonzeroFlopsPerSample": round(total - saved),
        "sizeBytes": weights.getbuffer().nbytes,
    }
