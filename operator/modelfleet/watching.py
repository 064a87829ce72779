"""Lean watches for the resources with the most events: a list, then a watch from its resourceVersion, every event
handed as it is to one plain function on the event loop.

kopf runs each watch event through its per-object machinery (a worker task per object, causes, handler progress,
loggers, a body wrapper): at 1,000 jobs ~0.6 ms of CPU an event, a third of the operator's CPU, most of it for the
~11,000 pod events, whose handler only updates in-memory indexes and wakes loops. The operator's pods are watched
here instead, and so are the gateway's InferenceServices and pods.

What kopf's watches did is kept: the objects of every list, the first and any later one, arrive as events of type
None (so `resync` compares the stores with a fresh list after a gap), or whole through `on_list`; a watch resumes
from the last resourceVersion it saw, bookmarks included; a 410 Gone (the version is too old to resume from) lists
again; a broken or silent connection is retried with a back-off; the server ends each watch after `WATCH_SECONDS`
and a new one starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import urllib3
from kubernetes.client.exceptions import ApiException

from modelfleet import kube
from modelfleet.loops import WATCH_EVENTS

log = logging.getLogger(__name__)
WATCH_SECONDS = 60
"""How long the server keeps one watch request open (kopf's setting here was the same)."""
READ_TIMEOUT = 90.0
"""A watch connection silent for this long is dropped and opened again: an apiserver that vanished is noticed."""
BACKOFF_SECONDS = (0.5, 1.0, 2.0, 5.0, 10.0)
"""Waits before retrying after consecutive failures (the last one repeats)."""
PAGE = 500
Event = dict[str, Any]
OnEvent = Callable[[Event], None]
OnList = Callable[[list[dict[str, Any]], str | None], None]


class Expired(Exception):
    """The watch cannot resume from its resourceVersion (410 Gone): list again."""


async def list_pages(fn: Callable[..., Any], **args: Any) -> AsyncIterator[tuple[list[dict[str, Any]], str]]:
    """A paginated list, a page at a time, as plain dicts (the client's models are slow to build), each page with
    the list's resourceVersion (every page of one list has the same)."""
    token = None
    while True:
        kwargs: dict[str, Any] = {**args, "limit": PAGE, "_preload_content": False}
        if token:
            kwargs["_continue"] = token
        response = await kube.call(fn, **kwargs)
        page = orjson.loads(response.data)
        del response
        meta = page.get("metadata") or {}
        yield page.get("items") or [], meta.get("resourceVersion", "")
        token = meta.get("continue")
        if not token:
            return


class Watch:
    """One resource kind, the whole cluster's (`cluster_wide`) or in each of `namespaces` (`namespaced`), kept
    for as long as `run` runs; `on_event` gets each event ({"type": ..., "object": ...}) on the event loop. With
    `on_list`, each list comes whole in one call (its items, and its namespace or None) instead of as events."""

    def __init__(
        self,
        plural: str,
        cluster_wide: Callable[..., Any],
        namespaced: Callable[..., Any],
        on_event: OnEvent,
        on_list: OnList | None = None,
    ) -> None:
        self.plural = plural
        self.cluster_wide = cluster_wide
        self.namespaced = namespaced
        self.on_event = on_event
        self.on_list = on_list

    async def run(self, namespaces: tuple[str, ...] = ()) -> None:
        if not namespaces:
            await self._keep(self.cluster_wide, {})
            return
        await asyncio.gather(*(self._keep(self.namespaced, {"namespace": ns}) for ns in namespaces))

    async def _keep(self, fn: Callable[..., Any], args: dict[str, Any]) -> None:
        version: str | None = None
        failures = 0
        while True:
            try:
                if version is None:
                    version = await self._list(fn, args)
                version = await self._watch(fn, args, version)
                failures = 0
            except Expired:
                log.info("%s watch: resourceVersion %s expired, listing again", self.plural, version)
                version = None
            except Exception as exc:  # the connection, the apiserver, a refusal: retried, never fatal
                wait = BACKOFF_SECONDS[min(failures, len(BACKOFF_SECONDS) - 1)]
                failures += 1
                log.log(
                    logging.INFO if kube.transient(exc) else logging.ERROR,
                    "%s watch failed (%s); again in %.1fs",
                    self.plural,
                    exc,
                    wait,
                )
                await asyncio.sleep(wait)

    async def _list(self, fn: Callable[..., Any], args: dict[str, Any]) -> str:
        version, listed = "", []
        async for items, page_version in list_pages(fn, **args):
            version = page_version
            if self.on_list is not None:
                listed.extend(items)
                continue
            for item in items:
                self._deliver({"type": None, "object": item})
        if self.on_list is not None:
            self.on_list(listed, args.get("namespace"))
        return version

    async def _watch(self, fn: Callable[..., Any], args: dict[str, Any], version: str) -> str:
        """One watch request from `version` until the server ends it; returns the last version seen."""
        try:  # not through kube.call: a watch is not one of the reconcilers' requests that it counts
            response = await asyncio.to_thread(
                fn,
                **args,
                watch=True,
                resource_version=version,
                allow_watch_bookmarks=True,
                timeout_seconds=WATCH_SECONDS,
                _preload_content=False,
                _request_timeout=(kube.REQUEST_TIMEOUT[0], READ_TIMEOUT),
            )
        except ApiException as exc:
            if exc.status == 410:
                raise Expired from exc
            raise
        stream = _Stream(response, asyncio.get_running_loop(), self._batch, version)
        try:
            return await stream.finished
        finally:
            stream.stop()

    def _batch(self, stream: _Stream, events: list[Event]) -> None:
        for event in events:
            kind = event.get("type")
            obj = event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:
                    stream.fail(Expired())
                else:
                    stream.fail(ApiException(status=obj.get("code"), reason=obj.get("message")))
                return
            stream.version = obj.get("metadata", {}).get("resourceVersion") or stream.version
            if kind != "BOOKMARK":
                self._deliver(event)

    def _deliver(self, event: Event) -> None:
        WATCH_EVENTS.labels(self.plural).inc()
        try:
            self.on_event(event)
        except Exception:  # one bad object must not end the watch
            log.exception("%s watch: handling an event failed", self.plural)


class _Stream:
    """One watch response (the client raised for any status but 2xx), read on its own thread: each chunk's whole
    lines are decoded there and handed to the loop in one call (`on_batch`); `finished` resolves with the last
    resourceVersion when the server ends the watch."""

    def __init__(
        self,
        response: urllib3.BaseHTTPResponse,
        loop: asyncio.AbstractEventLoop,
        on_batch: Callable[[_Stream, list[Event]], None],
        version: str,
    ) -> None:
        self.raw = response
        self.loop = loop
        self.on_batch = on_batch
        self.version = version
        self.finished: asyncio.Future[str] = loop.create_future()
        self._stopped = False
        self._lock = threading.Lock()  # a connection is shut down or handed back to the pool, never both
        threading.Thread(target=self._read, name="watch-stream", daemon=True).start()

    def fail(self, exc: BaseException) -> None:
        if not self.finished.done():
            self.finished.set_exception(exc)
        self.stop()

    def stop(self) -> None:
        """Ends the read (a blocked read returns at once) and frees the connection."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            with contextlib.suppress(ValueError, RuntimeError, OSError):  # ended or released already
                self.raw.shutdown()

    def _read(self) -> None:
        error: BaseException | None = None
        try:
            pending = b""
            for chunk in self.raw.stream(None, decode_content=False):
                if self._stopped:
                    break
                *lines, pending = (pending + chunk).split(b"\n")
                if events := [orjson.loads(line) for line in lines if line.strip()]:
                    self.loop.call_soon_threadsafe(self._hand, events)
        except BaseException as exc:  # handed to the loop, which decides
            error = exc
        finally:
            with self._lock:
                stopped, self._stopped = self._stopped, True
                if error is None and not stopped:
                    self.raw.release_conn()  # read to its end: the connection can serve another request
                else:
                    self.raw.close()
            with contextlib.suppress(RuntimeError):  # the loop is closed: the process is ending
                self.loop.call_soon_threadsafe(self._end, None if stopped else error)

    def _hand(self, events: list[Event]) -> None:
        if not self.finished.done():
            self.on_batch(self, events)

    def _end(self, error: BaseException | None) -> None:
        """The read ended: on its own (the server closed the watch, or the connection broke: `error`) or stopped
        from the loop (then whoever stopped it has what it needs, and no error is reported)."""
        if self.finished.done():
            return
        if error is not None:
            self.finished.set_exception(error)
        else:
            self.finished.set_result(self.version)
