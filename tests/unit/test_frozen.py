"""Freezing: the frozen copy runs only for the row counts where it measured faster, and answers as the model (fp32
close, int8 exactly); the int8 engine is the one measured faster."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from modelfleet.runtime import frozen, int8_layout, quantize
from modelfleet.runtime.frozen import BySize, choose_frozen, frozen_copy, row_counts
from modelfleet.runtime.models import build_model
from modelfleet.runtime.quantize import choose_int8, static_int8


def scripted() -> torch.jit.ScriptModule:
    torch.manual_seed(0)
    return torch.jit.script(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)).eval())


def probe(rows: int) -> tuple[torch.Tensor, ...]:
    return (torch.zeros(rows, 8),)


def test_row_counts_are_the_powers_of_two_up_to_the_batch() -> None:
    assert row_counts(1) == [1]
    assert row_counts(48) == [1, 2, 4, 8, 16, 32, 48]


def test_the_frozen_copy_runs_from_the_first_row_count_it_is_faster_at_from_there_on(monkeypatch) -> None:
    # measured times: (plain, frozen) by row count; frozen faster from 4 rows, except a noisy win at 1 row
    times = {1: (1.0, 0.9), 2: (1.0, 1.1), 4: (1.0, 0.5), 8: (2.0, 1.0)}
    monkeypatch.setattr(frozen, "seconds_per_pass", lambda forwards, inputs, budget: list(times[inputs[0].shape[0]]))
    model = scripted()
    chosen, reason = choose_frozen(model, probe, 8)
    assert isinstance(chosen, BySize) and chosen.from_rows == 4, reason
    assert reason.startswith("fp32 frozen from 4 rows")
    assert set(chosen.state_dict()) == {f"plain.{k}" for k in model.state_dict()}, "the frozen copy is not state"
    x = torch.randn(8, 8)
    with torch.inference_mode():
        for rows in (1, 8):
            torch.testing.assert_close(chosen(x[:rows]), model(x[:rows]))


def test_a_model_frozen_is_not_faster_for_or_cannot_be_frozen_is_served_as_loaded(monkeypatch) -> None:
    monkeypatch.setattr(frozen, "seconds_per_pass", lambda forwards, inputs, budget: [1.0, 2.0])
    model = scripted()
    assert choose_frozen(model, probe, 8)[0] is model
    eager = nn.Linear(8, 3)
    chosen, reason = choose_frozen(eager, probe, 8)
    assert chosen is eager and "not TorchScript" in reason


def small_cnn() -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(0)
    model, shape, _ = build_model("cnn")
    return model.eval(), shape


def test_an_int8_model_frozen_answers_exactly_as_its_graph_module() -> None:
    model, shape = small_cnn()
    quantized = static_int8(model, [torch.randn(64, *shape)])
    chosen, reason = choose_frozen(quantized, lambda rows: (torch.zeros(rows, *shape),), 16, quantized=True)
    assert reason.startswith("int8 "), reason
    copy = frozen_copy(quantized, quantized=True)
    x = torch.randn(16, *shape)
    with torch.inference_mode():
        for rows in (1, 5, 16):
            assert torch.equal(copy(x[:rows]), quantized(x[:rows]))
            assert torch.equal(chosen(x[:rows]), quantized(x[:rows]))


def test_the_int8_engine_is_the_one_measured_faster(monkeypatch) -> None:
    model, shape = small_cnn()
    engines = [e for e in quantize.ENGINES if e in torch.backends.quantized.supported_engines]
    if len(engines) < 2:
        pytest.skip("this torch has one quantized engine")
    fastest = engines[-1]

    def timed(forwards: list, inputs: list, budget: float = 0.3) -> list[float]:  # fp32, then each engine's int8
        return [0.003, *(0.001 if engine == fastest else 0.002 for engine in engines)]

    monkeypatch.setattr(quantize, "seconds_per_pass", timed)
    before = torch.backends.quantized.engine
    try:
        _, decision = choose_int8(model, [torch.randn(64, *shape)], 8)
        assert decision.applied == "int8" and f"engine {fastest}" in decision.reason, decision
        assert torch.backends.quantized.engine == fastest
    finally:
        torch.backends.quantized.engine = before


def test_an_int8_conv_net_stays_int8_from_its_input_to_its_output() -> None:
    model, shape = small_cnn()  # its forward flattens with the method, x.flatten(1)
    quantized = static_int8(model, [torch.randn(64, *shape)])
    calls = [node.target for node in quantized.graph.nodes if node.op in ("call_function", "call_method")]
    assert calls.count("dequantize") == 1 and calls[-1] == "dequantize", calls  # only the answer leaves int8
    assert torch.flatten in calls


def test_the_classifier_reads_channels_last_features_and_answers_bit_for_bit_as_before(monkeypatch) -> None:
    model, shape = small_cnn()
    calibration = [torch.randn(64, *shape)]
    monkeypatch.setattr(int8_layout, "flatten_channels_last", lambda model, sample: 0)
    before = static_int8(model, calibration)
    monkeypatch.undo()
    rewritten = copy.deepcopy(before)
    assert int8_layout.flatten_channels_last(rewritten, [calibration[0][:1]]) == 1
    assert "permute" in [node.target for node in rewritten.graph.nodes]
    x = torch.randn(16, *shape)
    with torch.inference_mode():
        for rows in (1, 5, 16):
            assert torch.equal(rewritten(x[:rows]), before(x[:rows]))


def test_a_row_count_the_frozen_copy_lost_is_timed_again(monkeypatch) -> None:
    measured: dict[int, list[list[float]]] = {1: [[1.0, 0.5]], 2: [[1.0, 0.5]], 4: [[1.0, 3.0], [1.2, 0.6]]}  # 4: noisy
    monkeypatch.setattr(
        frozen, "seconds_per_pass", lambda forwards, inputs, budget: measured[inputs[0].shape[0]].pop(0)
    )
    chosen, reason = choose_frozen(scripted(), probe, 4)
    assert isinstance(chosen, BySize) and chosen.from_rows == 1, reason
    assert "4: 1000.000 -> 600.000" in reason  # the minima of both timings
