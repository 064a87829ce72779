"""User-model factories the runtime tests load by `module:factory`, as a user's package would be."""

from __future__ import annotations

import torch
from torch import nn


def wide_mlp() -> tuple[nn.Module, tuple[int, ...], int]:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)), (64,), 10
