"""The activator's queue policy: bounded per service, a deadline, woken by store changes."""

from __future__ import annotations

import asyncio

import pytest

from modelfleet.gateway.activator import Activator, QueueFull

SERVICE = ("ns", "svc")


def test_a_held_request_goes_on_when_a_replica_comes() -> None:
    async def main() -> None:
        activator = Activator(capacity=4, timeout=5.0)
        ready = False
        waiter = asyncio.create_task(activator.wait(SERVICE, "a", lambda: ready))
        await asyncio.sleep(0.01)
        assert activator.queued(SERVICE) == 1 and activator.held[(SERVICE, "a")] == 1
        activator.wake(SERVICE)  # a change that brings nothing: it waits on
        await asyncio.sleep(0.01)
        assert not waiter.done()
        ready = True
        activator.wake(SERVICE)
        assert await waiter is True
        assert activator.queued(SERVICE) == 0 and not activator.held

    asyncio.run(main())


def test_the_queue_is_bounded_and_waits_time_out() -> None:
    async def main() -> None:
        activator = Activator(capacity=2, timeout=0.05)
        waiters = [asyncio.create_task(activator.wait(SERVICE, "a", lambda: False)) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            await activator.wait(SERVICE, "b", lambda: False)
        assert await activator.wait(("ns", "other"), "a", lambda: True) is True  # another service is not held up
        assert await asyncio.gather(*waiters) == [False, False]
        assert activator.queued(SERVICE) == 0

    asyncio.run(main())
