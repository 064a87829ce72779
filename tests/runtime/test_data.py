from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch

from modelfleet.runtime.data import from_path, synthetic
from modelfleet.runtime.sharding import AdaptiveShares, normalized, pod_weight, slice_bounds

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
    weights = normalized([pod_weight("0.5,0.3,0.2", pod, nproc_per_node=2) for pod in (0, 0, 1, 1, 2, 2)])
    assert len(weights) == 6 and sum(weights) == pytest.approx(1.0) and weights[0] == pytest.approx(0.25)
    bounds = [slice_bounds(64, weights, r) for r in range(6)]
    assert bounds[0][0] == 0 and bounds[-1][1] == 64
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))


def test_a_pod_missing_from_the_weights_makes_the_gang_share_equally() -> None:
    """An elastic gang that grew past the planned pods: no pod may guess its share."""
    assert math.isnan(pod_weight("1,1", 2)) and math.isnan(pod_weight(None, 0)) and math.isnan(pod_weight("x", 0))
    assert normalized([0.5, math.nan, 0.5]) == pytest.approx([1 / 3] * 3)


def test_adaptive_shares_move_toward_throughput_in_bounded_steps() -> None:
    shares = AdaptiveShares([0.5, 0.5])
    first = shares.update(rows=[32, 32], seconds=[0.01, 0.09])  # rank 1 is 9x slower
    assert first == pytest.approx([0.75, 0.25]), "toward [0.9, 0.1], at most half of a share at once"
    for _ in range(10):
        shares.update(rows=[32, 32], seconds=[0.01, 0.09])
    assert shares.shares == pytest.approx([0.9, 0.1], abs=1e-6), "settles at the throughput ratio"
    assert sum(shares.shares) == pytest.approx(1.0)


def test_adaptive_shares_keep_a_floor_and_static_ones_only_measure() -> None:
    shares = AdaptiveShares([0.5, 0.5], min_share=0.1)
    for _ in range(20):
        shares.update(rows=[32, 32], seconds=[0.001, 10.0])
    assert 0.04 < shares.shares[1] < 0.06, "a slow rank keeps a few rows (a tenth of an equal share)"
    static = AdaptiveShares([0.7, 0.3], adaptive=False)
    assert static.update(rows=[10, 10], seconds=[1.0, 1.0]) == [0.7, 0.3] and static.throughput == [10.0, 10.0]
