"""Dynamic batching: concurrent requests merged into one forward pass, off the event loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch


@dataclass
class Pending:
    inputs: torch.Tensor
    future: asyncio.Future[torch.Tensor]


class Batcher:
    """Collects requests until `max_batch_size` rows or `max_delay_ms` after the first, then runs them together.

    Under light load (the last pass held a single request, and no other is queued) a request runs at once:
    waiting for company that is not coming would only add `max_delay_ms` to its latency.

    Each request's rows come back to it alone; if the merged pass fails, each request is run by itself so a bad
    one fails only itself. `on_batch` sees every batch size (for the metrics).

    At most `max_queue` requests wait (0: no bound): one more raises `asyncio.QueueFull` at once (the server answers 503).
    A request whose caller gave up (its future cancelled) is dropped before its forward pass.
    """

    def __init__(
        self,
        forward: Callable[[torch.Tensor], torch.Tensor],
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

    async def infer(self, inputs: torch.Tensor) -> torch.Tensor:
        future: asyncio.Future[torch.Tensor] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait(Pending(inputs, future))
        return await future

    async def _loop(self) -> None:
        while True:
            batch = [await self.queue.get()]
            rows = batch[0].inputs.shape[0]
            while rows < self.max_batch_size and not self.queue.empty():
                batch.append(self.queue.get_nowait())
                rows += batch[-1].inputs.shape[0]
            delay = self.max_delay if len(batch) > 1 or self.last_batch > 1 else 0.0
            deadline = time.monotonic() + delay
            while rows < self.max_batch_size:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self.queue.get(), timeout=remaining)
                except TimeoutError:
                    break
                batch.append(item)
                rows += item.inputs.shape[0]
            batch = [p for p in batch if not p.future.done()]
            if batch:
                await self._run(batch)

    async def _run(self, batch: list[Pending]) -> None:
        loop = asyncio.get_running_loop()
        self.last_batch = len(batch)
        self.on_batch(sum(p.inputs.shape[0] for p in batch))
        try:
            merged = torch.cat([p.inputs for p in batch]) if len(batch) > 1 else batch[0].inputs
            outputs = await loop.run_in_executor(self.executor, self.forward, merged)
            start = 0
            for p in batch:
                rows = p.inputs.shape[0]
                if not p.future.done():
                    p.future.set_result(outputs[start : start + rows])
                start += rows
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
