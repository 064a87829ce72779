"""Rank 0's progress: the runtime's gauges, scraped and turned into status.progress."""

from __future__ import annotations

import asyncio
import json
import math
import socket
import time
from collections.abc import Coroutine
from typing import Any

import pytest
from prometheus_client import generate_latest

from modelfleet.contract import TRAINING_RANK
from modelfleet.inference.load_sources import close_shared_session, shared_session
from modelfleet.runtime.progress import ProgressReporter
from modelfleet.training.progress import (
    SILENT_MAX_SECONDS,
    ProgressScraper,
    listening,
    metrics_urls,
    progress_from_metrics,
    silent_probe,
    silent_wait,
    with_live_shares,
)


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """asyncio.run, closing the loop's scrape pool before the loop ends."""

    async def then_close() -> Any:
        try:
            return await coro
        finally:
            await close_shared_session()

    return asyncio.run(then_close())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def reporter():
    made: list[ProgressReporter] = []

    def start(port: int = 0) -> ProgressReporter:
        made.append(ProgressReporter(host="127.0.0.1", port=port))
        return made[-1]

    yield start
    for r in made:
        r.close()


def served(reporter: ProgressReporter) -> str:
    return generate_latest(reporter.registry).decode()


def test_reported_gauges_become_the_status_progress(reporter) -> None:
    r = reporter()
    r.report(step=120, epoch=2, loss=0.3141592, samples_per_second=5400.123)
    progress = progress_from_metrics(served(r))
    assert progress is not None and progress.pop("updatedAt").endswith("Z")
    assert progress == {"step": 120, "epoch": 2, "loss": 0.314159, "samplesPerSecond": 5400.12}


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_value_is_left_out_and_the_rest_kept(reporter, bad: float) -> None:
    r = reporter()
    r.report(step=7, epoch=1, loss=bad, samples_per_second=bad)
    progress = progress_from_metrics(served(r))
    assert progress is not None and set(progress) == {"step", "epoch", "updatedAt"}
    json.dumps(progress, allow_nan=False)  # what the status patch sends


def test_no_progress_before_the_first_report(reporter) -> None:
    assert progress_from_metrics(served(reporter())) is None
    assert progress_from_metrics("") is None


def test_a_taken_port_never_stops_training() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        r = ProgressReporter(host="127.0.0.1", port=taken.getsockname()[1])
        r.report(1, 0, 0.5, 10.0)
        assert r.server is None


def worker(index: int, phase: str = "Running", ip: str | None = "127.100.0.7", port: int = 9400) -> dict:
    return {
        "metadata": {"name": f"job-worker-{index}", "labels": {"modelfleet.dev/replica-index": str(index)}},
        "spec": {"containers": [{"ports": [{"name": "rendezvous", "containerPort": 23456},
                                           {"name": "metrics", "containerPort": port}]}]},
        "status": {"phase": phase, "podIP": ip} if ip else {"phase": phase},
    }  # fmt: skip


def test_every_running_worker_with_an_ip_is_a_candidate_replica_zero_first() -> None:
    urls = metrics_urls([worker(1), worker(0, port=9555), worker(2, phase="Pending"), worker(3, ip=None)])
    assert list(urls.items()) == [
        ("job-worker-0", "http://127.100.0.7:9555/metrics"),
        ("job-worker-1", "http://127.100.0.7:9400/metrics"),
    ]
    deleting = worker(0)
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert metrics_urls([deleting]) == {}


def test_under_static_rendezvous_only_replica_zero_is_asked() -> None:
    """Its rank is its replica index: no other pod can be rank 0, so no other is scraped or probed."""
    assert list(metrics_urls([worker(1), worker(0), worker(2)], static_ranks=True)) == ["job-worker-0"]
    assert metrics_urls([worker(1), worker(0, phase="Pending")], static_ranks=True) == {}


def test_each_workers_share_and_throughput_are_read(reporter) -> None:
    r = reporter()
    r.report(step=5, epoch=0, loss=0.5, samples_per_second=100.0)
    r.report_workers({0: 0.7, 1: 0.3}, {0: 700.123, 1: 300.0})
    progress = progress_from_metrics(served(r))
    assert progress is not None and progress["workers"] == {
        "0": {"currentShare": 0.7, "samplesPerSecond": 700.12},
        "1": {"currentShare": 0.3, "samplesPerSecond": 300.0},
    }


def test_the_scraper_finds_rank_zero_in_any_pod_and_keys_workers_by_pod_name(reporter) -> None:
    """Elastic torchrun put rank 0 in replica 1's pod: replica 0's endpoint does not answer."""
    port = free_port()
    r = reporter(port)
    r.report(step=9, epoch=0, loss=0.5, samples_per_second=100.0)
    r.report_workers({0: 0.25, 1: 0.75}, {0: 10.0, 1: 30.0})
    scraper = ProgressScraper(every=0.0, timeout=0.5)
    pods = [worker(0, ip="127.0.0.1", port=free_port()), worker(1, ip="127.0.0.1", port=port)]
    progress = run(scraper.read("uid", pods))
    assert progress is not None and progress["step"] == 9
    assert progress["workers"]["job-worker-1"] == {"currentShare": 0.75, "samplesPerSecond": 30.0}
    assert scraper.holder["uid"] == "job-worker-1", "asked first next time"


def test_an_endpoint_that_is_not_rank_zero_is_ignored(reporter) -> None:
    r = reporter()
    r.report(step=1, epoch=0, loss=0.5, samples_per_second=1.0)
    r.gauges[TRAINING_RANK].set(3)
    assert progress_from_metrics(served(r)) is None


def test_the_scraper_reads_rank_zero_at_most_once_per_period(reporter) -> None:
    port = free_port()
    r = reporter(port)
    r.report(step=3, epoch=0, loss=1.5, samples_per_second=100.0)
    scraper = ProgressScraper(every=60.0)
    pods = [worker(0, ip="127.0.0.1", port=port)]

    first = run(scraper.read("uid", pods))
    assert first is not None and first["step"] == 3 and first["loss"] == 1.5
    r.report(step=4, epoch=0, loss=1.4, samples_per_second=100.0)
    assert run(scraper.read("uid", pods)) is None, "scraped again within the period"
    due = scraper.due_in("uid")
    assert due is not None and 0 < due <= 60
    assert run(scraper.read("uid", [worker(0, phase="Succeeded")])) is None
    assert scraper.due_in("uid") is None, "nothing left to scrape: no requeue for progress"


def test_an_endpoint_that_does_not_answer_gives_no_progress() -> None:
    scraper = ProgressScraper(timeout=0.5)
    assert run(scraper.read("uid", [worker(0, ip="127.0.0.1", port=free_port())])) is None


def test_a_silent_job_is_probed_on_replica_zero_and_one_other_worker_in_turn() -> None:
    urls = {f"job-worker-{i}": f"http://127.0.0.1:{9000 + i}/metrics" for i in range(4)}
    probed = [sorted(silent_probe(urls, now)) for now in (0.0, 1.0, 2.0, 3.0)]
    assert probed == [["job-worker-0", f"job-worker-{i}"] for i in (1, 2, 3, 1)]
    assert silent_probe({"job-worker-0": "u"}, 5.0) == {"job-worker-0": "u"}


def test_silent_workers_are_probed_every_second_then_less_and_less_often() -> None:
    """Every second for the first 30 s of silence, then 2, 4, 8 ... seconds apart, up to a minute."""
    waits = [round(silent_wait(t)) for t in (0, 10, 29, 30, 32, 36, 44, 60, 92, 300)]
    assert waits == [1, 1, 1, 2, 4, 8, 16, 32, 60, 60]


def test_a_silent_job_is_left_to_its_probe_which_wakes_it_once_a_worker_answers(reporter) -> None:
    """No reconcile per retry: while the probe asks, a pass neither scrapes nor asks to be requeued sooner than
    the longest probe interval; the probe wakes the job when its rank 0 serves metrics, and the next pass reads it."""
    port = free_port()
    pods = [worker(0, ip="127.0.0.1", port=port)]
    scraper = ProgressScraper(every=5.0, timeout=0.5, pods_of=lambda uid: pods)

    async def scenario() -> tuple[float | None, dict | None]:
        woken = asyncio.Event()
        assert await scraper.read("uid", pods, wake=woken.set) is None
        assert scraper.probing("uid") and scraper.due_in("uid") == SILENT_MAX_SECONDS
        assert await scraper.read("uid", pods, wake=woken.set) is None, "probing: the pass does not scrape"
        r = reporter(port)
        r.report(step=2, epoch=0, loss=0.9, samples_per_second=10.0)
        await asyncio.wait_for(woken.wait(), timeout=5.0)
        return scraper.due_in("uid"), await scraper.read("uid", pods, wake=woken.set)

    due, progress = run(scenario())
    assert due is None and progress is not None and progress["step"] == 2
    assert "uid" not in scraper.silent


def test_a_probe_ends_when_the_job_has_no_running_worker_left() -> None:
    pods = [worker(0, ip="127.0.0.1", port=free_port())]
    scraper = ProgressScraper(timeout=0.2, pods_of=lambda uid: pods)

    async def scenario() -> None:
        assert await scraper.read("uid", pods) is None and scraper.probing("uid")
        pods[:] = [worker(0, phase="Succeeded")]
        assert scraper.sweeper is not None
        await asyncio.wait_for(asyncio.shield(scraper.sweeper), timeout=5.0)

    run(scenario())
    assert not scraper.probing("uid") and scraper.due_in("uid") is None and "uid" not in scraper.silent


def test_one_sweep_probes_every_silent_job_that_is_due_and_wakes_those_that_answer(reporter) -> None:
    """One task for all silent jobs: each tick asks the due jobs' workers at once; a job whose rank 0 answers is
    woken and leaves the sweep, a silent one is due again after silent_wait, one not yet due is left alone."""
    ports = {uid: free_port() for uid in ("a", "b", "c")}
    pods = {uid: [worker(0, ip="127.0.0.1", port=port)] for uid, port in ports.items()}
    scraper = ProgressScraper(timeout=0.5, pods_of=lambda uid: pods[uid])
    woken: list[str] = []

    async def scenario() -> None:
        for uid in ports:
            assert await scraper.read(uid, pods[uid], wake=lambda uid=uid: woken.append(uid)) is None
        scraper.sweeper.cancel()  # the test ticks by hand
        r = reporter(ports["a"])
        r.report(step=1, epoch=0, loss=1.0, samples_per_second=1.0)
        scraper.probes["c"].due = math.inf
        now = time.monotonic() + 1.0  # the next tick
        await scraper.sweep_once(now)
        assert woken == ["a"] and not scraper.probing("a") and "a" not in scraper.silent
        assert scraper.probing("b") and scraper.probes["b"].due == pytest.approx(now + 1.0)
        assert scraper.probing("c") and scraper.probes["c"].due == math.inf

    run(scenario())


def test_placement_shows_the_fresh_shares_else_the_last_ones() -> None:
    placement = [{"worker": "job-worker-0", "shardWeight": 0.5}, {"worker": "job-worker-1", "shardWeight": 0.5}]
    previous = [{"worker": "job-worker-1", "currentShare": 0.2, "samplesPerSecond": 20.0}]
    live = {"job-worker-0": {"currentShare": 0.8, "samplesPerSecond": 80.0}}
    assert with_live_shares(placement, previous, live) == [
        {"worker": "job-worker-0", "shardWeight": 0.5, "currentShare": 0.8, "samplesPerSecond": 80.0},
        {"worker": "job-worker-1", "shardWeight": 0.5, "currentShare": 0.2, "samplesPerSecond": 20.0},
    ]


def test_scrapes_share_one_connection_pool_per_event_loop() -> None:
    async def pools() -> tuple[object, object]:
        first, second = shared_session(), shared_session()
        await close_shared_session()
        return first, second

    first, second = asyncio.run(pools())
    assert first is second and first.closed
    assert asyncio.run(pools())[0] is not first, "a new loop (or a closed pool) gets a pool of its own"


def test_a_probe_asks_for_a_connection_before_a_scrape() -> None:
    """All of a sweep's workers at once: one that listens, one that refuses, a name (never looked up)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        up = f"http://127.0.0.1:{server.getsockname()[1]}/metrics"
        down = f"http://127.0.0.1:{free_port()}/metrics"
        assert run(listening([up, down, up, "http://localhost:1/metrics"], 1.0)) == [True, False, True, False]
        assert run(listening([], 1.0)) == []


def test_a_socket_the_system_refuses_leaves_the_other_probes_be(monkeypatch) -> None:
    """Out of descriptors for one worker: it counts as not listening this time, and the sweep goes on."""
    real = socket.socket

    def scarce(*args, **kwargs):
        monkeypatch.setattr(socket, "socket", refused)  # the first is made, the next is not
        return real(*args, **kwargs)

    def refused(*args, **kwargs):
        raise OSError(24, "Too many open files")

    async def probe(url: str) -> list[bool]:
        monkeypatch.setattr(socket, "socket", scarce)  # inside the loop: the loop's own sockets are made
        try:
            return await listening([url, url], 1.0)
        finally:
            monkeypatch.setattr(socket, "socket", real)

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert run(probe(f"http://127.0.0.1:{server.getsockname()[1]}/metrics")) == [True, False]


def test_a_probe_that_gets_no_answer_gives_up_after_its_timeout() -> None:
    """A listener whose accept queue is full drops the next SYN, so the connect hangs, all on loopback: False after
    the timeout."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        address = server.getsockname()
        fillers = [socket.socket() for _ in range(4)]
        try:
            for filler in fillers:
                filler.setblocking(False)
                filler.connect_ex(address)
            time.sleep(0.2)  # the fillers' handshakes fill the queue

            async def probe() -> tuple[list[bool], float]:
                started = time.monotonic()
                return await listening([f"http://127.0.0.1:{address[1]}/metrics"], 0.2), time.monotonic() - started

            up, took = run(probe())
        finally:
            for filler in fillers:
                filler.close()
    assert up == [False] and 0.15 < took < 1.0
