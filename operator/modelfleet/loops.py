"""One reconcile loop per object, woken by watch events, without finalizers.

kopf's daemons and timers put a finalizer on every object, so a job could not be deleted while the operator is
down. Instead, silent kopf event handlers feed this registry: the latest body of each object, a wake-up on any
change of it or of its children, a periodic resync (what the reconcile returns: seconds, None for the default,
NO_RESYNC for none), and an exponential back-off after errors.

A loop ends when its object is deleted (the watch says so), when a reconcile finds it gone (ObjectGone: a
deletion the watch missed during a gap) or its namespace going (NamespaceGone: the object goes with it, and
retrying a write there would fail for as long as the loop lived), or when a fresh list no longer holds it (`prune`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import Counter, Histogram

from modelfleet.kube import NamespaceGone, transient

log = logging.getLogger(__name__)
RECONCILES = Counter("modelfleet_reconcile", "Reconciles by resource kind and result.", ["kind", "result"])
RECONCILE_SECONDS = Histogram("modelfleet_reconcile_duration_seconds", "Time one reconcile takes.", ["kind"])
WATCH_EVENTS = Counter("modelfleet_watch_events", "Watch events handled, by resource.", ["resource"])

EventHandler = Callable[..., Awaitable[None]]


def counts_watch_events(handler: EventHandler) -> EventHandler:
    """A kopf event handler that also counts the events it handles in WATCH_EVENTS (by the resource's plural)."""

    @functools.wraps(handler)
    async def counted(*args: Any, resource: Any, **kwargs: Any) -> None:
        WATCH_EVENTS.labels(resource.plural).inc()
        await handler(*args, resource=resource, **kwargs)

    return counted


Key = tuple[str, str]
Reconcile = Callable[[dict[str, Any]], Awaitable[float | None]]
NO_RESYNC = math.inf
"""What a reconcile returns when its object needs no resync: the next pass comes only from a wake-up."""


class ObjectGone(Exception):
    """Raised by a reconcile that found its object deleted: the loop stops instead of acting on a stale body."""


def key_of(body: dict[str, Any]) -> Key:
    return body["metadata"].get("namespace", ""), body["metadata"]["name"]


LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def without_bookkeeping(body: dict[str, Any]) -> dict[str, Any]:
    """The body without managedFields and kubectl's copy of the last applied spec: no reconcile reads them, and
    they are most of what thousands of kept bodies would weigh."""
    meta = body["metadata"]
    if "managedFields" not in meta and LAST_APPLIED not in (meta.get("annotations") or {}):
        return body
    slim = {k: v for k, v in meta.items() if k != "managedFields"}
    if annotations := meta.get("annotations"):
        slim["annotations"] = {k: v for k, v in annotations.items() if k != LAST_APPLIED}
    return {**body, "metadata": slim}


SHARED_STRING_CHARS = 64


def shared_strings(value: Any) -> Any:
    """The value with its short strings (keys and values) interned: decoded JSON gives every object its own copy of
    each key and of the values most share ("True", "Running", condition reasons, label keys). Stored workers: 5.1 ->
    3.7 KB each; kept job bodies: 10.7 -> 4.9 KB (tracemalloc, 1,000 of each). Interned strings are freed when
    nothing holds them on the image's Python 3.11 (and 3.12.6+, 3.13); 3.12.0-3.12.5 kept them for ever."""
    if isinstance(value, str):
        return sys.intern(value) if len(value) <= SHARED_STRING_CHARS else value
    if isinstance(value, dict):
        return {shared_strings(k): shared_strings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shared_strings(v) for v in value]
    return value


def _version(body: dict[str, Any]) -> int:
    try:
        return int(body["metadata"].get("resourceVersion", "0"))
    except ValueError:
        return 0


class ReconcileLoops:
    def __init__(
        self,
        name: str,
        reconcile: Reconcile,
        resync: float = 10.0,
        max_backoff: float = 60.0,
        coalesce: float = 0.0,
    ) -> None:
        self.name = name
        self.reconcile = reconcile
        self.resync = resync
        self.max_backoff = max_backoff
        self.coalesce = coalesce
        """Seconds a woken loop waits before its pass, so that a burst of wake-ups (a gang's pods being bound and
        started, one event each) makes one pass."""
        self.pauses: dict[Key, asyncio.Future[None]] = {}
        """The coalescing wait of each loop in one; `wake(at_once=True)` ends it."""
        self.at_once: set[Key] = set()
        """Loops woken with something to act on now (`wake(at_once=True)`): their next pass does not wait."""
        self.bodies: dict[Key, dict[str, Any]] = {}
        self.wakeups: dict[Key, asyncio.Event] = {}
        self.tasks: dict[Key, asyncio.Task[None]] = {}
        self.seen: dict[Key, float] = {}
        """When each body last came from the API (monotonic), for `prune`."""

    def apply_event(self, body: dict[str, Any], deleted: bool = False) -> bool:
        """Takes a watch event's object: remembers it (if newer) and wakes its loop, or stops the loop. Returns
        whether it was news, not the echo of a write the loop made itself (a version it already holds). The echo
        still wakes the loop: a pass may leave what follows a write (a finished job's TTL timer) to the next."""
        key = key_of(body)
        if deleted:
            self.forget(key)
            return True
        known = self.bodies.get(key)
        news = known is None or _version(body) > _version(known)
        self.remember(body)
        if key not in self.tasks or self.tasks[key].done():
            self.wakeups[key] = asyncio.Event()
            self.tasks[key] = asyncio.create_task(self._run(key), name=f"{self.name}:{key[0]}/{key[1]}")
        self.wake(key)
        return news

    def remember(self, body: dict[str, Any] | None) -> None:
        """Keeps the newest version seen, so an old watch event never overrides what we just wrote."""
        if not body:
            return
        key = key_of(body)
        known = self.bodies.get(key)
        if known is None or _version(body) >= _version(known):
            self.bodies[key] = shared_strings(without_bookkeeping(body))
            self.seen[key] = time.monotonic()

    def forget(self, key: Key) -> None:
        """Stops the object's loop and drops what is known of it."""
        self.bodies.pop(key, None)
        self.seen.pop(key, None)
        self.wakeups.pop(key, None)
        self.at_once.discard(key)
        task = self.tasks.pop(key, None)
        if task and task is not asyncio.current_task():
            task.cancel()

    def prune(self, present: set[Key], listed_at: float) -> list[Key]:
        """After a fresh list made at `listed_at` (monotonic): stops the loops of objects it no longer holds,
        unless a watch event about them came after the list started. Returns the keys dropped."""
        gone = [key for key in self.bodies if key not in present and self.seen.get(key, 0.0) < listed_at]
        for key in gone:
            self.forget(key)
        return gone

    def stop(self) -> None:
        """Cancels every loop (operator shutdown)."""
        for task in self.tasks.values():
            task.cancel()
        self.tasks.clear()
        self.wakeups.clear()

    def wake(self, key: Key, at_once: bool = False) -> None:
        """Wakes the object's loop; `at_once`: its pass skips the coalescing wait (a decision to act on, such as the
        GPU queue's verdict, rather than one event of a burst)."""
        if event := self.wakeups.get(key):
            if at_once:
                self.at_once.add(key)
                if (pause := self.pauses.get(key)) and not pause.done():
                    pause.set_result(None)
            event.set()

    def wake_all(self) -> None:
        for event in self.wakeups.values():
            event.set()

    async def _pause(self, key: Key) -> None:
        """The coalescing wait, cut short by a wake-up `at_once`."""
        self.pauses[key] = pause = asyncio.get_running_loop().create_future()
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.coalesce):
                    await pause
        finally:
            del self.pauses[key]

    async def _run(self, key: Key) -> None:
        failures = 0
        delay = 0.0
        while True:
            event = self.wakeups.get(key)
            if event is None:
                return
            with contextlib.suppress(TimeoutError):  # asyncio.timeout, not wait_for: no task of its own per wait
                async with asyncio.timeout(None if delay == NO_RESYNC else delay):
                    await event.wait()
            if self.coalesce and event.is_set() and key not in self.at_once:
                await self._pause(key)
            self.at_once.discard(key)
            event.clear()
            if key not in self.bodies:
                return
            started = time.perf_counter()
            try:
                requeue = await self.reconcile(self.bodies[key])  # no local holds this version while it waits
                RECONCILES.labels(self.name, "ok").inc()
                failures = 0
                delay = requeue if requeue is not None else self.resync
            except asyncio.CancelledError:
                raise
            except (ObjectGone, NamespaceGone) as exc:
                RECONCILES.labels(self.name, "gone").inc()
                log.info("%s %s/%s is gone (%s); its loop stops", self.name, *key, exc)
                self.forget(key)
                return
            except Exception as exc:
                RECONCILES.labels(self.name, "error").inc()
                failures += 1
                delay = min(2.0**failures * 0.5, self.max_backoff)
                if transient(exc):  # the apiserver restarting: one line, not a traceback per object
                    log.warning("%s %s/%s: %s; retrying in %.1fs", self.name, *key, type(exc).__name__, delay)
                else:
                    log.exception("%s %s/%s: reconcile failed; retrying in %.1fs", self.name, *key, delay)
            finally:
                RECONCILE_SECONDS.labels(self.name).observe(time.perf_counter() - started)
