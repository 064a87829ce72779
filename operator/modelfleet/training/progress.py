"""Rank 0's progress, scraped from its metrics endpoint the way model servers' /metrics are (workers need no API
rights), and turned into `status.progress` and each worker's current share and throughput in `status.placement`.

Rank 0 is the worker with replica index 0 under static rendezvous, and only that pod is asked; elastic torchrun
(c10d) assigns ranks at rendezvous, so rank 0 may be in any pod. Only the process of rank 0 serves its endpoint and
says so: for an elastic job the scraper asks the pod that answered last time, else every running worker at once,
and keeps the one that says rank 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from prometheus_client.parser import text_string_to_metric_families

from modelfleet.contract import (
    REPLICA_INDEX_LABEL,
    TRAINING_EPOCH,
    TRAINING_LOSS,
    TRAINING_METRICS_PORT,
    TRAINING_RANK,
    TRAINING_SAMPLES_PER_SECOND,
    TRAINING_STEP,
    TRAINING_UPDATED,
    TRAINING_WORKER_LABEL,
    TRAINING_WORKER_SAMPLES_PER_SECOND,
    TRAINING_WORKER_SHARE,
)
from modelfleet.inference.load_sources import scrape_all
from modelfleet.training.builders import METRICS_PORT_NAME

log = logging.getLogger(__name__)
SCRAPE_EVERY_SECONDS = 5.0
RETRY_SECONDS = 1.0
"""After a scrape that found no progress: a short job must not finish between two full periods unseen."""
SILENT_WINDOW_SECONDS = 30.0
SILENT_MAX_SECONDS = 60.0
"""A job none of whose workers answers at all is probed every second for SILENT_WINDOW_SECONDS (rank 0 serves its
metrics only once torchrun, the rendezvous and the data are up, and a short job may end seconds later), then after
2, 4, 8 ... seconds, up to SILENT_MAX_SECONDS: a thousand jobs that serve no metrics must not cost a thousand
scrapes a second for ever."""
SCRAPE_TIMEOUT_SECONDS = 1.0


def metrics_urls(pods: Sequence[Mapping[str, Any]], static_ranks: bool = False) -> dict[str, str]:
    """Pod name -> `http://<pod IP>:<metrics port>/metrics` of every running, not deleting worker, replica 0 first;
    with `static_ranks` (static rendezvous: each worker's rank is its replica index) replica 0's alone."""
    urls: dict[str, str] = {}
    for pod in sorted(pods, key=lambda p: (p["metadata"].get("labels") or {}).get(REPLICA_INDEX_LABEL) != "0"):
        meta, status = pod["metadata"], pod.get("status") or {}
        if static_ranks and (meta.get("labels") or {}).get(REPLICA_INDEX_LABEL) != "0":
            continue
        if status.get("phase") == "Running" and status.get("podIP") and not meta.get("deletionTimestamp"):
            ports = [p for c in pod["spec"]["containers"] for p in c.get("ports") or []]
            port = next(
                (p["containerPort"] for p in ports if p.get("name") == METRICS_PORT_NAME), TRAINING_METRICS_PORT
            )
            urls[meta["name"]] = f"http://{status['podIP']}:{port}/metrics"
    return urls


def progress_from_metrics(text: str, _at: float = 0.0) -> dict[str, Any] | None:
    """status.progress from rank 0's Prometheus text, or None before its first report. A NaN or infinite value
    (a diverged loss) is left out: JSON has no such number and the API would refuse the status patch."""
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    values = {s.name: s.value for s in samples if not s.labels}
    if not values.get(TRAINING_UPDATED) or values.get(TRAINING_RANK, 0) != 0:
        return None
    progress: dict[str, Any] = {}
    for key, name, convert in (
        ("step", TRAINING_STEP, int),
        ("epoch", TRAINING_EPOCH, int),
        ("loss", TRAINING_LOSS, lambda v: round(v, 6)),
        ("samplesPerSecond", TRAINING_SAMPLES_PER_SECOND, lambda v: round(v, 2)),
    ):
        if name in values and math.isfinite(values[name]):
            progress[key] = convert(values[name])
    progress["updatedAt"] = datetime.fromtimestamp(values[TRAINING_UPDATED], UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    workers: dict[str, dict[str, float]] = {}
    for sample in samples:
        key = {TRAINING_WORKER_SHARE: "currentShare", TRAINING_WORKER_SAMPLES_PER_SECOND: "samplesPerSecond"}.get(
            sample.name
        )
        if key and TRAINING_WORKER_LABEL in sample.labels and math.isfinite(sample.value):
            workers.setdefault(sample.labels[TRAINING_WORKER_LABEL], {})[key] = round(
                sample.value, 6 if "Share" in key else 2
            )
    if workers:
        progress["workers"] = workers
    return progress


@dataclass(slots=True)
class _Probe:
    """A silent job's place in the probe sweep."""

    wake: Callable[[], None]
    static_ranks: bool
    due: float
    """When (monotonic) the sweep asks its workers next."""


class ProgressScraper:
    """Scrapes each running job's rank 0 at most once every `every` seconds. A job none of whose workers has
    answered yet is left to the probe sweep (`_sweep`), which wakes the job's pass only when a worker answers:
    a silent job's retries cost a probe each, not a reconcile each."""

    def __init__(
        self,
        every: float = SCRAPE_EVERY_SECONDS,
        timeout: float = SCRAPE_TIMEOUT_SECONDS,
        pods_of: Callable[[str], Sequence[Mapping[str, Any]]] = lambda uid: (),
    ) -> None:
        self.every, self.timeout, self.pods_of = every, timeout, pods_of
        """`pods_of`: job uid -> its worker pods as they are now (the probe's view between passes)."""
        self.last: dict[str, float] = {}
        self.holder: dict[str, str] = {}
        """Job uid -> the pod that last answered as rank 0."""
        self.silent: dict[str, float] = {}
        """Job uid -> since when (monotonic) no worker has answered."""
        self.probes: dict[str, _Probe] = {}
        """Job uid -> its probe, for the jobs the sweep asks."""
        self.sweeper: asyncio.Task[None] | None = None
        """The one task that probes every silent job, once a RETRY_SECONDS tick (a task per job, each with its own
        sleep, gather and timeout, cost more than the probes' sockets at 1,000 jobs)."""

    async def read(
        self,
        uid: str,
        pods: Sequence[Mapping[str, Any]],
        wake: Callable[[], None] = lambda: None,
        static_ranks: bool = False,
    ) -> dict[str, Any] | None:
        """The job's fresh progress, or None (nothing running, scraped too recently, no answer, or silent: then the
        probe sweep calls `wake` once a worker answers). Its `workers` maps each worker pod's name to its current
        share and throughput. `static_ranks`: the job's rank 0 can only be replica 0 (`metrics_urls`)."""
        urls = metrics_urls(pods, static_ranks)
        if not urls:
            self.forget(uid)
            return None
        if self.probing(uid):
            return None
        now = time.monotonic()
        if now - self.last.get(uid, -math.inf) < self.every:
            return None
        self.last[uid] = now
        holder = self.holder.get(uid)
        answers = {}
        if holder in urls:
            answers = await scrape_all({holder: urls[holder]}, self.timeout, parse=_progress_or_empty)
        if not any(answers.values()):
            answers = await scrape_all(urls, self.timeout, parse=_progress_or_empty)
        if all(answer is None for answer in answers.values()):  # nobody listens (yet)
            self.silent.setdefault(uid, now)
            self._probe(uid, _Probe(wake, static_ranks, now + silent_wait(now - self.silent[uid])))
            return None
        self.silent.pop(uid, None)
        answered = {pod: progress for pod, progress in answers.items() if progress}
        if not answered:  # rank 0 has not reported yet: try again soon, not a period later
            self.last[uid] = now - self.every + min(RETRY_SECONDS, self.every)
            return None
        self.holder[uid], progress = max(answered.items(), key=lambda item: item[1]["updatedAt"])
        return with_pod_names(progress, pods)

    def probing(self, uid: str) -> bool:
        return uid in self.probes

    def _probe(self, uid: str, probe: _Probe) -> None:
        """Hands the job to the sweep (started if none runs)."""
        self.probes[uid] = probe
        if self.sweeper is None or self.sweeper.done():
            self.sweeper = asyncio.create_task(self._sweep(), name="progress-probes")

    async def _sweep(self) -> None:
        """Every RETRY_SECONDS while any job is silent: probes the jobs that are due (`sweep_once`). Ends when none
        is left; the next silent job starts it again."""
        while self.probes:
            await asyncio.sleep(RETRY_SECONDS)
            try:
                await self.sweep_once(time.monotonic())
            except Exception:  # a probe's bug must not end every job's probing
                log.exception("progress probe sweep failed")

    async def sweep_once(self, now: float) -> None:
        """Asks the workers of every job due at `now` (`silent_probe`) for a connection, all at once, then scrapes
        those that accept, all at once. A job whose worker answers is woken and leaves the sweep (its next pass
        scrapes at once); one with no running worker left leaves it too; the others are due again after
        `silent_wait`."""
        asked: list[tuple[str, str, str]] = []  # (job uid, pod, url)
        for uid, probe in list(self.probes.items()):
            if probe.due > now + RETRY_SECONDS / 2:  # due at the tick nearest its time
                continue
            urls = metrics_urls(self.pods_of(uid), probe.static_ranks)
            if not urls:  # finished, restarting or deleted: its next pass (if any) starts afresh
                self.forget(uid)
                continue
            asked.extend((uid, pod, url) for pod, url in silent_probe(urls, now).items())
        up = await listening([url for _, _, url in asked], self.timeout)
        listeners = {(uid, pod): url for (uid, pod, url), ok in zip(asked, up, strict=True) if ok}
        answers = await scrape_all({f"{uid}/{pod}": url for (uid, pod), url in listeners.items()}, self.timeout,
                                   parse=_progress_or_empty)  # fmt: skip
        answered = {key.split("/", 1)[0] for key, answer in answers.items() if answer is not None}
        for uid in {uid for uid, _, _ in asked}:
            if (probe := self.probes.get(uid)) is None:
                continue  # forgotten while it was asked
            if uid in answered:
                del self.probes[uid]
                self.silent.pop(uid, None)
                self.last.pop(uid, None)
                probe.wake()
            else:
                probe.due = now + silent_wait(now - self.silent.get(uid, now))

    def forget(self, uid: str) -> None:
        """Drops what is known of the job's scrapes (and takes it out of the probe sweep)."""
        self.last.pop(uid, None)
        self.holder.pop(uid, None)
        self.silent.pop(uid, None)
        self.probes.pop(uid, None)

    def due_in(self, uid: str) -> float | None:
        """Seconds until the job's next scrape is due, or None when it has nothing to scrape. A probed job: the
        longest wait between probes (the sweep wakes it sooner when a worker answers)."""
        if self.probing(uid):
            return SILENT_MAX_SECONDS
        if uid not in self.last:
            return None
        return max(self.last[uid] + self.every - time.monotonic(), 0.0)


def silent_wait(silent_for: float) -> float:
    """Seconds to the next probe of a job silent for `silent_for` seconds: RETRY_SECONDS during the first
    SILENT_WINDOW_SECONDS, then as long again as it has been silent past the window plus 2 s, up to
    SILENT_MAX_SECONDS."""
    if silent_for < SILENT_WINDOW_SECONDS:
        return RETRY_SECONDS
    return min(silent_for - SILENT_WINDOW_SECONDS + 2 * RETRY_SECONDS, SILENT_MAX_SECONDS)


def silent_probe(urls: Mapping[str, str], now: float) -> dict[str, str]:
    """What a job none of whose workers answered yet is probed on: replica 0 (rank 0 under static rendezvous) and
    one other worker in turn (elastic rendezvous puts rank 0 anywhere), not every worker each time."""
    names = list(urls)  # replica 0 first
    probed = names[:1] + ([names[1 + int(now) % (len(names) - 1)]] if len(names) > 1 else [])
    return {name: urls[name] for name in probed}


async def listening(urls: Sequence[str], timeout: float) -> list[bool]:
    """Whether anything accepts connections at each URL's host (an IP) and port, asked all at once with one wait of
    at most `timeout`. A probe asks this first: a refused connection costs a socket (~90 us of CPU), an HTTP
    client's failed request ~250 us, and a thousand silent jobs are probed every second."""
    loop = asyncio.get_running_loop()
    up = [False] * len(urls)
    pending: dict[socket.socket, int] = {}
    all_answered = loop.create_future()

    def answered(sock: socket.socket) -> None:
        loop.remove_writer(sock)
        up[pending.pop(sock)] = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        sock.close()
        if not pending and not all_answered.done():
            all_answered.set_result(None)

    try:
        for i, url in enumerate(urls):
            parts = urlsplit(url)
            host, port = parts.hostname or "", parts.port or 80
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            try:
                socket.inet_pton(family, host)  # a pod's IP: a name would need a lookup, which would block
            except OSError:
                continue
            try:
                sock = socket.socket(family, socket.SOCK_STREAM)
            except OSError:  # out of descriptors: this one is not asked now, the others still are
                continue
            sock.setblocking(False)
            error = sock.connect_ex((host, port))
            if error in (errno.EINPROGRESS, errno.EAGAIN):
                pending[sock] = i
                loop.add_writer(sock, answered, sock)
            else:
                up[i] = error == 0
                sock.close()
        if pending:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await all_answered
    finally:
        for sock in pending:  # no answer in time (or an error, or cancelled)
            loop.remove_writer(sock)
            sock.close()
    return up


def _progress_or_empty(text: str, at: float) -> dict[str, Any]:
    """An answer with no rank-0 report yet is {}: not None, which stands for no answer at all."""
    return progress_from_metrics(text, at) or {}


def with_pod_names(progress: dict[str, Any], pods: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The progress with its `workers` keyed by pod name instead of replica index."""
    names = {(p["metadata"].get("labels") or {}).get(REPLICA_INDEX_LABEL): p["metadata"]["name"] for p in pods}
    workers = {names[index]: live for index, live in (progress.get("workers") or {}).items() if index in names}
    return {**progress, "workers": workers} if workers else {k: v for k, v in progress.items() if k != "workers"}


LIVE_FIELDS = ("currentShare", "samplesPerSecond")


def with_live_shares(
    placement: Sequence[Mapping[str, Any]],
    previous: Sequence[Mapping[str, Any]],
    live: Mapping[str, Mapping[str, float]],
) -> list[dict[str, Any]]:
    """status.placement with each worker's current share and throughput: rank 0's fresh report where there is one,
    else what the previous status said of the same pod."""
    before = {p.get("worker"): p for p in previous}
    merged = []
    for entry in placement:
        source = live.get(entry["worker"]) or before.get(entry["worker"]) or {}
        merged.append({**entry, **{k: source[k] for k in LIVE_FIELDS if k in source}})
    return merged
