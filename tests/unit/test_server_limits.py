"""The model server's limits: bodies refused while they stream, a bounded batching queue, a per-request timeout."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator

import httpx
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from modelfleet.runtime.batching import Batcher
from modelfleet.runtime.modelio import LoadedModel
from modelfleet.runtime.serve import ServerConfig, build_app, read_limited
from modelfleet.runtime.v2 import Signature
from tests.runtime.factories import Sleepy

ROW = {"inputs": [{"name": "input__0", "shape": [1, 3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]}]}


async def endless(chunk: bytes, pulled: list[int]) -> AsyncIterator[bytes]:
    while True:
        pulled.append(len(chunk))
        yield chunk


def test_a_declared_length_over_the_limit_is_refused_before_any_byte_is_read() -> None:
    pulled: list[int] = []
    assert asyncio.run(read_limited("1000001", endless(b"x", pulled), 1_000_000)) is None
    assert pulled == []


def test_a_streamed_body_is_refused_as_soon_as_it_passes_the_limit() -> None:
    pulled: list[int] = []
    assert asyncio.run(read_limited(None, endless(b"x" * 1000, pulled), 10_000)) is None
    assert len(pulled) == 11, "reading stopped at the first chunk past the limit"


def test_a_body_within_the_limit_is_read_whole() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for part in (b"ab", b"cd", b""):
            yield part

    assert asyncio.run(read_limited("4", chunks(), 4)) == b"abcd"


def test_the_batching_queue_is_bounded() -> None:
    release = threading.Event()

    def forward(x: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        release.wait(5)
        return x

    async def scenario() -> None:
        batcher = Batcher(forward, max_batch_size=1, max_delay_ms=0, max_queue=2)
        batcher.start()
        first = asyncio.ensure_future(batcher.infer((torch.ones(1, 3),)))
        await asyncio.sleep(0.05)  # the first is in its forward pass, the queue is empty
        waiting = [asyncio.ensure_future(batcher.infer((torch.ones(1, 3),))) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(queue.Full):
            await batcher.infer((torch.ones(1, 3),))
        release.set()
        assert all(r[0].shape == (1, 3) for r in await asyncio.gather(first, *waiting))
        batcher.stop()

    asyncio.run(scenario())


def served(**limits: object) -> ServerConfig:
    return ServerConfig(model_path="unused", model_name="m", max_delay_ms=0, grpc_port=0, **limits)  # type: ignore[arg-type]


async def fire(config: ServerConfig, seconds: float, bodies: list[object]) -> tuple[list[httpx.Response], str]:
    """Posts the bodies at once to the app in this process; the responses and the /metrics text."""
    signature = Signature.from_metadata({"inputShape": [3], "classes": 2})
    app = build_app(config, LoadedModel(Sleepy(seconds), signature, torch.float32, "cpu"))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://server") as client:
            posts = [
                client.post("/v2/models/m/infer", **({"content": b} if isinstance(b, bytes) else {"json": b}))
                for b in bodies
            ]
            responses = list(await asyncio.gather(*posts))
            return responses, (await client.get("/metrics")).text


def counted(text: str, name: str, **labels: str) -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def test_an_oversized_body_gets_413_and_is_counted() -> None:
    responses, metrics = asyncio.run(fire(served(max_body_bytes=100), 0, [b"[" + b" " * 200 + b"]", ROW]))
    assert [r.status_code for r in responses] == [413, 200]
    assert "over 100 bytes" in responses[0].json()["error"]
    assert counted(metrics, "modelfleet_rejected_requests_total", reason="body_too_large") == 1


def test_a_full_queue_answers_503_with_retry_after_and_counts_it() -> None:
    responses, metrics = asyncio.run(fire(served(max_queue=1), 0.3, [ROW] * 6))
    codes = sorted(r.status_code for r in responses)
    assert codes.count(503) >= 4 and set(codes) == {200, 503}, codes  # at most one running and one waiting
    assert all(r.headers["Retry-After"] == "1" for r in responses if r.status_code == 503)
    assert counted(metrics, "modelfleet_rejected_requests_total", reason="queue_full") == codes.count(503)
    assert counted(metrics, "modelfleet_requests_total", code="503") == codes.count(503)


def test_a_request_past_its_timeout_gets_504() -> None:
    responses, metrics = asyncio.run(fire(served(request_timeout=0.1), 0.5, [ROW]))
    assert responses[0].status_code == 504 and "0.1s" in responses[0].json()["error"]
    assert counted(metrics, "modelfleet_rejected_requests_total", reason="timeout") == 1
    assert counted(metrics, "modelfleet_inflight_requests") == 0


def test_the_limits_come_from_env_or_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELFLEET_MAX_QUEUE", "7")
    monkeypatch.setenv("MODELFLEET_REQUEST_TIMEOUT_SECONDS", "2.5")
    config = ServerConfig.from_env_and_args(["--model-path", "/m", "--max-body-bytes", "1024"])
    assert (config.max_queue, config.request_timeout, config.max_body_bytes) == (7, 2.5, 1024)
    defaults = ServerConfig(model_path="/m")
    assert defaults.max_queue > 0 and defaults.request_timeout > 0 and defaults.max_body_bytes > 0
