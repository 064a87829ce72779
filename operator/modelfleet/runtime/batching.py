"""Dynamic batching: concurrent requests merged into one forward pass, off the event loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

Tensors = tuple[torch.Tensor, ...]
Forward = Callable[[Tensors], Tensors]


@dataclass
class Pending:
    inputs: Tensors
    future: asyncio.Future[Tensors]

    @property
    def rows(self) -> int:
        return self.inputs[0].shape[0]


def sized_batch(max_batch_size: int, budget_seconds: float, seconds_for: Callable[[int], float]) -> int:
    """The largest row count (powers of two, then `max_batch_size`) whose forward pass takes at most
    `budget_seconds`, measured by `seconds_for(rows)`; at least 1. A request that arrives while such a pass runs
    waits at most about one pass, so the batch size bounds what batching adds to latency."""
    rows = 1
    while rows < max_batch_size:
        candidate = min(rows * 2, max_batch_size)
        if seconds_for(candidate) > budget_seconds:
            break
        rows = candidate
    return rows


def merge(batch: Sequence[Pending]) -> Tensors:
    if len(batch) == 1:
        return batch[0].inputs
    return tuple(torch.cat(parts) for parts in zip(*(p.inputs for p in batch), strict=True))


class Batcher:
    """Collects requests until `max_batch_size` rows or `max_delay_ms` after the first, then runs them together.

    Under load, a batch is whatever queued while the previous pass ran (up to `max_batch_size` rows), and it runs at
    once. Only a lone request after a pass that held several waits for company: up to `max_delay_ms`, or until as
    many requests as that pass held are in (the clients it answered are likely to be back; waiting on past them
    only adds latency). Under light load (the last pass held a single request) it runs at once: waiting for
    company that is not coming would only add `max_delay_ms` to its latency.

    Each request's rows come back to it alone; if the merged pass fails, each request is run by itself so a bad
    one fails only itself. `on_batch` sees every batch size (for the metrics).

    At most `max_queue` requests wait (0: no bound): one more raises `asyncio.QueueFull` at once (the server answers 503).
    A request whose caller gave up (its future cancelled) is dropped before its forward pass.
    """

    def __init__(
        self,
        forward: Forward,
        max_batch_size: int,
        max_delay_ms: float,
        on_batch: Callable[[int], None] = lambda _: None,
        max_queue: int = 0,
    ) -> None:
        self.forward = forward
        self.max_batch_size = max_batch_size
        self.max_delay = max_delay_ms / 1000
        self.on_batch = on_batch
        self.queue: asyncio.Queue[Pending] = asyncio.Queue(maxsize=max_queue)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self.task: asyncio.Task[None] | None = None
        self.last_batch = 0

    def start(self) -> None:
        self.task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
        self.executor.shutdown(wait=True)

    async def infer(self, inputs: Tensors) -> Tensors:
        future: asyncio.Future[Tensors] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait(Pending(inputs, future))
        return await future

    async def _loop(self) -> None:
        while True:
            batch = [await self.queue.get()]
            rows = batch[0].rows
            while rows < self.max_batch_size and not self.queue.empty():
                batch.append(self.queue.get_nowait())
                rows += batch[-1].rows
            delay = self.max_delay if len(batch) == 1 and self.last_batch > 1 else 0.0
            deadline = time.monotonic() + delay
            while rows < self.max_batch_size and len(batch) < self.last_batch:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self.queue.get(), timeout=remaining)
                except TimeoutError:
                    break
                batch.append(item)
                rows += item.rows
            batch = [p for p in batch if not p.future.done()]
            if batch:
                await self._run(batch)

    async def _run(self, batch: list[Pending]) -> None:
        loop = asyncio.get_running_loop()
        self.last_batch = len(batch)
        self.on_batch(sum(p.rows for p in batch))
        try:
            outputs = await loop.run_in_executor(self.executor, self.forward, merge(batch))
            start = 0
            for p in batch:
                if not p.future.done():
                    p.future.set_result(tuple(o[start : start + p.rows] for o in outputs))
                start += p.rows
        except Exception:
            for p in batch:
                try:
                    result = await loop.run_in_executor(self.executor, self.forward, p.inputs)
                except Exception as exc:
                    if not p.future.done():
                        p.future.set_exception(exc)
                else:
                    if not p.future.done():
                        p.future.set_result(result)
