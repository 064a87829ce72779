"""Training data: a seeded synthetic set per built-in model, or tensors / CSV from a path. Nothing downloads."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

IMAGE_NOISE = 3.0
"""Noise around each class's pattern in synthetic images: hard enough that model size shows in the accuracy."""


def synthetic(shape: tuple[int, ...], classes: int, samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A separable task. Vectors: the class is the arg-max of fixed random projections of the input. Images
    (C x H x W): each class is a smooth random pattern, seen through Gaussian noise."""
    generator = torch.Generator().manual_seed(seed)
    if len(shape) == 3:
        coarse = torch.randn(classes, shape[0], max(shape[1] // 4, 1), max(shape[2] // 4, 1), generator=generator)
        patterns = F.interpolate(coarse, size=shape[1:], mode="bilinear", align_corners=False)
        y = torch.randint(0, classes, (samples,), generator=generator)
        return patterns[y] + IMAGE_NOISE * torch.randn(samples, *shape, generator=generator), y
    x = torch.randn(samples, *shape, generator=generator)
    projection = torch.randn(int(torch.tensor(shape).prod()), classes, generator=generator)
    y = (x.flatten(1) @ projection).argmax(dim=1)
    return x, y


def from_path(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """A `.pt` file holding {"x": tensor, "y": tensor}, or a CSV whose last column is the integer label."""
    path = Path(path)
    if path.suffix == ".csv":
        rows = [line.split(",") for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
        values = torch.tensor([[float(v) for v in row] for row in rows])
        return values[:, :-1], values[:, -1].long()
    blob = torch.load(path, map_location="cpu", weights_only=True)  # tensors only: no pickled code runs
    return blob["x"].float(), blob["y"].long()
