"""The batcher's wait for company: a lone request after a pass of several waits only until as many are in."""

from __future__ import annotations

import asyncio
import time

import torch

from modelfleet.runtime.batching import Batcher


def test_a_lone_request_waits_only_until_the_last_pass_s_company_is_back() -> None:
    passes: list[int] = []

    def forward(x: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        passes.append(x[0].shape[0])
        return x

    async def scenario() -> float:
        batcher = Batcher(forward, max_batch_size=64, max_delay_ms=5000)
        batcher.start()
        await asyncio.gather(*(batcher.infer((torch.ones(1, 3),)) for _ in range(3)))
        started = time.monotonic()
        lone = asyncio.ensure_future(batcher.infer((torch.ones(1, 3),)))
        await asyncio.sleep(0.05)
        await asyncio.gather(lone, *(batcher.infer((torch.ones(1, 3),)) for _ in range(2)))
        batcher.stop()
        return time.monotonic() - started

    elapsed = asyncio.run(scenario())
    assert passes == [3, 3], passes
    assert elapsed < 2, f"{elapsed:.2f}s: the lone request waited for the whole 5 s delay"
