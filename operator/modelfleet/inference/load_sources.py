"""Reading load: scrape each ready replica's Prometheus /metrics (or ask a Prometheus server), then turn the
samples into the autoscaler's unit, replica-equivalents at target.

Missing metrics follow HPA's rule in the conservative direction: a ready replica whose scrape fails counts as
exactly at target, and when no replica can be read at all the tick yields no sample (the region holds its size).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, overload

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from modelfleet.api.inference import Autoscaling, ScaleMetric
from modelfleet.contract import SERVER_INFLIGHT, SERVER_LATENCY, SERVER_REQUESTS

LATENCY_QUANTILE = 0.9
T = TypeVar("T")


@dataclass(frozen=True)
class ReplicaSample:
    at: float
    inflight: float
    requests: float
    buckets: tuple[tuple[float, float], ...]
    """Cumulative latency histogram: (upper bound, count)."""


def parse_metrics(text: str, at: float) -> ReplicaSample:
    inflight = requests = 0.0
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == SERVER_INFLIGHT:
                inflight += sample.value
            elif sample.name == f"{SERVER_REQUESTS}_total":
                requests += sample.value
            elif sample.name == f"{SERVER_LATENCY}_bucket":
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
    return ReplicaSample(at, inflight, requests, tuple(sorted(buckets.items())))


def quantile(buckets: Sequence[tuple[float, float]], q: float) -> float | None:
    """The q-quantile of a cumulative histogram, interpolated inside its bucket (as Prometheus does)."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            width = count - lower_count
            return lower_bound + (bound - lower_bound) * ((rank - lower_count) / width if width else 1.0)
        lower_bound, lower_count = bound, count
    return lower_bound


def region_load(
    policy: Autoscaling,
    current: Mapping[str, ReplicaSample | None],
    previous: Mapping[str, ReplicaSample],
) -> tuple[float | None, float | None]:
    """(load in replica-equivalents at target, raw per-replica metric) for a region's ready replicas.

    `current` maps each ready pod to its sample, or None when its scrape failed.
    """
    ok = {pod: s for pod, s in current.items() if s is not None}
    failed = len(current) - len(ok)
    if not ok:
        return None, None
    if policy.metric == ScaleMetric.CONCURRENCY:
        total = sum(s.inflight for s in ok.values())
        return total / policy.target + failed, total / len(ok)
    if policy.metric == ScaleMetric.RPS:
        rates = [
            (s.requests - previous[pod].requests) / (s.at - previous[pod].at)
            for pod, s in ok.items()
            if pod in previous and s.at > previous[pod].at and s.requests >= previous[pod].requests
        ]
        if not rates:
            return None, None
        per_replica = sum(rates) / len(rates)
        return per_replica * len(ok) / policy.target + failed, per_replica
    merged: dict[float, float] = {}
    for pod, s in ok.items():
        before = dict(previous[pod].buckets) if pod in previous else {}
        for bound, count in s.buckets:
            merged[bound] = merged.get(bound, 0.0) + max(0.0, count - before.get(bound, 0.0))
    p90 = quantile(sorted(merged.items()), LATENCY_QUANTILE)
    if p90 is None:
        return 0.0 + failed, 0.0
    return len(ok) * p90 / policy.target + failed, p90


_SESSIONS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.ClientSession] = weakref.WeakKeyDictionary()


def shared_session() -> aiohttp.ClientSession:
    """The connection pool every scrape of this event loop shares (the operator runs one loop; tests start many):
    one session per scrape built a session and connector each time and kept no connection to a server it asks
    every few seconds. No limit on connections: a pass asks every replica at once."""
    loop = asyncio.get_running_loop()
    session = _SESSIONS.get(loop)
    if session is None or session.closed:
        session = _SESSIONS[loop] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    return session


async def close_shared_session() -> None:
    if session := _SESSIONS.pop(asyncio.get_running_loop(), None):
        await session.close()


async def scrape(
    session: aiohttp.ClientSession, url: str, timeout: float, parse: Callable[[str, float], T]
) -> T | None:
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout), allow_redirects=False) as response:
            if response.status != 200:
                return None
            return parse(await response.text(), time.monotonic())
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None


@overload
async def scrape_all(urls: Mapping[str, str], timeout: float = 1.0) -> dict[str, ReplicaSample | None]: ...
@overload
async def scrape_all(
    urls: Mapping[str, str], timeout: float = 1.0, *, parse: Callable[[str, float], T]
) -> dict[str, T | None]: ...
async def scrape_all(
    urls: Mapping[str, str], timeout: float = 1.0, *, parse: Callable[[str, float], Any] = parse_metrics
) -> dict[str, Any]:
    """Scrapes every pod's Prometheus text at once: pod name -> `parse(text, monotonic time)` (None on failure;
    `parse` may raise ValueError for text it cannot read). Model servers' load by default; TrainingJobs pass theirs."""
    if not urls:
        return {}
    session = shared_session()
    results = await asyncio.gather(*(scrape(session, url, timeout, parse) for url in urls.values()))
    return dict(zip(urls, results, strict=True))


async def prometheus_load(
    policy: Autoscaling, namespace: str, deployment: str, ready: int, timeout: float = 2.0
) -> tuple[float | None, float | None]:
    """The same load, from a Prometheus server's instant queries over the deployment's pods."""
    pods = f'namespace="{namespace}",pod=~"{deployment}-.*"'
    window = f"{max(int(policy.panic_window_seconds), 1) * 2}s"
    queries = {
        ScaleMetric.CONCURRENCY: f"sum({SERVER_INFLIGHT}{{{pods}}})",
        ScaleMetric.RPS: f"sum(rate({SERVER_REQUESTS}_total{{{pods}}}[{window}]))",
        ScaleMetric.LATENCY: f"histogram_quantile({LATENCY_QUANTILE}, sum by (le) (rate({SERVER_LATENCY}_bucket{{{pods}}}[{window}])))",
    }
    url = f"{(policy.prometheus_url or '').rstrip('/')}/api/v1/query"
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                url,
                params={"query": queries[policy.metric]},
                timeout=aiohttp.ClientTimeout(total=timeout),
                allow_redirects=False,  # the policy allows this URL, not wherever it would send the operator
            ) as r,
        ):
            body = await r.json()
        value = float(body["data"]["result"][0]["value"][1])
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, IndexError):
        return None, None
    if value != value:  # NaN: no traffic in the window
        value = 0.0
    if policy.metric == ScaleMetric.LATENCY:
        return ready * value / policy.target, value
    per_replica = value / max(ready, 1)
    return value / policy.target, per_replica
