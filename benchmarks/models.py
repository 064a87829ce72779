"""Benchmark models, loadable by the runtime as `benchmarks.models:<factory>`."""

from __future__ import annotations

import torch
from torch import nn


def mlp() -> tuple[nn.Module, tuple[int, ...], int]:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)), (64,), 10
