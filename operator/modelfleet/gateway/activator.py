"""The activator: requests for a service with no replica to serve them wait here, bounded and with a deadline,
until the store reports a change that may have brought one (a new replica probed healthy)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Hashable


class QueueFull(Exception):
    """The service already holds as many requests as the queue allows."""


class Activator:
    def __init__(self, capacity: int, timeout: float) -> None:
        self.capacity = capacity
        self.timeout = timeout
        self.held: Counter[Hashable] = Counter()
        """Requests waiting, by (service, region) they wait for."""
        self._changed: dict[Hashable, asyncio.Event] = {}

    def queued(self, service: Hashable) -> int:
        return sum(n for key, n in self.held.items() if key[0] == service)

    async def wait(self, service: Hashable, region: str, can_serve: Callable[[], bool]) -> bool:
        """Waits until `can_serve()` holds (True) or the timeout passes (False). Raises QueueFull."""
        if can_serve():
            return True
        if self.queued(service) >= self.capacity:
            raise QueueFull(f"{self.capacity} requests already wait for a replica")
        key = (service, region)
        self.held[key] += 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        try:
            while not can_serve():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return False
                changed = self._changed.setdefault(service, asyncio.Event())
                try:
                    await asyncio.wait_for(changed.wait(), remaining)
                except TimeoutError:
                    return can_serve()
            return True
        finally:
            self.held[key] -= 1
            if not self.held[key]:
                del self.held[key]

    def wake(self, service: Hashable) -> None:
        """Something about `service` changed: its waiters look again."""
        if (changed := self._changed.pop(service, None)) is not None:
            changed.set()
