"""The batcher's wait for company: a lone request after a pass of several waits only until as many are in, or a
full batch of rows, or the batcher is stopped."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import torch

from modelfleet.runtime.batching import Batcher


def echo_batcher(passes: list[int]) -> Batcher:
    def forward(x: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        passes.append(x[0].shape[0])
        return x

    batcher = Batcher(forward, max_batch_size=64, max_delay_ms=5000)
    batcher.start()
    return batcher


def lone_request_after_a_pass_of_three(
    passes: list[int], then: Callable[[Batcher, asyncio.Future], Awaitable[object]]
) -> float:
    """Three requests in one pass, then a lone one that waits for company (up to 5 s); seconds `then` took."""

    async def scenario() -> float:
        batcher = echo_batcher(passes)
        await asyncio.gather(*(batcher.infer((torch.ones(1, 3),)) for _ in range(3)))
        lone = asyncio.ensure_future(batcher.infer((torch.ones(1, 3),)))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await then(batcher, lone)
        batcher.stop()
        return time.monotonic() - started

    return asyncio.run(scenario())


def test_a_lone_request_waits_only_until_the_last_pass_s_company_is_back() -> None:
    passes: list[int] = []

    async def two_more(batcher: Batcher, lone: asyncio.Future) -> None:
        await asyncio.gather(lone, *(batcher.infer((torch.ones(1, 3),)) for _ in range(2)))

    elapsed = lone_request_after_a_pass_of_three(passes, two_more)
    assert passes == [3, 3], passes
    assert elapsed < 2, f"{elapsed:.2f}s: the lone request waited for the whole 5 s delay"


def test_a_full_batch_of_rows_ends_the_wait_for_company() -> None:
    passes: list[int] = []

    async def rows_to_fill_the_batch(batcher: Batcher, lone: asyncio.Future) -> None:
        await asyncio.gather(lone, batcher.infer((torch.ones(63, 3),)))  # 64 rows in all, one request short

    elapsed = lone_request_after_a_pass_of_three(passes, rows_to_fill_the_batch)
    assert passes == [3, 64], passes
    assert elapsed < 2, f"{elapsed:.2f}s: waited for a third request with the batch already full"


def test_stopping_ends_the_wait_for_company_and_runs_what_is_queued() -> None:
    passes: list[int] = []

    async def stop(batcher: Batcher, lone: asyncio.Future) -> None:
        await asyncio.to_thread(batcher.stop)
        await lone

    elapsed = lone_request_after_a_pass_of_three(passes, stop)
    assert passes == [3, 1], passes
    assert elapsed < 2, f"{elapsed:.2f}s: stop waited out the 5 s delay"
