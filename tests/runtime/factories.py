"""User-model factories the runtime tests load by `module:factory`, as a user's package would be."""

from __future__ import annotations

import time

import torch
from torch import nn


def wide_mlp() -> tuple[nn.Module, tuple[int, ...], int]:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)), (64,), 10


class TwoTower(nn.Module):
    """Two named inputs of different datatypes, two named outputs (see TWO_TOWER_SIGNATURE)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Linear(4, 3)
        self.context = nn.Embedding(10, 3)

    def forward(self, features: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        score = self.features(features) + self.context(context).sum(dim=1)
        return score, score.argmax(dim=1)


TWO_TOWER_SIGNATURE = {
    "inputs": [
        {"name": "features", "datatype": "FP32", "shape": [-1, 4]},
        {"name": "context", "datatype": "INT64", "shape": [-1, 2]},
    ],
    "outputs": [
        {"name": "score", "datatype": "FP32", "shape": [-1, 3]},
        {"name": "label", "datatype": "INT64", "shape": [-1]},
    ],
}


def two_tower() -> tuple[nn.Module, tuple[int, ...], int]:
    torch.manual_seed(0)
    return TwoTower(), (4,), 3


class Sleepy(nn.Module):
    """A pass that takes `seconds` whatever its rows: calls pile up behind it (a pickled module, format pytorch)."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds)
        return x[:, :2]
