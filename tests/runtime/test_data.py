from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from modelfleet.runtime.data import from_path, synthetic
from modelfleet.runtime.sharding import parse_weights, slice_bounds

pytestmark = pytest.mark.runtime


def test_csv_and_tensor_files(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("# x1,x2,x3,label\n0.1,0.2,0.3,1\n1,2,3,0\n")
    x, y = from_path(tmp_path / "d.csv")
    assert x.shape == (2, 3) and y.tolist() == [1, 0]
    torch.save({"x": torch.ones(4, 3), "y": torch.zeros(4)}, tmp_path / "d.pt")
    x, y = from_path(tmp_path / "d.pt")
    assert x.dtype == torch.float32 and y.dtype == torch.int64


def test_synthetic_is_seeded() -> None:
    a, b = synthetic((3,), 2, 100, 7), synthetic((3,), 2, 100, 7)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and set(a[1].tolist()) == {0, 1}


def test_slices_cover_every_row_once() -> None:
    weights = parse_weights("0.5,0.3,0.2", 6, nproc_per_node=2)
    assert len(weights) == 6 and sum(weights) == pytest.approx(1.0)
    bounds = [slice_bounds(64, weights, r) for r in range(6)]
    assert bounds[0][0] == 0 and bounds[-1][1] == 64
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    assert parse_weights("1,1", 3) == [1.0, 1.0, 1.0], "a world that does not match falls back to equal"
